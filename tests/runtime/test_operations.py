"""Custom operations, invalidation and versions through DualCache, over memory KV and a mocked cloud."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from runtime_support import FakeClock, FakeCloud, fake_outputs

from dualcache import (
    ConfigError,
    DualCache,
    InvalidInputError,
    MemoryKVBackend,
    Models,
    Operation,
    Policies,
    PriceTable,
    RetryPolicy,
    Scope,
    WriteBehindPolicy,
)

ACCOUNT = "a" * 32
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
MSGS = [{"role": "user", "content": "Summarize this job posting"}]
OUTPUTS = fake_outputs()
SUMMARIZE = {"kv": True, "kv_ttl": 86_400, "kv_namespace": "API_CACHE", "gateway": "skip"}


class GatedCloud:
    """A FakeCloud whose answers wait until ``gate`` is set; ``arrived`` is set when a request came in."""

    def __init__(self) -> None:
        self.cloud = FakeCloud()
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived.set()
        await self.gate.wait()
        return await self.cloud(request)


class GatedKV(MemoryKVBackend):
    """Writes wait until ``open`` is set; ``writing`` is set when one started."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.open = asyncio.Event()
        self.writing = asyncio.Event()

    async def put(self, entry: Any) -> None:
        self.writing.set()
        await self.open.wait()
        await super().put(entry)

    async def put_many(self, entries: Any) -> None:
        self.writing.set()
        await self.open.wait()
        await super().put_many(entries)


def make(
    clock: FakeClock,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    backend: MemoryKVBackend | None = None,
    handler: Any = None,
    **kwargs: Any,
) -> tuple[DualCache, FakeCloud, MemoryKVBackend]:
    kv = backend or MemoryKVBackend(clock=clock)
    cloud = handler.cloud if isinstance(handler, GatedCloud) else FakeCloud()
    kwargs.setdefault("write_behind", False)
    cache = DualCache.from_outputs(
        OUTPUTS,
        api_token="cf-token",
        openai_api_key="sk-key",
        kv=lambda ns: kv,
        transport=httpx.MockTransport(handler or cloud),
        clock=clock,
        policies=Policies.with_overrides({"summarize_job": SUMMARIZE, **(overrides or {})}),
        retry=RetryPolicy(max_attempts=1),
        openai_base_url="https://openai.test/v1",
        **kwargs,
    )
    return cache, cloud, kv


@pytest.fixture
async def env(clock: FakeClock) -> AsyncIterator[tuple[DualCache, FakeCloud, MemoryKVBackend]]:
    cache, cloud, kv = make(clock)
    async with cache:
        yield cache, cloud, kv


# -- the Operation type -------------------------------------------------------------------------------


def test_operation_is_a_validated_string_with_the_builtins_as_constants() -> None:
    assert Operation.JOB_ANALYSIS == "job_analysis" and Operation.JOB_ANALYSIS.value == "job_analysis"
    assert Operation("job_analysis") is Operation.JOB_ANALYSIS
    assert [op.value for op in Operation] == [
        "application_generation",
        "job_analysis",
        "resume_parsing",
        "embeddings",
        "spam_detection",
    ]
    assert Operation["SPAM_DETECTION"] is Operation.SPAM_DETECTION and Operation.SPAM_DETECTION.name == "SPAM_DETECTION"
    with pytest.raises(KeyError):
        Operation["BUILTIN"]
    custom = Operation.parse("summarize_job")
    assert (custom, custom.builtin, Operation.EMBEDDINGS.builtin) == ("summarize_job", False, True)
    for bad in ("Summarize", "two  words", "a__b", "_a", "1a", "x" * 49, "", 3):
        with pytest.raises(InvalidInputError, match="is not valid: use snake_case"):
            Operation.parse(bad)


# -- custom operations ----------------------------------------------------------------------------------


