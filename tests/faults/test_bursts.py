"""Bursts against the emulator: after a burst of distinct misses the cache is full, and no caller waited for a write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dualcache import DualCache, RetryPolicy, Timeouts

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "faults-token"
EMBED = "@cf/baai/bge-base-en-v1.5"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Any]:
    from dualcache.local import Emulator

    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path / "emulator", token=TOKEN) as emulator:
        yield emulator


class HeldKVWrites(httpx.AsyncBaseTransport):
    """Real HTTP, except that every KV write waits, before it is sent, until ``release`` is set.

    The pool has room for every request of the burst: requests queued for a connection of a shared pool, then
    timed out, wedge it (the wedge repro, tested elsewhere); this test is about writes.
    """

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self.release = asyncio.Event()
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/storage/kv/" in request.url.path:
            self.held += 1
            await self.release.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_bursts_500_distinct_misses_land_in_kv_and_no_caller_waits_for_a_write(
    emu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dualcache")
    emu.control.set_faults({"upstream": {"latency_ms": 100}})
    transport = HeldKVWrites()
    texts = [f"burst posting {i}: backend engineer, Python and Postgres" for i in range(500)]
    # kv_timeout is generous for the same reason: reads slowed by 500 concurrent model calls are not this test's
    # concern (separate pools and budgets per layer are another change).
    async with DualCache.from_outputs(
        emu.outputs,
        api_token=TOKEN,
        transport=transport,
        kv_timeout=30.0,
        # The gateway budget too: a loaded CI machine can take more than 10 s to serve 500 model calls, and a
        # gateway attempt abandoned for the direct route would be a second upstream call; budgets are tested
        # in test_faults.py.
        timeouts=Timeouts(kv_read=30.0, kv_write=120.0, gateway=120.0, provider=120.0),
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=1.0, total_timeout=60.0),
    ) as cache:
        # Every KV write is held until the burst is over: a caller that waited for one would never return.
        async with asyncio.timeout(120):
            vectors = await asyncio.gather(*(cache.embed(t) for t in texts))
        assert len(vectors) == 500 and all(len(v) == 768 for v in vectors)
        during = emu.control.stats()
        assert (during["kv"]["put"], during["kv"]["bulk_write"]) == (0, 0)  # every answer served before any write
        assert during["upstream"] == {EMBED: 500}
        assert transport.held >= 1
        transport.release.set()
        assert await cache.flush(timeout=60) == 0
        stored = [k.name async for k in cache.kv("EMBEDDINGS_CACHE").list_keys(prefix="embed:")]
        snap = cache.stats.snapshot()["embeddings"]
    assert len(stored) >= 495  # the goal: >= 99 % of the burst in KV afterwards
    assert len(stored) == 500  # and with KV healthy, all of it
    # A fault absorbed by a retry is still a fault (counted in errors); on a loaded machine a model call can meet one
    # (a connection closed under it). Every error must be such a retried attempt, logged, and no caller failed.
    retried = [r.getMessage() for r in caplog.records if "failed" in r.msg and "retrying" in r.msg]
    assert (snap["provider_calls"], snap["failures"], snap["kv_write_dropped"]) == (500, 0, 0)
    assert snap["errors"] == len(retried), (snap["errors"], retried)
    after = emu.control.stats()
    assert 5 <= after["kv"]["bulk_write"] + after["kv"]["put"] <= 500  # batched: at most 100 keys a write
    assert after["kv"]["bulk_write"] >= 1
