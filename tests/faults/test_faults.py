"""The fault suite: the public API against the emulator's fault controls, asserting counts, not timings."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from faults_support import TOKEN

from dualcache import (
    BackendError,
    BreakerPolicy,
    DualCache,
    RetryPolicy,
    Timeouts,
)

EMBED = "@cf/baai/bge-base-en-v1.5"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
MSGS = [{"role": "user", "content": "Rate this job for a senior Python engineer"}]
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=2.0, total_timeout=10.0)


class FakeMonotonic:
    """A monotonic clock moved by hand (the breakers' cool-downs)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(emu: Any, **kwargs: Any) -> DualCache:
    """A cache on the production path: KV through the emulator's data plane (the REST API's request budget
    would turn a burst of 1,100 reads into skips, which is not what these tests are about)."""
    kwargs.setdefault("retry", FAST_RETRY)
    return DualCache.from_outputs(
        emu.outputs, api_token=TOKEN, data_plane_token=emu.data_plane_token, openai_api_key="sk-local", **kwargs
    )


def stuck_connections(client: httpx.AsyncClient) -> list[str]:
    """Connections of a client's pool that are neither usable nor closed (httpcore's ``CONNECTING`` leak)."""
    transport = client._transport.inner  # type: ignore[attr-defined]
    if transport is None:
        return []
    return [repr(c) for c in transport._pool.connections if "CONNECTING" in repr(c)]


async def test_dualcache_no_wedge_after_bursts_against_slow_kv(emu: Any) -> None:
    # The wedge repro: 4 bursts of 150 KV reads while KV answers in 1.5 s, then 500, then a healthy KV
    # (which wedged the whole DualCache before: stuck pool connections). The breaker is off so that every
    # burst reaches the pool.
    timeouts = Timeouts(kv_read=1.0, kv_write=1.0, kv_queue=0.5)
    async with make_cache(emu, timeouts=timeouts, breaker=BreakerPolicy(enabled=False)) as cache:
        await cache.embed("warm text")
        assert await cache.flush() == 0  # its record is in KV before the outage (writes are queued)
        store = cache.kv("EMBEDDINGS_CACHE")
        emu.control.set_faults({"kv": {"latency_ms": 1500}})
        for burst, size in enumerate((150, 150, 150, 150, 500)):
            reads = await asyncio.gather(
                *(store.get(f"embed:{burst:02d}{i:062x}") for i in range(size)), return_exceptions=True
            )
            assert len(reads) == size
            assert all(isinstance(r, BackendError) for r in reads)  # each one answered: a miss, never a hang
        emu.control.clear_faults()
        # The reads abandoned at their deadline end on their own (httpx timeouts); until then they hold places at
        # the pool, and a read queued behind them past kv_queue is a skip. Recovery is the point: the gates empty
        # and nothing is wedged. (On a loaded machine the drain took longer than kv_queue, and a hit became a skip.)
        clients = (cache._kv_http, cache._gateway_http, cache._provider_http)
        async with asyncio.timeout(10):
            while len(store._abandoner) or any(c._transport.admission.in_flight for c in clients):  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
        hits = cache.stats.snapshot()["embeddings"]["kv_hits"]
        assert await cache.embed("warm text") == await cache.embed("warm text")
        assert cache.stats.snapshot()["embeddings"]["kv_hits"] == hits + 2
        # Small enough for a loaded 2-core machine (emulator and client share one process): no read may fail.
        vectors = await asyncio.gather(*(cache.embed(f"after the outage {i}") for i in range(10)))
        assert all(len(v) == 768 for v in vectors)
        assert await asyncio.gather(*(store.get(f"embed:{i:064x}") for i in range(20))) == [None] * 20
        assert cache.stats.snapshot()["embeddings"]["errors"] == 0  # the calls after the outage met no KV error
        # What was abandoned ends on its own (httpx timeouts); the gates empty and no connection is stuck.
        # The write-behind queue's background writes hold gate places too: let them finish first.
        assert await cache.flush() == 0
        async with asyncio.timeout(10):
            while len(store._abandoner) or any(c._transport.admission.in_flight for c in clients):  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
        for client in clients:
            assert stuck_connections(client) == []


async def test_dualcache_hanging_gateway_left_for_direct_within_budget(emu: Any) -> None:
    emu.control.set_faults({"gateway": {"timeout": True}})
    async with make_cache(emu, timeouts=Timeouts(gateway=0.3)) as cache:
        analysis = await cache.analyze_job(user_id="u1", job_id="j1", messages=MSGS)
        assert analysis["model"] == LLAMA
        assert len(await cache.embed("hanging gateway")) == 768
        snap = cache.stats.snapshot()
    stats = emu.control.stats()
    # One gateway attempt per call: the budget was spent on it, so no retry; then the direct route.
    assert stats["faults"]["gateway"] == 2
    assert stats["direct"] == {LLAMA: 1, EMBED: 1}
    for op in ("job_analysis", "embeddings"):
        assert (snap[op]["upstream_requests"], snap[op]["provider_calls"], snap[op]["failures"]) == (2, 1, 0)


def test_timeouts_default_gateway_budget_fits_a_web_request() -> None:
    assert Timeouts().gateway <= 10.0
    assert Timeouts().kv_read == 1.0


async def test_dualcache_kv_breaker_opens_skips_probes_and_closes(emu: Any) -> None:
    clock = FakeMonotonic()
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 503}})
    async with make_cache(emu, breaker=BreakerPolicy(failures=3, cooldown=30.0), monotonic=clock) as cache:
        for i in range(10):
            assert len(await cache.embed(f"kv down {i}")) == 768
        snap = cache.stats.snapshot()["embeddings"]
        assert (snap["errors"], snap["kv_skipped"], snap["failures"]) == (3, 7, 0)
        assert emu.control.stats()["faults"]["kv"] == 3  # the 7 others never reached KV
        emu.control.clear_faults()
        clock.now += 29.0
        await cache.embed("still open")
        assert cache.stats.snapshot()["embeddings"]["kv_skipped"] == 8
        clock.now += 2.0
        emu.control.reset()
        await cache.embed("the probe")  # one probe read: KV answers, the breaker closes; the write follows
        await cache.embed("the probe")
        assert cache.stats.snapshot()["embeddings"]["kv_hits"] == 1
        assert await cache.flush() == 0
        assert (emu.control.stats()["data_plane"]["get"], emu.control.stats()["data_plane"]["put"]) == (2, 1)


async def test_dualcache_gateway_breaker_sends_calls_direct_while_open(emu: Any) -> None:
    clock = FakeMonotonic()
    emu.control.set_faults({"gateway": {"error_rate": 1.0, "status": 503}})
    async with make_cache(emu, breaker=BreakerPolicy(failures=3, cooldown=60.0), monotonic=clock) as cache:
        for i in range(5):
            assert len(await cache.embed(f"gateway down {i}")) == 768
        snap = cache.stats.snapshot()["embeddings"]
    stats = emu.control.stats()
    # One gateway attempt per call (the gateway owns retries there): the first three calls' failures opened it.
    assert stats["faults"]["gateway"] == 3
    assert stats["direct"] == {EMBED: 5}
    assert (snap["gateway_skipped"], snap["provider_calls"], snap["failures"]) == (2, 5, 0)
