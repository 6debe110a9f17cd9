"""Batching and coalescing of the dualcache runtime, measured side by side in one run (a script, not a test).

    PYTHONPATH=runtime:. .venv/bin/python bench/bench_runtime.py

KV goes through the emulator's data plane, as in production. Prints:
1. HTTP round trips and texts sent upstream for ``embed_many`` of 100 texts with 50 cached (and of the
   102-text batch with two duplicates that LiteLLM was measured with);
2. upstream calls for 50 concurrent identical misses, single-flight on and off.

The peer figures printed for comparison are earlier measurements of LiteLLM 1.110.2 (in-memory cache).
The hit path (µs per hit, hits at N callers, the hit against a raw GET) is measured by bench/bench_scale.py
and bench/bench_dataplane.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
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


async def main_async() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=Path(tmp), token=TOKEN) as emu:
            await batch(emu)
            await stampede(emu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    print(f"dualcache runtime benchmarks (python {sys.version.split()[0]})\n")
    asyncio.run(main_async())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
