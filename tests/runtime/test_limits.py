"""Per-user limits and budgets: validation, the per-process counters, and DualCache's check at each call."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_support import FakeClock, FakeCloud, fake_outputs

from dualcache import (
    ConfigError,
    DualCache,
    DualCacheError,
    MemoryKVBackend,
    Policies,
    PriceTable,
    RetryPolicy,
    StackOutputs,
    UserLimiter,
    UserLimitExceededError,
    UserLimits,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "limits-test-token"
MSGS = [{"role": "user", "content": "Analyze this job"}]
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
ALICE = "alice@example.com"


class CountingKV(MemoryKVBackend):
    """Memory KV counting its reads, to show a refused call read nothing."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.reads = 0

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        return await super().get(key)

    async def get_many(self, keys: Any) -> dict[str, bytes]:
        self.reads += 1
        return await super().get_many(keys)


def label(user_id: str) -> str:
    return "user#" + hashlib.sha256(user_id.encode()).hexdigest()[:12]


def make(
    clock: FakeClock, monotonic: FakeClock, limits: dict[str, Any], **kwargs: Any
) -> tuple[DualCache, FakeCloud, CountingKV]:
    kv = CountingKV(clock=clock)
    cloud = FakeCloud()
    kwargs.setdefault(
        "policies",
        Policies.with_overrides(
            {
                "summarize_job": {"kv": True, "kv_ttl": 86_400, "kv_namespace": "API_CACHE", "gateway": "skip"},
                "global_op": {"kv": False, "gateway": "skip", "scope": "global"},
            }
        ),
    )
    cache = DualCache.from_outputs(
        fake_outputs(),
        api_token="cf-token",
        openai_api_key="sk-key",
        kv=lambda ns: kv,
        transport=httpx.MockTransport(cloud),
        clock=clock,
        monotonic=monotonic,
        retry=RetryPolicy(max_attempts=1),
        openai_base_url="https://openai.test/v1",
        write_behind=False,
        user_limits=limits,
        **kwargs,
    )
    return cache, cloud, kv


@pytest.fixture
def monotonic() -> FakeClock:
    return FakeClock(now=1_000.0)


