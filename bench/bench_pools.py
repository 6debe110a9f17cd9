"""Hits over HTTP as callers grow: per-layer pools and admission under concurrency (a script, not a test).

    .venv/bin/python bench/bench_pools.py [--hits N]

Against ``python -m dualcache.local dev`` in a subprocess (see ``bench_outage.py``), with default budgets,
pools and breakers: 1,000 embeddings are stored, then ``embed`` hits them from 1, 10, 100 and 1,000
concurrent callers (about ``--hits`` hits per row). Printed per row: hits per second, p50/p99 latency of a
call, model calls the emulator made (cached keys must reach no provider), KV reads that became misses
(errors + skips), and the peak of requests in flight at the KV pool's gate. Last, the hit next to its
floor: one raw ``GET`` of the same value through the same KV client, sequentially.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_outage import TOKEN, subprocess_emulator  # noqa: E402

from dualcache import DualCache  # noqa: E402
from dualcache._keys import embed_key  # noqa: E402
from dualcache._transport import admission_of  # noqa: E402

TEXTS = [f"cached job posting {i}: senior backend engineer, Python and Go" for i in range(1000)]


async def run(emu: Any, hits: int) -> None:
    async with DualCache.from_outputs(emu.outputs, api_token=TOKEN) as cache:
        await cache.embed_many(TEXTS)
        gate = admission_of(cache._kv_http)
        assert gate is not None
        head = f"{'callers':>8}{'hits/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'model calls':>13}{'KV misses':>11}"
        print(f"{head}{'gate peak':>11}")
        for callers in (1, 10, 100, 1000):
            emu.control.reset()
            cache.stats.reset()
            gate.peak = 0
            per = max(1, hits // callers)
            latencies: list[float] = []

            async def caller(
                c: int, per: int = per, callers: int = callers, latencies: list[float] = latencies
            ) -> None:
                for i in range(per):
                    t0 = time.perf_counter()
                    await cache.embed(TEXTS[(c + i * callers) % len(TEXTS)])  # distinct keys in flight
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(caller(c) for c in range(callers)))
            elapsed = time.perf_counter() - started
            latencies.sort()
            snap = cache.stats.snapshot()["embeddings"]
            print(
                f"{callers:>8}{len(latencies) / elapsed:>10.0f}{statistics.median(latencies) * 1000:>9.1f}"
                f"{latencies[int(len(latencies) * 0.99)] * 1000:>9.1f}"
                f"{sum(emu.control.stats()['upstream'].values()):>13}"
                f"{snap['errors'] + snap['kv_skipped']:>11}{gate.peak:>11}",
                flush=True,
            )
        store = cache.kv("EMBEDDINGS_CACHE")
        backend: Any = store.backend
        url = f"{backend._base}/values/{embed_key(TEXTS[0])}"
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            (await cache._kv_http.get(url, headers=backend._headers)).raise_for_status()
        floor = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            await cache.embed(TEXTS[0])
        hit = (time.perf_counter() - t0) / n
        print(f"hit {hit * 1e6:.0f} µs vs raw GET floor {floor * 1e6:.0f} µs: {hit / floor:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=2000, help="hits per row (default 2000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, subprocess_emulator(Path(tmp)) as emu:
        asyncio.run(run(emu, args.hits))


if __name__ == "__main__":
    main()