async def test_run_custom_operation_caches_per_key_and_per_user(env: tuple[DualCache, FakeCloud, Any]) -> None:
    cache, cloud, kv = env
    first = await cache.run("summarize_job", key="job-1", user_id="u1", model=LLAMA, messages=MSGS)
    assert await cache.run("summarize_job", key="job-1", user_id="u1", model=LLAMA, messages=MSGS) == first
    await cache.run("summarize_job", key="job-1", user_id="u2", model=LLAMA, messages=MSGS)
    await cache.run("summarize_job", key="job-2", user_id="u1", model=LLAMA, messages=MSGS)
    assert len(cloud.requests) == 3
    assert sorted(kv._data) == ["summarize_job:u1:job-1", "summarize_job:u1:job-2", "summarize_job:u2:job-1"]
    snap = cache.stats.snapshot()["summarize_job"]
    assert (snap["requests"], snap["kv_hits"], snap["provider_calls"]) == (4, 1, 3)
    assert (snap["cost"], snap["saved"], snap["served_without_provider"]) == (None, None, 0.25)
    # The body is the built-in operations' JSON-mode Workers AI call, with the caller's params.
    await cache.run("summarize_job", key="job-3", user_id="u1", model=LLAMA, messages=MSGS, temperature=0.2)
    body = json.loads(cloud.requests[-1].content)
    assert body == {"messages": MSGS, "temperature": 0.2, "response_format": {"type": "json_object"}}
    metadata = json.loads(cloud.requests[-1].headers["cf-aig-metadata"])
    assert len(metadata.pop("request")) == 16
    assert metadata == {"operation": "summarize_job", "user_id": "u1"}


async def test_run_custom_operation_is_single_flight(clock: FakeClock) -> None:
    gated = GatedCloud()
    cache, cloud, _ = make(clock, handler=gated)
    async with cache:
        calls = [
            asyncio.create_task(cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS))
            for _ in range(5)
        ]
        await gated.arrived.wait()
        gated.gate.set()
        answers = await asyncio.gather(*calls)
    assert len(cloud.requests) == 1 and all(a == answers[0] for a in answers)
    snap = cache.stats.snapshot()["summarize_job"]
    assert (snap["provider_calls"], snap["coalesced"], snap["served_without_provider"]) == (1, 4, 0.8)


async def test_run_global_operation_shares_records_and_refuses_user_ids(clock: FakeClock) -> None:
    cache, cloud, kv = make(clock, overrides={"summarize_job": {**SUMMARIZE, "scope": "global"}})
    async with cache:
        await cache.run("summarize_job", key="job-1", model=LLAMA, messages=MSGS)
        await cache.run("summarize_job", key="job-1", model=LLAMA, messages=MSGS)
        with pytest.raises(InvalidInputError, match="scope 'global'.*drop user_id="):
            await cache.run("summarize_job", key="job-1", user_id="u", model=LLAMA, messages=MSGS)
    assert list(kv._data) == ["summarize_job:job-1"] and len(cloud.requests) == 1


async def test_run_falls_back_to_the_next_provider_and_counts_the_fault(env: tuple[DualCache, FakeCloud, Any]) -> None:
    cache, cloud, _ = env
    cloud.always_fail["gateway"] = 503
    cloud.always_fail["direct"] = 503
    answer = await cache.run(
        "summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS, fallback=("openai", "gpt-4o-mini")
    )
    assert answer["model"] == "gpt-4o-mini"
    snap = cache.stats.snapshot()["summarize_job"]
    assert (snap["provider_calls"], snap["failures"]) == (1, 0) and snap["errors"] >= 1


async def test_run_prices_a_custom_operation_from_the_price_table(clock: FakeClock) -> None:
    cache, _, _ = make(clock, prices=PriceTable(summarize_job=0.004))
    async with cache:
        for _ in range(3):
            await cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
    snap = cache.stats.snapshot()["summarize_job"]
    assert (snap["cost"], snap["saved"]) == (0.004, 0.008)
    assert "unknown" not in cache.stats.report()


