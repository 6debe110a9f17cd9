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
requests sent to the gateway or a provider (a batch of 100 embeddings is one). ``limited`` counts requests
refused by a per-user limit (``dualcache._limits``) before any I/O; they are not in ``requests``.
``limit_fallbacks`` counts limit checks made in this process because the data plane's rate limiting binding
could not be reached.

``cost`` is what the provider calls cost; ``saved`` is what the hits and coalesced requests would
have cost. A hit costs nothing. So ``cost + saved`` is the cost without any cache. An operation without
a price in the :class:`PriceTable` (a custom one nobody priced) still counts its calls, but its
``cost`` and ``saved`` are ``None`` (unknown), never a misleading $0.

``served_without_provider`` is the share of requests answered without a provider call: KV hits,
gateway hits and coalesced requests, over all requests (``None`` before the first request).

Token figures (:meth:`Stats.usage`, fed from each answer's ``usage``): ``input_tokens``, ``output_tokens`` and
``cached_tokens`` count what the provider computed (a gateway hit's tokens are not billed, so not counted);
``saved_by_prompt_cache`` is what the provider's prompt cache saved in dollars. When token prices
(:class:`~dualcache.Prices`) priced some provider calls of an operation, its ``cost`` is their token cost plus
the per-request price of the calls that were not priced by tokens, and its ``saved`` is the prompt cache's
saving, plus each gateway hit's own token cost (its answer carries its usage), plus each other hit at the
operation's mean token cost per provider-answered request (the per-request price before any was measured).
So ``cost + saved`` stays the cost without any cache.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, assert_never

from pydantic import BaseModel, ConfigDict, Field

from dualcache._policy import Operation, Policies

__all__ = ["LATENCY_LAYERS", "LatencyHistogram", "Outcome", "PriceTable", "Stats"]


class PriceTable(BaseModel):
    """Estimated US dollars per request the provider answers, per operation.

    Defaults: the job-matching service's figures for embeddings ($0.001), job analysis ($0.03) and application
    generation ($0.02). It has none for the other two; ours are estimates: resume parsing
    $0.01 (a 70B model or GPT-4o vision over a whole resume), spam detection $0.002 (an 8B model over
    one job posting).

    A custom operation's price is an extra field named after it, ``PriceTable(summarize_job=0.004)``;
    an operation without one has an unknown cost (:meth:`price` returns ``None``).
    """

    # Prices are finite (an infinite price would make every cost figure inf, and NaN every one NaN).
    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)
    __pydantic_extra__: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(init=False)

    application_generation: float = Field(default=0.02, ge=0)
    job_analysis: float = Field(default=0.03, ge=0)
    resume_parsing: float = Field(default=0.01, ge=0)
    embeddings: float = Field(default=0.001, ge=0)
    spam_detection: float = Field(default=0.002, ge=0)

    def price(self, operation: Operation | str) -> float | None:
        """Return the price of one provider-answered request of ``operation``, ``None`` when it has none."""
        name = str(operation)
        if name in type(self).model_fields:
            value: float = getattr(self, name)
            return value
        return (self.__pydantic_extra__ or {}).get(name)


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
    "limited",
    "limit_fallbacks",
)

_TOKENS = ("input_tokens", "output_tokens", "cached_tokens")

_LAYERS = ("kv", "gateway", "provider")