# -- UserLimits: validated at the edge ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"requests": 0}, r"UserLimits.requests=0: must be an integer >= 1", id="zero-requests"),
        pytest.param({"requests": -3}, r"UserLimits.requests=-3", id="negative-requests"),
        pytest.param({"requests": True}, r"UserLimits.requests=True: must be an integer", id="bool-requests"),
        pytest.param({"requests": 2.5}, r"UserLimits.requests=2.5", id="float-requests"),
        pytest.param({"requests": 1, "per": 0}, r"UserLimits.per=0: must be a finite number of seconds > 0", id="per0"),
        pytest.param({"requests": 1, "per": -1.0}, r"UserLimits.per=-1.0", id="negative-per"),
        pytest.param({"requests": 1, "per": math.inf}, r"UserLimits.per=inf", id="infinite-per"),
        pytest.param({"requests": 1, "per": math.nan}, r"UserLimits.per=nan", id="nan-per"),
        pytest.param({"requests": 1, "per": True}, r"UserLimits.per=True", id="bool-per"),
        pytest.param({"requests": 1, "per": "60"}, r"UserLimits.per='60'", id="str-per"),
        pytest.param({"dollars": -0.01}, r"UserLimits.dollars=-0.01: must be a finite number", id="neg$"),
        pytest.param({"dollars": math.inf}, r"UserLimits.dollars=inf", id="infinite-dollars"),
        pytest.param({"dollars": math.nan}, r"UserLimits.dollars=nan", id="nan-dollars"),
        pytest.param({"dollars": False}, r"UserLimits.dollars=False", id="bool-dollars"),
        pytest.param({"dollars": 1.0, "dollars_per": 0}, r"UserLimits.dollars_per=0", id="dollars-per0"),
        pytest.param({}, r"set requests= or dollars=", id="neither"),
    ],
)
def test_user_limits_refuse_bad_values_naming_them(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UserLimits(**fields)


def test_user_limits_accept_good_values_and_normalise_windows_to_floats() -> None:
    limits = UserLimits(requests=5, per=10, dollars=0, dollars_per=3600)
    assert (limits.requests, limits.per, limits.dollars, limits.dollars_per) == (5, 10.0, 0, 3600.0)
    assert isinstance(limits.per, float)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        pytest.param({"no_such_op": UserLimits(requests=1)}, r"no_such_op.*unknown operation", id="op"),
        pytest.param({"Bad Name": UserLimits(requests=1)}, r"user_limits\['Bad Name'\].*snake_case", id="name"),
        pytest.param({"spam_detection": UserLimits(requests=1)}, r"never carry a user id", id="spam"),
        pytest.param({"global_op": UserLimits(requests=1)}, r"'global_op' never carry a user id", id="global"),
        pytest.param({"summarize_job": UserLimits(dollars=1.0)}, r"has no price in the PriceTable", id="no-price"),
        pytest.param({"job_analysis": 5}, r"must be a UserLimits, got int", id="type"),
        pytest.param({"job_analysis": {"requests": 1, "window": 9}}, r"fields: requests, per", id="field"),
        pytest.param({"job_analysis": {"requests": True}}, r"UserLimits.requests=True", id="mapping-value"),
    ],
)
def test_dualcache_user_limits_refused_at_construction(
    clock: FakeClock, monotonic: FakeClock, limits: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make(clock, monotonic, limits)


def test_dualcache_user_limits_accept_a_mapping_of_fields_and_a_priced_custom_operation(
    clock: FakeClock, monotonic: FakeClock
) -> None:
    cache, _, _ = make(
        clock,
        monotonic,
        {"job_analysis": {"requests": 3}, "summarize_job": UserLimits(dollars=0.5)},
        prices=PriceTable(summarize_job=0.1),
    )
    assert cache._user_limits == {"job_analysis": UserLimits(requests=3), "summarize_job": UserLimits(dollars=0.5)}


# -- UserLimiter: the per-process counters --------------------------------------------------------------


def test_user_limiter_counts_requests_and_reopens_when_the_window_moves() -> None:
    now = FakeClock(now=0.0)
    limiter = UserLimiter(clock=now)
    limits = UserLimits(requests=3, per=60)
    assert [limiter.acquire("op", "u", limits) for _ in range(3)] == [None, None, None]
    now.advance(20)
    refusal = limiter.acquire("op", "u", limits)
    assert refusal is not None
    assert (refusal.limit, refusal.description, refusal.retry_after) == ("requests", "3 requests per 60 s", 40.0)
    assert limiter.acquire("op", "other-user", limits) is None  # users are counted apart
    assert limiter.acquire("other_op", "u", limits) is None  # and operations too
    now.advance(39.5)
    assert limiter.acquire("op", "u", limits).retry_after == pytest.approx(0.5)  # type: ignore[union-attr]
    now.advance(0.5)  # the window that began at t=0 is over
    assert limiter.acquire("op", "u", limits) is None


def test_user_limiter_is_all_or_nothing_and_refuses_a_batch_larger_than_the_limit_forever() -> None:
    now = FakeClock(now=0.0)
    limiter = UserLimiter(clock=now)
    limits = UserLimits(requests=5, per=10)
    assert limiter.acquire("op", "u", limits, requests=4) is None
    refused = limiter.acquire("op", "u", limits, requests=2)
    assert refused is not None and refused.retry_after == 10.0
    assert limiter.acquire("op", "u", limits, requests=1) is None  # the refused 2 were not counted
    too_big = limiter.acquire("op", "v", limits, requests=6)
    assert too_big is not None and too_big.retry_after == math.inf
    assert limiter.acquire("op", "v", limits, requests=5) is None  # nor was the batch of 6


def test_user_limiter_counts_dollars_and_returns_the_longer_wait() -> None:
    now = FakeClock(now=0.0)
    limiter = UserLimiter(clock=now)
    limits = UserLimits(requests=10, per=60, dollars=0.3, dollars_per=3600)
    # 0.1 + 0.1 + 0.1 > 0.3 in floats: the nano-dollar slack admits the third.
    assert [limiter.acquire("op", "u", limits, dollars=0.1) for _ in range(3)] == [None, None, None]
    now.advance(100)
    refusal = limiter.acquire("op", "u", limits, dollars=0.1)
    assert refusal is not None and (refusal.limit, refusal.retry_after) == ("dollars", 3500.0)
    assert refusal.description == "$0.3 per 3600 s"
    assert limiter.acquire("op", "u", limits, dollars=0.0) is None  # a free request passes the dollar limit
    zero = limiter.acquire("op", "w", UserLimits(dollars=0), dollars=0.001)
    assert zero is not None and zero.retry_after == math.inf
    # Both limits over: the refusal is the one to wait longer for.
    both = UserLimiter(clock=now)
    tight = UserLimits(requests=1, per=60, dollars=0.1, dollars_per=600)
    assert both.acquire("op", "u", tight, dollars=0.1) is None
    over = both.acquire("op", "u", tight, dollars=0.1)
    assert over is not None and (over.limit, over.retry_after) == ("dollars", 600.0)


def test_user_limiter_memory_is_bounded_and_idle_users_leave_first() -> None:
    now = FakeClock(now=0.0)
    limiter = UserLimiter(clock=now, max_users=3)
    limits = UserLimits(requests=1, per=60)
    for i in range(10):
        assert limiter.acquire("op", f"user-{i}", limits) is None
        assert len(limiter) <= 3
    assert (len(limiter), limiter.evicted) == (3, 7)
    # An evicted user's count restarts (the error admits, never refuses); a kept one is still counted.
    assert limiter.acquire("op", "user-0", limits) is None
    assert limiter.acquire("op", "user-9", limits) is not None
    # Once every window is over, the idle counters are dropped without counting as evictions.
    now.advance(61)
    assert limiter.acquire("op", "fresh", limits) is None
    assert (len(limiter), limiter.evicted) == (1, 8)
    # No user id is kept in clear.
    assert all(ALICE not in user and "fresh" not in user for _, user in limiter._counters)


def test_user_limiter_refuses_a_bad_max_users() -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigError, match=r"max_users="):
            UserLimiter(max_users=bad)  # type: ignore[arg-type]


