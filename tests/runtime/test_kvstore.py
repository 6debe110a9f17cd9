"""One behavioural suite over every KV backend: memory, SQLite, Cloudflare REST against the emulator, and the
data plane against its test double (tests/runtime/dataplane_double.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from runtime_support import KVCase

from dualcache import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    CloudflareKVBackend,
    DataPlaneKVBackend,
    InvalidInputError,
    KVEntry,
    KVStore,
    MemoryKVBackend,
    RateLimitedError,
)


async def test_kvstore_missing_key_is_none(kv_case: KVCase) -> None:
    assert await kv_case.store.get("absent") is None
    assert await kv_case.store.get_json("absent") is None
    assert await kv_case.store.get_with_metadata("absent") is None


async def test_kvstore_put_then_get_round_trips_bytes_text_and_json(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put("bytes", b"\x00\x01raw")
    await s.put("text", "héllo / wörld")
    await s.put_json("json", {"a": [1, 2], "b": "ü"})
    await s.put("key with / and : and %", "odd key")
    assert await s.get("bytes") == b"\x00\x01raw"
    assert await s.get_text("text") == "héllo / wörld"
    assert await s.get_json("json") == {"a": [1, 2], "b": "ü"}
    assert await s.get_text("key with / and : and %") == "odd key"


async def test_kvstore_overwrite_replaces_value_and_metadata(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put("k", "v1", metadata={"n": 1})
    await s.put("k", "v2", metadata={"n": 2})
    assert await s.get_with_metadata("k") == (b"v2", {"n": 2})


async def test_kvstore_metadata_limit_counts_utf8_bytes_not_ascii_escapes(kv_case: KVCase) -> None:
    # 500 x "é" is 1,000 bytes of UTF-8 (+ 8 for {"m":""}): within 1,024, although its \u escapes are not.
    s = kv_case.store
    await s.put("k", "v", metadata={"m": "é" * 500})
    assert await s.get_with_metadata("k") == (b"v", {"m": "é" * 500})
    with pytest.raises(InvalidInputError, match="1024 bytes"):
        await s.put("k", "v", metadata={"m": "é" * 509})


async def test_kvstore_ttl_expires_when_the_clock_moves(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put("short", "v", ttl=60)
    await s.put("long", "v", ttl=3600)
    await s.put("forever", "v")
    kv_case.advance(61)
    assert await s.get("short") is None
    assert await s.get("long") == b"v"
    kv_case.advance(3600)
    assert await s.get("long") is None
    assert await s.get("forever") == b"v"


async def test_kvstore_get_many_reads_in_batches_of_100(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put_many({f"k{i:03d}": f"v{i}" for i in range(0, 250, 2)})
    keys = [f"k{i:03d}" for i in range(250)] + ["k000"]  # a duplicate is read once
    before = s.counts["get_many"]
    found = await s.get_many(keys)
    assert s.counts["get_many"] - before == 3  # 250 distinct keys -> 100 + 100 + 50
    assert found == {f"k{i:03d}": f"v{i}".encode() for i in range(0, 250, 2)}


async def test_kvstore_put_many_with_ttl_and_metadata(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put_many([s.entry("a", "1", ttl=60, metadata={"m": 1}), s.entry("b", b"2")])
    assert s.counts["put_many"] == 1
    assert await s.get_with_metadata("a") == (b"1", {"m": 1})
    kv_case.advance(120)
    assert await s.get_many(["a", "b"]) == {"b": b"2"}


async def test_kvstore_delete_and_delete_many(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put_many({"a": "1", "b": "2", "c": "3"})
    await s.delete("a")
    await s.delete("never-existed")
    await s.delete_many(["b", "missing"])
    assert await s.get_many(["a", "b", "c"]) == {"c": b"3"}


async def test_kvstore_list_follows_cursors_with_prefix(kv_case: KVCase) -> None:
    s = kv_case.store
    await s.put_many({**{f"p:{i:02d}": "x" for i in range(25)}, "q:other": "y"})
    await s.put("p:meta", "z", metadata={"tag": "t"})
    first = await s.list_page(prefix="p:", limit=10)
    assert [k.name for k in first.keys] == [f"p:{i:02d}" for i in range(10)]
    assert first.cursor is not None
    names = [k.name async for k in s.list_keys(prefix="p:")]
    assert names == [f"p:{i:02d}" for i in range(25)] + ["p:meta"]
    everything = [k async for k in s.list_keys()]
    assert {k.name: k.metadata for k in everything}["p:meta"] == {"tag": "t"}
    assert len(everything) == 27


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda s: s.get("k" * 513), "at most 512", id="key-too-long"),
        pytest.param(lambda s: s.put("", "v"), "cannot be empty", id="empty-key"),
        pytest.param(lambda s: s.put("k", "v", ttl=59), "ttl=59", id="ttl-below-60"),
        pytest.param(lambda s: s.put("k", "v", ttl=True), "ttl=True", id="ttl-bool"),
        pytest.param(lambda s: s.put("k", b"x" * (25 * 1024 * 1024 + 1)), "at most 26214400", id="value-too-big"),
        pytest.param(lambda s: s.put("k", "v", metadata={"m": "x" * 1100}), "1024 bytes", id="metadata-too-big"),
        pytest.param(lambda s: s.put("k", "v", metadata={"m": object()}), "not JSON-serializable", id="metadata-type"),
        pytest.param(lambda s: s.put("k", 42), "bytes or str", id="value-type"),
        pytest.param(lambda s: s.put_json("k", {1, 2}), "not JSON-serializable", id="json-type"),
        pytest.param(lambda s: s.get_many(["ok", "k" * 600]), "at most 512", id="bulk-key-too-long"),
        pytest.param(lambda s: s.put_many({"k": "v"}, ttl=10), "ttl=10", id="bulk-ttl"),
        pytest.param(lambda s: s.list_page(limit=0), "limit=0", id="list-limit"),
        pytest.param(
            lambda s: s.list_page(limit=9), r"limit=9: must be an integer 10\.\.1000", id="list-limit-below-10"
        ),
        pytest.param(lambda s: s.list_page(limit=1001), "limit=1001", id="list-limit-above-1000"),
    ],
)
async def test_kvstore_rejects_bad_input_before_any_request(kv_case: KVCase, call: Any, message: str) -> None:
    before = kv_case.requests()
    with pytest.raises(InvalidInputError, match=message):
        await call(kv_case.store)
    assert kv_case.requests() == before
    assert sum(kv_case.store.counts.values()) == 0


class _SlowBackend(MemoryKVBackend):
    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(5)
        return None


async def test_kvstore_timeout_is_backend_unavailable() -> None:
    store = KVStore(_SlowBackend(), binding="SLOW", timeout=0.05)
    with pytest.raises(BackendUnavailableError, match="no answer within 0.05s"):
        await store.get("k")
    assert store.counts["errors"] == 1


def _cf_store(handler: Any) -> tuple[KVStore, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    backend = CloudflareKVBackend(
        client, api_base_url="https://api.test/client/v4", account_id="a" * 32, namespace_id="ns", api_token="tok"
    )
    return KVStore(backend, binding="MOCK"), client


@pytest.mark.parametrize(
    ("status", "headers", "error", "match"),
    [
        pytest.param(401, {}, AuthenticationError, "HTTP 401", id="401"),
        pytest.param(403, {}, AuthenticationError, "HTTP 403", id="403"),
        pytest.param(429, {"retry-after": "7"}, RateLimitedError, "HTTP 429", id="429"),
        pytest.param(503, {}, BackendUnavailableError, "HTTP 503", id="503"),
        pytest.param(400, {}, BackendError, "10001: bad", id="400"),
    ],
)
async def test_cloudflare_backend_maps_errors(
    status: int, headers: dict[str, str], error: type[BackendError], match: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"success": False, "errors": [{"code": 10001, "message": "bad"}], "result": None, "messages": []}
        return httpx.Response(status, json=body, headers=headers)

    store, client = _cf_store(handler)
    async with client:
        with pytest.raises(error, match=match) as info:
            await store.get("k")
    if isinstance(info.value, RateLimitedError):
        assert info.value.retry_after == 7.0
    assert info.value.status_code == status


async def test_cloudflare_backend_404_is_missing_and_sends_bearer_and_encoded_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            404, json={"success": False, "errors": [{"code": 10009, "message": "get: 'key not found'"}]}
        )

    store, client = _cf_store(handler)
    async with client:
        assert await store.get("a/b:c d") is None
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert seen[0].url.raw_path.endswith(b"/values/a%2Fb%3Ac%20d")
    assert "tok" not in repr(store.backend)


async def test_cloudflare_backend_connection_error_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    store, client = _cf_store(handler)
    async with client:
        with pytest.raises(BackendUnavailableError, match="ConnectError"):
            await store.put("k", "v")


async def test_cloudflare_backend_retries_unsuccessful_bulk_keys_once() -> None:
    bodies: list[Sequence[dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        failed = ["b"] if len(bodies) == 1 else []
        return httpx.Response(
            200,
            json={"success": True, "errors": [], "result": {"successful_key_count": 1, "unsuccessful_keys": failed}},
        )

    store, client = _cf_store(handler)
    async with client:
        await store.put_many([KVEntry("a", b"1", 60), KVEntry("b", b"2", 60)])
    assert [[item["key"] for item in b] for b in bodies] == [["a", "b"], ["b"]]
    assert bodies[0][0] == {"key": "a", "value": "1", "expiration_ttl": 60}


async def test_cloudflare_backend_bad_envelope_is_bad_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>oops</html>")

    store, client = _cf_store(handler)
    async with client:
        with pytest.raises(BadResponseError, match="not JSON"):
            await store.get_many(["k"])


@pytest.mark.parametrize("with_metadata", [False, True])
async def test_kvstore_concurrent_gets_coalesce_into_bulk_gets_with_the_same_answers(
    kv_case: KVCase, request: pytest.FixtureRequest, with_metadata: bool
) -> None:
    # Against the emulator's data plane and the real Worker in workerd: 300 concurrent single reads (present,
    # missing, with and without metadata, a non-UTF-8 value, duplicates) answer exactly what sequential single
    # GETs answer, in a handful of requests instead of 300.
    if request.node.callspec.params["kv_case"] not in ("dataplane-emulator", "dataplane-workerd"):
        pytest.skip("read coalescing is the data-plane backend's, over a real server")
    s = kv_case.store
    assert isinstance(s.backend, DataPlaneKVBackend)
    await s.put_many({f"c{i:03d}": f"välue {i} / ü" for i in range(0, 200, 2)})
    await s.put_many([s.entry(f"m{i}", f"with metadata {i}", metadata={"n": i, "t": "é"}) for i in range(10)])
    await s.put("binary", b"\xff\xfe not utf-8")
    keys = [f"c{i:03d}" for i in range(200)] + [f"m{i}" for i in range(10)] + ["binary"] * 2 + ["c000"] * 3
    read = s.get_with_metadata if with_metadata else s.get
    expected = [await read(k) for k in keys]  # one at a time: single GETs
    assert expected[0] == ((b"v\xc3\xa4lue 0 / \xc3\xbc", None) if with_metadata else "välue 0 / ü".encode())
    assert expected[201] == ((b"with metadata 1", {"n": 1, "t": "é"}) if with_metadata else b"with metadata 1")
    before, counts = kv_case.requests(), s.backend.read_counts()
    answers = await asyncio.gather(*(read(k) for k in keys))
    sent = kv_case.requests() - before
    after = s.backend.read_counts()
    assert answers == expected
    # One direct GET, then 214 queued reads of 211 distinct keys in bulk gets of <= 100 keys (3). The binary
    # value is read raw on its own: the Worker's text decoding marks it (2 reads alone), the emulator refuses
    # the bulk holding it (the 14 reads of that batch alone). Far fewer than one request per read either way.
    assert after["bulk_requests"] - counts["bulk_requests"] == 3
    assert after["coalesced"] - counts["coalesced"] >= 200
    assert sent <= 1 + 3 + 14
    assert after["in_flight"] == 0


async def test_kvstore_memory_read_counts_and_obeys_its_breaker() -> None:
    # The memory backend is read at once (no coroutine, no timer): still counted, and still behind the breaker.
    from dualcache import BreakerPolicy, BreakerState, CircuitBreaker, SkippedError

    now = [0.0]
    breaker = CircuitBreaker("kv T", BreakerPolicy(failures=1, cooldown=30.0), clock=lambda: now[0])
    store = KVStore(MemoryKVBackend(), binding="T", breaker=breaker)
    await store.put("k", b"v")
    assert (await store.get("k"), await store.get("absent")) == (b"v", None)
    assert store.counts["get"] == 2
    breaker.failure()  # one failure opens this breaker
    with pytest.raises(SkippedError, match="kv T get: circuit open"):
        await store.get("k")
    assert (store.counts["get"], store.counts["skipped"], store.counts["errors"]) == (3, 1, 0)
    now[0] = 31.0  # the cool-down is over: the probe read goes through and closes the breaker
    assert await store.get("k") == b"v"
    assert breaker.state is BreakerState.CLOSED


async def test_kvstore_memory_read_failure_is_a_counted_backend_error() -> None:
    # Only an injected clock can fail a memory read: mapped like any foreign failure, never raised as itself.
    fail = [False]

    def clock() -> float:
        if fail[0]:
            raise OSError("clock unavailable")
        return 0.0

    store = KVStore(MemoryKVBackend(clock=clock), binding="T")
    await store.put("k", b"v", ttl=60)
    fail[0] = True
    with pytest.raises(BackendUnavailableError, match="kv T get: memory backend failed: OSError") as caught:
        await store.get("k")
    assert caught.value.__context__ is None
    assert store.counts["errors"] == 1
    fail[0] = False
    assert await store.get("k") == b"v"
