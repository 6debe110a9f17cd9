"""The REST request budget: headers, blocks after a 429, refill, bounded waits, and DualCache counting skips."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from runtime_support import FakeClock, FakeCloud, fake_outputs

from dualcache import (
    CloudflareKVBackend,
    ConfigError,
    DualCache,
    KVStore,
    RateLimitedError,
    RequestBudget,
    SkippedError,
)
from dualcache._budget import RateLimitInfo, parse_rate_limit_headers

ACCOUNT = "a" * 32
OUTPUTS = fake_outputs()


class Waits:
    """A budget's clock and sleep: monotonic seconds moved by hand, and every sleep recorded (and applied)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def budget(waits: Waits, **kwargs: Any) -> RequestBudget:
    return RequestBudget(clock=waits.clock, sleep=waits.sleep, **kwargs)


class FakeRestKV:
    """The KV REST API, just enough: values missing (404), bulk gets empty, writes accepted; ``queue``
    holds ``(status, headers)`` answered first, one per request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.queue: list[tuple[int, dict[str, str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.queue:
            status, headers = self.queue.pop(0)
            body = {"success": False, "errors": [{"code": 971, "message": "rate limited"}], "result": None}
            return httpx.Response(status, json=body, headers=headers)
        if request.method == "GET" and "/values/" in request.url.path:
            return httpx.Response(404, json={"success": False, "errors": [{"code": 10009, "message": "not found"}]})
        if request.url.path.endswith("/bulk/get"):
            values = dict.fromkeys(json.loads(request.content)["keys"])
            return httpx.Response(200, json={"success": True, "errors": [], "result": {"values": values}})
        result = {"successful_key_count": 1, "unsuccessful_keys": []} if request.url.path.endswith("/bulk") else {}
        return httpx.Response(200, json={"success": True, "errors": [], "messages": [], "result": result})


# -- headers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"ratelimit": "limit=1200, remaining=5, reset=30", "ratelimit-policy": "1200;w=300"},
            RateLimitInfo(limit=1200, remaining=5, reset=30.0, window=300.0),
            id="ietf-draft-older-syntax",
        ),
        pytest.param(
            {"RateLimit": '"default";r=7;t=40', "RateLimit-Policy": '"default";q=1200;w=300'},
            RateLimitInfo(limit=1200, remaining=7, reset=40.0, window=300.0),
            id="ietf-draft-newer-syntax",
        ),
        pytest.param(
            {"ratelimit-limit": "1200", "ratelimit-remaining": "9", "ratelimit-reset": "12"},
            RateLimitInfo(limit=1200, remaining=9, reset=12.0),
            id="ietf-draft-separate-fields",
        ),
        pytest.param(
            {"x-ratelimit-limit": "1200", "x-ratelimit-remaining": "11", "x-ratelimit-reset": "42"},
            RateLimitInfo(limit=1200, remaining=11, reset=42.0),
            id="x-ratelimit-delta",
        ),
        pytest.param(
            {"x-ratelimit-remaining": "3", "x-ratelimit-reset": "1800000050"},
            RateLimitInfo(remaining=3, reset=50.0),
            id="x-ratelimit-reset-as-unix-time",
        ),
        pytest.param(
            {
                "ratelimit": "limit=1200, remaining=20, reset=10",
                "x-ratelimit-remaining": "4",
                "x-ratelimit-reset": "60",
            },
            RateLimitInfo(limit=1200, remaining=4, reset=60.0),
            id="both-families-cautious-reading",
        ),
        pytest.param({"retry-after": "120"}, RateLimitInfo(retry_after=120.0), id="retry-after"),
        pytest.param({"x-ratelimit-remaining": "lots", "retry-after": "soon"}, RateLimitInfo(), id="garbage-ignored"),
    ],
)
def test_parse_rate_limit_headers_reads_both_families(headers: dict[str, str], expected: RateLimitInfo) -> None:
    assert parse_rate_limit_headers(httpx.Headers(headers), now=1_800_000_000.0) == expected


# -- the budget -------------------------------------------------------------------------------------


async def test_request_budget_blocks_after_429_until_retry_after() -> None:
    w = Waits()
    b = budget(w)
    await b.acquire()
    b.observe(429, {"retry-after": "30"})
    with pytest.raises(SkippedError) as info:
        await b.acquire()
    assert (info.value.reason, info.value.backend, info.value.retry_after) == ("rate_limited", "kv", 30.0)
    w.now += 29.5
    with pytest.raises(SkippedError, match="blocked after a 429"):
        await b.acquire()
    w.now += 0.5
    await b.acquire()
    assert b.counts == {"sent": 2, "rate_limited": 2, "budget": 0, "blocks": 1}
    assert w.sleeps == []


async def test_request_budget_blocks_60s_after_429_without_retry_after() -> None:
    w = Waits()
    b = budget(w)
    b.observe(429, {})
    assert b.blocked_for() == 60.0
    w.now += 59.0
    with pytest.raises(SkippedError):
        await b.acquire()
    w.now += 1.0
    await b.acquire()


async def test_request_budget_refills_as_the_window_slides() -> None:
    w = Waits()
    b = budget(w, api_limit=12, headroom=2, window=300.0)
    assert b.limit == 10
    for _ in range(10):
        w.now += 10.0  # one request every 10 s: t = 10, 20, ..., 100
        await b.acquire()
    with pytest.raises(SkippedError) as info:
        await b.acquire()
    assert info.value.reason == "budget"
    assert info.value.retry_after == pytest.approx(10.0 + 300.0 - 100.0)  # until the first one leaves the window
    w.now += 210.0
    await b.acquire()  # the request of t=10 has left the window
    with pytest.raises(SkippedError):
        await b.acquire()  # ... and only that one
    assert b.counts["sent"] == 11 and b.counts["budget"] == 2


async def test_request_budget_default_leaves_200_of_1200_to_other_clients() -> None:
    b = RequestBudget()
    assert (b.api_limit, b.headroom, b.limit, b.window, b.default_block) == (1200, 200, 1000, 300.0, 60.0)


async def test_request_budget_stops_headroom_short_of_the_servers_remaining() -> None:
    w = Waits()
    b = budget(w, headroom=200)
    b.observe(200, {"x-ratelimit-remaining": "203", "x-ratelimit-reset": "40"})
    for _ in range(3):
        await b.acquire()
    with pytest.raises(SkippedError) as info:
        await b.acquire()
    assert info.value.reason == "budget" and info.value.retry_after == pytest.approx(40.0)
    w.now += 40.0
    await b.acquire()


async def test_request_budget_learns_a_smaller_quota_from_ratelimit_policy() -> None:
    w = Waits()
    b = budget(w, headroom=200)
    b.observe(200, {"ratelimit-policy": '"default";q=600;w=300'})
    assert b.limit == 400


async def test_request_budget_waits_only_within_max_wait() -> None:
    w = Waits()
    b = budget(w)
    b.observe(429, {"retry-after": "0.4"})
    await b.acquire(max_wait=0.5)  # the block ends within the wait: wait, then go
    assert w.sleeps == [pytest.approx(0.4)]
    b.observe(429, {"retry-after": "30"})
    with pytest.raises(SkippedError):
        await b.acquire(max_wait=0.5)  # it does not: skip at once, no sleep
    assert len(w.sleeps) == 1


def test_request_budget_for_token_is_shared_per_token_and_api() -> None:
    one = RequestBudget.for_token("tok-1", api_base_url="https://api.test/client/v4")
    assert RequestBudget.for_token("tok-1", api_base_url="https://api.test/client/v4/") is one
    assert RequestBudget.for_token("tok-2", api_base_url="https://api.test/client/v4") is not one
    assert RequestBudget.for_token("tok-1", api_base_url="http://127.0.0.1:9/client/v4") is not one
    assert "tok-1" not in repr(one)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"headroom": 1200}, "headroom=1200", id="headroom-leaves-nothing"),
        pytest.param({"headroom": -1}, "headroom=-1", id="negative-headroom"),
        pytest.param({"default_block": 30}, "default_block=30", id="short-default-block"),
        pytest.param({"window": 0}, "window=0", id="no-window"),
    ],
)
def test_request_budget_rejects_bad_config(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RequestBudget(**kwargs)  # type: ignore[arg-type]


# -- the REST backend behind it ---------------------------------------------------------------------


async def test_cloudflare_backend_sends_nothing_during_a_block() -> None:
    w = Waits()
    b = budget(w)
    rest = FakeRestKV()
    rest.queue.append((429, {"retry-after": "120"}))
    async with httpx.AsyncClient(transport=httpx.MockTransport(rest)) as client:
        backend = CloudflareKVBackend(
            client, api_base_url=OUTPUTS.api_base_url, account_id=ACCOUNT, namespace_id="ns", api_token="t", budget=b
        )
        store = KVStore(backend, binding="EMBEDDINGS_CACHE")
        with pytest.raises(RateLimitedError):
            await store.get("a")
        for call in (store.get("b"), store.put("c", "v"), store.get_many(["d", "e"]), store.delete("f")):
            with pytest.raises(SkippedError):
                await call
        assert len(rest.requests) == 1
        assert (store.counts["errors"], store.counts["skipped"]) == (1, 4)
        w.now += 120.0
        assert await store.get("b") is None
    assert len(rest.requests) == 2


# -- DualCache: skipped, not errors -----------------------------------------------------------------


class Cloud:
    """REST KV (a FakeRestKV) plus the gateway and Workers AI (a FakeCloud) on one transport."""

    def __init__(self) -> None:
        self.kv = FakeRestKV()
        self.ai = FakeCloud()
        self.on_ai: list[Any] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/storage/kv/" in request.url.path:
            return self.kv(request)
        for hook in self.on_ai:
            hook()
        return await self.ai(request)


def rest_cache(cloud: Cloud, b: RequestBudget, **kwargs: Any) -> DualCache:
    return DualCache.from_outputs(
        OUTPUTS,
        api_token="cf-token",
        transport=httpx.MockTransport(cloud),
        clock=FakeClock(),
        rest_budget=b,
        **kwargs,
    )


async def test_dualcache_blocked_rest_kv_reads_are_misses_and_writes_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = Waits()
    b = budget(w)
    cloud = Cloud()
    caplog.set_level(logging.WARNING)
    async with rest_cache(cloud, b) as cache:
        # Another client of the token is told 429 while this call is upstream: its write is skipped.
        cloud.on_ai.append(lambda: b.observe(429, {"retry-after": "120"}))
        await cache.embed("first")
        cloud.on_ai.clear()
        kv_requests = len(cloud.kv.requests)
        assert kv_requests == 1  # the read; the write was not sent
        for i in range(5):
            await cache.embed(f"during the block {i}")
        await cache.embed_many([f"batch {i}" for i in range(150)])
        assert len(cloud.kv.requests) == kv_requests  # nothing sent during the block
        snap = cache.stats.snapshot()["embeddings"]
        # first: write skipped; 5 embeds: read skipped (no write after a failed read); embed_many: 2 chunks
        assert (snap["kv_skipped"], snap["errors"], snap["failures"]) == (1 + 5 + 2, 0, 0)
        assert snap["requests"] == 1 + 5 + 150
        w.now += 120.0
        await cache.embed("after the block")
        assert len(cloud.kv.requests) == kv_requests + 2  # read and write again
    block_lines = [r.getMessage() for r in caplog.records if "429" in r.getMessage() or "block over" in r.getMessage()]
    assert len(block_lines) == 2, block_lines  # one line at the start, one at the end; none per key


async def test_dualcache_rest_429_is_one_error_then_skips() -> None:
    w = Waits()
    b = budget(w)
    cloud = Cloud()
    cloud.kv.queue.append((429, {}))
    async with rest_cache(cloud, b) as cache:
        await cache.embed("a")
        await cache.embed("b")
        snap = cache.stats.snapshot()["embeddings"]
        assert (snap["errors"], snap["kv_skipped"], snap["provider_calls"]) == (1, 1, 2)
        assert b.blocked_for() == 60.0  # no retry-after: the default block
    assert len(cloud.kv.requests) == 1


async def test_dualcache_budget_wait_never_exceeds_the_kv_timeout() -> None:
    w = Waits()
    b = budget(w)
    cloud = Cloud()
    async with rest_cache(cloud, b, kv_timeout=1.0) as cache:
        b.observe(429, {"retry-after": "0.3"})
        await cache.embed("short block: waited out")
        assert len(cloud.kv.requests) == 2  # read and write, after the wait
        b.observe(429, {"retry-after": "0.9"})
        await cache.embed("longer than half the KV timeout: skipped")
        assert len(cloud.kv.requests) == 2
        b.observe(429, {"retry-after": "600"})
        await cache.embed("long block: skipped")
        assert len(cloud.kv.requests) == 2
    assert w.sleeps and all(s <= 1.0 for s in w.sleeps)
    assert sum(w.sleeps) == pytest.approx(0.3)


async def test_dualcache_rest_namespaces_and_caches_with_one_token_share_one_budget() -> None:
    cloud = Cloud()
    transport = httpx.MockTransport(cloud)
    async with (
        DualCache.from_outputs(OUTPUTS, api_token="same", transport=transport) as one,
        DualCache.from_outputs(OUTPUTS, api_token="same", transport=transport) as two,
        DualCache.from_outputs(OUTPUTS, api_token="other", transport=transport) as three,
    ):
        budgets = [c.kv(ns).backend.budget for c in (one, two) for ns in ("SESSIONS", "EMBEDDINGS_CACHE")]
        assert all(b is budgets[0] for b in budgets) and budgets[0] is not None
        assert three.kv("SESSIONS").backend.budget is not budgets[0]
        # A 429 seen through one cache blocks the other's KV too.
        cloud.kv.queue.append((429, {"retry-after": "300"}))
        await one.embed("a")
        await two.embed("b")
        assert two.stats.snapshot()["embeddings"]["kv_skipped"] == 1
    assert len(cloud.kv.requests) == 1
