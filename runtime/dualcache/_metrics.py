"""Prometheus metrics of a :class:`~dualcache.DualCache`, read from its stats at scrape time.

:class:`PrometheusCollector` is a custom collector (``prometheus_client``, the ``prometheus`` extra): it
keeps no counters of its own, so nothing is counted twice; each scrape turns
:meth:`~dualcache.Stats.snapshot` and the latency histograms into metric families. The labels are
``operation`` and ``layer`` only: never a user id, a key or a model (no unbounded label values).

=========================================  ================  =====================================================
Metric                                     Labels            Meaning
=========================================  ================  =====================================================
``dualcache_requests_total``               operation         requests served or failed
``dualcache_hits_total``                   operation, layer  served from ``kv`` or the ``gateway``'s cache
``dualcache_coalesced_total``              operation         joined an identical request in flight
``dualcache_provider_calls_total``         operation         answers a provider computed
``dualcache_failures_total``               operation         requests that failed outright
``dualcache_errors_total``                 operation         faults met (absorbed ones included)
``dualcache_skips_total``                  operation, layer  calls to ``kv``, ``gateway``, ``provider`` not sent
``dualcache_kv_writes_dropped_total``      operation         KV writes the write-behind queue dropped
``dualcache_upstream_requests_total``      operation         HTTP requests to the gateway or a provider
``dualcache_cost_dollars_total``           operation         what provider calls cost (priced operations only)
``dualcache_saved_dollars_total``          operation         what hits and coalesced requests saved
``dualcache_latency_seconds``              operation, layer  histogram per ``kv_read``, ``gateway``, ``provider``,
                                                             ``kv_write`` (buckets at powers of 4 µs, 1 µs..17 s)
=========================================  ================  =====================================================

A counter falls back to zero when the stats are reset (:meth:`~dualcache.Stats.reset`), which Prometheus'
``rate()`` reads as a counter reset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualcache._cache import DualCache
    from dualcache._stats import Stats

__all__ = ["LATENCY_BUCKETS", "PrometheusCollector", "register_metrics"]

LATENCY_BUCKETS: tuple[float, ...] = tuple(4**k / 1e6 for k in range(13))
"""Upper bounds (seconds) of the latency histogram's buckets: 1 µs, 4 µs, ... 16.8 s (and ``+Inf``)."""

_SNAPSHOT_TRIES = 5


def _require_prometheus() -> Any:
    try:
        import prometheus_client.core
        from prometheus_client.utils import floatToGoString
    except ImportError as exc:
        raise ImportError("Prometheus metrics need prometheus-client: pip install 'dualcache[prometheus]'") from exc
    return SimpleNamespace(
        CounterMetricFamily=prometheus_client.core.CounterMetricFamily,
        HistogramMetricFamily=prometheus_client.core.HistogramMetricFamily,
        REGISTRY=prometheus_client.core.REGISTRY,
        floatToGoString=floatToGoString,
    )


class PrometheusCollector:
    """A ``prometheus_client`` collector of a cache's stats (see the module docstring for the metrics).

    Args:
        source: A :class:`~dualcache.DualCache` (its ``stats``) or a :class:`~dualcache.Stats`.
        namespace: The metric names' prefix.

    Raises:
        ImportError: ``prometheus-client`` is not installed (the ``prometheus`` extra).
    """

    def __init__(self, source: DualCache | Stats, *, namespace: str = "dualcache") -> None:
        from dualcache._stats import Stats

        self._core = _require_prometheus()
        self._go_float: Callable[[float], str] = self._core.floatToGoString
        self._stats: Stats = source if isinstance(source, Stats) else source.stats
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"PrometheusCollector({self._stats!r})"

    def _snapshot(self) -> dict[str, dict[str, Any]]:
        # A scrape may run on another thread (prometheus_client.start_http_server) while the event loop adds an
        # operation's row: the copy is then retried. On the loop's own thread (an ASGI /metrics route) it never is.
        for _ in range(_SNAPSHOT_TRIES - 1):
            try:
                return self._stats.snapshot()
            except RuntimeError:
                continue
        return self._stats.snapshot()

    def describe(self) -> list[Any]:
        """No metrics up front: the registry then calls :meth:`collect` only at scrape time."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of the current stats."""
        from dualcache._stats import LATENCY_LAYERS

        core = self._core
        ns = self.namespace
        snapshot = self._snapshot()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("operation",)) -> Any:
            return core.CounterMetricFamily(f"{ns}_{name}", doc, labels=list(labels))

        requests = counter("requests", "Requests per operation (served or failed).")
        hits = counter("hits", "Requests served from a cache layer (kv, gateway).", ("operation", "layer"))
        coalesced = counter("coalesced", "Requests that joined an identical request in flight.")
        provider = counter("provider_calls", "Answers a provider computed.")
        failures = counter("failures", "Requests that failed outright.")
        errors = counter("errors", "Faults met, absorbed ones included.")
        skips = counter(
            "skips", "Calls to a layer not sent (blocked, budget spent, circuit open).", ("operation", "layer")
        )
        dropped = counter("kv_writes_dropped", "KV writes the write-behind queue dropped.")
        upstream = counter("upstream_requests", "HTTP requests sent to the gateway or a provider.")
        cost = counter("cost_dollars", "US dollars the provider calls cost (priced operations only).")
        saved = counter("saved_dollars", "US dollars the hits and coalesced requests saved (priced operations only).")
        latency = core.HistogramMetricFamily(
            f"{ns}_latency_seconds",
            "Seconds per call to a layer (kv_read, gateway, provider, kv_write).",
            labels=["operation", "layer"],
        )
        for op, c in snapshot.items():
            requests.add_metric([op], c["requests"])
            hits.add_metric([op, "kv"], c["kv_hits"])
            hits.add_metric([op, "gateway"], c["gateway_hits"])
            coalesced.add_metric([op], c["coalesced"])
            provider.add_metric([op], c["provider_calls"])
            failures.add_metric([op], c["failures"])
            errors.add_metric([op], c["errors"])
            for layer in ("kv", "gateway", "provider"):
                skips.add_metric([op, layer], c[f"{layer}_skipped"])
            dropped.add_metric([op], c["kv_write_dropped"])
            upstream.add_metric([op], c["upstream_requests"])
            if c.get("cost") is not None:
                cost.add_metric([op], c["cost"])
                saved.add_metric([op], c["saved"])
            for layer in LATENCY_LAYERS:
                histogram = self._stats.latency(op, layer)
                if histogram is None or not histogram.count:
                    continue
                cumulative = histogram.cumulative(LATENCY_BUCKETS)
                buckets = [("+Inf" if math.isinf(b) else self._go_float(b), n) for b, n in cumulative]
                latency.add_metric([op, layer], buckets, histogram.total)
        yield from (requests, hits, coalesced, provider, failures, errors, skips, dropped, upstream, cost, saved)
        yield latency


def register_metrics(source: DualCache | Stats, *, registry: Any = None, namespace: str = "dualcache") -> Any:
    """Register a :class:`PrometheusCollector` of ``source`` with ``registry`` (default: the global
    ``prometheus_client.REGISTRY``); return the collector (``registry.unregister(collector)`` removes it).

    Raises:
        ImportError: ``prometheus-client`` is not installed (the ``prometheus`` extra).
    """
    collector = PrometheusCollector(source, namespace=namespace)
    if registry is None:
        registry = collector._core.REGISTRY
    registry.register(collector)
    return collector
