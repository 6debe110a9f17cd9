"""Circuit breakers: stop calling a failing target for a cool-down, then let one probe through.

A pure state machine over an injected monotonic clock; it sends nothing and sleeps never. The
callers (``KVStore._io``, ``UpstreamClient``) ask :meth:`CircuitBreaker.allow` before a request and
report its verdict with :meth:`~CircuitBreaker.success`, :meth:`~CircuitBreaker.failure` or
:meth:`~CircuitBreaker.release` (no verdict: the request was never sent, or failed in a way that says
nothing about the target's health)::

    CLOSED --N consecutive failures--> OPEN --cool-down over, one probe allowed--> HALF_OPEN
    HALF_OPEN --probe succeeds--> CLOSED        HALF_OPEN --probe fails--> OPEN (cool-down again)

One log line per state change, never one per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from dualcache._exceptions import ConfigError

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and for how long.

    Attributes:
        failures: Consecutive failures that open the breaker (>= 1).
        cooldown: Seconds it stays open before one probe is let through (> 0).
        enabled: ``False`` never opens (every call is sent).

    Raises:
        ConfigError: a value out of range; the message names the field.
    """

    failures: int = 5
    cooldown: float = 30.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            raise ConfigError(f"BreakerPolicy.failures={self.failures!r}: must be an integer >= 1")
        c = self.cooldown
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c <= 0:
            raise ConfigError(f"BreakerPolicy.cooldown={c!r}: must be a finite number of seconds > 0")
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"BreakerPolicy.enabled={self.enabled!r}: must be true or false")


class BreakerState(Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls go through; failures are counted."""
    OPEN = "open"
    """Calls are skipped until the cool-down ends."""
    HALF_OPEN = "half_open"
    """One probe is in flight; other calls are skipped until it ends."""


class CircuitBreaker:
    """The breaker of one target (a KV namespace, a gateway, a provider route).

    Args:
        name: The target, for the log (``kv EMBEDDINGS_CACHE``, ``gateway``, ``workers-ai (direct)``).
        policy: Threshold and cool-down.
        clock: Monotonic clock in seconds (``time.monotonic`` by default; tests pass a fake one).

    Attributes:
        opened: How many times it opened (re-openings after a failed probe included).
        probes: How many probes it let through.
        rejected: How many calls it refused.
    """

    def __init__(self, name: str, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] | None = None):
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._clock = clock or time.monotonic
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self.opened = 0
        self.probes = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value}, failures={self._failures})"

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker stays ``OPEN`` until a call asks after the cool-down)."""
        return self._state

    def retry_after(self) -> float | None:
        """Seconds until a probe may go, while open; else ``None``."""
        if self._state is not BreakerState.OPEN:
            return None
        return max(0.0, self._opened_at + self.policy.cooldown - self._clock())

    def _move(self, state: BreakerState, why: str) -> None:
        self._state = state
        log = logger.info if state is BreakerState.HALF_OPEN else logger.warning
        log("circuit breaker %s: %s (%s)", self.name, state.value, why)

    def allow(self) -> bool:
        """Whether a call may be sent now. A ``True`` from a half-open breaker makes that call the probe."""
        if not self.policy.enabled or self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.policy.cooldown:
                self.rejected += 1
                return False
            self._move(BreakerState.HALF_OPEN, f"cool-down of {self.policy.cooldown:g}s over, sending one probe")
        if self._probe_out:
            self.rejected += 1
            return False
        self._probe_out = True
        self.probes += 1
        return True

    def success(self) -> None:
        """Report that a call sent got an answer from the target."""
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN and self._probe_out:
            self._probe_out = False
            self._move(BreakerState.CLOSED, "probe succeeded")

    def failure(self) -> None:
        """Report that a call sent found the target unavailable (timeout, connection error, 5xx)."""
        if not self.policy.enabled:
            return
        match self._state:
            case BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self.policy.failures:
                    self._open(f"{self._failures} consecutive failures")
            case BreakerState.HALF_OPEN:
                if self._probe_out:
                    self._probe_out = False
                    self._open("probe failed")
            case BreakerState.OPEN:
                pass  # a call sent before it opened: nothing new to learn

    def release(self) -> None:
        """Report that a call allowed ended with no verdict (never sent); a held probe slot is freed."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self.opened += 1
        self._move(BreakerState.OPEN, f"{why}; calls skipped for {self.policy.cooldown:g}s")
