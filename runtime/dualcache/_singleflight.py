"""Single-flight: identical requests in flight in one process share one computation.

The AI Gateway does not coalesce (its docs call its cache volatile: two simultaneous identical
requests may both reach the provider), and Workers KV has no atomic set-if-absent, so this is the
only place duplicates can be folded. It wraps the computation; it knows nothing of KV or HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight:
    """Per-key coalescing of concurrent computations.

    The computation runs in its own task, so a caller that is cancelled does not cancel it for the
    others. When disabled, every call computes on its own (used by the benchmark to compare).

    Args:
        enabled: Whether to coalesce.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._flights: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def in_flight(self, key: str) -> asyncio.Future[Any] | None:
        """Return the future of the computation in flight for ``key``, if any (never when disabled).

        A finished computation is not in flight, even before its done-callback has removed it.
        """
        if not self.enabled:
            return None
        future = self._flights.get(key)
        if future is None or future.done():
            return None
        return future

    def start(self, key: str, future: asyncio.Future[Any]) -> None:
        """Register ``future`` as the computation for ``key`` until it is done (no-op when disabled)."""
        if not self.enabled:
            return
        self._flights[key] = future
        future.add_done_callback(lambda f: self._done(key, f))

    def _done(self, key: str, future: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is future:
            del self._flights[key]
        if not future.cancelled():
            future.exception()  # mark retrieved: the callers awaiting it get it; nobody else should warn

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, coalesced)``: the result of ``compute()`` or of the identical call in flight.

        ``coalesced`` is true when this caller joined a computation another caller started.
        """
        existing = self.in_flight(key)
        if existing is not None:
            result: T = await asyncio.shield(existing)
            return result, True
        if not self.enabled:
            return await compute(), False

        async def wrapper() -> T:
            return await compute()

        task: asyncio.Future[T] = asyncio.ensure_future(wrapper())
        self.start(key, task)
        return await asyncio.shield(task), False
