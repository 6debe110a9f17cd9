"""Custom operations, invalidation and versions end to end against the emulator (the public API only)."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import TOKEN

from dualcache import DualCache, Models, Policies, RetryPolicy

LLAMA = "@cf/meta/llama-3.1-8b-instruct"
BGE = "@cf/baai/bge-base-en-v1.5"
SUMMARIZE = {"kv": True, "kv_ttl": 86_400, "kv_namespace": "API_CACHE", "gateway": "skip"}
HOSTILE = ["u:1", "u", "u%3A1", "u/1", "ü", "%v2", "u:1:"]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def make_cache(emu: Any, overrides: dict[str, Any] | None = None, **kwargs: Any) -> DualCache:
    policies = emu.outputs.policies.model_dump(mode="json") | {"summarize_job": SUMMARIZE}
    for name, fields in (overrides or {}).items():
        policies[name] = {**policies[name], **fields}
    kwargs.setdefault("retry", RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=1.0, total_timeout=10.0))
    return DualCache.from_outputs(
        emu.outputs,
        api_token=TOKEN,
        openai_api_key="sk-local",
        policies=Policies.model_validate(policies),
        write_behind=False,
        **kwargs,
    )


def upstream(emu: Any, model: str) -> int:
    return int(emu.control.stats()["upstream"].get(model, 0))


async def summarize(cache: DualCache, job: str, user: str | None = "u1") -> dict[str, Any]:
    return await cache.run("summarize_job", key=job, user_id=user, model=LLAMA, messages=msgs(f"Summarize {job}"))


async def test_e2e_custom_operation_caches_per_key_and_per_user_and_is_counted(emu: Any) -> None:
    async with make_cache(emu) as cache:
        first = await summarize(cache, "job-1")
        assert await summarize(cache, "job-1") == first
        await summarize(cache, "job-1", user="u2")
        await summarize(cache, "job-2")
        assert upstream(emu, LLAMA) == 3
        page = await cache.kv("API_CACHE").list_page(prefix="summarize_job:")
        assert [k.name for k in page.keys] == [
            "summarize_job:u1:job-1",
            "summarize_job:u1:job-2",
            "summarize_job:u2:job-1",
        ]
        snap = cache.stats.snapshot()["summarize_job"]
        assert (snap["requests"], snap["kv_hits"], snap["provider_calls"], snap["cost"]) == (4, 1, 3, None)
        assert "summarize_job" in cache.stats.report()


async def test_e2e_forget_and_forget_user_with_hostile_ids_leave_other_users_alone(emu: Any) -> None:
    async with make_cache(emu) as cache:
        for user in HOSTILE:
            await cache.analyze_job(user_id=user, job_id="job:1/é", messages=msgs("Rate job 1"))
            await summarize(cache, "job-1", user=user)
        await cache.detect_spam(job_id="u:1", messages=msgs("Is this spam? JSON"))
        calls = upstream(emu, LLAMA)

        assert await cache.forget("job_analysis", user_id="u:1", key="job:1/é") == 1
        assert await cache.forget("job_analysis", user_id="u:1", key="job:1/é") == 0
        assert await cache.forget_user("u:1") == 1  # the analysis went already: the summary is left
        assert await cache.forget_user("u:1") == 0

        for user in HOSTILE[1:]:  # nobody else lost a record: all hits
            await cache.analyze_job(user_id=user, job_id="job:1/é", messages=msgs("Rate job 1"))
            await summarize(cache, "job-1", user=user)
        await cache.detect_spam(job_id="u:1", messages=msgs("Is this spam? JSON"))
        assert upstream(emu, LLAMA) == calls
        await cache.analyze_job(user_id="u:1", job_id="job:1/é", messages=msgs("Rate job 1"))
        await summarize(cache, "job-1", user="u:1")
        assert upstream(emu, LLAMA) == calls + 2
        # Each forget_user is one listing per user-scoped operation with KV, and one bulk delete of what it found.
        kv = emu.control.stats()["kv"]
        assert kv["list"] == 4 and kv["bulk_delete"] == 2


async def test_e2e_version_bump_misses_and_old_records_stay_until_their_ttl(emu: Any) -> None:
    async with make_cache(emu) as cache:
        await summarize(cache, "job-1")
        await cache.detect_spam(job_id="job-1", messages=msgs("Is this spam? JSON"))
    async with make_cache(emu, {"summarize_job": {"version": "2"}, "spam_detection": {"version": "2"}}) as cache:
        await summarize(cache, "job-1")
        await summarize(cache, "job-1")
        await cache.detect_spam(job_id="job-1", messages=msgs("Is this spam? JSON"))
        assert upstream(emu, LLAMA) == 4  # nothing old was served, not even from the gateway
        assert emu.control.stats()["gateway"]["hits"] == 0
        names = [k.name async for k in cache.kv("API_CACHE").list_keys()]
        assert sorted(names) == ["spam:%v2:job-1", "spam:job-1", "summarize_job:u1:%v2:job-1", "summarize_job:u1:job-1"]


@pytest.mark.parametrize(
    ("models", "overrides"),
    [
        pytest.param(Models(embedding_pooling="cls"), {}, id="pooling"),
        pytest.param(Models(embedding_max_chars=100), {}, id="truncation"),
        pytest.param(Models(), {"embeddings": {"version": "2"}}, id="version"),
    ],
)
async def test_e2e_embedding_parameter_change_misses(emu: Any, models: Models, overrides: dict[str, Any]) -> None:
    text = "Senior Python engineer " * 10
    async with make_cache(emu) as cache:
        default = await cache.embed(text)
    async with make_cache(emu, overrides, models=models) as cache:
        changed = await cache.embed(text)
        assert await cache.embed_many([text]) == [changed]
        stats = emu.control.stats()
        assert stats["upstream"][BGE] == 2  # a miss in KV and in the gateway (the body or the key changed)
        names = [k.name async for k in cache.kv("EMBEDDINGS_CACHE").list_keys()]
        assert len(names) == 2 and cache.record_key("embeddings", key=text) in names
    if models.embedding_pooling == "cls":
        assert changed != default  # another vector: never served as the mean one


async def test_e2e_refresh_skips_the_gateway_once(emu: Any) -> None:
    async with make_cache(emu) as cache:
        await cache.detect_spam(job_id="job-1", messages=msgs("Is this spam? JSON"))
        await cache.forget("spam_detection", key="job-1")
        await cache.detect_spam(job_id="job-1", messages=msgs("Is this spam? JSON"))
        assert emu.control.stats()["gateway"]["hits"] == 1  # forget does not reach the gateway's cache
        await cache.detect_spam(job_id="job-1", messages=msgs("Is this spam? JSON"), refresh=True)
        stats = emu.control.stats()
        assert (stats["gateway"]["skips"], stats["upstream"][LLAMA]) == (1, 2)
