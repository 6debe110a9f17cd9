"""DualCache end to end against the emulator, counting what reached it through its control endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from e2e_support import PROJECT_DIR, TOKEN

from dualcache import (
    BackendUnavailableError,
    DualCache,
    InvalidInputError,
    Namespace,
    Policies,
    RetryPolicy,
    Timeouts,
)

EMBED = "@cf/baai/bge-base-en-v1.5"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
MSGS = [{"role": "user", "content": "Rate this job for a senior Python engineer"}]
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=2.0, total_timeout=10.0)


def make_cache(emu: Any, **kwargs: Any) -> DualCache:
    kwargs.setdefault("retry", FAST_RETRY)
    return DualCache.from_outputs(emu.outputs, api_token=TOKEN, openai_api_key="sk-local", **kwargs)


def upstream(emu: Any, model: str) -> int:
    return int(emu.control.stats()["upstream"].get(model, 0))


async def test_e2e_embed_dual_layer_flow(emu: Any) -> None:
    async with make_cache(emu) as cache:
        vector = await cache.embed("Backend engineer, Go and Python, remote")
        assert len(vector) == 768
        assert await cache.embed("Backend engineer, Go and Python, remote") == vector
        stats = emu.control.stats()
        assert stats["upstream"] == {EMBED: 1}
        assert stats["gateway"]["misses"] == 1
        assert (stats["kv"]["get"], stats["kv"]["put"]) == (2, 1)
        # The record is in the stack's EMBEDDINGS_CACHE namespace, in the version 1 format.
        raw = await cache.kv("EMBEDDINGS_CACHE").list_page(prefix="embed:")
        assert len(raw.keys) == 1
        assert cache.stats.snapshot()["embeddings"]["kv_hits"] == 1


async def test_e2e_gateway_hit_after_kv_loss(emu: Any) -> None:
    async with make_cache(emu) as cache:
        await cache.embed("same text")
        key = (await cache.kv("EMBEDDINGS_CACHE").list_page()).keys[0].name
        await cache.kv("EMBEDDINGS_CACHE").delete(key)
        await cache.embed("same text")
        stats = emu.control.stats()
        assert stats["upstream"] == {EMBED: 1}
        assert stats["gateway"]["hits"] == 1
        snap = cache.stats.snapshot()["embeddings"]
        assert (snap["gateway_hits"], snap["provider_calls"], snap["saved"]) == (1, 1, 0.001)


async def test_e2e_single_flight_one_upstream_call_and_one_write(emu: Any) -> None:
    async with make_cache(emu) as cache:
        results = await asyncio.gather(*(cache.embed("burst of identical requests") for _ in range(25)))
        assert all(r == results[0] for r in results)
    stats = emu.control.stats()
    assert stats["upstream"] == {EMBED: 1}
    assert stats["kv"]["put"] == 1 and stats["kv"]["get"] == 1


async def test_e2e_embed_many_partial_hits(emu: Any) -> None:
    texts = [f"job posting number {i}" for i in range(100)]
    async with make_cache(emu) as cache:
        await cache.embed_many(texts[::2])  # 50 cached
        assert await cache.flush() == 0  # the records are written behind the call: let them land first
        emu.control.reset()
        vectors = await cache.embed_many(texts + texts[:2])
        assert vectors[:100] == await cache.embed_many(texts)
        assert vectors[100:] == vectors[:2]
    requests = emu.control.requests()
    stats = emu.control.stats()
    assert stats["kv"]["bulk_get"] == 2  # one per embed_many call after the reset
    assert stats["kv"]["bulk_write"] == 1
    assert stats["upstream"] == {EMBED: 1}
    gateway_calls = [r for r in requests if "/workers-ai/" in r["path"]]
    assert len(gateway_calls) == 1


async def test_e2e_kv_down_still_served_and_counted(emu: Any) -> None:
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 503}})
    async with make_cache(emu) as cache:
        assert len(await cache.embed("kv is down")) == 768
        assert len(await cache.embed_many(["kv is down", "still down"])) == 2
        analysis = await cache.analyze_job(user_id="u1", job_id="j1", messages=MSGS)
        assert analysis["model"] == LLAMA
        snap = cache.stats.snapshot()
    assert snap["embeddings"]["errors"] == 2 and snap["embeddings"]["failures"] == 0
    assert snap["job_analysis"]["errors"] == 1
    assert emu.control.stats()["faults"]["kv"] == 3  # reads only: no write after a failed read


async def test_e2e_kv_timeout_is_a_fast_miss(emu: Any) -> None:
    emu.control.set_faults({"kv": {"timeout": True}})
    async with make_cache(emu, kv_timeout=0.2) as cache:
        started = asyncio.get_running_loop().time()
        assert len(await cache.embed("slow kv")) == 768
        assert asyncio.get_running_loop().time() - started < 3.0
        assert cache.stats.snapshot()["embeddings"]["errors"] == 1


async def test_e2e_gateway_down_falls_back_to_direct(emu: Any) -> None:
    emu.control.set_faults({"gateway": {"error_rate": 1.0, "status": 503}})
    async with make_cache(emu) as cache:
        assert len(await cache.embed("gateway outage")) == 768
    stats = emu.control.stats()
    # One attempt on the gateway route: the gateway owns retries there (cf-aig-max-attempts), the client
    # falls back to the direct route instead of retrying on top of them.
    assert stats["faults"]["gateway"] == 1
    assert stats["direct"] == {EMBED: 1}


async def test_e2e_gateway_down_without_fallback_fails(emu: Any) -> None:
    emu.control.set_faults({"gateway": {"error_rate": 1.0, "status": 502}})
    policies = Policies.with_overrides({"spam_detection": {"direct_fallback": False}})
    async with make_cache(emu, policies=policies) as cache:
        with pytest.raises(BackendUnavailableError):
            await cache.detect_spam(job_id="j", messages=MSGS)
    assert emu.control.stats()["direct"] == {}


async def test_e2e_workers_ai_down_job_analysis_falls_back_to_openai(emu: Any) -> None:
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 503, "provider": "workers-ai"}})
    policies = Policies.with_overrides({"job_analysis": {"direct_fallback": False}})
    async with make_cache(emu, policies=policies, retry=RetryPolicy(max_attempts=1)) as cache:
        analysis = await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert analysis["model"] == "gpt-4o-mini"
        assert await cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == analysis
        stored = await cache.kv("JOB_ANALYSIS_CACHE").get_json("analysis:u:j")
        assert stored == analysis
    stats = emu.control.stats()
    assert stats["faults"]["upstream"] == 1
    assert stats["upstream"] == {LLAMA: 1, "gpt-4o-mini": 1}


def _rate_limited_config() -> Any:
    from dualcache import load_stack_config
    from dualcache._stackconfig import RateLimitSettings

    config = load_stack_config(PROJECT_DIR, "dev")
    gateway = config.gateway.model_copy(update={"rate_limiting": RateLimitSettings(limit=1, interval=60)})
    return config.model_copy(update={"gateway": gateway})


async def test_e2e_429_with_retry_after_is_retried(tmp_path: Any) -> None:
    from dualcache.local import Emulator

    with Emulator(config=_rate_limited_config(), data_dir=tmp_path / "emu", token=TOKEN) as emu:
        waits: list[float] = []

        async def sleep(seconds: float) -> None:  # move the emulator's clock instead of sleeping
            waits.append(seconds)
            await asyncio.to_thread(emu.control.advance_clock, seconds)

        # owner="client": the client retries on the gateway route (the gateway is asked for one attempt).
        retry = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=120.0, total_timeout=300.0, owner="client")
        # A Retry-After of up to 60 s is honoured only within the gateway route's budget (10 s by default).
        async with make_cache(emu, retry=retry, sleep=sleep, timeouts=Timeouts(gateway=300.0)) as cache:
            await cache.embed("first request")
            await cache.embed("second request, rate limited once")
            snap = cache.stats.snapshot()["embeddings"]
        stats = emu.control.stats()
        assert stats["gateway"]["rate_limited"] == 1
        assert stats["upstream"] == {EMBED: 2}
        assert len(waits) == 1 and 1 <= waits[0] <= 60
        assert (snap["upstream_requests"], snap["errors"], snap["provider_calls"]) == (3, 1, 2)


async def test_e2e_ttl_expiry_moves_the_emulator_clock(emu: Any) -> None:
    async with make_cache(emu) as cache:
        await cache.detect_spam(job_id="job-1", messages=MSGS)
        assert await cache.flush() == 0  # the TTL counts from the write: let it land before moving the clock
        emu.control.advance_clock(6 * 86_400)
        await cache.detect_spam(job_id="job-1", messages=MSGS)  # KV hit (7 d TTL)
        assert upstream(emu, LLAMA) == 1
        emu.control.advance_clock(86_400 + 1)
        await cache.detect_spam(job_id="job-1", messages=MSGS)  # KV expired, gateway (24 h) expired too
        assert upstream(emu, LLAMA) == 2
        snap = cache.stats.snapshot()["spam_detection"]
        assert (snap["requests"], snap["kv_hits"], snap["provider_calls"]) == (3, 1, 2)


async def test_e2e_bad_input_sends_nothing(emu: Any) -> None:
    async with make_cache(emu) as cache:
        emu.control.reset()
        calls = [
            cache.embed(""),
            cache.embed_many(["fine", ""]),
            cache.analyze_job(user_id="", job_id="j", messages=MSGS),
            cache.detect_spam(job_id="j", messages=[]),
            cache.kv("SESSIONS").put("k" * 513, "v"),
            cache.kv("SESSIONS").put("k", "v", ttl=30),
            cache.kv("SESSIONS").put("k", "v", metadata={"x": "y" * 2000}),
        ]
        for call in calls:
            with pytest.raises(InvalidInputError):
                await call
    assert emu.control.stats()["requests"] == 0


async def test_e2e_all_operations_and_namespaces(emu: Any) -> None:
    async with make_cache(emu) as cache:
        assert isinstance(await cache.generate_application(messages=MSGS), dict)
        assert isinstance(await cache.parse_resume(text="Jane Doe, engineer"), dict)
        assert isinstance(await cache.parse_resume(image_url="https://example.test/r.png"), dict)
        for ns in Namespace:
            await cache.kv(ns).put(f"probe:{ns.value}", ns.value, ttl=60)
            assert await cache.kv(ns).get_text(f"probe:{ns.value}") == ns.value
    assert emu.control.stats()["upstream"] == {
        "gpt-4o-mini": 1,
        "@cf/meta/llama-3.3-70b-instruct-fp8-fast": 1,
        "gpt-4o": 1,
    }


async def test_e2e_embed_many_250_texts_with_duplicates_exact_round_trips(emu: Any) -> None:
    distinct = [f"job description {i}: data engineer, Kafka and Python" for i in range(220)]
    batch = distinct + distinct[:15] + distinct[100:115]  # 250 texts, 30 duplicates
    async with make_cache(emu) as cache:
        await cache.embed_many(distinct[:30])  # 30 cached
        assert await cache.flush() == 0
        emu.control.reset()
        vectors = await cache.embed_many(batch)
        assert vectors[220:235] == vectors[:15] and vectors[235:] == vectors[100:115]
        assert len({tuple(v) for v in vectors}) == 220
    stats = emu.control.stats()
    assert stats["kv"]["bulk_get"] == 3  # 220 distinct keys, <= 100 a call
    assert stats["kv"]["bulk_write"] == 2  # 190 new records, written behind in batches of <= 100 keys
    assert stats["kv"]["get"] == 0 and stats["kv"]["put"] == 0
    assert stats["upstream"] == {EMBED: 2}  # 190 distinct misses, <= 100 a call
    assert stats["requests"] == 3 + 2 + 2  # nothing else reached the emulator


async def test_e2e_user_scoped_gateway_cache_is_never_shared_across_users(emu: Any) -> None:
    policies = Policies.with_overrides({"job_analysis": {"gateway": "cache", "gateway_ttl": 3600}})
    async with make_cache(emu, policies=policies) as cache:
        alice = await cache.analyze_job(user_id="alice", job_id="job-1", messages=MSGS)
        await cache.analyze_job(user_id="bob", job_id="job-1", messages=MSGS)  # same body, other user
        assert upstream(emu, LLAMA) == 2
        assert emu.control.stats()["gateway"]["hits"] == 0
        # The same user's identical request may reuse the gateway entry (after a KV loss here).
        await cache.kv("JOB_ANALYSIS_CACHE").delete("analysis:alice:job-1")
        assert await cache.analyze_job(user_id="alice", job_id="job-1", messages=MSGS) == alice
        assert upstream(emu, LLAMA) == 2
        assert emu.control.stats()["gateway"]["hits"] == 1
        assert await cache.kv("JOB_ANALYSIS_CACHE").get_json("analysis:bob:job-1") is not None


async def test_e2e_secrets_never_in_logs_or_errors(emu: Any, caplog: pytest.LogCaptureFixture) -> None:
    from dualcache import AuthenticationError

    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    async with DualCache.from_outputs(
        emu.outputs,
        api_token="wrong-cf-secret",
        gateway_token="gw-secret-value",
        openai_api_key="sk-secret-value",
        retry=FAST_RETRY,
    ) as cache:
        with pytest.raises(AuthenticationError) as info:
            await cache.embed("text")  # KV refuses the token (a counted miss), then Workers AI does too
        letter = await cache.generate_application(messages=MSGS)
        text = " ".join([str(info.value), repr(info.value), repr(cache), repr(letter), caplog.text])
        assert cache.stats.snapshot()["embeddings"]["errors"] >= 1
    assert caplog.text  # there were logs to search
    for secret in ("wrong-cf-secret", "gw-secret-value", "sk-secret-value"):
        assert secret not in text


async def test_e2e_parse_resume_from_a_real_pdf(emu: Any) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 10, "Grace Hopper - Principal Engineer\nSkills: COBOL, compilers, Python")
    async with make_cache(emu) as cache:
        parsed = await cache.parse_resume(pdf=bytes(pdf.output()), user_id="user-7")
        assert isinstance(parsed, dict) and parsed
        snap = cache.stats.snapshot()["resume_parsing"]
    assert (snap["requests"], snap["provider_calls"], snap["cost"]) == (1, 1, 0.01)
    assert emu.control.stats()["upstream"] == {"@cf/meta/llama-3.3-70b-instruct-fp8-fast": 1}
    (call,) = [r for r in emu.control.requests() if "/workers-ai/" in r["path"]]
    assert "llama-3.3" in call["path"]
    assert call["headers"]["cf-aig-skip-cache"] == "true" and call["headers"]["cf-aig-collect-log"] == "true"
    metadata = json.loads(call["headers"]["cf-aig-metadata"])
    assert len(metadata.pop("request")) == 16
    assert metadata == {"operation": "resume_parsing", "user_id": "user-7"}
