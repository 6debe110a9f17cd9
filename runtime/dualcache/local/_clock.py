"""The emulator's one clock: KV expiry, gateway cache TTLs and rate-limit windows all read it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Clock"]


class Clock:
    """Wall-clock time plus an offset that tests move forward (``POST /__emulator/clock``).

    Args:
        base: The underlying time source in unix seconds (default :func:`time.time`).
    """

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self._offset = 0.0
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        """Seconds the clock has been advanced in total."""
        return self._offset

    def now(self) -> float:
        """Current emulator time in unix seconds."""
        return self._base() + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new time.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError(f"advance must be a finite number of seconds >= 0, got {seconds!r}")
        with self._lock:
            self._offset += seconds
        return self.now()
