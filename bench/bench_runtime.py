"""Batching, coalescing and the in-process hit of the dualcache runtime, side by side in one run (a script, not a test).

    PYTHONPATH=runtime:. .venv/bin/python bench/bench_runtime.py [--hits-only] [--compare OTHER/runtime]

KV goes through the emulator's data plane, as in production. Prints:
1. HTTP round trips and texts sent upstream for ``embed_many`` of 100 texts with 50 cached (and of the
   102-text batch with two duplicates that LiteLLM was measured with);
2. upstream calls for 50 concurrent identical misses, single-flight on and off;
3. the in-process hit on the memory backend, CPU µs per sequential hit of a warm key (goal <= 15 µs):
   ``embed``, ``analyze_job``, ``detect_spam``, next to the memory backend's own ``get`` and a dict lookup; with
   ``--compare``, the same figures of another tree (its ``runtime/`` folder, run in a fresh interpreter) in a
   column beside them. ``--hits-only`` prints this section alone (no emulator).

The peer figures printed for comparison are earlier measurements of LiteLLM 1.110.2 (in-memory cache).
Hits at N callers and the hit against a raw GET are measured by bench/bench_scale.py and
bench/bench_dataplane.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from dualcache import DualCache
from dualcache.local import Emulator

PROJECT_DIR = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
EMBED = "@cf/baai/bge-base-en-v1.5"


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the HTTP requests sent, and the texts sent to the embedding model."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0
        self.embed_calls = 0
        self.texts_sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if request.url.path.endswith(EMBED):
            body = json.loads(request.content)
            self.embed_calls += 1
            self.texts_sent += len(body["text"]) if isinstance(body["text"], list) else 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def reset(self) -> None:
        self.requests = self.embed_calls = self.texts_sent = 0


def _row(label: str, ours: str, peer: str = "") -> None:
    print(f"  {label:<58} {ours:>18}   {peer}")


async def batch(emu: Any) -> None:
    print("1. embed_many: HTTP round trips and texts sent upstream")
    for label, build in (
        ("100 texts, 50 cached", lambda t: t[:100]),
        ("102 texts (50 cached, 2 repeats)", lambda t: t[:100] + [t[61], t[63]]),
    ):
        texts = [f"{label}: job posting {i}" for i in range(100)]
        transport = CountingTransport()
        async with DualCache.from_outputs(
            emu.outputs, api_token=TOKEN, data_plane_token=emu.data_plane_token, transport=transport
        ) as cache:
            await cache.embed_many(texts[::2])  # 50 cached
            await cache.flush()  # the records land before the measured call
            transport.reset()
            vectors = await cache.embed_many(build(texts))
            assert len(vectors) == len(build(texts))
        peer = "LiteLLM: 51 texts" if "102" in label else ""
        _row(f"{label}: HTTP round trips", str(transport.requests))
        _row(f"{label}: upstream calls / texts sent", f"{transport.embed_calls} / {transport.texts_sent}", peer)
    print()


def _kv_writes(stats: dict[str, Any]) -> int:
    """Keys written through the data plane (single puts and bulk writes alike count their requests)."""
    plane = stats["data_plane"]
    return int(plane["put"]) + int(plane["bulk_write"])


async def stampede(emu: Any) -> None:
    print("2. 50 concurrent identical misses: requests sent upstream (to the gateway), and KV write requests")
    # A real model takes hundreds of milliseconds; the local one answers at once, which would let the
    # emulator's gateway cache (volatile, no coalescing, like the real one) serve requests that arrive
    # after the first answer. 200 ms of model latency makes the 50 misses overlap as they would for real.
    emu.control.set_faults({"upstream": {"latency_ms": 200}})
    for enabled in (True, False):
        emu.control.reset()
        transport = CountingTransport()
        async with DualCache.from_outputs(
            emu.outputs,
            api_token=TOKEN,
            data_plane_token=emu.data_plane_token,
            single_flight=enabled,
            transport=transport,
        ) as cache:
            await asyncio.gather(*(cache.embed(f"stampede text, single-flight {enabled}") for _ in range(50)))
        stats = emu.control.stats()
        peer = "LiteLLM: 50" if not enabled else ""
        _row(
            f"single-flight {'on ' if enabled else 'off'}: upstream requests / KV write requests",
            f"{transport.embed_calls} / {_kv_writes(stats)}",
            peer,
        )
        _row(
            "   of which the model answered (200 ms model latency)",
            str(stats["upstream"].get(EMBED, 0)),
        )
    emu.control.clear_faults()
    print()


async def _loop_us(call: Callable[[], Awaitable[Any]], n: int, runs: int) -> float:
    """CPU µs per call over ``n`` sequential calls, best of ``runs`` blocks (CPU time: the machine is shared, and
    every call here is served in process, so its CPU time is its cost)."""
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        for _ in range(n):
            await call()
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


async def hit_figures(n: int, runs: int) -> dict[str, float]:
    """µs per in-process hit of a warm key (memory backend), and the floors beside them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchkit

    from dualcache import Namespace

    messages = [{"role": "user", "content": "Analyze this job for me"}]
    text = benchkit.texts(1)[0]
    cache, backends = benchkit.memory_cache()
    async with cache:
        await cache.embed(text)
        await cache.analyze_job(user_id="u", job_id="j", messages=messages)
        await cache.detect_spam(job_id="j", messages=messages)
        await benchkit.settle(cache)
        for _ in range(200):  # code paths warm
            await cache.embed(text)
        before = cache.stats.snapshot()
        out = {
            "embed": await _loop_us(lambda: cache.embed(text), n, runs),
            "analyze_job": await _loop_us(
                lambda: cache.analyze_job(user_id="u", job_id="j", messages=messages), n, runs
            ),
            "detect_spam": await _loop_us(lambda: cache.detect_spam(job_id="j", messages=messages), n, runs),
        }
        after = cache.stats.snapshot()
        backend, key = backends[Namespace.EMBEDDINGS_CACHE], benchkit.embed_key_of(text, cache)
        out["memory backend get (the floor)"] = await _loop_us(lambda: backend.get(key), n, runs)
    table = {"k": 1}
    out["dict lookup"] = min(timeit.repeat(lambda: table.get("k"), number=100_000, repeat=5)) / 100_000 * 1e6
    hits = sum(after[op]["kv_hits"] - before[op]["kv_hits"] for op in ("embeddings", "job_analysis", "spam_detection"))
    calls = sum(after[op]["provider_calls"] - before[op]["provider_calls"] for op in after)
    if hits != 3 * n * runs or calls:
        print(f"  note: {hits} KV hits and {calls} provider calls while measuring, expected {3 * n * runs} and 0")
    return out


