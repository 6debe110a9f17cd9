"""Counting per operation and per layer, and the price table that turns counts into dollars.

Every request of an operation ends in exactly one of four ways, one counter each:

* ``kv_hits``: served from Workers KV;
* ``coalesced``: joined an identical request already in flight in this process (single-flight);
* ``gateway_hits``: the AI Gateway answered from its cache (``cf-aig-cache-status: HIT``);
* ``provider_calls``: the AI provider computed the answer (through the gateway or direct).

A request that fails outright is counted in ``failures`` instead. ``errors`` counts faults met
on the way, including ones that were absorbed (a KV read that failed and became a miss, a KV write
that failed, a gateway failure followed by a direct fallback). ``kv_skipped``, ``gateway_skipped`` and
``provider_skipped`` count calls to a layer that were not sent at all because the layer was blocked
(a rate-limit block, a spent request budget, an open circuit breaker): a skipped KV read is a miss, a
skipped KV write is dropped; they are not errors, since nothing failed. ``kv_write_dropped`` counts KV writes
the write-behind queue dropped (the queue was full, or ``aclose()`` could not flush them in time): the answer
was served, only its record is missing from KV. ``upstream_requests`` counts HTTP
requests sent to the gateway or a provider (a batch of 100 embeddings is one).

``cost`` is what the provider calls cost; ``saved`` is what the hits and coalesced requests would
have cost. A hit costs nothing. So ``cost + saved`` is the cost without any cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, assert_never

from pydantic import BaseModel, ConfigDict, Field

from dualcache._policy import Operation

__all__ = ["Outcome", "PriceTable", "Stats"]


class PriceTable(BaseModel):
    """Estimated US dollars per request the provider answers, per operation.

    Defaults: the seed's figures for embeddings ($0.001), job analysis ($0.03) and application
    generation ($0.02). The seed gives none for the other two; ours are estimates: resume parsing
    $0.01 (a 70B model or GPT-4o vision over a whole resume), spam detection $0.002 (an 8B model over
    one job posting).
    """

    # Prices are finite (an infinite price would make every cost figure inf, and NaN every one NaN).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    application_generation: float = Field(default=0.02, ge=0)
    job_analysis: float = Field(default=0.03, ge=0)
    resume_parsing: float = Field(default=0.01, ge=0)
    embeddings: float = Field(default=0.001, ge=0)
    spam_detection: float = Field(default=0.002, ge=0)

    def price(self, operation: Operation) -> float:
        """Return the price of one provider-answered request of ``operation``."""
        value: float = getattr(self, operation.value)
        return value


class Outcome(Enum):
    """How one request of an operation was served."""

    KV_HIT = "kv_hits"
    COALESCED = "coalesced"
    GATEWAY_HIT = "gateway_hits"
    PROVIDER = "provider_calls"
    FAILED = "failures"


_COUNTERS = (
    "requests",
    "kv_hits",
    "gateway_hits",
    "provider_calls",
    "coalesced",
    "failures",
    "errors",
    "kv_skipped",
    "gateway_skipped",
    "provider_skipped",
    "kv_write_dropped",
    "upstream_requests",
)

_LAYERS = ("kv", "gateway", "provider")


class Stats:
    """Counters per operation; see the module docstring for their meaning.

    Args:
        prices: The price table; the seed's defaults when ``None``.
    """

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or PriceTable()
        self._counts: dict[Operation, dict[str, int]] = {op: dict.fromkeys(_COUNTERS, 0) for op in Operation}
        self._cost: dict[Operation, float] = dict.fromkeys(Operation, 0.0)
        self._saved: dict[Operation, float] = dict.fromkeys(Operation, 0.0)

    def __repr__(self) -> str:
        total = sum(c["requests"] for c in self._counts.values())
        return f"Stats(requests={total})"

    def record(self, operation: Operation, outcome: Outcome, n: int = 1) -> None:
        """Count ``n`` requests of ``operation`` that ended in ``outcome``."""
        counts = self._counts[operation]
        counts["requests"] += n
        counts[outcome.value] += n
        price = self.prices.price(operation) * n
        match outcome:
            case Outcome.PROVIDER:
                self._cost[operation] += price
            case Outcome.KV_HIT | Outcome.COALESCED | Outcome.GATEWAY_HIT:
                self._saved[operation] += price
            case Outcome.FAILED:
                pass
            case _ as unreachable:
                assert_never(unreachable)

    def error(self, operation: Operation, n: int = 1) -> None:
        """Count ``n`` faults met while serving ``operation`` (absorbed or not)."""
        self._counts[operation]["errors"] += n

    def skip(self, operation: Operation, layer: str, n: int = 1) -> None:
        """Count ``n`` calls to ``layer`` (``kv``, ``gateway`` or ``provider``) that were not sent.

        Raises:
            ValueError: ``layer`` is not one of the three.
        """
        if layer not in _LAYERS:
            raise ValueError(f"layer={layer!r}: must be one of {', '.join(_LAYERS)}")
        self._counts[operation][f"{layer}_skipped"] += n

    def write_dropped(self, operation: Operation, n: int = 1) -> None:
        """Count ``n`` KV writes of ``operation`` dropped by the write-behind queue."""
        self._counts[operation]["kv_write_dropped"] += n

    def upstream(self, operation: Operation, n: int = 1) -> None:
        """Count ``n`` HTTP requests sent upstream for ``operation``."""
        self._counts[operation]["upstream_requests"] += n

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Return ``{operation: {requests, kv_hits, gateway_hits, provider_calls, coalesced, failures,
        errors, kv_skipped, gateway_skipped, provider_skipped, kv_write_dropped, upstream_requests, cost,
        saved}}`` (cost and saved in US dollars, rounded to 1e-6)."""
        return {
            op.value: {**self._counts[op], "cost": round(self._cost[op], 6), "saved": round(self._saved[op], 6)}
            for op in Operation
        }

    def reset(self) -> None:
        """Set every counter back to zero."""
        for op in Operation:
            self._counts[op] = dict.fromkeys(_COUNTERS, 0)
            self._cost[op] = 0.0
            self._saved[op] = 0.0

    def report(self) -> str:
        """Return a readable table of the counters, with hit rates and totals."""
        return render_report(self.snapshot())


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def render_report(snapshot: Mapping[str, Mapping[str, Any]]) -> str:
    """Render a :meth:`Stats.snapshot` as a fixed-width text table."""
    header = (
        f"{'operation':<24}{'requests':>9}{'KV hit':>8}{'GW hit':>8}{'coalesc':>8}"
        f"{'provider':>9}{'errors':>7}{'fail':>6}{'cost $':>10}{'saved $':>10}"
    )
    lines = [header, "-" * len(header)]
    totals = dict.fromkeys(("requests", "provider_calls", "errors", "failures"), 0)
    cost = saved = 0.0
    for name, c in snapshot.items():
        req = int(c["requests"])
        lines.append(
            f"{name:<24}{req:>9}{_rate(int(c['kv_hits']), req):>8}{_rate(int(c['gateway_hits']), req):>8}"
            f"{int(c['coalesced']):>8}{int(c['provider_calls']):>9}{int(c['errors']):>7}{int(c['failures']):>6}"
            f"{float(c['cost']):>10.3f}{float(c['saved']):>10.3f}"
        )
        for k in totals:
            totals[k] += int(c[k])
        cost += float(c["cost"])
        saved += float(c["saved"])
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<24}{totals['requests']:>9}{'':>8}{'':>8}{'':>8}{totals['provider_calls']:>9}"
        f"{totals['errors']:>7}{totals['failures']:>6}{cost:>10.3f}{saved:>10.3f}"
    )
    return "\n".join(lines)