async def test_stats_report_shows_unknown_cost_and_a_dash_for_kv_off(env: tuple[DualCache, FakeCloud, Any]) -> None:
    cache, _, _ = env
    await cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
    await cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
    await cache.generate_application(messages=MSGS)
    rows = {line.split()[0]: line.split() for line in cache.stats.report().splitlines()[2:8]}
    assert rows["summarize_job"][1:3] == ["2", "50.0%"] and rows["summarize_job"][-2:] == ["unknown", "unknown"]
    assert rows["application_generation"][2] == "–"  # KV off: no hit rate, not "0 %"
    assert rows["application_generation"][6] == "0.0%"  # served without a provider call
    assert "* without summarize_job: no price" in cache.stats.report()
    assert cache.stats.snapshot()["application_generation"]["kv"] is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"operation": "summarise_job"}, r"unknown operation 'summarise_job'.*summarize_job", id="unknown"),
        pytest.param({"operation": "Summarize"}, r"operation name 'Summarize' is not valid", id="not-snake-case"),
        pytest.param({"operation": "embeddings"}, r"use embed\(\) or embed_many\(\)", id="embeddings"),
        pytest.param({"user_id": None}, r"scope 'user'.*pass user_id=", id="user-scope-without-user"),
        pytest.param({"key": ""}, r"key is empty", id="empty-key"),
        pytest.param({"key": 7}, r"key must be a non-empty string", id="key-type"),
        pytest.param(
            {"provider": "anthropic"}, r"provider='anthropic' is not a provider; valid: 'workers-ai'", id="prov"
        ),
        pytest.param({"model": ""}, r"model is empty", id="empty-model"),
        pytest.param({"messages": []}, r"messages must be a non-empty list", id="messages"),
        pytest.param({"response_format": {"type": "text"}}, r"response_format cannot be passed", id="json-mode"),
        pytest.param({"stream": True}, r"stream cannot be passed", id="stream"),
        pytest.param({"fallback": ("openai",)}, r"fallback must be a \(provider, model\) tuple", id="fallback"),
        pytest.param({"seed": object()}, r"params are not JSON-serializable", id="params"),
    ],
)
async def test_run_rejects_bad_input_before_any_request(
    env: tuple[DualCache, FakeCloud, Any], kwargs: dict[str, Any], message: str
) -> None:
    cache, cloud, _ = env
    call: dict[str, Any] = {"operation": "summarize_job", "key": "j", "user_id": "u", "model": LLAMA, "messages": MSGS}
    call.update(kwargs)
    with pytest.raises(InvalidInputError, match=message):
        await cache.run(call.pop("operation"), **call)
    assert cloud.requests == []


async def test_run_without_a_configured_provider_is_a_config_error(clock: FakeClock) -> None:
    cache = DualCache(
        account_id=ACCOUNT,
        kv=lambda ns: MemoryKVBackend(clock=clock),
        policies=Policies.with_overrides({"summarize_job": SUMMARIZE}),
    )
    async with cache:
        with pytest.raises(ConfigError):
            await cache.run("summarize_job", key="j", user_id="u", provider="openai", model="gpt-4o", messages=MSGS)


# -- invalidation ----------------------------------------------------------------------------------------


async def test_forget_removes_one_record_and_the_next_call_misses(env: tuple[DualCache, FakeCloud, Any]) -> None:
    cache, cloud, kv = env
    await cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
    await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
    assert await cache.forget("summarize_job", key="j", user_id="u") == 1
    assert await cache.forget("summarize_job", key="j", user_id="u") == 0
    assert list(kv._data) == ["analysis:u:j"]
    await cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
    assert len(cloud.requests) == 3
    assert await cache.forget("job_analysis", user_id="u", key="j") == 1
    assert await cache.forget("application_generation", user_id="u", key="j") == 0  # KV off: nothing stored


