"""The data-plane KV backend and KVStore's bulk behaviour: splitting by bytes, write budgets, partial bulk
reads, unreadable values, and DualCache over the data plane (against the test double of the Worker)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import httpx
import pytest
from dataplane_double import FakeDataPlane
from runtime_support import FakeClock, FakeCloud

from dualcache import (
    AuthenticationError,
    BackendUnavailableError,
    CloudflareKVBackend,
    ConfigError,
    DataPlaneKVBackend,
    DualCache,
    InvalidInputError,
    KVEntry,
    KVStore,
    MemoryKVBackend,
    Namespace,
    StackOutputs,
)
from dualcache._kv import DATA_PLANE_BULK_BODY_MAX, KV_BULK_BODY_MAX, KV_WRITE_THROUGHPUT
from dualcache._records import RecordStatus, judge_embedding_record

ACCOUNT = "a" * 32
TOKEN = "dp-secret-token"
MIB = 1024 * 1024
DP_URL = "https://dataplane.test"
# Fake hosts, trusted explicitly: by default only Cloudflare's own hosts (or loopback) get a token.
OUTPUTS = StackOutputs.from_data(
    dict(
        stack="test",
        account_id=ACCOUNT,
        gateway_id="gw",
        api_base_url="https://api.test/client/v4",
        gateway_base_url="https://gw.test/v1",
        namespaces={n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},
        worker_name="api",
        data_plane_url=DP_URL,
    ),
    trusted_hosts=["api.test", "gw.test"],
)


def ekey(text: str) -> str:
    return "embed:" + hashlib.sha256(text.encode()).hexdigest()


class Cloud:
    """The data-plane double on dataplane.test, the AI routes (a FakeCloud) elsewhere; REST KV is counted."""

    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        self.plane = FakeDataPlane(TOKEN, clock, **kwargs)
        self.ai = FakeCloud()
        self.rest_kv: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "dataplane.test":
            return self.plane(request)
        if "/storage/kv/" in request.url.path:
            self.rest_kv.append(request)
            return httpx.Response(404, json={"success": False, "errors": [{"code": 10009, "message": "not found"}]})
        return await self.ai(request)


def dp_store(plane: FakeDataPlane, client: httpx.AsyncClient, *, token: str = TOKEN) -> KVStore:
    backend = DataPlaneKVBackend(client, data_plane_url=DP_URL, binding="EMBEDDINGS_CACHE", token=token)
    return KVStore(backend, binding="EMBEDDINGS_CACHE")


# -- the backend ------------------------------------------------------------------------------------


async def test_dataplane_backend_addresses_the_binding_with_bearer_token(clock: FakeClock) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        store = dp_store(plane, client)
        await store.put("a/b c", "v")
        assert await store.get("a/b c") == b"v"
    assert [r.url.raw_path for r in plane.requests] == [b"/kv/EMBEDDINGS_CACHE/values/a%2Fb%20c"] * 2
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in plane.requests)
    assert TOKEN not in repr(store.backend) and TOKEN not in repr(store)
    assert (store.backend.bulk_get_max, store.backend.bulk_write_max, store.backend.bulk_body_max) == (
        100,
        100,
        32 * MIB,
    )
    assert store.backend.budget is None  # no Cloudflare API call: no budget


def test_backend_limits_rest_and_dataplane() -> None:
    client = httpx.AsyncClient()
    rest = CloudflareKVBackend(
        client, api_base_url="https://x.test", account_id=ACCOUNT, namespace_id="n", api_token="t"
    )
    assert (rest.bulk_get_max, rest.bulk_write_max, rest.bulk_body_max) == (100, 10_000, 100_000_000)
    assert rest.budget is not None


async def test_dataplane_backend_reads_metadata_in_one_round_trip(clock: FakeClock) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        store = dp_store(plane, client)
        await store.put("m", "v", metadata={"model": "bge", "n": "é"})
        await store.put("plain", "w")
        plane.requests.clear()
        assert await store.get_with_metadata("m") == (b"v", {"model": "bge", "n": "é"})
        assert await store.get_with_metadata("plain") == (b"w", None)
        assert await store.get_with_metadata("absent") is None
    assert len(plane.requests) == 3


def test_dataplane_backend_unknown_binding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="binding='EMBEDDINGS'.*valid bindings: SESSIONS"):
        DataPlaneKVBackend(httpx.AsyncClient(), data_plane_url=DP_URL, binding="EMBEDDINGS", token=TOKEN)


async def test_dataplane_backend_wrong_token_is_an_authentication_error(clock: FakeClock) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        with pytest.raises(AuthenticationError, match="HTTP 401"):
            await dp_store(plane, client, token="wrong").get("k")


# -- bulk writes: count and bytes -------------------------------------------------------------------


def test_kvstore_plan_writes_splits_five_21mib_values_by_bytes() -> None:
    values = [KVEntry(f"k{i}", b"x" * (21 * MIB)) for i in range(5)]
    client = httpx.AsyncClient()
    rest = KVStore(
        CloudflareKVBackend(client, api_base_url="https://x.test", account_id=ACCOUNT, namespace_id="n", api_token="t")
    )
    plan = rest.plan_writes(values)
    assert [len(batch) for batch, _ in plan] == [4, 1]  # 4 x 21 MiB = 88 MB < 100 MB; never one 110 MB body
    assert all(nbytes <= KV_BULK_BODY_MAX for _, nbytes in plan)
    assert [nbytes for batch, nbytes in plan] == [
        len(json.dumps([{"key": e.key, "value": "x" * 21 * MIB} for e in b], separators=(",", ":"))) for b, _ in plan
    ]
    dp = KVStore(DataPlaneKVBackend(client, data_plane_url=DP_URL, binding="API_CACHE", token="t"))
    assert [len(batch) for batch, _ in dp.plan_writes(values)] == [1, 1, 1, 1, 1]  # 2 x 21 MiB > 32 MiB


async def test_kvstore_put_many_over_dataplane_splits_by_bytes_and_count(clock: FakeClock) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        store = dp_store(plane, client)
        big = {f"big{i}": "y" * (12 * MIB) for i in range(3)}  # two fit in 32 MiB, the third does not
        await store.put_many(big)
        assert [(r.method, r.url.path) for r in plane.requests] == [
            ("PUT", "/kv/EMBEDDINGS_CACHE/bulk"),
            ("PUT", "/kv/EMBEDDINGS_CACHE/values/big2"),  # a batch of one is a single put
        ]
        assert all(len(r.content) <= DATA_PLANE_BULK_BODY_MAX for r in plane.requests)
        plane.requests.clear()
        await store.put_many({f"small{i:03d}": "v" for i in range(250)})
        assert [len(json.loads(r.content)) for r in plane.requests] == [100, 100, 50]
        found = await store.get_many([*big, "small000", "small249"])
        assert sorted(found) == ["big0", "big1", "big2", "small000", "small249"]


async def test_kvstore_value_too_big_for_any_bulk_body_goes_as_a_single_put(clock: FakeClock) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        store = dp_store(plane, client)
        quotes = '"' * (20 * MIB)  # 20 MiB raw, 40 MiB JSON-escaped: over the 32 MiB bulk body
        entries = [store.entry("quoted", quotes), store.entry("small", "v")]
        assert [len(b) for b, _ in store.plan_writes(entries)] == [1, 1]
        await store.put_many(entries)
        assert [r.url.path.rsplit("/", 1)[-1] for r in plane.requests] == ["quoted", "small"]
        assert await store.get("quoted") == quotes.encode()


async def test_kvstore_writes_get_a_time_budget_sized_for_their_body(clock: FakeClock) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        backend = DataPlaneKVBackend(client, data_plane_url=DP_URL, binding="API_CACHE", token=TOKEN, timeout=1.0)
        store = KVStore(backend, timeout=1.0)
        assert store.write_budget(0) == 1.0
        assert store.write_budget(40 * MIB) == pytest.approx(1.0 + 40 * MIB / KV_WRITE_THROUGHPUT)
        await store.get("k")
        await store.put("k", b"z" * (4 * MIB))
        await store.put_many({"a": "x" * MIB, "b": "x" * MIB})
    read, put, bulk = (r.extensions["timeout"]["read"] for r in plane.requests)
    assert read == 1.0
    assert put == pytest.approx(1.0 + 4 * MIB / KV_WRITE_THROUGHPUT)
    assert bulk == pytest.approx(1.0 + len(plane.requests[2].content) / KV_WRITE_THROUGHPUT)


class _SlowWrites(MemoryKVBackend):
    async def put_many(self, entries: Any) -> None:
        import asyncio

        await asyncio.sleep(0.3)
        await super().put_many(entries)

    async def get(self, key: str) -> bytes | None:
        import asyncio

        await asyncio.sleep(5)
        return None


async def test_kvstore_write_budget_is_not_the_read_timeout() -> None:
    # Reads get 0.1 s; a 2-entry bulk write of 2 MB gets 0.1 s + 2 MB / 100 KB/s = 20 s, so a 0.3 s write lands.
    store = KVStore(_SlowWrites(), timeout=0.1, write_throughput=100_000)
    await store.put_many({"a": "x" * 1_000_000, "b": "y" * 1_000_000})
    assert await store.backend.get_many(["a", "b"]) == {"a": b"x" * 1_000_000, "b": b"y" * 1_000_000}
    with pytest.raises(BackendUnavailableError, match="no answer within 0.1s"):
        await store.get("a")


# -- bulk reads: partial failures and unreadable values ---------------------------------------------


class _FailingChunk(MemoryKVBackend):
    """Fails every bulk read that names ``poison``."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison
        self.chunks: list[int] = []

    async def get_many(self, keys: Any) -> dict[str, bytes]:
        self.chunks.append(len(keys))
        if self.poison in keys:
            raise BackendUnavailableError("chunk failed", backend="kv", status_code=503)
        return await super().get_many(keys)