# -- DualCache: one check at the entry of each call --------------------------------------------------------


async def test_dualcache_limit_counts_kv_hits_and_raises_before_any_io(clock: FakeClock, monotonic: FakeClock) -> None:
    cache, cloud, kv = make(clock, monotonic, {"job_analysis": UserLimits(requests=2, per=60)})
    async with cache:
        first = await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        assert await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS) == first  # a KV hit: counted
        sent, reads = len(cloud.requests), kv.reads
        assert reads == 2
        monotonic.advance(15)
        with pytest.raises(UserLimitExceededError) as info:
            await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        assert len(cloud.requests) == sent == 1  # nothing was sent
        assert kv.reads == reads  # nor read
        err = info.value
        assert isinstance(err, DualCacheError)
        assert (err.operation, err.limit, err.retry_after, err.user) == ("job_analysis", "requests", 45.0, label(ALICE))
        assert str(err) == (
            f"job_analysis: {label(ALICE)} is over its limit of 2 requests per 60 s (1 more asked); retry in 45 s"
        )
        snap = cache.stats.snapshot()["job_analysis"]
        assert (snap["requests"], snap["kv_hits"], snap["provider_calls"], snap["limited"]) == (2, 1, 1, 1)
        await cache.analyze_job(user_id="bob", job_id="j1", messages=MSGS)  # another user is not limited
        monotonic.advance(45)
        assert await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS) == first
        assert cache.stats.snapshot()["job_analysis"]["limited"] == 1