class Stats:
    """Counters per operation; see the module docstring for their meaning.

    Args:
        prices: The price table; the default per-request estimates when ``None``.
        policies: The operations to list (built-in and custom, in their order) and which of them read KV
            (the report shows "-" as the KV hit rate of one that does not); the defaults when ``None``.
            An operation counted without being listed is added at the end.
    """

    def __init__(self, prices: PriceTable | None = None, policies: Policies | None = None) -> None:
        self.prices = prices or PriceTable()  # the setter below: it also empties the price memo
        self._policies = policies or Policies()
        self._counts: dict[str, dict[str, int]] = {}
        self._cost: dict[str, float] = {}
        self._saved: dict[str, float] = {}
        self._latency: dict[tuple[str, str], LatencyHistogram] = {}
        # Token figures per operation (see the module docstring): tokens the provider computed; the token cost
        # and the requests it covered; prompt-cache savings; gateway hits priced from their own usage.
        self._tokens: dict[str, dict[str, int]] = {}
        self._metered: dict[str, list[float]] = {}  # [requests, cost, prompt-cache saving, gw hits, gw saving]
        self.reset()

    def __repr__(self) -> str:
        total = sum(c["requests"] for c in self._counts.values())
        return f"Stats(requests={total})"

    @property
    def prices(self) -> PriceTable:
        """The price table; a new one prices the requests counted from then on."""
        return self._prices

    @prices.setter
    def prices(self, table: PriceTable) -> None:
        self._prices = table
        # Price of one request per operation name (0.0 for an unknown price, which is never summed into a
        # figure anyway): a PriceTable is frozen, so its answers only change with the table itself.
        self._price_of: dict[str, float] = {}

    def _price(self, name: str) -> float:
        price = self._price_of.get(name)
        if price is None:
            price = self._price_of[name] = self._prices.price(name) or 0.0
        return price

    def _row(self, operation: Operation | str) -> dict[str, int]:
        name = str(operation)
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = dict.fromkeys(_COUNTERS, 0)
            self._cost[name] = self._saved[name] = 0.0
        return counts

    def record(self, operation: Operation | str, outcome: Outcome, n: int = 1) -> None:
        """Count ``n`` requests of ``operation`` that ended in ``outcome``."""
        # Once a row exists, everything here is a dict lookup: this runs on every hit. An Operation is a str, so
        # it finds its row (and its price) by name without being converted.
        counts = self._counts.get(operation)
        if counts is None:
            counts = self._row(operation)
        counts["requests"] += n
        counts[outcome._value_] += n  # the member's value, without the enum's value property
        match outcome:
            case Outcome.KV_HIT | Outcome.COALESCED | Outcome.GATEWAY_HIT:
                self._saved[operation] += self._price(operation) * n  # an unknown price counts 0, shown unknown
            case Outcome.PROVIDER:
                self._cost[operation] += self._price(operation) * n
            case Outcome.FAILED:
                pass
            case _ as unreachable:
                assert_never(unreachable)

    def error(self, operation: Operation | str, n: int = 1) -> None:
        """Count ``n`` faults met while serving ``operation`` (absorbed or not)."""
        self._row(operation)["errors"] += n

    def skip(self, operation: Operation | str, layer: str, n: int = 1) -> None:
        """Count ``n`` calls to ``layer`` (``kv``, ``gateway`` or ``provider``) that were not sent.

        Raises:
            ValueError: ``layer`` is not one of the three.
        """
        if layer not in _LAYERS:
            raise ValueError(f"layer={layer!r}: must be one of {', '.join(_LAYERS)}")
        self._row(operation)[f"{layer}_skipped"] += n

    def write_dropped(self, operation: Operation | str, n: int = 1) -> None:
        """Count ``n`` KV writes of ``operation`` dropped by the write-behind queue."""
        self._row(operation)["kv_write_dropped"] += n

    def limited(self, operation: Operation | str, n: int = 1) -> None:
        """Count ``n`` requests of ``operation`` refused by a per-user limit (never sent, not in ``requests``)."""
        self._row(operation)["limited"] += n

    def limit_fallback(self, operation: Operation | str, n: int = 1) -> None:
        """Count ``n`` per-user limit checks of ``operation`` made locally because the data plane's rate
        limiting binding could not be reached."""
        self._row(operation)["limit_fallbacks"] += n

    def upstream(self, operation: Operation | str, n: int = 1) -> None:
        """Count ``n`` HTTP requests sent upstream for ``operation``."""
        self._row(operation)["upstream_requests"] += n

    def usage(
        self,
        operation: Operation | str,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        cost: float | None = None,
        prompt_cache_saving: float = 0.0,
        requests: int = 1,
        gateway_hit: bool = False,
    ) -> None:
        """Count the tokens of one upstream answer of ``operation`` (its ``usage``).

        Args:
            operation: The operation.
            input_tokens: Prompt tokens, cached ones included.
            output_tokens: Completion tokens.
            cached_tokens: Prompt tokens served from the provider's prompt cache.
            cost: Its cost from token prices, or ``None`` when no token price applies (the per-request price
                then stays the figure).
            prompt_cache_saving: What the prompt cache saved on it, in dollars.
            requests: How many requests of the operation the answer serves (a batch of embeddings: its texts).
            gateway_hit: The gateway answered from its cache: nothing was billed, and ``cost`` is what the hit
                saved.
        """
        name = str(operation)
        self._row(operation)
        metered = self._metered.setdefault(name, [0.0, 0.0, 0.0, 0.0, 0.0])
        if gateway_hit:
            if cost is not None:
                metered[3] += requests
                metered[4] += cost
            return
        tokens = self._tokens.setdefault(name, dict.fromkeys(_TOKENS, 0))
        tokens["input_tokens"] += input_tokens
        tokens["output_tokens"] += output_tokens
        tokens["cached_tokens"] += cached_tokens
        if cost is not None:
            metered[0] += requests
            metered[1] += cost
            metered[2] += prompt_cache_saving

    def _token_figures(self, name: str, counts: Mapping[str, int]) -> tuple[float | None, float | None] | None:
        """``(cost, saved)`` of an operation priced by tokens, or ``None`` when no call of it was."""
        metered = self._metered.get(name)
        if metered is None or not (metered[0] or metered[3]):
            return None
        requests, token_cost, prompt_saving, gw_hits, gw_saving = metered
        price = self.prices.price(name)
        provider = counts["provider_calls"]
        unmetered = max(provider - requests, 0)  # an answer priced but then refused is not a provider call
        cost: float | None
        if price is not None:
            cost = token_cost + price * unmetered
        else:
            cost = token_cost if not unmetered else None
        mean = token_cost / requests if requests else (gw_saving / gw_hits if gw_hits else price)
        hits = counts["kv_hits"] + counts["coalesced"] + max(counts["gateway_hits"] - int(gw_hits), 0)
        saved: float | None
        if mean is None:
            saved = None if hits else gw_saving + prompt_saving
        else:
            saved = gw_saving + mean * hits + prompt_saving
        return cost, saved

    def _kv_on(self, name: str) -> bool:
        try:
            return self._policies.for_operation(name).kv
        except ValueError:  # counted, but not in the policies (an InvalidInputError): nothing says KV is off
            return True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Return ``{operation: {requests, kv_hits, gateway_hits, provider_calls, coalesced, failures,
        errors, kv_skipped, gateway_skipped, provider_skipped, kv_write_dropped, upstream_requests, limited,
        limit_fallbacks, cost, saved, served_without_provider, kv, input_tokens, output_tokens, cached_tokens,
        saved_by_prompt_cache}}``.

        The token fields are described in the module docstring; ``saved_by_prompt_cache`` is rounded to 1e-9, as
        are ``cost`` and ``saved`` of an operation priced by tokens.

        ``cost`` and ``saved`` are US dollars rounded to 1e-6, or ``None`` when the operation has no price;
        ``served_without_provider`` is a fraction (0..1), ``None`` before the first request; ``kv`` says
        whether the operation's policy reads KV. ``latency`` is ``{layer: {count, p50_ms, p99_ms, max_ms,
        sum_ms}}`` for each layer of :data:`LATENCY_LAYERS` timed so far (see :meth:`observe`). Every
        operation of the policies is listed, then any other that was counted.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, counts in self._counts.items():
            priced = self.prices.price(name) is not None
            served = counts["kv_hits"] + counts["gateway_hits"] + counts["coalesced"]
            out[name] = {
                **counts,
                "cost": round(self._cost[name], 6) if priced else None,
                "saved": round(self._saved[name], 6) if priced else None,
                "served_without_provider": served / counts["requests"] if counts["requests"] else None,
                "kv": self._kv_on(name),
                "latency": self._latency_of(name),
            }
            out[name].update(self._token_snapshot(name, counts))
        return out

    def _token_snapshot(self, name: str, counts: Mapping[str, int]) -> dict[str, Any]:
        """The token fields of one operation's snapshot (and its cost and saved when priced by tokens)."""
        fields: dict[str, Any] = dict(self._tokens.get(name) or dict.fromkeys(_TOKENS, 0))
        metered = self._metered.get(name)
        fields["saved_by_prompt_cache"] = round(metered[2], 9) if metered is not None and metered[0] else 0.0
        figures = self._token_figures(name, counts)
        if figures is not None:
            cost, saved = figures
            fields["cost"] = None if cost is None else round(cost, 9)
            fields["saved"] = None if saved is None else round(saved, 9)
        return fields

    def reset(self) -> None:
        """Set every counter back to zero (operations counted outside the policies are dropped)."""
        self._counts.clear()
        self._cost.clear()
        self._saved.clear()
        self._latency.clear()
        self._tokens.clear()
        self._metered.clear()
        for op in self._policies.operations:
            self._row(op)

    def report(self) -> str:
        """Return a readable table of the counters, with hit rates and totals."""
        return render_report(self.snapshot())

    # -- latency per layer (additive: nothing above depends on it) ---------------------------------

    def observe(self, operation: Operation | str, layer: str, seconds: float) -> None:
        """Record that one call of ``operation`` to ``layer`` took ``seconds``.

        ``layer`` is one of :data:`LATENCY_LAYERS`: ``kv_read`` (a KV read, one sample per request or bulk
        read), ``gateway`` (an upstream call the AI Gateway answered from its cache), ``provider`` (an
        upstream call a provider computed, through the gateway or direct, retries included) and
        ``kv_write``. Cheap enough for the hit path (one dict lookup and one bucket increment).

        Raises:
            ValueError: ``layer`` is not one of :data:`LATENCY_LAYERS`.
        """
        histogram = self._latency.get((operation, layer))
        if histogram is None:
            if layer not in LATENCY_LAYERS:
                raise ValueError(f"layer={layer!r}: must be one of {', '.join(LATENCY_LAYERS)}")
            self._row(operation)
            histogram = self._latency[(str(operation), layer)] = LatencyHistogram()
        histogram.add(seconds)

    def latency(self, operation: Operation | str, layer: str) -> LatencyHistogram | None:
        """The latency histogram of ``operation`` at ``layer``, ``None`` before its first sample."""
        return self._latency.get((str(operation), layer))

    def _latency_of(self, name: str) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for layer in LATENCY_LAYERS:
            histogram = self._latency.get((name, layer))
            if histogram is not None and histogram.count:
                out[layer] = histogram.summary()
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`snapshot` to ``path`` as JSON (what ``dualcache report --stats FILE`` reads).

        The file is replaced atomically (written beside it, then renamed), so a reader never sees half of it.
        """
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(target)


LATENCY_LAYERS = ("kv_read", "gateway", "provider", "kv_write")
"""The layers :meth:`Stats.observe` times, in the order a request meets them."""

_BUCKETS_PER_DOUBLING = 4  # buckets 19 % wide: a quantile is off by at most about 9 %
_BUCKET_COUNT = 25 * _BUCKETS_PER_DOUBLING + 1  # 1 µs .. 2^25 µs (33 s), the last bucket open-ended


class LatencyHistogram:
    """A fixed-size log-bucket histogram of durations: constant memory, ~1 µs a sample.

    Bucket ``i`` holds durations up to ``2 ** (i / 4)`` microseconds (the first one everything up to 1 µs,
    the last one everything from 33 s on), so a quantile is known to within one bucket (about 19 %); the
    reported value is the bucket's geometric middle (the largest sample for the last bucket), capped by the
    largest sample seen.
    """

    __slots__ = ("counts", "count", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKET_COUNT
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Record one duration in seconds (a negative or NaN one counts as 0)."""
        micros = seconds * 1e6
        if micros > 1.0:  # NaN fails this too
            index = min(math.ceil(math.log2(micros) * _BUCKETS_PER_DOUBLING), _BUCKET_COUNT - 1)
        else:
            index = 0
            seconds = max(seconds, 0.0) if seconds == seconds else 0.0
        self.counts[index] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    @staticmethod
    def upper_bound(index: int) -> float:
        """The upper bound in seconds of bucket ``index`` (``inf`` for the last one)."""
        if index >= _BUCKET_COUNT - 1:
            return math.inf
        return float(2 ** (index / _BUCKETS_PER_DOUBLING) / 1e6)

    def quantile(self, q: float) -> float | None:
        """The duration in seconds below which a share ``q`` (0..1) of the samples fall; ``None`` when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low = 0.0 if index == 0 else 2 ** ((index - 1) / _BUCKETS_PER_DOUBLING) / 1e6
                high = self.upper_bound(index)
                middle = high if index == 0 else (math.sqrt(low * high) if math.isfinite(high) else self.max)
                return min(middle, self.max)
        return self.max  # unreachable: the counts add up to self.count

    def cumulative(self, bounds: Iterable[float]) -> list[tuple[float, int]]:
        """``(bound, samples <= bound)`` for each ``bound`` in seconds, counted bucket by bucket (a bucket is
        counted under the first bound at or above its upper end), ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        seen = 0
        index = 0
        for bound in sorted(bounds):
            while index < _BUCKET_COUNT - 1 and self.upper_bound(index) <= bound * (1 + 1e-9):
                seen += self.counts[index]
                index += 1
            out.append((bound, seen))
        out.append((math.inf, self.count))
        return out

    def summary(self) -> dict[str, float | int | None]:
        """``{count, p50_ms, p99_ms, max_ms, sum_ms}``, milliseconds rounded to 1 µs."""
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {
            "count": self.count,
            "p50_ms": None if p50 is None else round(p50 * 1e3, 3),
            "p99_ms": None if p99 is None else round(p99 * 1e3, 3),
            "max_ms": round(self.max * 1e3, 3),
            "sum_ms": round(self.total * 1e3, 3),
        }


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"


