"""DualCache end to end through both gateway URL shapes (legacy and REST), the explicit cache decision on
every gateway request, gateway-owned retries that add up with the client's, OpenAI embeddings in either
encoding, and the gateway's log ids on every answer."""

from __future__ import annotations

import re
from typing import Any

import pytest
from e2e_support import TOKEN

from dualcache import (
    BackendUnavailableError,
    DualCache,
    Models,
    Operation,
    Policies,
    RetryPolicy,
    StackOutputs,
    Timeouts,
    UpstreamResult,
)

EMBED = "@cf/baai/bge-base-en-v1.5"
OPENAI_EMBED = "text-embedding-3-small"
MSGS = [{"role": "user", "content": "Rate this job for a senior Python engineer, answer in JSON"}]
RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=2.0, total_timeout=10.0)
LOG_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def outputs(emu: Any, shape: str) -> StackOutputs:
    current: StackOutputs = emu.outputs
    return current.model_copy(update={"gateway_api": shape})


def make_cache(emu: Any, shape: str, **kwargs: Any) -> DualCache:
    kwargs.setdefault("retry", RETRY)
    return DualCache.from_outputs(outputs(emu, shape), api_token=TOKEN, openai_api_key="sk-local", **kwargs)


def gateway_requests(emu: Any) -> list[dict[str, Any]]:
    """The requests the emulator served through a gateway: legacy ``/v1/...`` or REST with cf-aig-gateway-id."""
    return [
        r
        for r in emu.control.requests()
        if r["surface"] == "gateway" or (r["surface"] == "api" and "cf-aig-gateway-id" in r["headers"])
    ]


@pytest.mark.parametrize("shape", ["legacy", "rest"])
async def test_e2e_gateway_shapes_serve_every_operation_with_one_explicit_cache_decision(emu: Any, shape: str) -> None:
    results: list[tuple[Operation, UpstreamResult]] = []
    async with make_cache(emu, shape, on_upstream=lambda op, r: results.append((op, r))) as cache:
        vector = await cache.embed("Backend engineer, Go and Python")
        assert await cache.embed("Backend engineer, Go and Python") == vector  # KV hit
        verdict = await cache.detect_spam(job_id="job-1", messages=MSGS)
        analysis = await cache.analyze_job(user_id="u1", job_id="job-1", messages=MSGS)
        letter = await cache.generate_application(messages=MSGS)
        await cache.flush()
    assert len(vector) == 768 and verdict and analysis and letter
    seen = gateway_requests(emu)
    assert len(seen) == 4  # embed, spam, analysis (Workers AI) and generation (OpenAI): one request each
    for request in seen:
        decisions = [h for h in ("cf-aig-cache-ttl", "cf-aig-skip-cache") if h in request["headers"]]
        assert len(decisions) == 1, request
        assert request["headers"]["cf-aig-max-attempts"] == "3"
    by_path = {r["path"].rsplit("/", 2)[-1]: r["headers"] for r in seen}
    if shape == "rest":
        assert all(r["path"].startswith(f"/client/v4/accounts/{emu.outputs.account_id}/ai/") for r in seen)
        assert {r["headers"]["cf-aig-gateway-id"] for r in seen} == {emu.outputs.gateway_id}
    else:
        assert all(r["path"].startswith(f"/v1/{emu.outputs.account_id}/{emu.outputs.gateway_id}/") for r in seen)
    # Embeddings (600 s in the dev stack) and spam (1 day) are gateway-cached; analysis and generation skip.
    assert by_path["bge-base-en-v1.5"]["cf-aig-cache-ttl"] == "600"
    assert by_path["completions"]["cf-aig-skip-cache"] == "true"
    # Every answer carries the gateway's log id, readable through on_upstream.
    assert [op for op, _ in results] == [
        Operation.EMBEDDINGS,
        Operation.SPAM_DETECTION,
        Operation.JOB_ANALYSIS,
        Operation.APPLICATION_GENERATION,
    ]
    for _, result in results:
        assert result.log_id is not None and LOG_ID.match(result.log_id)
        assert result.headers["cf-aig-log-id"] == result.log_id
        assert result.cache_status == "MISS"
    stats = emu.control.stats()
    assert stats["direct"] == {} and stats["gateway"]["misses"] + stats["gateway"]["skips"] == 4


@pytest.mark.parametrize("shape", ["legacy", "rest"])
async def test_e2e_gateway_shapes_gateway_hit_after_kv_loss_reports_hit(emu: Any, shape: str) -> None:
    results: list[UpstreamResult] = []
    async with make_cache(emu, shape, on_upstream=lambda op, r: results.append(r), write_behind=False) as cache:
        await cache.embed("same text")
        store = cache.kv("EMBEDDINGS_CACHE")
        await store.delete((await store.list_page()).keys[0].name)
        await cache.embed("same text")
    assert [r.cache_status for r in results] == ["MISS", "HIT"]
    assert results[0].log_id != results[1].log_id
    assert emu.control.stats()["upstream"] == {EMBED: 1}


