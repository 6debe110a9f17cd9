"""Per-layer pools, admission gates and budgets, over ``httpx.MockTransport`` handlers that count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from runtime_support import fake_outputs

from dualcache import (
    BackendUnavailableError,
    ConfigError,
    DualCache,
    LayerLimits,
    PoolLimits,
    SkippedError,
    Timeouts,
)
from dualcache._transport import admission_of, build_client

OUTPUTS = fake_outputs(account_id="0" * 32)


class Counting:
    """A handler that counts requests in flight per host, optionally holding them until released."""

    def __init__(self, *, delay: float = 0.0, hold: set[str] | None = None) -> None:
        self.delay = delay
        self.hold = hold or set()
        self.released = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.finished = 0
        self.cancelled = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] = self.calls.get(host, 0) + 1
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        self.peak[host] = max(self.peak.get(host, 0), self.in_flight[host])
        try:
            if host in self.hold:
                await self.released.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight[host] -= 1
        self.finished += 1
        return self.answer(request)

    @staticmethod
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.test" and "/storage/kv/" in request.url.path:
            return httpx.Response(404, json={"success": False, "errors": [{"code": 10009, "message": "not found"}]})
        body = json.loads(request.content)
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        # 768 components, bge-base's dimension: a vector of another length is a bad answer
        result = {"shape": [len(texts), 768], "data": [[0.5, float(len(t))] + [0.0] * 766 for t in texts]}
        return httpx.Response(200, json={"result": result, "success": True, "errors": [], "messages": []})


def cache_over(handler: Callable[[httpx.Request], Awaitable[httpx.Response]], **kwargs: Any) -> DualCache:
    return DualCache.from_outputs(
        OUTPUTS, api_token="cf-token", transport=httpx.MockTransport(handler), data_dir=None, **kwargs
    )


# -- budgets and limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("kv_read", float("nan"), id="nan"),
        pytest.param("gateway", float("inf"), id="inf"),
        pytest.param("provider", -1.0, id="negative"),
        pytest.param("kv_write", 0, id="zero"),
        pytest.param("connect", True, id="bool"),
        pytest.param("grace", "5", id="string"),
    ],
)
def test_timeouts_reject_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"Timeouts.{field}="):
        Timeouts(**{field: value})  # type: ignore[arg-type]


def test_timeouts_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Timeouts().gateway = 1.0  # type: ignore[misc]


def test_layer_limits_admit_fewer_than_the_pool_holds() -> None:
    with pytest.raises(ConfigError, match="in_flight=8 must be below connections=8"):
        LayerLimits(connections=8, in_flight=8)
    with pytest.raises(ConfigError, match="LayerLimits.connections=0"):
        LayerLimits(connections=0, in_flight=1)
    limits = LayerLimits(connections=8, in_flight=6).httpx_limits()
    assert (limits.max_connections, limits.max_keepalive_connections) == (8, 8)


def test_dualcache_rejects_a_wrong_budget_object_and_a_bad_kv_timeout() -> None:
    with pytest.raises(ConfigError, match="timeouts must be a Timeouts, got dict"):
        DualCache(timeouts={"kv_read": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Timeouts.kv_read=nan"):
        DualCache(kv_timeout=float("nan"))
    with pytest.raises(ConfigError, match="upstream_timeout=inf"):
        DualCache(upstream_timeout=float("inf"))


def test_dualcache_builds_one_sized_pool_per_layer() -> None:
    limits = PoolLimits(kv=LayerLimits(10, 7), gateway=LayerLimits(6, 5), provider=LayerLimits(4, 3))
    cache = DualCache(OUTPUTS, api_token="t", limits=limits, timeouts=Timeouts(kv_read=0.5, kv_write=2.0, kv_queue=1.0))
    gates = [admission_of(c) for c in (cache._kv_http, cache._gateway_http, cache._provider_http)]
    assert [(g.layer, g.limit) for g in gates if g is not None] == [("kv", 7), ("gateway", 5), ("provider", 3)]
    assert cache._kv_http.timeout.read == 2.0 and cache._kv_http.timeout.pool == 2.0
    # No pool (and no SSL context) is built before the first request.
    assert all(c._transport.inner is None for c in (cache._kv_http, cache._gateway_http))  # type: ignore[attr-defined]


# -- admission --------------------------------------------------------------------------------------


async def test_admission_never_more_than_k_requests_in_flight() -> None:
    handler = Counting(delay=0.01)
    transport = httpx.MockTransport(handler)
    async with build_client("kv", LayerLimits(8, 4), httpx.Timeout(5.0), transport=transport) as client:
        responses = await asyncio.gather(*(client.get(f"https://api.test/client/v4/storage/kv/{i}") for i in range(40)))
        gate = admission_of(client)
    assert [r.status_code for r in responses] == [404] * 40
    assert handler.peak["api.test"] == 4  # reached, never passed
    assert gate is not None and (gate.peak, gate.admitted, gate.in_flight, gate.rejected) == (4, 40, 0, 0)


async def test_dualcache_gateway_admission_bounds_concurrent_upstream_calls() -> None:
    handler = Counting(delay=0.01)
    limits = PoolLimits(gateway=LayerLimits(4, 3))
    async with cache_over(handler, limits=limits, kv=lambda ns: _memory()) as cache:
        vectors = await asyncio.gather(*(cache.embed(f"text {i}") for i in range(30)))
    assert len(vectors) == 30
    assert handler.peak["gw.test"] == 3
    assert handler.calls["gw.test"] == 30


def _memory() -> Any:
    from dualcache import MemoryKVBackend

    return MemoryKVBackend()


async def test_dualcache_kv_read_without_a_place_is_a_skipped_miss_not_an_error() -> None:
    handler = Counting(hold={"api.test"})
    limits = PoolLimits(kv=LayerLimits(2, 1))
    async with cache_over(handler, limits=limits, timeouts=Timeouts(kv_read=0.2, kv_queue=0.2)) as cache:
        vectors = await asyncio.gather(cache.embed("first"), cache.embed("second"))
        snap = cache.stats.snapshot()["embeddings"]
        store = cache.kv("EMBEDDINGS_CACHE")
        assert handler.calls["api.test"] == 1  # the second read never reached KV
        assert (store.counts["errors"], store.counts["skipped"]) == (1, 1)
        handler.released.set()
        async with asyncio.timeout(5):
            while len(store._abandoner):
                await asyncio.sleep(0.01)
        assert admission_of(cache._kv_http).in_flight == 0  # type: ignore[union-attr]
    assert [len(v) for v in vectors] == [768, 768]
    assert (snap["errors"], snap["kv_skipped"], snap["provider_calls"], snap["failures"]) == (1, 1, 2, 0)


async def test_dualcache_kv_reads_wait_their_turn_in_the_queue_instead_of_becoming_misses() -> None:
    # One place at the KV gate, reads that take 0.15 s, a read budget of 0.2 s: ten concurrent reads need
    # 1.5 s in all. Each waits its turn (kv_queue) and then has its own budget, so none is skipped or fails;
    # with the gate wait counted in the read budget, all but the first would have been misses.
    handler = Counting(delay=0.15)
    limits = PoolLimits(kv=LayerLimits(2, 1))
    store_timeouts = Timeouts(kv_read=0.2, kv_queue=5.0)
    async with cache_over(handler, limits=limits, timeouts=store_timeouts) as cache:
        store = cache.kv("EMBEDDINGS_CACHE")
        got = await asyncio.gather(*(store.get(f"embed:{i}") for i in range(10)))
        assert got == [None] * 10  # every read answered (the handler's KV has nothing)
        assert (store.counts["errors"], store.counts["skipped"]) == (0, 0)
        assert handler.calls["api.test"] == 10 and handler.peak["api.test"] == 1


async def test_kv_read_budget_counts_from_admission_not_from_the_queue() -> None:
    # Admitted at once, a read that hangs is still abandoned after kv_read, whatever kv_queue allows.
    handler = Counting(hold={"api.test"})
    async with cache_over(handler, timeouts=Timeouts(kv_read=0.05, kv_queue=30.0, grace=0.05)) as cache:
        store = cache.kv("EMBEDDINGS_CACHE")
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailableError, match="no answer within 0.05s"):
            await store.get("embed:x")
        assert asyncio.get_running_loop().time() - started < 10.0  # far below kv_queue + kv_read
        handler.released.set()


# -- abandonment ------------------------------------------------------------------------------------


async def test_kv_read_past_its_budget_is_abandoned_and_a_straggler_cancelled_after_grace() -> None:
    handler = Counting(hold={"api.test"})
    timeouts = Timeouts(kv_read=0.05, grace=0.05)
    async with cache_over(handler, timeouts=timeouts) as cache:
        store = cache.kv("EMBEDDINGS_CACHE")
        with pytest.raises(BackendUnavailableError, match="no answer within 0.05s"):
            await store.get("embed:x")
        async with asyncio.timeout(5):
            while len(store._abandoner):
                await asyncio.sleep(0.01)
        assert (store._abandoner.abandoned, store._abandoner.cancelled, handler.cancelled) == (1, 1, 1)
        assert admission_of(cache._kv_http).in_flight == 0  # type: ignore[union-attr]
        handler.hold.clear()
        assert await store.get("embed:x") is None  # the gate works after the straggler


async def test_cancelled_caller_abandons_its_request_without_cancelling_it() -> None:
    handler = Counting(hold={"api.test"})
    async with cache_over(handler, timeouts=Timeouts(kv_read=5.0)) as cache:
        store = cache.kv("EMBEDDINGS_CACHE")
        caller = asyncio.ensure_future(store.get("embed:y"))
        async with asyncio.timeout(5):
            while handler.calls.get("api.test", 0) == 0:
                await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        handler.released.set()
        async with asyncio.timeout(5):
            while len(store._abandoner):
                await asyncio.sleep(0.01)
    assert (handler.finished, handler.cancelled) == (1, 0)
    assert store.counts["skipped"] == 0


async def test_skipped_error_when_kv_breaker_open_names_the_reason() -> None:
    from dualcache import BreakerPolicy

    handler = Counting(hold={"api.test"})
    cache = cache_over(handler, timeouts=Timeouts(kv_read=0.05, grace=0.0), breaker=BreakerPolicy(failures=2))
    async with cache:
        store = cache.kv("EMBEDDINGS_CACHE")
        for _ in range(2):
            with pytest.raises(BackendUnavailableError):
                await store.get("embed:z")
        with pytest.raises(SkippedError) as info:
            await store.get("embed:z")
    assert info.value.reason == "circuit_open" and info.value.retry_after is not None
    assert handler.calls["api.test"] == 2


async def test_dualcache_gateway_without_a_place_is_skipped_for_the_direct_route() -> None:
    handler = Counting(hold={"gw.test"})
    limits = PoolLimits(gateway=LayerLimits(2, 1))
    async with cache_over(handler, limits=limits, timeouts=Timeouts(gateway=0.2), kv=lambda ns: _memory()) as cache:
        vectors = await asyncio.gather(cache.embed("one"), cache.embed("two"))
        snap = cache.stats.snapshot()["embeddings"]
        handler.released.set()
    assert [len(v) for v in vectors] == [768, 768]
    assert (handler.calls["gw.test"], handler.calls["api.test"]) == (1, 2)  # one waited at the gate, unsent
    assert (snap["gateway_skipped"], snap["upstream_requests"], snap["failures"]) == (1, 3, 0)
