"""Benchmarks of the dualcache runtime, measured side by side in one run (a script, not a test).

    .venv/bin/python bench/bench_runtime.py [--iterations N]

Prints:
1. the hit-path cost of ``cache.embed`` over the local emulator, relative to one raw KV GET of the same key;
2. the in-process cost of an ``embed`` hit on the memory backend, in microseconds, next to a dict lookup;
3. HTTP round trips and texts sent upstream for ``embed_many`` of 100 texts with 50 cached (and of the
   102-text batch with two duplicates the issue measured LiteLLM with);
4. upstream calls for 50 concurrent identical misses, single-flight on and off.

The peer figures printed for comparison are the issue's measurements of LiteLLM 1.110.2 (in-memory cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx

from dualcache import DualCache, MemoryKVBackend, Namespace, StackOutputs
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


async def hit_path_ratio(emu: Any, iterations: int) -> None:
    print("1. Hit path over the emulator: cache.embed (KV hit) vs one raw KV GET of the same key")
    text = "Senior Python engineer, remote, Kubernetes and PostgreSQL"
    async with DualCache.from_outputs(emu.outputs, api_token=TOKEN) as cache:
        await cache.embed(text)
        key = "embed:" + __import__("hashlib").sha256(text.encode()).hexdigest()
        url = (
            f"{emu.outputs.api_base_url}/accounts/{emu.outputs.account_id}/storage/kv/namespaces/"
            f"{emu.outputs.namespace_id(Namespace.EMBEDDINGS_CACHE)}/values/{key}"
        )
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as raw:
            assert (await raw.get(url)).status_code == 200
            embed_times, get_times = [], []
            for _ in range(iterations):  # interleaved, so drift hits both alike
                t0 = time.perf_counter()
                await cache.embed(text)
                t1 = time.perf_counter()
                await raw.get(url)
                t2 = time.perf_counter()
                embed_times.append(t1 - t0)
                get_times.append(t2 - t1)
        snap = cache.stats.snapshot()["embeddings"]
    e, g = statistics.median(embed_times), statistics.median(get_times)
    _row("median cache.embed hit (1 KV GET + decode + checks)", f"{e * 1e6:,.0f} µs")
    _row("median raw httpx KV GET of the same key", f"{g * 1e6:,.0f} µs")
    _row("ratio embed hit / raw GET", f"{e / g:.2f}x")
    _row("upstream calls during the loop", str(snap["provider_calls"] - 1))
    print()


def _fake_cloud(dims: int = 768) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        data = [[(i * 31 + j) % 97 / 97 for j in range(dims)] for i, _ in enumerate(texts)]
        return httpx.Response(200, json={"result": {"shape": [len(texts), dims], "data": data}, "success": True})

    return httpx.MockTransport(handler)


async def memory_hit(iterations: int) -> None:
    print("2. In-process embed hit on the memory backend (768-dim vector), vs a plain dict lookup")
    outputs = StackOutputs(
        stack="bench",
        account_id="0" * 32,
        gateway_id="gw",
        namespaces={n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},
        worker_name="w",
    )
    results: dict[str, float] = {}
    for memo in (256, 0):
        cache = DualCache.from_outputs(
            outputs, api_token="t", kv=lambda ns: MemoryKVBackend(), transport=_fake_cloud(), decode_memo_size=memo
        )
        async with cache:
            text = "a job description " * 20
            await cache.embed(text)
            for _ in range(200):
                await cache.embed(text)
            n = iterations
            t0 = time.perf_counter()
            for _ in range(n):
                await cache.embed(text)
            results[str(memo)] = (time.perf_counter() - t0) / n
    d = {"embed:" + "0" * 64: [0.1] * 768}
    k = "embed:" + "0" * 64
    lookup = min(timeit.repeat(lambda: d[k], number=100_000, repeat=5)) / 100_000
    _row(
        "cache.embed hit (await, KV front, record check, copy)", f"{results['256'] * 1e6:,.1f} µs", "LiteLLM ~3,000 µs"
    )
    _row("same, decode memo off (json.loads of the record each hit)", f"{results['0'] * 1e6:,.1f} µs")
    _row("plain dict lookup", f"{lookup * 1e6:,.3f} µs")
    print()


async def batch(emu: Any) -> None:
    print("3. embed_many: HTTP round trips and texts sent upstream")
    for label, build in (
        ("100 texts, 50 cached", lambda t: t[:100]),
        ("102 texts (50 cached, 2 repeats)", lambda t: t[:100] + [t[61], t[63]]),
    ):
        texts = [f"{label}: job posting {i}" for i in range(100)]
        transport = CountingTransport()
        async with DualCache.from_outputs(emu.outputs, api_token=TOKEN, transport=transport) as cache:
            await cache.embed_many(texts[::2])  # 50 cached
            transport.reset()
            vectors = await cache.embed_many(build(texts))
            assert len(vectors) == len(build(texts))
        peer = "LiteLLM: 51 texts" if "102" in label else ""
        _row(f"{label}: HTTP round trips", str(transport.requests))
        _row(f"{label}: upstream calls / texts sent", f"{transport.embed_calls} / {transport.texts_sent}", peer)
    print()


async def stampede(emu: Any) -> None:
    print("4. 50 concurrent identical misses: requests sent upstream (to the gateway)")
    # A real model takes hundreds of milliseconds; the local one answers at once, which would let the
    # emulator's gateway cache (volatile, no coalescing, like the real one) serve requests that arrive
    # after the first answer. 200 ms of model latency makes the 50 misses overlap as they would for real.
    emu.control.set_faults({"upstream": {"latency_ms": 200}})
    for enabled in (True, False):
        emu.control.reset()
        transport = CountingTransport()
        async with DualCache.from_outputs(
            emu.outputs, api_token=TOKEN, single_flight=enabled, transport=transport
        ) as cache:
            await asyncio.gather(*(cache.embed(f"stampede text, single-flight {enabled}") for _ in range(50)))
        stats = emu.control.stats()
        peer = "LiteLLM: 50" if not enabled else ""
        _row(
            f"single-flight {'on ' if enabled else 'off'}: upstream requests / KV writes",
            f"{transport.embed_calls} / {stats['kv']['put']}",
            peer,
        )
        _row(
            "   of which the model answered (200 ms model latency)",
            str(stats["upstream"].get(EMBED, 0)),
        )
    emu.control.clear_faults()
    print()


async def main_async(iterations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=Path(tmp), token=TOKEN) as emu:
            await hit_path_ratio(emu, max(50, iterations // 20))
            await memory_hit(iterations)
            await batch(emu)
            await stampede(emu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="iterations of the in-process hit loop")
    args = parser.parse_args()
    print(f"dualcache runtime benchmarks (python {sys.version.split()[0]})\n")
    asyncio.run(main_async(args.iterations))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