# -- retries: one owner per route --------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["legacy", "rest"])
async def test_e2e_gateway_retries_add_up_with_the_direct_route(emu: Any, shape: str) -> None:
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 503, "provider": "workers-ai"}})
    async with make_cache(emu, shape) as cache:
        with pytest.raises(BackendUnavailableError):
            await cache.embed("workers ai is down")
        snap = cache.stats.snapshot()["embeddings"]
    (gateway_request,) = gateway_requests(emu)  # the client sent the gateway one request
    headers = gateway_request["headers"]
    # RETRY: 3 attempts, base delay 0.01 s (100 ms, the smallest gateway delay), a 10 s gateway budget.
    assert (headers["cf-aig-max-attempts"], headers["cf-aig-retry-delay"], headers["cf-aig-backoff"]) == (
        "3",
        "100",
        "constant",
    )
    assert headers["cf-aig-request-timeout"] == "9800"
    stats = emu.control.stats()
    # 3 upstream attempts by the gateway + 3 by the client on the direct route: 6, not 3 x 3 + 3.
    assert stats["upstream"] == {EMBED: 6}
    assert stats["gateway"]["retries"] == 2 and stats["direct"] == {EMBED: 3}
    assert snap["upstream_requests"] == 4  # HTTP requests the client sent: 1 gateway + 3 direct


async def test_e2e_gateway_retries_recover_inside_the_gateway(emu: Any) -> None:
    # Seeded: the first upstream attempt fails, the second succeeds (the client sees one answered request).
    emu.control.set_faults({"upstream": {"error_rate": 0.5, "status": 502, "seed": 3}})
    async with make_cache(emu, "legacy", retry=RetryPolicy(max_attempts=5, base_delay=0.01)) as cache:
        vectors = [await cache.embed(f"flaky upstream {i}") for i in range(4)]
        snap = cache.stats.snapshot()["embeddings"]
    stats = emu.control.stats()
    assert all(len(v) == 768 for v in vectors)
    assert stats["direct"] == {}  # every call was answered through the gateway
    assert stats["upstream"][EMBED] == 4 + stats["gateway"]["retries"] and stats["gateway"]["retries"] >= 1
    assert snap["upstream_requests"] == 4


async def test_e2e_gateway_retries_client_owner_asks_the_gateway_for_one_attempt(emu: Any) -> None:
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 503, "provider": "workers-ai"}})
    policies = Policies.with_overrides({"embeddings": {"direct_fallback": False}})
    retry = RetryPolicy(max_attempts=3, base_delay=0.01, total_timeout=10.0, owner="client")
    async with make_cache(emu, "rest", retry=retry, policies=policies) as cache:
        with pytest.raises(BackendUnavailableError):
            await cache.embed("client retries")
    seen = gateway_requests(emu)
    assert [r["headers"]["cf-aig-max-attempts"] for r in seen] == ["1", "1", "1"]
    assert emu.control.stats()["upstream"] == {EMBED: 3}  # 3 client attempts x 1 gateway attempt


async def test_e2e_gateway_request_timeout_follows_the_gateway_budget(emu: Any) -> None:
    async with make_cache(emu, "legacy", timeouts=Timeouts(gateway=4.0)) as cache:
        await cache.embed("budget")
    (request,) = gateway_requests(emu)
    assert request["headers"]["cf-aig-request-timeout"] == str(4000 - 2 * 100)


# -- OpenAI embeddings: base64 and float share one KV record, not one gateway entry ------------------


async def test_e2e_openai_embeddings_base64_and_float_share_one_kv_record(emu: Any) -> None:
    text = "Senior data engineer, Spark, remote EU"
    float_models = Models(embeddings=OPENAI_EMBED, embedding_encoding="float")
    async with make_cache(emu, "legacy", models=float_models, write_behind=False) as cache:
        as_float = await cache.embed(text)
    async with make_cache(emu, "legacy", models=Models(embeddings=OPENAI_EMBED), write_behind=False) as cache:
        as_base64 = await cache.embed(text)  # the default encoding: base64
        snap = cache.stats.snapshot()["embeddings"]
    assert len(as_float) == 1536 and as_base64 == as_float
    assert snap["kv_hits"] == 1 and snap["provider_calls"] == 0
    assert emu.control.stats()["upstream"] == {OPENAI_EMBED: 1}


async def test_e2e_openai_embeddings_encoding_is_part_of_the_gateway_key(emu: Any) -> None:
    no_kv = Policies.with_overrides({"embeddings": {"kv": False}})
    results: list[UpstreamResult] = []
    seen: list[list[float]] = []
    for encoding in ("float", "base64", "float", "base64"):
        models = Models(embeddings=OPENAI_EMBED, embedding_encoding=encoding)
        async with make_cache(
            emu, "rest", models=models, policies=no_kv, on_upstream=lambda op, r: results.append(r)
        ) as cache:
            seen.append(await cache.embed("one text, two bodies"))
    assert [r.cache_status for r in results] == ["MISS", "MISS", "HIT", "HIT"]
    assert all(v == seen[0] for v in seen)
    assert emu.control.stats()["upstream"] == {OPENAI_EMBED: 2}
    keys = {r["headers"]["cf-aig-cache-key"] for r in gateway_requests(emu)}
    assert len(keys) == 2
    # OpenAI embeddings keep the legacy gateway URL on the REST shape (the REST API has no third-party embeddings).
    assert all(r["surface"] == "gateway" for r in gateway_requests(emu))