async def test_forget_drops_a_record_still_queued_for_write_behind(clock: FakeClock) -> None:
    backend = GatedKV(clock=clock)
    policy = WriteBehindPolicy(concurrency=1, batch_keys=1)
    cache, _, kv = make(clock, backend=backend, write_behind=policy, kv_timeout=None)
    async with cache:
        await cache.run("summarize_job", key="a", user_id="u", model=LLAMA, messages=MSGS)
        await backend.writing.wait()  # "a" is being written (blocked), so "b" stays queued
        await cache.run("summarize_job", key="b", user_id="u", model=LLAMA, messages=MSGS)
        assert await cache.forget("summarize_job", key="b", user_id="u") == 1
        # "a" is already on its way: forget waits for that write to land, then deletes it.
        forgetting = asyncio.create_task(cache.forget("summarize_job", key="a", user_id="u"))
        await asyncio.sleep(0)
        assert not forgetting.done()
        backend.open.set()
        assert await forgetting == 1
        assert await cache.flush() == 0
    assert kv._data == {}
    assert cache.stats.snapshot()["summarize_job"]["kv_write_dropped"] == 0  # forgotten, not dropped


async def test_forget_while_computing_serves_the_answer_but_does_not_store_it(clock: FakeClock) -> None:
    gated = GatedCloud()
    cache, _, kv = make(clock, handler=gated)
    async with cache:
        call = asyncio.create_task(cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS))
        await gated.arrived.wait()
        assert await cache.forget_user("u") == 0  # nothing stored yet
        gated.gate.set()
        assert (await call)["model"] == LLAMA
        assert kv._data == {}  # computed from what the caller has since invalidated: not stored
        await cache.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
        assert list(kv._data) == ["summarize_job:u:j"]  # a computation begun after the forget stores again


async def test_forget_user_removes_every_user_scoped_record_and_nothing_else(clock: FakeClock) -> None:
    cache, cloud, kv = make(clock, overrides={"summarize_job": {**SUMMARIZE, "version": "3"}})
    hostile = ["u:1", "u", "u%3A1", "u/1", "é", "%v3"]
    async with cache:
        for user in hostile:
            await cache.analyze_job(user_id=user, job_id="j:1", messages=MSGS)
            await cache.run("summarize_job", key="j/1", user_id=user, model=LLAMA, messages=MSGS)
        await cache.detect_spam(job_id="u:1", messages=MSGS)
        await cache.embed("u:1")
        before = dict(kv._data)
        assert await cache.forget_user("u:1") == 2
        gone = set(before) - set(kv._data)
        assert gone == {
            cache.record_key("job_analysis", key="j:1", user_id="u:1"),
            cache.record_key("summarize_job", key="j/1", user_id="u:1"),
        }
        calls = len(cloud.requests)
        for user in hostile[1:]:  # every other user is still served from KV
            await cache.analyze_job(user_id=user, job_id="j:1", messages=MSGS)
            await cache.run("summarize_job", key="j/1", user_id=user, model=LLAMA, messages=MSGS)
        await cache.detect_spam(job_id="u:1", messages=MSGS)
        assert len(cloud.requests) == calls
        await cache.analyze_job(user_id="u:1", job_id="j:1", messages=MSGS)
        assert len(cloud.requests) == calls + 1
        assert await cache.forget_user("nobody") == 0


async def test_forget_user_removes_old_versions_too(clock: FakeClock) -> None:
    backend = MemoryKVBackend(clock=clock)
    old, _, _ = make(clock, backend=backend)
    async with old:
        await old.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
    new, _, _ = make(clock, backend=backend, overrides={"summarize_job": {**SUMMARIZE, "version": "2"}})
    async with new:
        await new.run("summarize_job", key="j", user_id="u", model=LLAMA, messages=MSGS)
        assert sorted(backend._data) == ["summarize_job:u:%v2:j", "summarize_job:u:j"]
        assert await new.forget_user("u") == 2
    assert backend._data == {}


def test_record_key_and_user_prefix_follow_the_policies(clock: FakeClock) -> None:
    cache, _, _ = make(clock, overrides={"summarize_job": {**SUMMARIZE, "version": "2"}})
    assert cache.record_key("summarize_job", key="job:1", user_id="ü") == "summarize_job:%C3%BC:%v2:job%3A1"
    assert cache.record_key(Operation.SPAM_DETECTION, key="job-1") == "spam:job-1"
    assert cache.user_prefix("job_analysis", "a:b") == "analysis:a%3Ab:"
    with pytest.raises(InvalidInputError, match="scope 'global': its records belong to no user"):
        cache.user_prefix("spam_detection", "u")
    with pytest.raises(InvalidInputError, match="scope 'user'.*pass user_id="):
        cache.record_key("summarize_job", key="j")


