"""Time budgets and connection-pool sizes per layer: one validated, frozen object each.

Every layer (KV, the AI Gateway, the direct provider routes) gets its own ``httpx.AsyncClient`` with its
own pool, an admission gate in front of the pool (fewer requests in flight than the pool has
connections, so no request ever queues inside httpcore) and its own time budget. Requests are never
cancelled from outside while httpcore may hold them: a request past its budget is *abandoned* (the
caller gets a miss or moves on to the next route) and ends on httpx's own per-phase timeouts.

Defaults (seconds, connections):

=====================  =========  ========================================================================
Setting                Default    Meaning
=====================  =========  ========================================================================
``Timeouts.kv_read``   1.0        A KV read, from its admission; past it the read is abandoned and
                                  counted as a miss (``errors``; ``kv_skipped`` when never admitted).
``Timeouts.kv_write``  10.0       A KV write or delete, from its admission (counted, never raised by
                                  ``DualCache``).
``Timeouts.kv_queue``  5.0        How long a KV request may wait for a place at the KV gate (a queue with
                                  a deadline): under a burst, hits wait their turn instead of turning into
                                  paid misses; past it the read is skipped (``kv_skipped``), a miss.
``Timeouts.connect``   3.0        TCP + TLS connect to any layer (capped by the layer's budget).
``Timeouts.gateway``   10.0       The gateway route of one call, every attempt and retry wait included
                                  (connect and first byte): past it the direct route starts.
``Timeouts.provider``  60.0       The direct provider route of one call, retries included.
``Timeouts.grace``     10.0       How long past its budget an abandoned request may still run before it
                                  is cancelled (only for transports that ignore httpx timeouts).
KV pool                64 / 48    ``max_connections`` / requests admitted in flight.
Gateway pool           64 / 48    idem, for ``{gateway_base_url}``.
Provider pool          32 / 24    idem, for the direct Workers AI and OpenAI routes.
Keep-alive expiry      30.0       Idle pooled connections are closed after this.
Circuit breaker        5 / 30.0   Consecutive failures that open it / seconds before one probe
                                  (:class:`~dualcache.BreakerPolicy`).
=====================  =========  ========================================================================

A KV request waits at most ``kv_queue`` at the KV gate, then has its own budget. A gateway or provider
request waits at most half its budget at a gate (``dualcache._transport.GATE_SHARE``), so an admitted
request keeps at least the other half; one that waited longer gives up unsent (``*_skipped``).
``RetryPolicy.total_timeout`` still bounds a route too: the tighter of the two wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import httpx

from dualcache._exceptions import ConfigError

__all__ = ["LayerLimits", "PoolLimits", "Timeouts"]


def _check_seconds(owner: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{owner}.{name}={value!r}: must be a number of seconds")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{owner}.{name}={value!r}: must be a finite number of seconds {bound}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The time budget of each layer (seconds); see the module table for what each one bounds.

    Attributes:
        kv_read: Budget of one KV read, from its admission; past it, a miss.
        kv_write: Budget of one KV write or delete, from its admission.
        kv_queue: Longest wait of a KV request for a place at the KV pool's gate; then it is skipped.
        connect: Connect timeout of every pool (capped by the layer's budget).
        gateway: Budget of the gateway route of one call, retries included; then the direct route.
        provider: Budget of the direct provider route of one call, retries included.
        grace: How long an abandoned request may outlive its budget before it is cancelled.

    Raises:
        ConfigError: a value is not a finite positive number; the message names the field.
    """

    kv_read: float = 1.0
    kv_write: float = 10.0
    kv_queue: float = 5.0
    connect: float = 3.0
    gateway: float = 10.0
    provider: float = 60.0
    grace: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_seconds("Timeouts", f.name, getattr(self, f.name), allow_zero=f.name == "grace")

    def kv_http(self) -> httpx.Timeout:
        """The ``httpx.Timeout`` of the KV pool: every phase within the longer of the two KV budgets."""
        longest = max(self.kv_read, self.kv_write, self.kv_queue)
        return httpx.Timeout(longest, connect=min(self.connect, longest))

    def attempt(self, budget: float) -> httpx.Timeout:
        """The ``httpx.Timeout`` of one upstream attempt that has ``budget`` seconds left."""
        return httpx.Timeout(budget, connect=min(self.connect, budget))


@dataclass(frozen=True, slots=True)
class LayerLimits:
    """The pool of one layer and its admission gate.

    Attributes:
        connections: The pool's ``max_connections``.
        in_flight: Requests admitted at once; below ``connections``, so a request never waits inside the
            pool (where a cancelled wait can leave a connection stuck), only at the gate, with a deadline.
        keepalive_expiry: Seconds an idle connection is kept.

    Raises:
        ConfigError: a value out of range; the message names it.
    """

    connections: int
    in_flight: int
    keepalive_expiry: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connections", "in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LayerLimits.{name}={value!r}: must be an integer >= 1")
        if self.in_flight >= self.connections and self.connections > 1:
            raise ConfigError(
                f"LayerLimits.in_flight={self.in_flight} must be below connections={self.connections}, "
                "so that admitted requests never queue inside the pool"
            )
        _check_seconds("LayerLimits", "keepalive_expiry", self.keepalive_expiry, allow_zero=True)

    def httpx_limits(self) -> httpx.Limits:
        """The ``httpx.Limits`` of this pool."""
        return httpx.Limits(
            max_connections=self.connections,
            max_keepalive_connections=self.connections,
            keepalive_expiry=self.keepalive_expiry,
        )


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Pool and admission sizes of the three layers.

    Attributes:
        kv: The KV pool (REST API or the data plane).
        gateway: The AI Gateway pool.
        provider: The direct provider pool (Workers AI and OpenAI).
    """

    kv: LayerLimits = field(default_factory=lambda: LayerLimits(64, 48))
    gateway: LayerLimits = field(default_factory=lambda: LayerLimits(64, 48))
    provider: LayerLimits = field(default_factory=lambda: LayerLimits(32, 24))

    def __post_init__(self) -> None:
        for name in ("kv", "gateway", "provider"):
            if not isinstance(getattr(self, name), LayerLimits):
                raise ConfigError(f"PoolLimits.{name} must be a LayerLimits, got {type(getattr(self, name)).__name__}")