def _unpriced(snapshot: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    return [name for name, c in snapshot if c.get("cost") is None and int(c["provider_calls"])]


def render_report(snapshot: Mapping[str, Mapping[str, Any]]) -> str:
    """Render a :meth:`Stats.snapshot` as a fixed-width text table.

    ``no call`` is the share of requests served without a provider call (KV, gateway, coalesced). An
    operation whose policy does not read KV shows "–" as its KV hit rate; one without a price shows its
    cost as ``unknown``, and the total says it leaves that operation out.
    """
    header = (
        f"{'operation':<24}{'requests':>9}{'KV hit':>8}{'GW hit':>8}{'coalesc':>8}"
        f"{'provider':>9}{'no call':>8}{'errors':>7}{'fail':>6}{'cost $':>10}{'saved $':>10}"
    )
    lines = [header, "-" * len(header)]
    totals = dict.fromkeys(("requests", "provider_calls", "errors", "failures", "kv_hits", "gateway_hits"), 0)
    totals["coalesced"] = 0
    cost = saved = 0.0
    for name, c in snapshot.items():
        req = int(c["requests"])
        kv_rate = _rate(int(c["kv_hits"]), req) if c.get("kv", True) else "    –"
        served = int(c["kv_hits"]) + int(c["gateway_hits"]) + int(c["coalesced"])
        lines.append(
            f"{name:<24}{req:>9}{kv_rate:>8}{_rate(int(c['gateway_hits']), req):>8}"
            f"{int(c['coalesced']):>8}{int(c['provider_calls']):>9}{_rate(served, req):>8}"
            f"{int(c['errors']):>7}{int(c['failures']):>6}"
            f"{_money(c.get('cost')):>10}{_money(c.get('saved')):>10}"
        )
        for k in totals:
            totals[k] += int(c[k])
        cost += float(c.get("cost") or 0.0)
        saved += float(c.get("saved") or 0.0)
    unpriced = _unpriced(snapshot.items())
    mark = "*" if unpriced else ""
    served_all = totals["kv_hits"] + totals["gateway_hits"] + totals["coalesced"]
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<24}{totals['requests']:>9}{'':>8}{'':>8}{totals['coalesced']:>8}{totals['provider_calls']:>9}"
        f"{_rate(served_all, totals['requests']):>8}{totals['errors']:>7}{totals['failures']:>6}"
        f"{f'{cost:.3f}{mark}':>10}{f'{saved:.3f}{mark}':>10}"
    )
    if unpriced:
        lines.append(f"* without {', '.join(unpriced)}: no price in the PriceTable, cost unknown")
    lines.extend(_render_tokens(snapshot))
    return "\n".join(lines)


def _render_tokens(snapshot: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The token table under the report: only operations whose answers reported tokens, none when no one did."""
    rows = [
        (name, c) for name, c in snapshot.items() if int(c.get("input_tokens") or 0) or int(c.get("output_tokens") or 0)
    ]
    if not rows:
        return []
    header = (
        f"{'tokens (provider)':<24}{'input':>12}{'output':>12}{'cached':>12}{'cached %':>9}{'prompt cache saved $':>22}"
    )
    lines = ["", header, "-" * len(header)]
    for name, c in rows:
        tokens_in, cached = int(c.get("input_tokens") or 0), int(c.get("cached_tokens") or 0)
        lines.append(
            f"{name:<24}{tokens_in:>12}{int(c.get('output_tokens') or 0):>12}{cached:>12}"
            f"{_rate(cached, tokens_in):>9}{float(c.get('saved_by_prompt_cache') or 0.0):>22.6f}"
        )
    return lines