async def test_dualcache_limit_counts_gateway_hits(clock: FakeClock, monotonic: FakeClock) -> None:
    cache, cloud, _ = make(clock, monotonic, {"embeddings": UserLimits(requests=2, per=10)})
    cloud.cache_status = "HIT"
    async with cache:
        await cache.embed("one", user_id=ALICE)
        await cache.embed("two", user_id=ALICE)
        with pytest.raises(UserLimitExceededError, match=r"2 requests per 10 s") as info:
            await cache.embed("three", user_id=ALICE)
        assert info.value.retry_after == 10.0
        snap = cache.stats.snapshot()["embeddings"]
        assert (snap["gateway_hits"], snap["limited"], len(cloud.requests)) == (2, 1, 2)
        await cache.embed("three")  # no user id: not counted
        assert cache.stats.snapshot()["embeddings"]["limited"] == 1


async def test_dualcache_embed_many_uses_one_request_per_text_all_or_nothing(
    clock: FakeClock, monotonic: FakeClock
) -> None:
    cache, cloud, _ = make(clock, monotonic, {"embeddings": UserLimits(requests=3, per=60)})
    async with cache:
        assert len(await cache.embed_many(["a", "b"], user_id=ALICE)) == 2
        with pytest.raises(UserLimitExceededError):
            await cache.embed_many(["a", "c"], user_id=ALICE)  # "a" is a KV hit, still one request
        assert cache.stats.snapshot()["embeddings"]["limited"] == 2
        assert len(await cache.embed_many(["a"], user_id=ALICE)) == 1  # the refused 2 were not counted
        with pytest.raises(UserLimitExceededError, match=r"never under this limit") as info:
            await cache.embed_many(["w", "x", "y", "z"], user_id="bob")
        assert info.value.retry_after == math.inf
        assert len(cloud.requests) == 1


async def test_dualcache_dollar_budget_charges_what_the_call_would_cost(clock: FakeClock, monotonic: FakeClock) -> None:
    # job_analysis costs $0.03 a call (PriceTable): a KV hit is charged the same, as the cache absorbs it.
    cache, cloud, _ = make(clock, monotonic, {"job_analysis": UserLimits(dollars=0.06, dollars_per=3600)})
    async with cache:
        await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        monotonic.advance(600)
        with pytest.raises(UserLimitExceededError) as info:
            await cache.analyze_job(user_id=ALICE, job_id="j2", messages=MSGS)
        assert (info.value.limit, info.value.retry_after) == ("dollars", 3000.0)
        assert "$0.06 per 3600 s" in str(info.value) and str(info.value).endswith("retry in 3000 s")
        assert len(cloud.requests) == 1


async def test_dualcache_limits_cover_run_generation_and_the_text_path(clock: FakeClock, monotonic: FakeClock) -> None:
    limits = {
        "summarize_job": UserLimits(requests=1, per=60),
        "application_generation": UserLimits(requests=1, per=60),
    }
    cache, cloud, _ = make(clock, monotonic, limits)
    async with cache:
        await cache.run("summarize_job", key="k", user_id=ALICE, model=LLAMA, messages=MSGS)
        with pytest.raises(UserLimitExceededError):
            await cache.run("summarize_job", key="k", user_id=ALICE, model=LLAMA, messages=MSGS)
        await cache.generate_application(messages=MSGS, user_id=ALICE, json_output=False)
        with pytest.raises(UserLimitExceededError):
            await cache.generate_application(messages=MSGS, user_id=ALICE, json_output=True)
        for _ in range(3):  # without a user id there is no one to count against
            await cache.generate_application(messages=MSGS, json_output=False)
        snap = cache.stats.snapshot()
        assert (snap["summarize_job"]["limited"], snap["application_generation"]["limited"]) == (1, 1)
        assert len(cloud.requests) == 5


