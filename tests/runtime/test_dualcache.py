"""DualCache over in-memory KV and a mocked cloud (httpx.MockTransport): the flows, counts and faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_support import FakeClock, FakeCloud, fake_outputs

from dualcache import (
    BackendUnavailableError,
    ConfigError,
    DualCache,
    InvalidInputError,
    MemoryKVBackend,
    Models,
    Namespace,
    Policies,
    RetryPolicy,
    UsageError,
)

ACCOUNT = "a" * 32
MODEL = "@cf/baai/bge-base-en-v1.5"
MSGS = [{"role": "user", "content": "Analyze this job for me"}]
OUTPUTS = fake_outputs()


class Env:
    """A cache wired to a FakeCloud and memory KV backends that the test can inspect.

    KV writes are synchronous unless the test passes ``write_behind``: a test then sees a record in KV as
    soon as the call returns. The write-behind tests below pass it.
    """

    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        kwargs.setdefault("write_behind", False)
        self.cloud = FakeCloud(delay=kwargs.pop("delay", 0.0))
        self.clock = clock
        self.backends: dict[Namespace, MemoryKVBackend] = {}
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            if real_sleep:
                await asyncio.sleep(seconds)

        real_sleep = kwargs.pop("real_sleep", False)

        shared: MemoryKVBackend | None = kwargs.pop("backend", None)

        def kv(ns: Namespace) -> MemoryKVBackend:
            return self.backends.setdefault(ns, shared or MemoryKVBackend(clock=clock))

        self.cache = DualCache.from_outputs(
            kwargs.pop("outputs", OUTPUTS),
            api_token="cf-secret-token",
            gateway_token=kwargs.pop("gateway_token", None),
            openai_api_key="sk-secret-key",
            kv=kv,
            transport=httpx.MockTransport(self.cloud),
            clock=clock,
            sleep=sleep,
            # owner="client": FakeCloud's gateway does not retry (cf-aig-max-attempts), so the client's retries
            # on the gateway route are what these tests look at (the gateway-owned default: test_gateway_retries).
            retry=kwargs.pop(
                "retry",
                RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=5.0, total_timeout=30.0, owner="client"),
            ),
            openai_base_url="https://openai.test/v1",
            **kwargs,
        )

    def stored(self, ns: Namespace, key: str) -> Any:
        item = self.backends[ns]._data.get(key)
        return None if item is None else json.loads(item[0])

    def snap(self, op: str) -> dict[str, Any]:
        return self.cache.stats.snapshot()[op]


@pytest.fixture
async def env(clock: FakeClock) -> AsyncIterator[Env]:
    e = Env(clock)
    async with e.cache:
        yield e


def ekey(text: str) -> str:
    return "embed:" + hashlib.sha256(text.encode()).hexdigest()


# -- embeddings -------------------------------------------------------------------------------------


async def test_embed_miss_then_kv_hit(env: Env) -> None:
    first = await env.cache.embed("Senior Python engineer")
    second = await env.cache.embed("Senior Python engineer")
    assert first == second == FakeCloud.vector("Senior Python engineer")
    assert len(env.cloud.requests) == 1
    snap = env.snap("embeddings")
    assert {k: snap[k] for k in ("requests", "kv_hits", "provider_calls", "gateway_hits", "errors")} == {
        "requests": 2,
        "kv_hits": 1,
        "provider_calls": 1,
        "gateway_hits": 0,
        "errors": 0,
    }
    assert (snap["cost"], snap["saved"]) == (0.001, 0.001)


async def test_embed_stores_a_compact_record_with_the_kv_ttl(env: Env) -> None:
    text = "é" * 300
    await env.cache.embed(text)
    record = env.stored(Namespace.EMBEDDINGS_CACHE, ekey(text))
    packed = base64.b64decode(record.pop("embedding_b64"))
    assert list(struct.unpack("<768f", packed)) == FakeCloud.vector(text)
    assert record == {
        "v": 2,
        "model": MODEL,
        "dims": 768,
        "dtype": "f32",
        "text": text[:200],
        "createdAt": "2027-01-15T08:00:00.000Z",
    }
    expires = env.backends[Namespace.EMBEDDINGS_CACHE]._data[ekey(text)][2]
    assert expires == env.clock.now + 30 * 86_400


async def test_embed_sends_truncated_text_and_policy_headers(env: Env) -> None:
    text = "word " * 1000
    await env.cache.embed(text)
    (request,) = env.cloud.requests
    assert str(request.url) == f"https://gw.test/v1/{ACCOUNT}/gw/workers-ai/{MODEL}"
    assert json.loads(request.content) == {"text": text[:2000]}
    assert request.headers["authorization"] == "Bearer cf-secret-token"
    assert request.headers["cf-aig-cache-ttl"] == "3600"
    assert request.headers["cf-aig-cache-key"].startswith("dualcache:embeddings:")
    request_id = request.headers["cf-aig-cache-key"].rsplit(":", 1)[1][:16]  # the request's id in the gateway logs
    assert json.loads(request.headers["cf-aig-metadata"]) == {"operation": "embeddings", "request": request_id}
    assert "cf-aig-skip-cache" not in request.headers
    assert "cf-aig-authorization" not in request.headers


async def test_embed_gateway_hit_costs_nothing(env: Env) -> None:
    env.cloud.cache_status = "HIT"
    await env.cache.embed("cached at the gateway")
    snap = env.snap("embeddings")
    assert (snap["gateway_hits"], snap["provider_calls"], snap["cost"], snap["saved"]) == (1, 0, 0.0, 0.001)


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(json.dumps({"embedding": [9.0, 9.0], "model": "@cf/old/model"}), id="other-model"),
        pytest.param("{corrupt", id="corrupt"),
        pytest.param(json.dumps({"embedding": "nope", "model": MODEL}), id="bad-vector"),
    ],
)
async def test_embed_unusable_record_is_a_miss_and_overwritten(env: Env, stored: str) -> None:
    store = env.cache.kv("EMBEDDINGS_CACHE")
    await store.put(ekey("text"), stored)
    assert await env.cache.embed("text") == FakeCloud.vector("text")
    assert env.stored(Namespace.EMBEDDINGS_CACHE, ekey("text"))["model"] == MODEL
    assert len(env.cloud.requests) == 1
    assert await env.cache.embed("text") == FakeCloud.vector("text")
    assert len(env.cloud.requests) == 1


async def test_embed_model_change_misses_old_records(clock: FakeClock) -> None:
    e = Env(clock)
    async with e.cache:
        await e.cache.embed("t")
    backend = e.backends[Namespace.EMBEDDINGS_CACHE]
    e2 = Env(clock, models=Models(embeddings="@cf/baai/bge-large-en-v1.5"), backend=backend)
    async with e2.cache:
        await e2.cache.embed("t")
        assert len(e2.cloud.requests) == 1
        # Another model writes under another key: the old record stays, untouched, until its TTL.
        new_key = e2.cache.record_key("embeddings", key="t")
        assert new_key != ekey("t") and new_key.startswith("embed:%s")
        assert e2.stored(Namespace.EMBEDDINGS_CACHE, new_key)["model"] == "@cf/baai/bge-large-en-v1.5"
        assert e2.stored(Namespace.EMBEDDINGS_CACHE, ekey("t"))["model"] == MODEL


async def test_embed_returns_private_copies(env: Env) -> None:
    first = await env.cache.embed("t")
    first[0] = 123.0
    assert (await env.cache.embed("t"))[0] != 123.0


# -- batches ----------------------------------------------------------------------------------------


async def test_embed_many_partial_hits_order_duplicates_and_round_trips(env: Env) -> None:
    texts = [f"job description {i}" for i in range(120)]
    await env.cache.embed_many(texts[:50])  # 50 cached
    env.cloud.requests.clear()
    store = env.cache.kv("EMBEDDINGS_CACHE")
    store.counts.clear()
    env.cache.stats.reset()
    batch = texts + [texts[3], texts[100], texts[100]]  # duplicates of a hit and of a miss
    vectors = await env.cache.embed_many(batch)
    assert vectors == [FakeCloud.vector(t) for t in batch]
    assert store.counts["get_many"] == 2  # 120 distinct keys: 100 + 20
    assert store.counts["put_many"] == 1 and store.counts["put"] == 0
    (call,) = env.cloud.requests
    assert json.loads(call.content)["text"] == texts[50:]  # only the 70 misses, each once
    snap = env.snap("embeddings")
    assert (snap["requests"], snap["kv_hits"], snap["provider_calls"], snap["coalesced"]) == (123, 51, 70, 2)
    assert snap["upstream_requests"] == 1
    assert snap["cost"] == pytest.approx(0.070) and snap["saved"] == pytest.approx(0.053)


async def test_embed_many_sends_at_most_100_texts_a_call(env: Env) -> None:
    texts = [f"t{i}" for i in range(250)]
    await env.cache.embed_many(texts)
    assert [len(json.loads(r.content)["text"]) for r in env.cloud.requests] == [100, 100, 50]
    assert env.cache.kv("EMBEDDINGS_CACHE").counts["put_many"] == 1


async def test_embed_many_texts_with_the_same_first_2000_chars_are_sent_once(env: Env) -> None:
    a, b = "x" * 2000 + "a", "x" * 2000 + "b"
    va, vb = await env.cache.embed_many([a, b])
    assert va == vb
    assert json.loads(env.cloud.requests[0].content)["text"] == ["x" * 2000]
    assert env.stored(Namespace.EMBEDDINGS_CACHE, ekey(b)) is not None


async def test_embed_many_empty_list(env: Env) -> None:
    assert await env.cache.embed_many([]) == []
    assert env.cloud.requests == []


# -- single-flight ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("enabled", "upstream"), [pytest.param(True, 1, id="on"), pytest.param(False, 20, id="off")])
async def test_single_flight_folds_concurrent_identical_misses(clock: FakeClock, enabled: bool, upstream: int) -> None:
    e = Env(clock, delay=0.02, single_flight=enabled)
    async with e.cache:
        results = await asyncio.gather(*(e.cache.embed("same text") for _ in range(20)))
        assert all(r == FakeCloud.vector("same text") for r in results)
        assert len(e.cloud.requests) == upstream
        assert e.cache.kv("EMBEDDINGS_CACHE").counts["put"] == upstream
        snap = e.snap("embeddings")
        assert snap["requests"] == 20
        assert snap["coalesced"] == (19 if enabled else 0)
        assert snap["cost"] + snap["saved"] == pytest.approx(0.020)


async def test_single_flight_joins_embed_and_embed_many(clock: FakeClock) -> None:
    e = Env(clock, delay=0.02)
    async with e.cache:
        one, many = await asyncio.gather(e.cache.embed("shared"), e.cache.embed_many(["shared", "other"]))
        assert one == many[0]
        bodies = [json.loads(r.content)["text"] for r in e.cloud.requests]
        sent = [t for b in bodies for t in (b if isinstance(b, list) else [b])]
        assert sorted(sent) == ["other", "shared"]


async def test_single_flight_shares_failures_and_recovers(clock: FakeClock) -> None:
    e = Env(clock, delay=0.01, retry=RetryPolicy(max_attempts=1))
    e.cloud.always_fail = {"gateway": 400}
    async with e.cache:
        results = await asyncio.gather(*(e.cache.embed("x") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)
        assert len(e.cloud.requests) == 1
        assert e.snap("embeddings")["failures"] == 5
        e.cloud.always_fail = {}
        assert await e.cache.embed("x") == FakeCloud.vector("x")


async def test_generation_is_not_coalesced(clock: FakeClock) -> None:
    e = Env(clock, delay=0.01)
    async with e.cache:
        await asyncio.gather(*(e.cache.generate_application(messages=MSGS) for _ in range(3)))
        assert len(e.cloud.requests) == 3


# -- faults -----------------------------------------------------------------------------------------


class _BrokenKV(MemoryKVBackend):
    def __init__(self, *, read: bool, write: bool) -> None:
        super().__init__()
        self.read, self.write = read, write

    async def get(self, key: str) -> bytes | None:
        if self.read:
            raise BackendUnavailableError("kv down", backend="kv", status_code=503)
        return await super().get(key)

    async def get_many(self, keys: Any) -> dict[str, bytes]:
        if self.read:
            raise BackendUnavailableError("kv down", backend="kv", status_code=503)
        return await super().get_many(keys)

    async def put(self, entry: Any) -> None:
        if self.write:
            raise BackendUnavailableError("kv down", backend="kv", status_code=503)
        await super().put(entry)

    async def put_many(self, entries: Any) -> None:
        if self.write:
            raise BackendUnavailableError("kv down", backend="kv", status_code=503)
        await super().put_many(entries)


@pytest.mark.parametrize(
    ("read", "write", "errors"),
    [
        pytest.param(True, True, 1, id="kv-down-read-fails-write-skipped"),
        pytest.param(False, True, 1, id="write-fails"),
    ],
)
async def test_kv_failures_are_misses_and_never_fail_the_call(
    clock: FakeClock, read: bool, write: bool, errors: int
) -> None:
    e = Env(clock, backend=_BrokenKV(read=read, write=write))
    async with e.cache:
        assert await e.cache.embed("t") == FakeCloud.vector("t")
        assert await e.cache.embed_many(["t", "u"]) == [FakeCloud.vector("t"), FakeCloud.vector("u")]
        analysis = await e.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert analysis["model"] == "@cf/meta/llama-3.1-8b-instruct"
        assert e.snap("embeddings")["errors"] == 2 * errors
        assert e.snap("embeddings")["failures"] == 0
        assert e.snap("job_analysis")["errors"] == errors


class _SlowKV(MemoryKVBackend):
    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(10)
        return None


async def test_kv_timeout_is_a_counted_miss(clock: FakeClock) -> None:
    e = Env(clock, backend=_SlowKV(), kv_timeout=0.05)
    async with e.cache:
        async with asyncio.timeout(2):
            assert await e.cache.embed("t") == FakeCloud.vector("t")
        assert e.snap("embeddings")["errors"] == 1


async def test_upstream_429_retried_after_retry_after(env: Env) -> None:
    env.cloud.fail("gateway", 429, headers={"retry-after": "2"})
    assert await env.cache.embed("t") == FakeCloud.vector("t")
    assert env.sleeps == [2.0]
    assert len(env.cloud.calls("gateway")) == 2
    snap = env.snap("embeddings")
    assert (snap["upstream_requests"], snap["errors"], snap["provider_calls"]) == (2, 1, 1)


async def test_upstream_5xx_backoff_then_direct_fallback(env: Env) -> None:
    env.cloud.always_fail = {"gateway": 503}
    assert await env.cache.embed("t") == FakeCloud.vector("t")
    assert len(env.cloud.calls("gateway")) == 3
    assert env.sleeps == [0.1, 0.2]
    (direct,) = env.cloud.calls("direct")
    assert str(direct.url) == f"https://api.test/client/v4/accounts/{ACCOUNT}/ai/run/{MODEL}"
    assert "cf-aig-cache-ttl" not in direct.headers
    assert env.snap("embeddings")["provider_calls"] == 1


async def test_gateway_failure_without_direct_fallback_raises(clock: FakeClock) -> None:
    policies = Policies.with_overrides({"embeddings": {"direct_fallback": False}})
    e = Env(clock, policies=policies)
    e.cloud.always_fail = {"gateway": 503}
    async with e.cache:
        with pytest.raises(BackendUnavailableError, match="HTTP 503"):
            await e.cache.embed("t")
        assert e.cloud.calls("direct") == []
        assert e.snap("embeddings")["failures"] == 1


async def test_retries_are_bounded_in_time_before_attempts(clock: FakeClock) -> None:
    retry = RetryPolicy(max_attempts=10, base_delay=0.02, max_delay=0.05, total_timeout=0.15, owner="client")
    e = Env(clock, retry=retry, real_sleep=True)
    e.cloud.always_fail = {"gateway": 503, "direct": 503}
    async with e.cache:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailableError, match="HTTP 503"):
            await e.cache.embed("t")
        elapsed = asyncio.get_running_loop().time() - started
    # Waits 0.02, 0.04, 0.05 fit in 0.15 s; the next would not: 4 attempts per route, far below 10.
    assert 2 <= len(e.cloud.calls("gateway")) <= 4
    assert 2 <= len(e.cloud.calls("direct")) <= 4
    assert elapsed < 0.6


async def test_retries_are_bounded_in_attempts(clock: FakeClock) -> None:
    e = Env(
        clock, retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=1.0, total_timeout=100.0, owner="client")
    )
    e.cloud.always_fail = {"gateway": 502, "direct": 502}
    async with e.cache:
        with pytest.raises(BackendUnavailableError):
            await e.cache.embed("t")
    assert (len(e.cloud.calls("gateway")), len(e.cloud.calls("direct"))) == (2, 2)
    assert e.sleeps == [0.1, 0.1]
    assert e.snap("embeddings")["upstream_requests"] == 4


async def test_rate_limit_with_a_long_retry_after_gives_up_without_fallback(env: Env) -> None:
    env.cloud.fail("gateway", 429, headers={"retry-after": "600"})
    from dualcache import RateLimitedError

    with pytest.raises(RateLimitedError) as info:
        await env.cache.embed("t")
    assert info.value.retry_after == 600.0
    assert env.sleeps == [] and env.cloud.calls("direct") == []


# -- job analysis, spam, generation, resumes --------------------------------------------------------


async def test_analyze_job_workers_ai_then_kv(env: Env) -> None:
    first = await env.cache.analyze_job(user_id="user-1", job_id="job-9", messages=MSGS)
    second = await env.cache.analyze_job(user_id="user-1", job_id="job-9", messages=MSGS)
    assert first == second and first["model"] == "@cf/meta/llama-3.1-8b-instruct"
    (request,) = env.cloud.requests
    assert request.headers["cf-aig-skip-cache"] == "true"
    metadata = json.loads(request.headers["cf-aig-metadata"])
    assert re.fullmatch(r"[0-9a-f]{16}", metadata.pop("request"))  # sent in skip mode too (no cache key header)
    assert metadata == {"operation": "job_analysis", "user_id": "user-1"}
    assert json.loads(request.content)["response_format"] == {"type": "json_object"}
    assert env.stored(Namespace.JOB_ANALYSIS_CACHE, "analysis:user-1:job-9") == first
    expires = env.backends[Namespace.JOB_ANALYSIS_CACHE]._data["analysis:user-1:job-9"][2]
    assert expires == env.clock.now + 7 * 86_400
    snap = env.snap("job_analysis")
    assert (snap["kv_hits"], snap["provider_calls"], snap["cost"], snap["saved"]) == (1, 1, 0.03, 0.03)


async def test_analyze_job_is_never_shared_across_users(env: Env) -> None:
    await env.cache.analyze_job(user_id="alice", job_id="job", messages=MSGS)
    await env.cache.analyze_job(user_id="bob", job_id="job", messages=MSGS)
    await env.cache.analyze_job(user_id="alice:job", job_id="x", messages=MSGS)
    assert len(env.cloud.requests) == 3


async def test_analyze_job_falls_back_to_openai_when_workers_ai_fails(env: Env) -> None:
    env.cloud.always_fail = {"gateway": 503, "direct": 503}
    env.cloud.always_fail = {"direct": 503}
    env.cloud.fail("gateway", 503, 503, 503)  # Workers AI via gateway: 3 attempts, then direct fails too
    analysis = await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
    assert analysis["model"] == "gpt-4o-mini"
    openai_call = env.cloud.requests[-1]
    assert openai_call.url.path.endswith("/openai/chat/completions")
    assert openai_call.headers["authorization"] == "Bearer sk-secret-key"
    assert env.stored(Namespace.JOB_ANALYSIS_CACHE, "analysis:u:j") == analysis
    assert env.snap("job_analysis")["errors"] >= 1


async def test_detect_spam_cached_in_kv_and_gateway(env: Env) -> None:
    verdict = await env.cache.detect_spam(job_id="job/1", messages=MSGS)
    assert await env.cache.detect_spam(job_id="job/1", messages=MSGS) == verdict
    (request,) = env.cloud.requests
    assert request.headers["cf-aig-cache-ttl"] == "86400"
    assert env.stored(Namespace.API_CACHE, "spam:job/1") == verdict


async def test_generate_application_json_and_text(env: Env) -> None:
    letter = await env.cache.generate_application(messages=MSGS, user_id="u7")
    assert letter == {"model": "gpt-4o-mini", "echo": MSGS[-1]["content"], "score": 80}
    text = await env.cache.generate_application(messages=MSGS, json_output=False)
    assert text == "plain text letter"
    request = env.cloud.requests[0]
    assert request.headers["cf-aig-skip-cache"] == "true"
    metadata = json.loads(request.headers["cf-aig-metadata"])
    assert re.fullmatch(r"[0-9a-f]{16}", metadata.pop("request"))
    assert metadata == {"operation": "application_generation", "user_id": "u7"}
    assert env.backends == {}  # no KV touched
    assert env.snap("application_generation")["cost"] == pytest.approx(0.04)


def _pdf(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


async def test_parse_resume_from_pdf_extracts_text_locally(env: Env) -> None:
    result = await env.cache.parse_resume(pdf=_pdf("Jane Doe - Staff Engineer - Rust and Python"))
    assert result["model"] == "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    body = json.loads(env.cloud.requests[0].content)
    assert "Jane Doe - Staff Engineer" in body["messages"][-1]["content"]
    assert env.cloud.requests[0].headers["cf-aig-collect-log"] == "true"


async def test_parse_resume_from_image_uses_openai_vision(env: Env) -> None:
    await env.cache.parse_resume(image_url="https://cdn.test/resume.png")
    body = json.loads(env.cloud.requests[0].content)
    assert body["model"] == "gpt-4o"
    assert body["messages"][-1]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "https://cdn.test/resume.png"},
    }


# -- input errors, lifecycle, secrets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda c: c.embed(""), "text is empty", id="empty"),
        pytest.param(lambda c: c.embed("   \n"), "text is empty", id="whitespace"),
        pytest.param(lambda c: c.embed(b"bytes"), "must be a string", id="bytes"),
        pytest.param(lambda c: c.embed_many(["ok", ""]), r"texts\[1\] is empty", id="batch-item"),
        pytest.param(lambda c: c.embed_many("not a list"), "list of strings", id="batch-str"),
        pytest.param(lambda c: c.analyze_job(user_id="", job_id="j", messages=MSGS), "user_id is empty", id="user"),
        pytest.param(lambda c: c.analyze_job(user_id="u", job_id="j", messages=[]), "non-empty list", id="no-msgs"),
        pytest.param(lambda c: c.detect_spam(job_id="j", messages=[{"content": "x"}]), "'role'", id="bad-msg"),
        pytest.param(lambda c: c.parse_resume(), "exactly one of", id="resume-none"),
        pytest.param(lambda c: c.parse_resume(text="a", image_url="https://x"), "got text, image_url", id="resume-two"),
        pytest.param(lambda c: c.parse_resume(pdf=b"hello"), "%PDF-", id="not-a-pdf"),
        pytest.param(lambda c: c.parse_resume(image_url="ftp://x"), "image_url must be", id="bad-url"),
    ],
)
async def test_bad_input_raises_before_any_request(env: Env, call: Callable[[DualCache], Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await call(env.cache)
    assert env.cloud.requests == []
    assert all(sum(s.counts.values()) == 0 for s in env.cache._stores.values())


def test_kv_unknown_binding_is_invalid_input(env: Env) -> None:
    with pytest.raises(InvalidInputError, match="unknown namespace binding 'NOPE'.*SESSIONS"):
        env.cache.kv("NOPE")


async def test_kv_gives_access_to_any_namespace(env: Env) -> None:
    sessions = env.cache.kv("SESSIONS")
    await sessions.put_json("session:1", {"user": "u"}, ttl=3600)
    assert await env.cache.kv(Namespace.SESSIONS).get_json("session:1") == {"user": "u"}


async def test_closed_cache_refuses_calls(clock: FakeClock) -> None:
    e = Env(clock)
    async with e.cache:
        pass
    with pytest.raises(UsageError, match="closed"):
        await e.cache.embed("t")


async def test_secrets_never_in_reprs_or_logs(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    e = Env(clock, gateway_token="gw-secret-token")
    e.cloud.always_fail = {"gateway": 503}
    async with e.cache:
        await e.cache.embed("t")
        assert e.cloud.requests[0].headers["cf-aig-authorization"] == "Bearer gw-secret-token"
        text = " ".join([repr(e.cache), repr(e.cache._upstream), repr(e.cache.kv("SESSIONS")), caplog.text])
    for secret in ("cf-secret-token", "sk-secret-key", "gw-secret-token"):
        assert secret not in text
    assert "trying direct" in caplog.text


async def test_without_outputs_uses_sqlite_and_direct_workers_ai(clock: FakeClock, tmp_path: Path) -> None:
    cloud = FakeCloud()
    cache = DualCache(
        api_token="tok",
        account_id=ACCOUNT,
        api_base_url="https://api.test/client/v4",
        data_dir=tmp_path,
        transport=httpx.MockTransport(cloud),
        clock=clock,
    )
    async with cache:
        await cache.embed("offline")
        await cache.embed("offline")
    assert [r.url.host for r in cloud.requests] == ["api.test"]
    assert "cf-aig-cache-ttl" not in cloud.requests[0].headers
    assert (tmp_path / "kv.sqlite3").is_file()
    with pytest.raises(ConfigError, match="OpenAI needs an API key"):
        await DualCache(account_id=ACCOUNT, api_token="t", data_dir=tmp_path).generate_application(messages=MSGS)
    with pytest.raises(ConfigError, match="Workers AI needs a Cloudflare account"):
        await DualCache(data_dir=tmp_path).embed("x")


async def test_stats_report_and_totals(env: Env) -> None:
    await env.cache.embed_many(["a", "b", "a"])
    await env.cache.embed("a")
    report = env.cache.stats.report()
    assert report.splitlines()[0].split()[:3] == ["operation", "requests", "KV"]
    assert "embeddings" in report and "total" in report
    snap = env.snap("embeddings")
    assert snap["cost"] + snap["saved"] == pytest.approx(4 * 0.001)


async def test_from_env_reads_outputs_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALCACHE_OUTPUTS", OUTPUTS.to_json())
    monkeypatch.setenv("DUALCACHE_TRUSTED_HOSTS", "api.test, gw.test")
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "env-token")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cloud = FakeCloud()
    async with DualCache.from_env(transport=httpx.MockTransport(cloud), kv=lambda ns: MemoryKVBackend()) as cache:
        assert cache.outputs == OUTPUTS
        await cache.embed("from env")
        with pytest.raises(ConfigError, match="OpenAI needs an API key"):
            await cache.generate_application(messages=MSGS)
    assert cloud.requests[0].headers["authorization"] == "Bearer env-token"


async def test_embed_many_cancelled_leader_releases_its_keys(clock: FakeClock) -> None:
    e = Env(clock, delay=0.5)
    async with e.cache:
        task = asyncio.create_task(e.cache.embed_many(["slow", "texts"]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(e.cache._flights) == 0
        e.cloud.delay = 0
        assert await e.cache.embed("slow") == FakeCloud.vector("slow")


# -- audit additions: tenant isolation, exact batch round trips, single-flight edges, hard bounds -----


async def test_gateway_cache_key_is_per_user_for_user_scoped_operations(clock: FakeClock) -> None:
    # A stack that turns the gateway cache on for job analysis must still never share an entry across users.
    policies = Policies.with_overrides({"job_analysis": {"gateway": "cache", "gateway_ttl": 3600}})
    e = Env(clock, policies=policies)
    async with e.cache:
        await e.cache.analyze_job(user_id="alice", job_id="job-1", messages=MSGS)
        await e.cache.analyze_job(user_id="bob", job_id="job-1", messages=MSGS)
        await e.cache.analyze_job(user_id="alice", job_id="job-2", messages=MSGS)
    alice1, bob1, alice2 = (r.headers["cf-aig-cache-key"] for r in e.cloud.requests)
    assert alice1 != bob1
    assert alice1 == alice2  # same user, same body: the gateway may reuse it
    assert [r.headers["cf-aig-cache-ttl"] for r in e.cloud.requests] == ["3600"] * 3


async def test_embed_many_250_texts_with_duplicates_exact_round_trips(env: Env) -> None:
    distinct = [f"posting {i}: senior engineer, platform team" for i in range(220)]
    await env.cache.embed_many(distinct[:30])  # 30 already cached
    env.cloud.requests.clear()
    store = env.cache.kv("EMBEDDINGS_CACHE")
    store.counts.clear()
    env.cache.stats.reset()
    # 250 texts: the 220 distinct ones, then 30 repeats (15 of cached texts, 15 of misses), interleaved.
    batch = list(distinct)
    for i in range(15):
        batch.insert(7 * i, distinct[i])  # cached
        batch.insert(11 * i + 3, distinct[100 + i])  # a miss
    assert len(batch) == 250
    vectors = await env.cache.embed_many(batch)
    assert vectors == [FakeCloud.vector(t) for t in batch]
    assert store.counts["get_many"] == 3  # 220 distinct keys: 100 + 100 + 20
    assert (store.counts["put_many"], store.counts["put"], store.counts["get"]) == (1, 0, 0)
    sent = [json.loads(r.content)["text"] for r in env.cloud.requests]
    assert [len(s) for s in sent] == [100, 90]  # 190 distinct misses, each sent once
    assert sorted(t for s in sent for t in s) == sorted(distinct[30:])
    assert len(env.backends[Namespace.EMBEDDINGS_CACHE]._data) == 220
    snap = env.snap("embeddings")
    assert (snap["requests"], snap["kv_hits"], snap["provider_calls"], snap["coalesced"]) == (250, 45, 190, 15)
    assert snap["upstream_requests"] == 2
    assert snap["cost"] == pytest.approx(0.190) and snap["saved"] == pytest.approx(0.060)


async def test_single_flight_cancelled_leader_does_not_cancel_joiners(clock: FakeClock) -> None:
    e = Env(clock, delay=0.1)
    async with e.cache:
        leader = asyncio.create_task(e.cache.embed("shared text"))
        await asyncio.sleep(0.02)
        joiner = asyncio.create_task(e.cache.embed("shared text"))
        await asyncio.sleep(0.02)
        leader.cancel()
        assert await joiner == FakeCloud.vector("shared text")
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert len(e.cloud.requests) == 1
        assert e.cache.kv("EMBEDDINGS_CACHE").counts["put"] == 1
        assert len(e.cache._flights) == 0


async def test_single_flight_batch_failure_reaches_single_joiners(clock: FakeClock) -> None:
    from dualcache import BackendError

    e = Env(clock, delay=0.05, retry=RetryPolicy(max_attempts=1))
    e.cloud.always_fail = {"gateway": 400}
    async with e.cache:

        async def late_embed() -> list[float]:
            await asyncio.sleep(0.01)
            return await e.cache.embed("a")

        batch, single = await asyncio.gather(e.cache.embed_many(["a", "b"]), late_embed(), return_exceptions=True)
        assert isinstance(batch, BackendError) and batch.status_code == 400
        assert single is batch  # the joiner gets the leader's error, not a second request
        assert len(e.cloud.requests) == 1
        snap = e.snap("embeddings")
        assert (snap["failures"], snap["provider_calls"]) == (3, 0)
        e.cloud.always_fail = {}
        assert await e.cache.embed("a") == FakeCloud.vector("a")


class _CrashingKV(MemoryKVBackend):
    """A backend failing with a foreign exception, as an injected backend may."""

    async def get(self, key: str) -> bytes | None:
        raise OSError("disk on fire")

    async def get_many(self, keys: Any) -> dict[str, bytes]:
        raise OSError("disk on fire")

    async def put(self, entry: Any) -> None:
        raise OSError("disk on fire")


async def test_kv_foreign_exception_is_a_counted_miss(clock: FakeClock) -> None:
    e = Env(clock, backend=_CrashingKV())
    async with e.cache:
        assert await e.cache.embed("t") == FakeCloud.vector("t")
        assert await e.cache.embed_many(["t", "u"]) == [FakeCloud.vector("t"), FakeCloud.vector("u")]
        snap = e.snap("embeddings")
        assert (snap["errors"], snap["failures"], snap["provider_calls"]) == (2, 0, 3)


async def test_kv_write_failure_alone_never_fails_the_call(clock: FakeClock) -> None:
    backend = _BrokenKV(read=False, write=True)
    e = Env(clock, backend=backend)
    async with e.cache:
        assert await e.cache.detect_spam(job_id="j", messages=MSGS) == await e.cache.detect_spam(
            job_id="j", messages=MSGS
        )
        snap = e.snap("spam_detection")
        assert (snap["requests"], snap["provider_calls"], snap["errors"], snap["failures"]) == (2, 2, 2, 0)


async def test_retries_are_bounded_in_total_time_even_with_a_slow_upstream(clock: FakeClock) -> None:
    policies = Policies.with_overrides({"embeddings": {"direct_fallback": False}})
    retry = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=1.0, total_timeout=0.2)
    e = Env(clock, delay=5.0, retry=retry, policies=policies, upstream_timeout=60.0, real_sleep=True)
    async with e.cache:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailableError, match="timed out"):
            await e.cache.embed("t")
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 1.0  # not 5 attempts x 60 s: the budget cuts the attempt itself
    assert len(e.cloud.requests) == 1


async def test_unknown_operation_is_invalid_input(env: Env) -> None:
    with pytest.raises(InvalidInputError, match="unknown operation 'chat'.*embeddings"):
        env.cache.policies.for_operation("chat")
    assert env.cloud.requests == []


async def test_secrets_not_in_error_messages(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    from dualcache import AuthenticationError

    caplog.set_level(logging.DEBUG)
    e = Env(clock, gateway_token="gw-secret-token")
    e.cloud.always_fail = {"gateway": 401}
    async with e.cache:
        with pytest.raises(AuthenticationError) as info:
            await e.cache.generate_application(messages=MSGS)
    text = f"{info.value} {info.value!r} {info.value.__cause__!r} {caplog.text}"
    for secret in ("cf-secret-token", "sk-secret-key", "gw-secret-token"):
        assert secret not in text
    assert "HTTP 401" in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.embed("ok \ud800 text"), id="embed"),
        pytest.param(lambda c: c.embed_many(["fine", "bad \udfff"]), id="embed-many"),
        pytest.param(lambda c: c.analyze_job(user_id="u\ud800", job_id="j", messages=MSGS), id="user-id"),
        pytest.param(lambda c: c.detect_spam(job_id="\udc80", messages=MSGS), id="job-id"),
        pytest.param(lambda c: c.kv("SESSIONS").put("k\ud800", "v"), id="kv-key"),
    ],
)
async def test_lone_surrogates_are_invalid_input_before_any_request(env: Env, call: Callable[[DualCache], Any]) -> None:
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        await call(env.cache)
    assert env.cloud.requests == []
    assert all(sum(s.counts.values()) == 0 for s in env.cache._stores.values())


async def test_openai_json_mode_always_has_a_json_instruction(env: Env) -> None:
    # OpenAI answers 400 to response_format json_object when no message mentions JSON.
    await env.cache.generate_application(messages=MSGS)
    asked = [{"role": "system", "content": "Answer in JSON, please."}, *MSGS]
    await env.cache.generate_application(messages=asked)
    await env.cache.generate_application(messages=MSGS, json_output=False)
    first, second, text = (json.loads(r.content)["messages"] for r in env.cloud.requests)
    assert first == [{"role": "system", "content": "Answer with one JSON object."}, *MSGS]
    assert second == asked and text == MSGS
    env.cloud.requests.clear()
    env.cloud.fail("gateway", 400)  # Workers AI fails (not retried), so OpenAI answers the analysis
    await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
    fallback = json.loads(env.cloud.requests[-1].content)
    assert fallback["model"] == "gpt-4o-mini" and "JSON" in fallback["messages"][0]["content"]


async def test_single_flight_analyses_fold_per_user_never_across_users(clock: FakeClock) -> None:
    e = Env(clock, delay=0.02)
    async with e.cache:
        calls = [
            e.cache.analyze_job(user_id=u, job_id="job", messages=MSGS) for u in ("alice", "bob") for _ in range(5)
        ]
        results = await asyncio.gather(*calls)
        assert len(e.cloud.requests) == 2  # one per user, not one per call and never one for both
        assert [r["echo"] for r in results] == [MSGS[-1]["content"]] * 10
        results[0]["mutated"] = True  # each caller owns its answer
        assert all("mutated" not in r for r in results[1:])
        assert e.cache.kv("JOB_ANALYSIS_CACHE").counts["put"] == 2
        snap = e.snap("job_analysis")
        assert (snap["requests"], snap["provider_calls"], snap["coalesced"]) == (10, 2, 8)


# -- the hit path, local cancellation, partial batches, corrupt records ----------------------------------

CALLS: dict[str, tuple[Callable[[DualCache], Any], str, int]] = {
    # name: (call, stats operation, requests it counts)
    "embed": (lambda c: c.embed("shared text"), "embeddings", 1),
    "embed_many": (lambda c: c.embed_many(["shared text", "other text"]), "embeddings", 2),
    "analyze_job": (lambda c: c.analyze_job(user_id="u", job_id="j", messages=MSGS), "job_analysis", 1),
    "detect_spam": (lambda c: c.detect_spam(job_id="j", messages=MSGS), "spam_detection", 1),
}
OPERATIONS = [pytest.param(name, id=name) for name in CALLS]


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.001)


def _other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def _waiters(e: Env) -> int:
    """How many callers wait on the computation the most callers wait on."""
    return max((f._group.waiters for f in e.cache._flights._flights.values()), default=0)


async def test_hit_path_creates_no_task_and_no_flight(env: Env) -> None:
    await env.cache.embed("hot key")
    await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
    loop = asyncio.get_running_loop()
    created: list[Any] = []
    factory = loop.get_task_factory()
    loop.set_task_factory(lambda lp, coro, **kw: created.append(coro) or asyncio.Task(coro, loop=lp, **kw))
    try:
        assert await env.cache.embed("hot key") == FakeCloud.vector("hot key")
        assert (await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS))["echo"]
    finally:
        loop.set_task_factory(factory)
    assert created == []
    assert env.snap("embeddings")["kv_hits"] == 1 and env.snap("job_analysis")["kv_hits"] == 1


async def test_single_flight_racing_misses_share_one_kv_read_and_one_upstream_call(clock: FakeClock) -> None:
    e = Env(clock, delay=0.02)
    async with e.cache:
        results = await asyncio.gather(*(e.cache.embed("racing") for _ in range(10)))
        many = await asyncio.gather(*(e.cache.embed_many(["racing 2", "racing 3"]) for _ in range(5)))
        assert all(r == FakeCloud.vector("racing") for r in results)
        assert all(m == [FakeCloud.vector("racing 2"), FakeCloud.vector("racing 3")] for m in many)
        store = e.cache.kv("EMBEDDINGS_CACHE")
        assert (store.counts["get"], store.counts["get_many"], len(e.cloud.requests)) == (1, 1, 2)
        snap = e.snap("embeddings")
        assert (snap["requests"], snap["provider_calls"], snap["coalesced"], snap["kv_hits"]) == (20, 3, 17, 0)


@pytest.mark.parametrize("name", OPERATIONS)
async def test_cancellation_of_the_leader_leaves_its_joiners_served(clock: FakeClock, name: str) -> None:
    call, op, n = CALLS[name]
    e = Env(clock, delay=0.3)
    async with e.cache:
        leader = asyncio.create_task(call(e.cache))
        await _until(lambda: len(e.cloud.requests) == 1)
        joiners = [asyncio.create_task(call(e.cache)) for _ in range(2)]
        await _until(lambda: _waiters(e) == 3)
        leader.cancel()
        first, second = await asyncio.gather(*joiners)
        assert first == second and first
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert len(e.cloud.requests) == 1 and e.cloud.cancelled == 0
        assert sum(s.counts["put"] + s.counts["put_many"] for s in e.cache._stores.values()) == 1
        snap = e.snap(op)
        assert (snap["requests"], snap["failures"], snap["provider_calls"] + snap["coalesced"]) == (3 * n, n, 2 * n)
        assert snap["upstream_requests"] == 1
        assert len(e.cache._flights) == 0 and e.cache._flights.abandoned == 0


@pytest.mark.parametrize("name", OPERATIONS)
async def test_cancellation_of_a_joiner_leaves_the_leader_and_others_served(clock: FakeClock, name: str) -> None:
    call, op, n = CALLS[name]
    e = Env(clock, delay=0.3)
    async with e.cache:
        leader = asyncio.create_task(call(e.cache))
        await _until(lambda: len(e.cloud.requests) == 1)
        joiners = [asyncio.create_task(call(e.cache)) for _ in range(2)]
        await _until(lambda: _waiters(e) == 3)
        joiners[0].cancel()
        assert await leader == await joiners[1]
        with pytest.raises(asyncio.CancelledError):
            await joiners[0]
        assert len(e.cloud.requests) == 1
        snap = e.snap(op)
        assert (snap["requests"], snap["failures"], snap["provider_calls"], snap["coalesced"]) == (3 * n, n, n, n)


@pytest.mark.parametrize("name", OPERATIONS)
async def test_cancellation_of_everyone_abandons_the_upstream_call_and_leaks_nothing(
    clock: FakeClock, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    call, op, n = CALLS[name]
    e = Env(clock, delay=0.3)
    async with e.cache:
        callers = [asyncio.create_task(call(e.cache)) for _ in range(3)]
        await _until(lambda: len(e.cloud.requests) == 1 and _waiters(e) == 3)
        for caller in callers:
            caller.cancel()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        # The computation is cancelled, but its admitted upstream request is abandoned, not cancelled: cancelling
        # a pooled request from outside is what wedged httpcore's pool. It ends on its own (bounded
        # by its budget, then the grace period) and its answer is dropped.
        await _until(lambda: _other_tasks() == [])
        assert e.cloud.cancelled == 0
        assert e.cache._flights.abandoned == 1 and len(e.cache._flights) == 0 and len(e.cache._reads) == 0
        assert sum(s.counts["put"] + s.counts["put_many"] for s in e.cache._stores.values()) == 0
        assert e.snap(op)["failures"] == 3 * n
        e.cloud.delay = 0
        assert await call(e.cache)  # a fresh flight, not the cancelled one
        assert len(e.cloud.requests) == 2
    assert "never retrieved" not in caplog.text


async def test_embed_many_cancelled_leader_serves_embed_and_embed_many_joiners(clock: FakeClock) -> None:
    e = Env(clock, delay=0.3)
    async with e.cache:
        leader = asyncio.create_task(e.cache.embed_many(["a", "b", "c"]))
        await _until(lambda: len(e.cloud.requests) == 1)
        single = asyncio.create_task(e.cache.embed("b"))
        batch = asyncio.create_task(e.cache.embed_many(["c", "a", "new"]))
        await _until(lambda: _waiters(e) == 3 and len(e.cloud.requests) == 2)
        leader.cancel()
        assert await single == FakeCloud.vector("b")
        assert await batch == [FakeCloud.vector(t) for t in ("c", "a", "new")]
        with pytest.raises(asyncio.CancelledError):
            await leader
        sent = [json.loads(r.content)["text"] for r in e.cloud.requests]
        assert sent == [["a", "b", "c"], ["new"]]
        assert {k for k in env_keys(e)} == {ekey(t) for t in ("a", "b", "c", "new")}


def env_keys(e: Env) -> set[str]:
    return set(e.backends[Namespace.EMBEDDINGS_CACHE]._data)


class _FlakyBulkKV(MemoryKVBackend):
    """Bulk reads number ``fail`` (1-based) fail; everything else works."""

    def __init__(self, *, clock: FakeClock, fail: set[int]) -> None:
        super().__init__(clock=clock)
        self.fail, self.bulk_reads = fail, 0

    async def get_many(self, keys: Any) -> dict[str, bytes]:
        self.bulk_reads += 1
        if self.bulk_reads in self.fail:
            raise BackendUnavailableError("kv chunk failed", backend="kv", status_code=503)
        return await super().get_many(keys)


async def test_embed_many_failed_chunk_costs_only_its_own_keys(clock: FakeClock) -> None:
    backend = _FlakyBulkKV(clock=clock, fail={4})  # reads 1-2 fill the cache; read 4 is the second chunk below
    e = Env(clock, backend=backend)
    texts = [f"posting {i}" for i in range(250)]
    async with e.cache:
        await e.cache.embed_many(texts[:150])  # 150 cached (2 bulk reads)
        e.cache.stats.reset()
        e.cloud.requests.clear()
        vectors = await e.cache.embed_many(texts)  # chunks: 0-99 (cached), 100-199 (fails), 200-249 (new)
        assert vectors == [FakeCloud.vector(t) for t in texts]
        snap = e.snap("embeddings")
        assert (snap["kv_hits"], snap["provider_calls"], snap["errors"], snap["failures"]) == (100, 150, 1, 0)
        assert sorted(t for r in e.cloud.requests for t in json.loads(r.content)["text"]) == sorted(texts[100:])
        assert backend.bulk_reads == 2 + 3


DEEP = ("[" * 100_000 + "]" * 100_000).encode()
NOT_UTF8 = b'{"embedding": [0.1], "model": "\xff\xfe\x80"}'


@pytest.mark.parametrize("stored", [pytest.param(DEEP, id="deep-nesting"), pytest.param(NOT_UTF8, id="not-utf8")])
@pytest.mark.parametrize("name", ["embed", "embed_many", "analyze_job"])
async def test_corrupt_record_is_a_miss_and_overwritten(env: Env, stored: bytes, name: str) -> None:
    if name == "analyze_job":
        ns, key = Namespace.JOB_ANALYSIS_CACHE, "analysis:u:j"

        async def call() -> Any:
            return await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)

    else:
        ns, key = Namespace.EMBEDDINGS_CACHE, ekey("text")

        async def call() -> Any:
            return await (env.cache.embed("text") if name == "embed" else env.cache.embed_many(["text", "more"]))

    await env.cache.kv(ns).put(key, stored)
    first = await call()
    assert env.backends[ns]._data[key][0] != stored  # overwritten by the fresh answer
    assert await call() == first
    op = "job_analysis" if name == "analyze_job" else "embeddings"
    snap = env.snap(op)
    assert snap["failures"] == 0 and snap["kv_hits"] >= 1
    assert len(env.cloud.requests) == 1


# -- write-behind through DualCache ---------------------------------------------------------------------


class _GatedKV(MemoryKVBackend):
    """Writes wait until ``open`` is set (reads are immediate)."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.open = asyncio.Event()

    async def put(self, entry: Any) -> None:
        await self.open.wait()
        await super().put(entry)

    async def put_many(self, entries: Any) -> None:
        await self.open.wait()
        await super().put_many(entries)


