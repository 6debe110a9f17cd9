"""Numbers are finite and bounded at every entry; message content is JSON-safe before any I/O."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from dualcache import (
    BreakerPolicy,
    ConfigError,
    DualCache,
    InvalidInputError,
    LayerLimits,
    MemoryKVBackend,
    OperationPolicy,
    Policies,
    PriceTable,
    RequestBudget,
    RetryPolicy,
    Timeouts,
    WriteBehindPolicy,
    load_stack_config,
)
from dualcache._params import SAMPLING_RANGES, check_json_content, check_sampling
from dualcache._policy import KV_MAX_TTL

NAN, INF = math.nan, math.inf
PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(lambda: RetryPolicy(total_timeout=NAN), "RetryPolicy.total_timeout", id="retry-total-nan"),
        pytest.param(lambda: RetryPolicy(total_timeout=INF), "RetryPolicy.total_timeout", id="retry-total-inf"),
        pytest.param(lambda: RetryPolicy(base_delay=NAN), "RetryPolicy.base_delay", id="retry-base-nan"),
        pytest.param(lambda: RetryPolicy(max_delay=INF), "RetryPolicy.max_delay", id="retry-max-inf"),
        pytest.param(lambda: RetryPolicy(max_delay=-1), "RetryPolicy.max_delay", id="retry-max-negative"),
        pytest.param(lambda: RetryPolicy(max_attempts=True), "RetryPolicy.max_attempts", id="retry-attempts-bool"),
        pytest.param(lambda: WriteBehindPolicy(base_delay=NAN), "WriteBehindPolicy.base_delay", id="wb-base-nan"),
        pytest.param(lambda: WriteBehindPolicy(max_delay=INF), "WriteBehindPolicy.max_delay", id="wb-max-inf"),
        pytest.param(lambda: WriteBehindPolicy(close_timeout=INF), "WriteBehindPolicy.close_timeout", id="wb-close"),
        pytest.param(lambda: BreakerPolicy(cooldown=NAN), "BreakerPolicy.cooldown", id="breaker-nan"),
        pytest.param(lambda: RequestBudget(window=INF), "RequestBudget.window", id="budget-window-inf"),
        pytest.param(lambda: RequestBudget(window=NAN), "RequestBudget.window", id="budget-window-nan"),
        pytest.param(lambda: RequestBudget(default_block=INF), "RequestBudget.default_block", id="budget-block-inf"),
        pytest.param(lambda: Timeouts(kv_read=NAN), "Timeouts.kv_read", id="timeouts-nan"),
        pytest.param(lambda: LayerLimits(2, 1, keepalive_expiry=INF), "LayerLimits.keepalive_expiry", id="limits"),
        pytest.param(lambda: DualCache(kv_timeout=NAN), "kv_read=nan", id="kv_timeout-nan"),
        pytest.param(lambda: DualCache(kv_timeout=-1.0), "kv_read=-1.0", id="kv_timeout-negative"),
        pytest.param(lambda: DualCache(upstream_timeout=NAN), "upstream_timeout", id="upstream-nan"),
        pytest.param(lambda: DualCache(upstream_timeout=INF), "upstream_timeout", id="upstream-inf"),
    ],
)
def test_policies_refuse_non_finite_numbers(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"{field}.*finite|{field}.*>= 1"):
        build()


@pytest.mark.parametrize("value", [NAN, INF, -INF, -0.5])
def test_price_table_refuses_non_finite_and_negative(value: float) -> None:
    with pytest.raises(ValidationError, match="embeddings"):
        PriceTable(embeddings=value)


@pytest.mark.parametrize("ttl", [10**15, KV_MAX_TTL + 1, 2**31])
def test_policies_refuse_kv_ttl_above_max(ttl: int) -> None:
    with pytest.raises(
        ConfigError, match=rf"policies.embeddings: kv_ttl={ttl}: .*>= 60 and <= {KV_MAX_TTL} seconds \(KV_MAX_TTL"
    ):
        Policies.with_overrides({"embeddings": {"kv_ttl": ttl}})
    with pytest.raises(ValidationError, match="KV_MAX_TTL"):
        OperationPolicy(kv=True, kv_ttl=ttl, kv_namespace="API_CACHE", gateway="skip")


def test_policies_accept_kv_ttl_at_max() -> None:
    assert Policies.with_overrides({"embeddings": {"kv_ttl": KV_MAX_TTL}}).embeddings.kv_ttl == KV_MAX_TTL


def test_stack_config_refuses_kv_ttl_above_max(tmp_path: Path) -> None:
    # What `dualcache plan` and `dualcache dev` read: the same model, so the same bound.
    shutil.copy(PROJECT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    text = (PROJECT / "Pulumi.dev.yaml").read_text()
    assert "    embeddings:\n      gateway_ttl: 600" in text
    text = text.replace("    embeddings:\n      gateway_ttl: 600", f"    embeddings:\n      kv_ttl: {10**15}")
    (tmp_path / "Pulumi.dev.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"kv_ttl={10**15}.*KV_MAX_TTL"):
        load_stack_config(tmp_path, "dev")


def test_gateway_ttl_stays_bounded_to_a_month() -> None:
    with pytest.raises(ConfigError, match="gateway_ttl=2592001"):
        Policies.with_overrides({"embeddings": {"gateway_ttl": 2_592_001}})


# -- message content and sampling parameters, before any I/O -------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = {"choices": [{"message": {"content": '{"ok": true}'}}]}
        return httpx.Response(200, json=answer)


def openai_cache(recorder: Recorder) -> DualCache:
    return DualCache(
        openai_api_key="sk-x",
        account_id="a" * 32,
        api_token="t",
        openai_base_url="https://openai.test/v1",
        api_base_url="https://api.test/client/v4",
        kv=lambda _ns: MemoryKVBackend(),
        transport=httpx.MockTransport(recorder),
        write_behind=False,
    )


BAD_CONTENT = [
    pytest.param("lone \ud800 surrogate", r"messages\[0\]\.content: character 5 is a lone surrogate", id="surrogate"),
    pytest.param([{"type": "text", "text": "x\udfff"}], r"messages\[0\]\.content\[0\]\.text", id="surrogate-part"),
    pytest.param([{"type": "text", "text": "x", "w": NAN}], r"messages\[0\]\.content\[0\]\.w=nan: NaN", id="nan"),
    pytest.param([{"type": "text", "text": "x", "w": INF}], r"content\[0\]\.w=inf: NaN and Infinity", id="inf"),
]


@pytest.mark.parametrize(("content", "message"), BAD_CONTENT)
@pytest.mark.parametrize("operation", ["generate_application", "analyze_job", "detect_spam"])
async def test_message_content_not_json_is_invalid_input_before_io(operation: str, content: Any, message: str) -> None:
    recorder = Recorder()
    async with openai_cache(recorder) as cache:
        msgs = [{"role": "user", "content": content}]
        with pytest.raises(InvalidInputError, match=message):
            if operation == "generate_application":
                await cache.generate_application(messages=msgs)
            elif operation == "analyze_job":
                await cache.analyze_job(user_id="u", job_id="j", messages=msgs)
            else:
                await cache.detect_spam(job_id="j", messages=msgs)
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"temperature": "hot"}, r"temperature='hot': must be a number 0..2", id="temperature-str"),
        pytest.param({"temperature": 2.5}, r"temperature=2.5: must be a number 0..2", id="temperature-high"),
        pytest.param({"temperature": -0.1}, r"temperature=-0.1", id="temperature-negative"),
        pytest.param({"temperature": NAN}, r"temperature=nan", id="temperature-nan"),
        pytest.param({"temperature": True}, r"temperature=True", id="temperature-bool"),
        pytest.param({"max_tokens": -1}, r"max_tokens=-1: must be an integer >= 1", id="max_tokens-negative"),
        pytest.param({"max_tokens": 0}, r"max_tokens=0", id="max_tokens-zero"),
        pytest.param({"max_tokens": 1.5}, r"max_tokens=1.5: must be an integer", id="max_tokens-float"),
        pytest.param({"max_tokens": "10"}, r"max_tokens='10'", id="max_tokens-str"),
    ],
)
async def test_generate_application_refuses_bad_sampling_before_io(kwargs: dict[str, Any], message: str) -> None:
    recorder = Recorder()
    async with openai_cache(recorder) as cache:
        with pytest.raises(InvalidInputError, match=f"generate_application: {message}"):
            await cache.generate_application(messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert recorder.requests == []


async def test_generate_application_sends_valid_sampling() -> None:
    recorder = Recorder()
    async with openai_cache(recorder) as cache:
        out = await cache.generate_application(
            messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=1
        )
    assert out == {"ok": True}
    body = recorder.requests[0].read()
    assert b'"temperature":0' in body.replace(b" ", b"") and b'"max_tokens":1' in body.replace(b" ", b"")


@pytest.mark.parametrize(
    ("provider", "params", "ok"),
    [
        pytest.param("workers-ai", {"temperature": 5, "top_k": 50, "seed": 9_999_999_999}, True, id="wai-max"),
        pytest.param("workers-ai", {"temperature": 5.1}, False, id="wai-temperature"),
        pytest.param("workers-ai", {"top_k": 0}, False, id="wai-top_k"),
        pytest.param("workers-ai", {"repetition_penalty": 2.5}, False, id="wai-repetition"),
        pytest.param("openai", {"top_p": 1, "frequency_penalty": -2, "presence_penalty": 2}, True, id="openai-edges"),
        pytest.param("openai", {"top_p": 1.01}, False, id="openai-top_p"),
        pytest.param("openai", {"max_tokens": 10**400}, True, id="openai-huge-int"),
        pytest.param("openai", {"unknown_param": "kept"}, True, id="unknown-kept"),
    ],
)
def test_check_sampling_ranges(provider: str, params: dict[str, Any], ok: bool) -> None:
    if ok:
        assert check_sampling(params, provider=provider) == params
    else:
        with pytest.raises(InvalidInputError, match=f"{provider}'s documented range"):
            check_sampling(params, provider=provider)


def test_check_sampling_drops_none_and_refuses_unknown_provider() -> None:
    assert check_sampling({"temperature": None, "top_p": 0.5}, provider="openai") == {"top_p": 0.5}
    with pytest.raises(InvalidInputError, match="valid providers: openai, workers-ai"):
        check_sampling({}, provider="anthropic")
    assert set(SAMPLING_RANGES) == {"openai", "workers-ai"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param({1: "x"}, r"p: key 1 is not a string", id="int-key"),
        pytest.param({"\ud800": "x"}, r"p key: character 0 is a lone surrogate", id="surrogate-key"),
        pytest.param({"a": {1, 2}}, r"p\.a: a set is not JSON", id="set"),
        pytest.param([[[]]] * 1, None, id="nested-ok"),
    ],
)
def test_check_json_content_names_the_path(value: Any, message: str | None) -> None:
    if message is None:
        check_json_content(value, "p")
    else:
        with pytest.raises(InvalidInputError, match=message):
            check_json_content(value, "p")


def test_check_json_content_bounds_depth() -> None:
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    with pytest.raises(InvalidInputError, match="nested deeper than 64"):
        check_json_content(deep, "p")


# -- the generic run(**params) engine -----------------------------------------------------------------------

SUMMARIZE = {"kv": True, "kv_ttl": 86_400, "kv_namespace": "API_CACHE", "gateway": "skip", "scope": "global"}


def run_cache(recorder: Recorder) -> DualCache:
    return DualCache(
        openai_api_key="sk-x",
        account_id="a" * 32,
        api_token="t",
        openai_base_url="https://openai.test/v1",
        api_base_url="https://api.test/client/v4",
        kv=lambda _ns: MemoryKVBackend(),
        transport=httpx.MockTransport(recorder),
        write_behind=False,
        policies=Policies.with_overrides({"summarize_job": SUMMARIZE}),
    )


@pytest.mark.parametrize(
    ("provider", "fallback", "params", "message"),
    [
        pytest.param("openai", None, {"temperature": "hot"}, r"run: temperature='hot'.*openai", id="openai-str"),
        pytest.param("openai", None, {"temperature": 3}, r"run: temperature=3: must be a number 0..2", id="openai-3"),
        pytest.param("workers-ai", None, {"temperature": 6}, r"temperature=6: must be a number 0..5", id="wai-6"),
        pytest.param("workers-ai", ("openai", "gpt-4o-mini"), {"temperature": 3}, r"0..2 \(openai", id="fallback"),
        pytest.param("workers-ai", None, {"max_tokens": -1}, r"run: max_tokens=-1: must be an integer >= 1", id="neg"),
        pytest.param("workers-ai", None, {"top_k": 51}, r"top_k=51: must be an integer 1..50", id="top_k"),
        pytest.param("workers-ai", None, {"logit": NAN}, r"params\.logit=nan: NaN", id="nan-param"),
        pytest.param("workers-ai", None, {"stop": ["\ud800"]}, r"params\.stop\[0\]: .*lone surrogate", id="surrogate"),
    ],
)
async def test_run_refuses_bad_params_before_io(
    provider: str, fallback: tuple[str, str] | None, params: dict[str, Any], message: str
) -> None:
    recorder = Recorder()
    model = "gpt-4o-mini" if provider == "openai" else "@cf/meta/llama-3.1-8b-instruct"
    async with run_cache(recorder) as cache:
        with pytest.raises(InvalidInputError, match=message):
            await cache.run(
                "summarize_job",
                key="job-1",
                model=model,
                provider=provider,
                fallback=fallback,
                messages=[{"role": "user", "content": "Summarize in JSON"}],
                **params,
            )
    assert recorder.requests == []