async def test_kvstore_get_many_partial_keeps_the_good_chunks() -> None:
    backend = _FailingChunk(poison="k150")
    store = KVStore(backend)
    await store.put_many({f"k{i:03d}": f"v{i}" for i in range(0, 250, 2)})
    batch = await store.get_many_partial([f"k{i:03d}" for i in range(250)])
    assert backend.chunks == [100, 100, 50]
    assert set(batch.failed) == {f"k{i:03d}" for i in range(100, 200)}
    assert batch.values == {f"k{i:03d}": f"v{i}".encode() for i in [*range(0, 100, 2), *range(200, 250, 2)]}
    assert len(batch.errors) == 1 and isinstance(batch.errors[0], BackendUnavailableError)
    with pytest.raises(BackendUnavailableError, match="chunk failed"):
        await store.get_many(["k150"])


@pytest.mark.parametrize("binary_bulk", ["reject", "replace"])
async def test_kvstore_one_binary_value_costs_no_other_key(clock: FakeClock, binary_bulk: str) -> None:
    plane = FakeDataPlane(TOKEN, clock, binary_bulk=binary_bulk)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        store = dp_store(plane, client)
        await store.put_many({f"k{i:03d}": f"v{i}" for i in range(100)})
        await store.put("k042", b"\xff\xfe not utf-8")
        plane.requests.clear()
        batch = await store.get_many_partial([f"k{i:03d}" for i in range(100)])
    assert batch.failed == {}
    assert batch.values["k042"] == b"\xff\xfe not utf-8"  # read raw, on its own
    assert batch.values == {**{f"k{i:03d}": f"v{i}".encode() for i in range(100)}, "k042": b"\xff\xfe not utf-8"}
    # replace: one bulk get, then one raw get. reject: halving isolates the key (100 -> 50 -> 25 -> 13 -> 6 -> 3
    # -> 2 -> 1: 1 + 2 x 7 bulk gets, the last one refused) and one raw get: 16 requests, not 100.
    assert len(plane.requests) == (2 if binary_bulk == "replace" else 16)