async def test_write_behind_no_caller_waits_for_a_write(clock: FakeClock) -> None:
    backend = _GatedKV(clock=clock)
    e = Env(clock, backend=backend, write_behind=True, kv_timeout=None)
    async with e.cache:
        async with asyncio.timeout(5):  # with writes blocked, a caller that waited for one would never return
            vector = await e.cache.embed("t")
            batch = await e.cache.embed_many(["t", "u", "v"])
            analysis = await e.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
            assert await e.cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == analysis
        assert batch[0] == vector
        assert backend._data == {}  # nothing written yet
        snap = e.snap("embeddings")
        assert (snap["kv_hits"], snap["provider_calls"]) == (1, 3)  # "t" served from the queue, not re-computed
        assert e.snap("job_analysis")["kv_hits"] == 1
        backend.open.set()
        assert await e.cache.flush() == 0
        assert set(backend._data) == {ekey("t"), ekey("u"), ekey("v"), "analysis:u:j"}
    assert e.snap("embeddings")["kv_write_dropped"] == 0


async def test_write_behind_aclose_counts_what_it_could_not_flush(clock: FakeClock) -> None:
    from dualcache import WriteBehindPolicy

    backend = _GatedKV(clock=clock)
    e = Env(clock, backend=backend, write_behind=WriteBehindPolicy(close_timeout=0.05), kv_timeout=None)
    async with e.cache:
        await e.cache.embed_many(["a", "b"])
    assert backend._data == {}
    assert e.snap("embeddings")["kv_write_dropped"] == 2
    assert _other_tasks() == []


def test_write_behind_option_is_validated() -> None:
    with pytest.raises(ConfigError, match="write_behind must be a bool or a WriteBehindPolicy, got str"):
        DualCache(write_behind="yes")  # type: ignore[arg-type]


async def test_write_behind_failed_writes_are_counted_and_never_fail_the_call(clock: FakeClock) -> None:
    from dualcache import WriteBehindPolicy

    policy = WriteBehindPolicy(max_attempts=2, base_delay=0.0)
    e = Env(clock, backend=_BrokenKV(read=False, write=True), write_behind=policy)
    async with e.cache:
        assert await e.cache.embed("t") == FakeCloud.vector("t")
        assert await e.cache.flush() == 0
        assert e.snap("embeddings")["errors"] == 1
        assert await e.cache.embed_many(["u", "v"]) == [FakeCloud.vector("u"), FakeCloud.vector("v")]
        assert await e.cache.flush() == 0
        snap = e.snap("embeddings")
        assert (snap["failures"], snap["provider_calls"], snap["kv_write_dropped"]) == (0, 3, 0)
        assert snap["errors"] == 2  # once per failed batch, not per record or per attempt
        assert e.cache._writes is not None and e.cache._writes.failed == 3
