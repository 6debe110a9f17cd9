"""What observability costs on the hit path (a script, not a test: it asserts no timing).

    PYTHONPATH=runtime:. .venv/bin/python bench/bench_observe.py [--samples 200000] [--hits 20000]

Prints:

1. One latency sample, ``Stats.observe`` (the log-bucket histogram), in nanoseconds, next to ``Stats.record``
   (the counters every request already pays) and a ``time.perf_counter()`` pair (the timer around a layer).
2. The in-process hit (``embed`` on the memory backend, KV hit) in microseconds with latency recording on and,
   for comparison, with ``Stats.observe`` replaced by a no-op on that one instance.
3. One scrape of the Prometheus collector (``generate_latest``) with every operation and layer timed, when
   ``prometheus-client`` is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from dualcache import DualCache, MemoryKVBackend, Outcome, Stats


def _per_call_ns(fn: Any, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def bench_sample(n: int) -> None:
    stats = Stats()
    stats.observe("embeddings", "kv_read", 0.001)  # the histogram exists: the steady state
    observe = _per_call_ns(lambda: stats.observe("embeddings", "kv_read", 0.00042), n)
    record = _per_call_ns(lambda: stats.record("embeddings", Outcome.KV_HIT), n)
    pc = time.perf_counter
    timer = _per_call_ns(lambda: pc() - pc(), n)
    print(f"Stats.observe: {observe:.0f} ns   Stats.record: {record:.0f} ns   perf_counter pair: {timer:.0f} ns")


async def _hits(cache: DualCache, hits: int) -> float:
    await cache.embed("bench text")
    await cache.flush()
    start = time.perf_counter()
    for _ in range(hits):
        await cache.embed("bench text")
    return (time.perf_counter() - start) / hits * 1e6


def _cache() -> DualCache:
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"result": {"shape": [1, 768], "data": [[0.01] * 768]}, "success": True})

    backends: dict[Any, MemoryKVBackend] = {}
    return DualCache(
        account_id="0" * 32,
        api_token="bench",
        kv=lambda ns: backends.setdefault(ns, MemoryKVBackend()),
        transport=httpx.MockTransport(handler),
    )


async def bench_hit(hits: int) -> None:
    async with _cache() as on:
        with_latency = await _hits(on, hits)
    async with _cache() as off:
        off.stats.observe = lambda *args, **kwargs: None  # type: ignore[method-assign]
        without = await _hits(off, hits)
    print(f"in-process embed hit: {with_latency:.2f} µs with latency recording, {without:.2f} µs without")


def bench_scrape() -> None:
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        print("prometheus-client not installed: no scrape measured (pip install 'dualcache[prometheus]')")
        return
    from dualcache import register_metrics
    from dualcache._stats import LATENCY_LAYERS

    stats = Stats()
    for op in stats.snapshot():
        for layer in LATENCY_LAYERS:
            for i in range(100):
                stats.observe(op, layer, 0.0001 * (i + 1))
    registry = CollectorRegistry()
    register_metrics(stats, registry=registry)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        body = generate_latest(registry)
    print(f"one /metrics scrape: {(time.perf_counter() - start) / n * 1e3:.2f} ms, {len(body)} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--hits", type=int, default=20_000)
    args = parser.parse_args()
    bench_sample(args.samples)
    asyncio.run(bench_hit(args.hits))
    bench_scrape()


if __name__ == "__main__":
    main()