# -- refresh and versions ----------------------------------------------------------------------------------


async def test_refresh_skips_both_caches_once_and_overwrites_the_record(env: tuple[DualCache, FakeCloud, Any]) -> None:
    cache, cloud, kv = env
    await cache.detect_spam(job_id="j", messages=MSGS)
    assert cloud.requests[-1].headers["cf-aig-cache-ttl"] == "86400"
    # A valid verdict (a record failing the spam schema would be a miss, not served).
    kv._data["spam:j"] = (b'{"isSpam": true, "old": true}', *kv._data["spam:j"][1:])
    assert await cache.detect_spam(job_id="j", messages=MSGS) == {"isSpam": True, "old": True}
    fresh = await cache.detect_spam(job_id="j", messages=MSGS, refresh=True)
    assert fresh != {"isSpam": True, "old": True}
    headers = cloud.requests[-1].headers
    assert headers["cf-aig-skip-cache"] == "true" and "cf-aig-cache-ttl" not in headers
    assert await cache.detect_spam(job_id="j", messages=MSGS) == fresh  # KV holds the fresh answer
    assert len(cloud.requests) == 2


async def test_version_bump_misses_in_kv_and_in_the_gateway(clock: FakeClock) -> None:
    backend = MemoryKVBackend(clock=clock)
    old, old_cloud, _ = make(clock, backend=backend)
    async with old:
        await old.detect_spam(job_id="j", messages=MSGS)
    new, new_cloud, _ = make(clock, backend=backend, overrides={"spam_detection": {"version": "2"}})
    async with new:
        await new.detect_spam(job_id="j", messages=MSGS)
        await new.detect_spam(job_id="j", messages=MSGS)
    assert len(new_cloud.requests) == 1  # the old record is not served; the new one is
    assert sorted(backend._data) == ["spam:%v2:j", "spam:j"]  # the old one expires by its TTL
    old_key = old_cloud.requests[0].headers["cf-aig-cache-key"]
    assert new_cloud.requests[0].headers["cf-aig-cache-key"] != old_key


@pytest.mark.parametrize(
    ("models", "policy", "body"),
    [
        pytest.param(Models(embedding_pooling="cls"), {}, {"text": "txt", "pooling": "cls"}, id="pooling"),
        pytest.param(Models(embedding_max_chars=1), {}, {"text": "t"}, id="truncation"),
        pytest.param(Models(), {"version": "2"}, {"text": "txt"}, id="version"),
    ],
)
async def test_embedding_parameter_change_misses(
    clock: FakeClock, models: Models, policy: dict[str, Any], body: dict[str, Any]
) -> None:
    backend = MemoryKVBackend(clock=clock)
    default, _, _ = make(clock, backend=backend)
    async with default:
        await default.embed("txt")
    changed, cloud, _ = make(clock, backend=backend, models=models, overrides={"embeddings": policy})
    async with changed:
        await changed.embed("txt")
        await changed.embed_many(["txt"])
        assert changed.record_key("embeddings", key="txt") != default.record_key("embeddings", key="txt")
    assert len(cloud.requests) == 1 and json.loads(cloud.requests[0].content) == body
    assert len(backend._data) == 2


def test_models_reject_bad_embedding_parameters() -> None:
    with pytest.raises(ConfigError, match=r"Models.embedding_pooling='max': must be 'mean' or 'cls'"):
        Models(embedding_pooling="max")
    with pytest.raises(ConfigError, match=r"Models.embedding_max_chars=0: must be an integer >= 1"):
        Models(embedding_max_chars=0)
    with pytest.raises(ConfigError, match=r"Models.embeddings='': must be a non-empty model name"):
        Models(embeddings="")


# -- policies of custom operations ---------------------------------------------------------------------------


