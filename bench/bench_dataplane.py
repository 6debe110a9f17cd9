"""KV through the data-plane Worker: what it costs and what it saves, measured side by side in one run.

    PYTHONPATH=runtime:. .venv/bin/python bench/bench_dataplane.py [--scale 1.0] [--callers 1,10,100,1000]
        [--hits 2000] [--samples 1000] [--no-workerd]

A script, not a test: it prints figures and asserts none. Prints:

1. Cloudflare API requests per 1,000 demo requests with KV over the REST API and over the data plane (goal
   0), and data-plane requests per 1,000: the demo's own workload (``dualcache demo``) replayed both ways by
   the demo's own functions, against the in-process emulator.
2. An ``embed`` hit through the data plane against one raw GET of the same value from the same server with the
   same client (the cache's own KV client; goal <= 1.10x): against the emulator (``dualcache dev``, in its own
   process) and against the real data-plane Worker in workerd (skipped, with a note, when
   ``infra/worker/node_modules`` is missing).
3. Hits per second and p50/p99 at 1, 10, 100 and 1,000 concurrent callers through the data plane, with the
   provider calls made at each N (goal 0: every key is cached), the KV reads that became misses (errors,
   skips at the KV pool's gate) and the peak of KV requests in flight at that gate, on both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import benchkit

import dualcache
from dualcache._demo import kv_requests, run_demo


def demo_requests(scale: float, seed: int) -> None:
    print(f"1. The demo's workload (seed {seed}, 1 day, scale {scale}), replayed with KV over each path")
    print(
        f"  {'KV path':<12} {'demo requests':>14} {'CF API req':>11} {'of which KV':>12} {'data-plane req':>15} "
        f"{'CF API / 1,000':>15} {'data plane / 1,000':>19}"
    )
    for kv in ("rest", "dataplane"):
        result = run_demo(seed=seed, days=1, project_dir=benchkit.PROJECT_DIR, scale=scale, kv=kv)
        served = sum(result.planned.values())
        surfaces, by_path = result.emulator["surfaces"], kv_requests(result.emulator)
        print(
            f"  {kv:<12} {served:>14,} {surfaces['api']:>11,} {by_path['rest']:>12,} {surfaces['data_plane']:>15,} "
            f"{1000 * surfaces['api'] / served:>15.0f} {1000 * surfaces['data_plane'] / served:>19.0f}"
        )
    print("  goal: 0 Cloudflare API requests per 1,000 with the data plane (AI calls go to the gateway)\n")


async def over_data_plane(
    server: benchkit.Server, callers: list[int], hits: int, samples: int, keys: int
) -> list[benchkit.HitsRow]:
    items = benchkit.texts(keys)
    records = await benchkit.seed_records(items)
    async with benchkit.data_plane_cache(server, records) as cache:
        assert cache.outputs is not None and cache.outputs.data_plane_url is not None
        floor = await benchkit.hit_vs_floor(
            cache, items[0], cache.outputs.data_plane_url, server.data_plane_token, samples
        )
        rows = await benchkit.scaling(cache, items, callers, hits)
    benchkit.print_floor(f"2. {server.name}", floor)
    benchkit.print_hits_table(f"3. {server.name}: {keys} cached keys, every call a KV hit", rows)
    print()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the demo's daily volume (default 1.0)")
    parser.add_argument("--seed", type=int, default=7, help="the demo's workload seed (default 7, as `dualcache demo`)")
    parser.add_argument("--callers", default="1,10,100,1000", help="concurrent callers, comma-separated")
    parser.add_argument("--hits", type=int, default=2000, help="hits per N (at least N)")
    parser.add_argument("--samples", type=int, default=1000, help="interleaved hit / raw GET / KV client rounds")
    parser.add_argument("--keys", type=int, default=1000, help="cached keys the callers hit")
    parser.add_argument("--no-workerd", action="store_true", help="skip the real Worker in workerd")
    args = parser.parse_args()
    callers = [int(n) for n in args.callers.split(",")]
    benchkit.quiet_logs()
    print(f"dualcache data-plane benchmarks (python {sys.version.split()[0]}, dualcache from {dualcache.__file__})\n")
    demo_requests(args.scale, args.seed)
    tables: list[tuple[str, list[benchkit.HitsRow]]] = []
    with benchkit.servers(no_workerd=args.no_workerd) as found:
        for server in found:
            tables.append(
                (server.name, asyncio.run(over_data_plane(server, callers, args.hits, args.samples, args.keys)))
            )
    print("3. side by side")
    benchkit.print_side_by_side(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
