"""Single-flight: identical requests in flight in one process share one computation.

The AI Gateway does not coalesce (its docs call its cache volatile: two simultaneous identical
requests may both reach the provider), and Workers KV has no atomic set-if-absent, so this is the
only place duplicates can be folded. It wraps the computation; it knows nothing of KV or HTTP.

Callers enter it only on a miss (the KV read happens before, so a hit creates no task). A
computation is *launched* for one or more keys (``embed_many`` launches one for all its misses) and
runs in a task of its own, detached from any caller. Callers *wait* on the keys they need:

* a cancelled caller stops waiting; nobody else is affected, and the computation goes on for the
  callers still waiting, the one that launched it included or not;
* when the last waiter of a computation leaves while some of its keys are still unanswered, the
  computation is cancelled (counted in :attr:`SingleFlight.abandoned`) and its keys are released at
  once, so a caller arriving later starts afresh instead of joining a dying flight;
* once every key is answered, what is left of the computation (a synchronous KV write) finishes
  even when nobody waits any more.

The first caller to collect a key's answer is told so (``first=True``); it counts the outcome (a
provider call, a gateway hit), the others count themselves as coalesced. Counts therefore stay right
when the caller that launched the computation was cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Flight", "SharedReads", "SingleFlight"]

Compute = Callable[[Mapping[str, "asyncio.Future[Any]"]], Awaitable[None]]
"""A computation: it settles the future of each key it answers (a key left unsettled gets its error)."""


class _Group:
    """One computation and the callers waiting on it."""

    __slots__ = ("flights", "task", "waiters")

    def __init__(self) -> None:
        self.flights: dict[str, Flight] = {}
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0

    def unanswered(self) -> bool:
        return any(not f.future.done() for f in self.flights.values())


class Flight:
    """One key of a computation in flight: its future, and whether its answer was collected yet."""

    __slots__ = ("_group", "claimed", "future", "key")

    def __init__(self, key: str, future: asyncio.Future[Any], group: _Group) -> None:
        self.key = key
        self.future = future
        self.claimed = False
        self._group = group


def _retrieve(future: asyncio.Future[Any]) -> None:
    # The callers awaiting the future get its error; when none is left, nobody should warn about it.
    if not future.cancelled():
        future.exception()


class SingleFlight:
    """Per-key coalescing of concurrent computations, each detached from its callers.

    When disabled, nothing is registered: :meth:`get` finds nothing, so every caller computes on its
    own (used by the benchmark to compare).

    Args:
        enabled: Whether to coalesce.

    Attributes:
        abandoned: Computations cancelled because every caller waiting on them was cancelled.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.abandoned = 0
        self._flights: dict[str, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    @property
    def running(self) -> int:
        """Computations whose task has not finished (registered or not)."""
        return len(self._tasks)

    def get(self, key: str) -> Flight | None:
        """Return the flight of ``key`` when a computation is answering it now, else ``None``."""
        flight = self._flights.get(key)
        if flight is None or flight.future.done():
            return None
        return flight

    def launch(self, keys: Sequence[str], compute: Compute) -> dict[str, Flight]:
        """Start ``compute`` for ``keys`` in a task of its own and return the flight of each key.

        The keys are registered (when enabled) before this returns, so a caller checking :meth:`get`
        right after finds them. Call :meth:`wait` right away (no ``await`` in between), or the
        computation has no waiter to keep it alive.
        """
        loop = asyncio.get_running_loop()
        group = _Group()
        for key in dict.fromkeys(keys):
            future: asyncio.Future[Any] = loop.create_future()
            future.add_done_callback(_retrieve)
            group.flights[key] = Flight(key, future, group)
            if self.enabled:
                self._flights[key] = group.flights[key]
        task = loop.create_task(self._run(group, compute))
        group.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return dict(group.flights)

    async def _run(self, group: _Group, compute: Compute) -> None:
        futures = {k: f.future for k, f in group.flights.items()}
        try:
            await compute(futures)
        except asyncio.CancelledError:
            for future in futures.values():
                future.cancel()
            raise
        except Exception as exc:
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
        else:
            for key, future in futures.items():
                if not future.done():
                    future.set_exception(RuntimeError(f"single-flight: the computation left key {key!r} unanswered"))
        finally:
            self._release(group)

    def _release(self, group: _Group) -> None:
        for key, flight in group.flights.items():
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def wait(self, flights: Iterable[Flight]) -> list[tuple[Any, bool]]:
        """Return ``(answer, first)`` for each flight, in order; raise the first error met.

        ``first`` is true for the first caller to collect that key's answer. A cancelled caller only
        stops waiting (see the module docstring).
        """
        flights = list(flights)
        groups = list({id(f._group): f._group for f in flights}.values())
        for group in groups:
            group.waiters += 1
        try:
            out: list[tuple[Any, bool]] = []
            for flight in flights:
                answer = await asyncio.shield(flight.future)
                first = not flight.claimed
                flight.claimed = True
                out.append((answer, first))
            return out
        finally:
            for group in groups:
                group.waiters -= 1
                if group.waiters == 0 and group.task is not None and not group.task.done() and group.unanswered():
                    self._release(group)  # a later caller starts afresh rather than join a cancelled flight
                    group.task.cancel()
                    self.abandoned += 1

    async def aclose(self) -> None:
        """Cancel the computations still running and wait for them to end (callers still waiting fail)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._flights.clear()


class _Read:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] | None = None


class SharedReads:
    """One KV read of a key at a time: concurrent readers of the key wait for the read in progress.

    This keeps one KV read per key for a burst of identical requests (as when the whole request was
    single-flight) at the cost of a dict entry on the uncontended path: the future readers wait on is
    created only when one arrives. A reader that joins gets the ``(value, ok)`` the first reader got;
    when that reader was cancelled, it gets ``None`` and reads for itself.
    """

    def __init__(self) -> None:
        self._reads: dict[str, _Read] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def join(self, key: str) -> asyncio.Future[Any] | None:
        """Return a future of the read of ``key`` in progress, or ``None`` when none is."""
        read = self._reads.get(key)
        if read is None:
            return None
        if read.future is None:
            read.future = asyncio.get_running_loop().create_future()
        return read.future

    def begin(self, key: str) -> _Read:
        """Register this caller's read of ``key``; :meth:`end` it in a ``finally``."""
        read = self._reads[key] = _Read()
        return read

    def end(self, key: str, read: _Read, got: tuple[bytes | None, bool] | None) -> None:
        """Unregister the read and hand ``got`` (``None``: no answer, read yourselves) to the waiting readers."""
        if self._reads.get(key) is read:
            del self._reads[key]
        if read.future is not None and not read.future.done():
            read.future.set_result(got)