def _other_tree_figures(runtime: str, n: int, runs: int) -> dict[str, float]:
    """:func:`hit_figures` of the dualcache in ``runtime`` (a tree's ``runtime/`` folder), in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(runtime).resolve()), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, __file__, "--hit-json", "--loop", str(n)], capture_output=True, text=True, env=env, check=True
    )
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def hits(n: int, compare: str | None) -> None:
    import dualcache

    print("3. In-process hit of a warm key, memory backend (CPU µs per sequential hit, best of 5 blocks)")
    ours = asyncio.run(hit_figures(n, 5))
    other = _other_tree_figures(compare, n, 5) if compare else None
    here = str(Path(dualcache.__file__).parents[1])
    header = f"  {'':<34} {'this tree':>12}"
    if other is not None:
        header += f" {'compared':>12} {'ratio':>7}"
    print(header + f"   (this tree: {here}" + (f"; compared: {compare})" if compare else ")"))
    for label, us in ours.items():
        row = f"  {label:<34} {us:>9.2f} µs"
        if other is not None and label in other:
            row += f" {other[label]:>9.2f} µs {other[label] / us:>6.2f}x"
        print(row + ("   (goal <= 15 µs)" if label == "embed" else ""))
    print()


async def main_async() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=Path(tmp), token=TOKEN) as emu:
            await batch(emu)
            await stampede(emu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits-only", action="store_true", help="only the in-process hit (no emulator)")
    parser.add_argument("--compare", metavar="RUNTIME_DIR", help="another tree's runtime/ folder, measured beside")
    parser.add_argument("--loop", type=int, default=20_000, help="sequential hits per block")
    parser.add_argument("--hit-json", action="store_true", help=argparse.SUPPRESS)  # --compare's child process
    args = parser.parse_args()
    if args.hit_json:
        print(json.dumps(asyncio.run(hit_figures(args.loop, 5))))
        return 0
    print(f"dualcache runtime benchmarks (python {sys.version.split()[0]})\n")
    if not args.hits_only:
        asyncio.run(main_async())
    hits(args.loop, args.compare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