def test_policies_custom_operation_defaults_and_export() -> None:
    p = Policies.with_overrides({"summarize_job": SUMMARIZE})
    assert p.for_operation("summarize_job").scope is Scope.USER
    assert p.operations[-1] == "summarize_job" and list(p.custom) == ["summarize_job"]
    dumped = p.model_dump(mode="json")
    assert dumped["summarize_job"]["kv_namespace"] == "API_CACHE"
    assert Policies.model_validate(dumped) == p
    assert (
        Policies.with_overrides({"summarize_job": {**SUMMARIZE, "version": 7}}).custom["summarize_job"].version == "7"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"Summarize": SUMMARIZE}, r"policies\.Summarize: operation name 'Summarize' is not valid", id="case"
        ),
        pytest.param({"spam": SUMMARIZE}, r"policies\.spam: operation name 'spam' is reserved", id="prefix"),
        pytest.param({"model_x": SUMMARIZE}, r"policies\.model_x: operation name 'model_x' is reserved", id="attr"),
        pytest.param(
            {"summarize_job": {"kv": True}}, r"missing: policies\.summarize_job\.gateway", id="missing-gateway"
        ),
        pytest.param({"summarize_job": {**SUMMARIZE, "kv_ttl": 30}}, r"policies\.summarize_job: kv_ttl=30", id="ttl"),
        pytest.param(
            {"summarize_job": {**SUMMARIZE, "scope": "team"}}, r"policies\.summarize_job: scope='team'", id="scope"
        ),
        pytest.param(
            {"summarize_job": {**SUMMARIZE, "version": "has space"}},
            r"policies\.summarize_job: version='has space': must be a short string",
            id="version",
        ),
        pytest.param({"summarize_job": {**SUMMARIZE, "version": "x" * 17}}, r"version='x{17}'", id="version-long"),
        pytest.param({"summarize_job": {**SUMMARIZE, "price": 1}}, r"unknown field\(s\) price", id="field"),
        pytest.param({"spam_detection": {"scope": "user"}}, r"policies\.spam_detection\.scope='user'", id="fixed"),
    ],
)
def test_policies_custom_operation_validation_names_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Policies.with_overrides(overrides)


def test_policies_override_adds_to_existing_policies_and_keeps_their_fields() -> None:
    stack = Policies.with_overrides({"embeddings": {"kv_ttl": 86_400}, "summarize_job": SUMMARIZE})
    p = stack.override({"summarize_job": {"version": "2"}, "rank_jobs": {"kv": False, "gateway": "skip"}})
    assert p.embeddings.kv_ttl == 86_400  # the stack's override stays
    assert (p.custom["summarize_job"].kv_ttl, p.custom["summarize_job"].version) == (86_400, "2")
    assert list(p.custom) == ["summarize_job", "rank_jobs"]
    assert stack.override(None) is stack
    assert stack.override({"summarize_job": {"kv": False}}).custom["summarize_job"].kv_ttl is None


@pytest.mark.parametrize("namespace", ["SESSIONS", "RATE_LIMITS", "OAUTH_STATES"])
def test_policies_custom_operation_stays_out_of_the_application_namespaces(namespace: str) -> None:
    with pytest.raises(ConfigError, match=rf"policies\.summarize_job\.kv_namespace='{namespace}': .*cache namespace"):
        Policies.with_overrides({"summarize_job": {**SUMMARIZE, "kv_namespace": namespace}})