# -- list limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 9, 1001, True])
async def test_kvstore_list_limit_outside_10_to_1000_is_invalid_before_io(clock: FakeClock, limit: int) -> None:
    plane = FakeDataPlane(TOKEN, clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
        store = dp_store(plane, client)
        with pytest.raises(InvalidInputError, match=r"10\.\.1000"):
            await store.list_page(limit=limit)
        assert plane.requests == []
        assert (await store.list_page(limit=10)).keys == []
        assert (await store.list_page(limit=1000)).keys == []


# -- DualCache over the data plane ------------------------------------------------------------------


def dp_cache(cloud: Cloud, clock: FakeClock, **kwargs: Any) -> DualCache:
    kwargs.setdefault("data_plane_token", TOKEN)
    return DualCache.from_outputs(
        OUTPUTS, api_token="cf-token", transport=httpx.MockTransport(cloud), clock=clock, **kwargs
    )


async def test_dualcache_embed_many_of_100_cached_texts_is_one_dataplane_request(clock: FakeClock) -> None:
    cloud = Cloud(clock)
    texts = [f"text {i}" for i in range(100)]
    async with dp_cache(cloud, clock) as cache:
        await cache.embed_many(texts)
        assert [r.url.path for r in cloud.plane.requests] == [
            "/kv/EMBEDDINGS_CACHE/bulk/get",
            "/kv/EMBEDDINGS_CACHE/bulk",
        ]
        cloud.plane.requests.clear()
        ai_before = len(cloud.ai.requests)
        vectors = await cache.embed_many(texts)
        assert len(cloud.plane.requests) == 1
        assert len(cloud.ai.requests) == ai_before
        assert vectors == [FakeCloud.vector(t) for t in texts]
        assert cache.stats.snapshot()["embeddings"]["kv_hits"] == 100
    assert cloud.rest_kv == []  # no Cloudflare API request on the cache path


async def test_dualcache_wrong_dataplane_token_is_a_counted_miss(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = Cloud(clock)
    caplog.set_level(logging.DEBUG)
    async with dp_cache(cloud, clock, data_plane_token="wrong-token") as cache:
        assert await cache.embed("hello") == FakeCloud.vector("hello")
        await cache.embed_many(["x", "y"])
        snap = cache.stats.snapshot()["embeddings"]
        assert (snap["provider_calls"], snap["kv_hits"], snap["errors"], snap["failures"]) == (3, 0, 2, 0)
        assert "wrong-token" not in repr(cache) and "wrong-token" not in repr(cache.kv("EMBEDDINGS_CACHE").backend)
    assert len(cloud.plane.requests) == 2  # one get, one bulk get; no write after a failed read
    assert all(r.headers["authorization"] == "Bearer wrong-token" for r in cloud.plane.requests)
    assert "wrong-token" not in caplog.text


async def test_dualcache_corrupt_record_in_a_batch_is_one_miss_and_overwritten(clock: FakeClock) -> None:
    cloud = Cloud(clock, binary_bulk="reject")
    texts = [f"t{i}" for i in range(10)]
    async with dp_cache(cloud, clock) as cache:
        await cache.embed_many(texts)
        assert await cache.flush() == 0  # the records are in KV before one is corrupted
        await cache.kv("EMBEDDINGS_CACHE").put(ekey("t3"), b"\xff\xfe")
        cache.stats.reset()
        assert await cache.embed_many(texts) == [FakeCloud.vector(t) for t in texts]
        snap = cache.stats.snapshot()["embeddings"]
        assert (snap["kv_hits"], snap["provider_calls"], snap["errors"]) == (9, 1, 0)
        assert await cache.flush() == 0
        stored = await cache.kv("EMBEDDINGS_CACHE").get(ekey("t3"))
        assert judge_embedding_record(stored, cache.models.embeddings) == (
            RecordStatus.HIT,
            FakeCloud.vector("t3"),
        )


async def test_dualcache_failed_chunk_costs_only_its_keys(clock: FakeClock) -> None:
    backend = _FailingChunk(poison=ekey("t150"))
    cloud = FakeCloud()
    texts = [f"t{i}" for i in range(250)]
    async with DualCache.from_outputs(
        OUTPUTS, api_token="cf", transport=httpx.MockTransport(cloud), clock=clock, kv=lambda ns: backend
    ) as cache:
        await cache.embed_many(texts[:150])  # 150 cached
        order = list(dict.fromkeys(ekey(t) for t in texts))
        failing = set(order[100:200])
        cache.stats.reset()
        await cache.embed_many(texts)
        snap = cache.stats.snapshot()["embeddings"]
        cached_ok = sum(1 for t in texts[:150] if ekey(t) not in failing)
        assert ekey("t150") in failing
        assert snap["kv_hits"] == cached_ok > 0
        assert snap["errors"] == 1  # one failed chunk, one error


async def test_dualcache_without_dataplane_token_uses_rest(clock: FakeClock) -> None:
    cloud = Cloud(clock)
    async with dp_cache(cloud, clock, data_plane_token=None) as cache:
        assert isinstance(cache.kv("EMBEDDINGS_CACHE").backend, CloudflareKVBackend)
        await cache.embed("x")
    assert cloud.plane.requests == [] and len(cloud.rest_kv) >= 1


# -- from_env ---------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("CLOUDFLARE_API_TOKEN", "DUALCACHE_DATA_PLANE_TOKEN", "OPENAI_API_KEY", "CF_AIG_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DUALCACHE_TRUSTED_HOSTS", "api.test,gw.test")  # the fake hosts of OUTPUTS
    return monkeypatch


@pytest.mark.parametrize(
    ("data_plane", "env", "match"),
    [
        pytest.param(True, {}, "DUALCACHE_DATA_PLANE_TOKEN is not set", id="dataplane-no-token"),
        pytest.param(True, {"OPENAI_API_KEY": "sk"}, "DUALCACHE_DATA_PLANE_TOKEN is not set", id="dataplane-openai"),
        pytest.param(False, {}, "CLOUDFLARE_API_TOKEN is not set", id="rest-no-token"),
        pytest.param(False, {"DUALCACHE_DATA_PLANE_TOKEN": "t"}, "CLOUDFLARE_API_TOKEN is not set", id="rest-dp-tok"),
    ],
)
def test_from_env_fails_fast_naming_the_variable(
    clean_env: pytest.MonkeyPatch, data_plane: bool, env: dict[str, str], match: str
) -> None:
    outputs = OUTPUTS if data_plane else OUTPUTS.model_copy(update={"data_plane_url": None})
    clean_env.setenv("DUALCACHE_OUTPUTS", outputs.to_json())
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        DualCache.from_env()


async def test_from_env_dataplane_token_alone_serves_an_openai_only_service(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DUALCACHE_OUTPUTS", OUTPUTS.to_json())
    clean_env.setenv("DUALCACHE_DATA_PLANE_TOKEN", TOKEN)
    clean_env.setenv("OPENAI_API_KEY", "sk")
    async with DualCache.from_env() as cache:
        assert isinstance(cache.kv("SESSIONS").backend, DataPlaneKVBackend)
        assert TOKEN not in repr(cache)


async def test_from_env_rest_fallback_when_only_the_api_token_is_set(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("DUALCACHE_OUTPUTS", OUTPUTS.to_json())
    clean_env.setenv("CLOUDFLARE_API_TOKEN", "cf")
    caplog.set_level(logging.WARNING)
    async with DualCache.from_env() as cache:
        assert isinstance(cache.kv("SESSIONS").backend, CloudflareKVBackend)
    assert "DUALCACHE_DATA_PLANE_TOKEN is not set" in caplog.text


async def test_from_env_kv_factory_needs_no_kv_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DUALCACHE_OUTPUTS", OUTPUTS.to_json())
    async with DualCache.from_env(kv=lambda ns: MemoryKVBackend()) as cache:
        assert isinstance(cache.kv("SESSIONS").backend, MemoryKVBackend)