async def test_dualcache_limit_errors_and_logs_never_show_the_user_id(
    clock: FakeClock, monotonic: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache, _, _ = make(clock, monotonic, {"job_analysis": UserLimits(requests=1, per=60)})
    caplog.set_level(logging.DEBUG, logger="dualcache")
    async with cache:
        await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        with pytest.raises(UserLimitExceededError) as info:
            await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
    assert ALICE not in str(info.value) and ALICE not in repr(info.value.__dict__)
    limit_logs = [r.getMessage() for r in caplog.records if "over its" in r.getMessage()]
    assert limit_logs and all(ALICE not in m and label(ALICE) in m for m in limit_logs)


# -- the README's example ----------------------------------------------------------------------------------


def test_readme_limits_example_runs_against_the_emulator(tmp_path: Path) -> None:
    from dualcache.local import Emulator
    from tests.docs_support import doc_block

    script = tmp_path / "limits.py"
    script.write_text(doc_block(PROJECT_DIR / "docs" / "runtime.md", "Per-user limits and budgets"), encoding="utf-8")
    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path / "emulator", token=TOKEN) as emu:
        outputs = tmp_path / "outputs.dev.json"
        emu.outputs.dump(outputs)
        env = {**os.environ, "DUALCACHE_OUTPUTS": str(outputs), "CLOUDFLARE_API_TOKEN": TOKEN}
        for name in ("CF_AIG_TOKEN", "OPENAI_API_KEY", "DUALCACHE_DATA_PLANE_TOKEN"):
            env.pop(name, None)
        done = subprocess.run(
            [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[:3] == ["served 0", "served 1", "served 2"] and lines[5] == "limited: 2", done.stdout
        for attempt, line in zip((3, 4), lines[3:5], strict=True):  # the wait left of the 60 s window
            found = re.fullmatch(rf"limited {attempt}: requests, retry after (\d+) s", line)
            assert found is not None and 0 < int(found.group(1)) <= 60, done.stdout
        # One model call, then KV hits; a KV read past its 1 s budget on a loaded machine is a miss (one more
        # model call), but the two refused calls never reach the model.
        assert 1 <= emu.control.stats()["upstream"]["@cf/meta/llama-3.1-8b-instruct"] <= 3


# -- counting in the data plane's rate limiting binding ------------------------------------------------------


@pytest.fixture(scope="module")
def limited_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An emulator whose data plane binds the rate limiter USER_LIMITS: 2 calls a key per 60 s."""
    from dualcache import load_stack_config
    from dualcache._stackconfig import WorkerRateLimitSettings
    from dualcache.local import Emulator

    config = load_stack_config(PROJECT_DIR, "dev")
    limiter = WorkerRateLimitSettings(namespace_id="1001", limit=2, period=60)
    data_plane = config.data_plane.model_copy(update={"rate_limits": {"USER_LIMITS": limiter}})
    config = config.model_copy(update={"data_plane": data_plane})
    with Emulator(config=config, data_dir=tmp_path_factory.mktemp("limited"), token=TOKEN) as emu:
        yield emu


def _on_emulator(emu: Any, limits: dict[str, UserLimits], **kwargs: Any) -> DualCache:
    return DualCache.from_outputs(
        emu.outputs,
        api_token=TOKEN,
        data_plane_token=emu.data_plane_token,
        user_limits=limits,
        write_behind=False,
        kv_timeout=30.0,  # a loaded machine must not turn the KV hit these tests count into a miss
        **kwargs,
    )


async def test_dualcache_binding_counts_in_the_data_plane_cached_answers_included(limited_emulator: Any) -> None:
    user = f"user-{uuid.uuid4().hex}"
    before = limited_emulator.control.stats()["data_plane"]
    async with _on_emulator(
        limited_emulator, {"job_analysis": UserLimits(requests=2, per=60, binding="USER_LIMITS")}
    ) as cache:
        first = await cache.analyze_job(user_id=user, job_id="j1", messages=MSGS)
        assert await cache.analyze_job(user_id=user, job_id="j1", messages=MSGS) == first  # a KV hit
        with pytest.raises(UserLimitExceededError) as info:
            await cache.analyze_job(user_id=user, job_id="j1", messages=MSGS)
        assert (info.value.limit, info.value.retry_after, info.value.user) == ("requests", 60.0, label(user))
        snap = cache.stats.snapshot()["job_analysis"]
        assert (snap["requests"], snap["kv_hits"], snap["limited"], snap["limit_fallbacks"]) == (2, 1, 1, 0)
        assert len(cache._user_limiter) == 0  # nothing was counted in this process
    after = limited_emulator.control.stats()["data_plane"]
    assert after["ratelimit_ok"] - before["ratelimit_ok"] == 2
    assert after["ratelimit_limited"] - before["ratelimit_limited"] == 1


async def test_dualcache_binding_missing_from_the_stack_falls_back_to_the_local_counter(limited_emulator: Any) -> None:
    user = f"user-{uuid.uuid4().hex}"
    limits = {"job_analysis": UserLimits(requests=1, per=10, binding="NOT_DECLARED")}
    async with _on_emulator(limited_emulator, limits) as cache:
        await cache.analyze_job(user_id=user, job_id="j1", messages=MSGS)
        with pytest.raises(UserLimitExceededError) as info:  # the local counter, at the same limit
            await cache.analyze_job(user_id=user, job_id="j1", messages=MSGS)
        assert 0 < info.value.retry_after <= 10.0
        snap = cache.stats.snapshot()["job_analysis"]
        assert (snap["limit_fallbacks"], snap["limited"], snap["requests"]) == (2, 1, 1)


async def test_dualcache_binding_data_plane_down_is_counted_locally_never_an_outage(
    clock: FakeClock, monotonic: FakeClock
) -> None:
    refused: list[httpx.Request] = []
    cloud = FakeCloud()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/ratelimit/"):
            refused.append(request)
            raise httpx.ConnectError("connection refused", request=request)
        return await cloud(request)

    data = fake_outputs().model_dump(mode="json") | {"data_plane_url": "https://dp.test"}
    outputs = StackOutputs.from_data(data, trusted_hosts=["api.test", "gw.test", "dp.test"])
    kv = CountingKV(clock=clock)
    cache = DualCache.from_outputs(
        outputs,
        api_token="cf-token",
        data_plane_token="dp-token",
        kv=lambda ns: kv,
        transport=httpx.MockTransport(handler),
        clock=clock,
        monotonic=monotonic,
        retry=RetryPolicy(max_attempts=1),
        write_behind=False,
        user_limits={"job_analysis": UserLimits(requests=10, per=60, binding="USER_LIMITS")},
    )
    async with cache:
        for _ in range(10):
            await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        with pytest.raises(UserLimitExceededError):
            await cache.analyze_job(user_id=ALICE, job_id="j1", messages=MSGS)
        snap = cache.stats.snapshot()["job_analysis"]
        assert (snap["requests"], snap["limit_fallbacks"], snap["limited"]) == (10, 11, 1)
        # After 5 failures the breaker opens: the data plane is not asked again during its cool-down.
        assert len(refused) == 5
        assert all(ALICE not in r.content.decode() for r in refused)
        assert json.loads(refused[0].content) == {"key": "job_analysis:" + hashlib.sha256(ALICE.encode()).hexdigest()}


def test_dualcache_binding_without_a_data_plane_is_a_config_error(clock: FakeClock, monotonic: FakeClock) -> None:
    with pytest.raises(ConfigError, match=r"binding='USER_LIMITS': counting in a rate limiting binding needs"):
        make(clock, monotonic, {"job_analysis": UserLimits(requests=2, per=60, binding="USER_LIMITS")})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"requests": 2, "per": 30, "binding": "X"}, r"UserLimits.per=30.0: with binding='X'", id="per"),
        pytest.param({"dollars": 1.0, "binding": "X"}, r"counts requests: set requests=", id="no-requests"),
        pytest.param({"requests": 2, "binding": "lower"}, r"UserLimits.binding='lower'", id="name"),
        pytest.param({"requests": 2, "binding": 5}, r"UserLimits.binding=5", id="type"),
    ],
)
def test_user_limits_binding_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UserLimits(**fields)