# -- the hit path's checks: cheap, and the same as before ------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([{"role": "user", "content": "plain"}], id="one"),
        pytest.param([{"content": "first", "role": "system"}, {"role": "user", "content": "x"}], id="order-kept"),
        pytest.param([{"role": "user", "content": "caf\u00e9"}], id="non-ascii"),
        pytest.param([{"role": "user", "content": "x", "name": "bob"}], id="extra-field"),
        pytest.param(({"role": "user", "content": "x"},), id="tuple"),
        pytest.param([{"role": "user", "content": [{"type": "text", "text": "x"}]}], id="parts"),
    ],
)
def test_check_messages_returns_private_copies_of_valid_shapes(messages: Any) -> None:
    from dualcache._json_ops import _check_messages

    out = _check_messages(messages)
    assert out == [dict(m) for m in messages]
    assert [list(m) for m in out] == [list(m) for m in messages]  # field order kept (the request body's)
    assert all(a is not b for a, b in zip(out, messages, strict=True))
    out[0]["content"] = "changed"
    assert messages[0]["content"] != "changed"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        pytest.param([], r"messages must be a non-empty list", id="empty"),
        pytest.param("hello", r"messages must be a non-empty list", id="str"),
        pytest.param([{"role": "user", "content": "  \t"}], r"messages\[0\]\.content is empty", id="blank"),
        pytest.param([{"role": "user", "content": ""}], r"messages\[0\]\.content is empty", id="empty-content"),
        pytest.param([{"role": 1, "content": "x"}], r"messages\[0\] must be a dict with 'role' \(str\)", id="role"),
        pytest.param([{"role": "user"}], r"messages\[0\] must be a dict with 'role'", id="no-content"),
        pytest.param([{"role": "user", "content": "x"}, "y"], r"messages\[1\] must be a dict", id="not-dict"),
        pytest.param([{"role": "user", "content": "\ud800"}], r"lone surrogate", id="surrogate"),
        pytest.param([{"role": "user", "content": "x", "n": float("nan")}], r"NaN", id="nan"),
    ],
)
async def test_analyze_job_refuses_bad_messages_before_any_io(messages: Any, match: str) -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    backend._data["analysis:u:j"] = (b'{"score":70}', None, None)  # a hit, were the messages accepted
    async with DualCache.from_outputs(
        OUTPUTS, api_token="t", kv=lambda ns: backend, transport=httpx.MockTransport(cloud)
    ) as cache:
        with pytest.raises(InvalidInputError, match=match):
            await cache.analyze_job(user_id="u", job_id="j", messages=messages)
        assert cache.stats.snapshot()["job_analysis"]["kv_hits"] == 0
    assert cloud.requests == []


async def test_analyze_job_without_any_provider_fails_before_the_read(tmp_path: Any) -> None:
    backend = MemoryKVBackend()
    backend._data["analysis:u:j"] = (b'{"score":70}', None, None)
    async with DualCache(kv=lambda ns: backend, data_dir=tmp_path) as cache:
        with pytest.raises(ConfigError, match="Workers AI needs a Cloudflare account"):
            await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert cache.stats.snapshot()["job_analysis"]["kv_hits"] == 0


async def test_analyze_job_hits_and_falls_back_with_one_provider_unconfigured() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    backend._data["analysis:u:j"] = (b'{"score":70}', None, None)
    async with DualCache.from_outputs(
        OUTPUTS, api_token="t", kv=lambda ns: backend, transport=httpx.MockTransport(cloud)
    ) as cache:  # no OpenAI key: the fallback is not configured
        for _ in range(3):
            assert await cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == {"score": 70}
        assert cloud.requests == []
        assert (await cache.analyze_job(user_id="u", job_id="other", messages=MSGS))["score"] == 80
        assert cache.stats.snapshot()["job_analysis"]["kv_hits"] == 3


@pytest.mark.parametrize(
    ("user", "key"),
    [("u", "j"), ("a:b", "50%"), ("\u00e9", "x" * 300), ("u" * 200, "k" * 56), ("u" * 200, "k" * 57)],
)
async def test_json_key_matches_record_key(user: str, key: str) -> None:
    from dualcache._keys import record_key

    async with DualCache.from_outputs(OUTPUTS, api_token="t", kv=lambda ns: MemoryKVBackend()) as cache:
        for version in (None, "2"):
            policy = cache.policies.for_operation(Operation.JOB_ANALYSIS).model_copy(update={"version": version})
            for _ in range(2):  # computed, then remembered
                got = cache._json_key(Operation.JOB_ANALYSIS, policy, key, user)
                assert got == record_key("job_analysis", key, user_id=user, version=version)
