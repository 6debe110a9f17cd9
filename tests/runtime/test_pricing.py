"""Token prices, usage parsing and the three layers of savings (KV, gateway, provider prompt cache).

Exact figures come from an ``httpx.MockTransport`` whose answers carry a chosen ``usage``; the emulator's models
report prompt-cache tokens for a repeated prompt prefix, end to end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_support import FakeClock, fake_outputs

from dualcache import (
    ConfigError,
    DualCache,
    MemoryKVBackend,
    Outcome,
    Policies,
    Prices,
    PriceTable,
    RetryPolicy,
    Stats,
    TokenPrices,
    Usage,
)
from dualcache._pricing import parse_usage
from dualcache.local import _models

OUTPUTS = fake_outputs()
TOKEN = "runtime-test-token"  # the session emulator's token (conftest.py)
SUMMARIZE = {
    "kv": True,
    "kv_ttl": 86_400,
    "kv_namespace": "API_CACHE",
    "gateway": "cache",
    "gateway_ttl": 3600,
    "scope": "global",
}


class UsageCloud:
    """A MockTransport handler: the gateway, Workers AI and OpenAI, answering with a set ``usage``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.usage: dict[str, Any] | None = {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400},
        }
        self.cache_status = "MISS"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        gateway = request.url.host == "gw.test"
        headers = {"cf-aig-cache-status": self.cache_status, "cf-aig-log-id": "01LOG"} if gateway else {}
        extra = {} if self.usage is None else {"usage": self.usage}
        if request.url.path.endswith("chat/completions"):
            content = json.dumps({"answer": "ok", "score": 80})
            return httpx.Response(200, json={"choices": [{"message": {"content": content}}], **extra}, headers=headers)
        if "bge" in request.url.path:
            texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
            result: dict[str, Any] = {"shape": [len(texts), 768], "data": [[0.5] * 768 for _ in texts], **extra}
        else:
            result = {"response": {"answer": "ok", "score": 80}, **extra}
        return httpx.Response(200, json={"result": result, "success": True, "errors": []}, headers=headers)


PRICES = TokenPrices.per_million(input=2.0, output=8.0, cached_input=1.0)
# 600 fresh input tokens at $2/M, 400 cached at $1/M, 200 output at $8/M:
CALL_COST = 600 * 2e-6 + 400 * 1e-6 + 200 * 8e-6  # 0.0032
PROMPT_SAVING = 400 * (2e-6 - 1e-6)  # 0.0004


def make(clock: FakeClock, cloud: UsageCloud, **kwargs: Any) -> DualCache:
    kv = MemoryKVBackend(clock=clock)
    kwargs.setdefault("write_behind", False)
    return DualCache.from_outputs(
        OUTPUTS,
        api_token="cf-token",
        openai_api_key="sk-key",
        kv=lambda ns: kv,
        transport=httpx.MockTransport(cloud),
        clock=clock,
        policies=Policies.with_overrides({"summarize_job": SUMMARIZE}),
        retry=RetryPolicy(max_attempts=1),
        openai_base_url="https://openai.test/v1",
        **kwargs,
    )


async def summarize(cache: DualCache, key: str = "job-1", provider: str = "openai") -> dict[str, Any]:
    model = "gpt-4o-mini" if provider == "openai" else "@cf/meta/llama-3.1-8b-instruct"
    messages = [{"role": "user", "content": "Summarize this job as JSON."}]
    return await cache.run("summarize_job", key=key, model=model, messages=messages, provider=provider)


@pytest.fixture
def cloud() -> UsageCloud:
    return UsageCloud()


@pytest.fixture
async def priced(clock: FakeClock, cloud: UsageCloud) -> AsyncIterator[DualCache]:
    prices = Prices({"gpt-4o-mini": PRICES}, operations={"summarize_job": TokenPrices.per_million(100.0, 100.0)})
    async with make(clock, cloud, token_prices=prices) as cache:
        yield cache


# -- TokenPrices and Prices: validated at the edge ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"input": -1e-6}, id="negative"),
        pytest.param({"input": math.nan}, id="nan"),
        pytest.param({"input": 1e-6, "output": math.inf}, id="inf"),
        pytest.param({"input": True}, id="bool"),
        pytest.param({"input": "0.1"}, id="string"),
        pytest.param({"input": 1e-6, "cached_input": -0.0001}, id="negative-cached"),
    ],
)
def test_token_prices_refuse_what_is_not_a_finite_non_negative_number(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"TokenPrices\.\w+=.*finite number of US dollars >= 0"):
        TokenPrices(**kwargs)


def test_token_prices_per_million_converts_and_validates() -> None:
    prices = TokenPrices.per_million(0.15, 0.6, 0.075)
    assert (prices.input, prices.output, prices.cached_input) == pytest.approx((0.15e-6, 0.6e-6, 0.075e-6))
    with pytest.raises(ConfigError, match=r"per_million\.output=-1"):
        TokenPrices.per_million(1.0, -1)


def test_token_prices_cost_and_saving_of_a_usage() -> None:
    usage = Usage(input_tokens=1000, output_tokens=200, cached_tokens=400)
    assert PRICES.cost(usage) == pytest.approx(CALL_COST)
    assert PRICES.prompt_cache_saving(usage) == pytest.approx(PROMPT_SAVING)
    no_discount = TokenPrices(2e-6, 8e-6)  # no cached price: cached tokens at the input price, nothing saved
    assert no_discount.cached_rate == 2e-6
    assert no_discount.cost(usage) == pytest.approx(1000 * 2e-6 + 200 * 8e-6)
    assert no_discount.prompt_cache_saving(usage) == 0.0


def test_token_prices_custom_cost_header_is_the_per_token_form() -> None:
    assert json.loads(PRICES.custom_cost_header()) == {
        "per_token_in": 2e-6,
        "per_token_out": 8e-6,
        "per_cache_read_token": 1e-6,
    }
    assert json.loads(TokenPrices(1e-7).custom_cost_header()) == {"per_token_in": 1e-7, "per_token_out": 0.0}


def test_prices_model_wins_over_operation_and_unknown_is_none() -> None:
    by_model, by_op = TokenPrices(1e-6), TokenPrices(5e-6)
    prices = Prices({"gpt-4o": by_model}, operations={"job_analysis": by_op})
    assert prices.for_call("job_analysis", "gpt-4o") is by_model
    assert prices.for_call("job_analysis", "@cf/meta/llama-3.1-8b-instruct") is by_op
    assert prices.for_call("spam_detection", "@cf/meta/llama-3.1-8b-instruct") is None
    assert not Prices() and prices


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"models": {"gpt-4o": 0.01}}, r"Prices\(models=...\)\['gpt-4o'\] must be a TokenPrices", id="float"
        ),
        pytest.param({"operations": {" ": TokenPrices(0)}}, r"an empty name", id="empty-name"),
        pytest.param({"models": [("gpt-4o", TokenPrices(0))]}, r"must be a mapping", id="not-a-mapping"),
    ],
)
def test_prices_refuse_a_malformed_table(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Prices(**kwargs)


def test_dualcache_refuses_token_prices_of_another_type(clock: FakeClock, cloud: UsageCloud) -> None:
    with pytest.raises(ConfigError, match="token_prices must be a Prices, got dict"):
        make(clock, cloud, token_prices={"gpt-4o": TokenPrices(0)})


# -- usage parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"usage": {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 32}}},
            Usage(50, 7, 32),
            id="openai",
        ),
        pytest.param(
            {"response": "x", "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}},
            Usage(12, 3, 0),
            id="workers-ai-without-cache-field",
        ),
        pytest.param({"data": [[0.1]], "usage": {"prompt_tokens": 9, "total_tokens": 9}}, Usage(9), id="embeddings"),
        pytest.param(
            {"usage": {"input_tokens": 10, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 4}}},
            Usage(10, 2, 4),
            id="responses-names",
        ),
        pytest.param(
            {"usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}},
            Usage(5, 0, 5),
            id="cached-capped-at-prompt",
        ),
        pytest.param({"usage": {"prompt_tokens": -1}}, None, id="negative"),
        pytest.param({"usage": {"prompt_tokens": "12"}}, None, id="string"),
        pytest.param({"usage": "lots"}, None, id="not-an-object"),
        pytest.param({"response": "x"}, None, id="absent"),
        pytest.param([1, 2], None, id="not-a-dict"),
    ],
)
def test_parse_usage_reads_the_documented_shapes(data: Any, expected: Usage | None) -> None:
    assert parse_usage(data) == expected


# -- cost, savings and the custom-cost header (exact, MockTransport) --------------------------------------------


async def test_pricing_provider_call_costs_its_tokens_and_a_kv_hit_saves_the_mean(
    priced: DualCache, cloud: UsageCloud
) -> None:
    await summarize(priced)
    await summarize(priced)  # a KV hit
    snap = priced.stats.snapshot()["summarize_job"]
    assert (snap["provider_calls"], snap["kv_hits"]) == (1, 1)
    assert (snap["input_tokens"], snap["output_tokens"], snap["cached_tokens"]) == (1000, 200, 400)
    assert snap["cost"] == pytest.approx(CALL_COST)
    assert snap["saved_by_prompt_cache"] == pytest.approx(PROMPT_SAVING)
    assert snap["saved"] == pytest.approx(CALL_COST + PROMPT_SAVING)  # the hit at the mean, plus the prompt cache
    (request,) = cloud.requests
    assert request.url.host == "gw.test"
    assert json.loads(request.headers["cf-aig-custom-cost"]) == {
        "per_token_in": 2e-6,
        "per_token_out": 8e-6,
        "per_cache_read_token": 1e-6,
    }


async def test_pricing_operation_price_applies_when_the_model_has_none(priced: DualCache, cloud: UsageCloud) -> None:
    await summarize(priced, provider="workers-ai")
    snap = priced.stats.snapshot()["summarize_job"]
    assert snap["cost"] == pytest.approx(600 * 100e-6 + 400 * 100e-6 + 200 * 100e-6)  # no cached price: no discount
    assert snap["saved_by_prompt_cache"] == 0.0
    assert json.loads(cloud.requests[0].headers["cf-aig-custom-cost"]) == {"per_token_in": 1e-4, "per_token_out": 1e-4}


async def test_pricing_gateway_hit_saves_its_own_tokens_and_costs_nothing(priced: DualCache, cloud: UsageCloud) -> None:
    cloud.cache_status = "HIT"
    await summarize(priced)
    snap = priced.stats.snapshot()["summarize_job"]
    assert (snap["gateway_hits"], snap["provider_calls"]) == (1, 0)
    assert snap["cost"] == 0.0
    assert snap["saved"] == pytest.approx(CALL_COST)
    # A gateway hit was not billed: its tokens are not the provider's.
    assert (snap["input_tokens"], snap["cached_tokens"], snap["saved_by_prompt_cache"]) == (0, 0, 0.0)


async def test_pricing_answer_without_usage_falls_back_to_the_per_request_price(
    priced: DualCache, cloud: UsageCloud
) -> None:
    cloud.usage = None
    await summarize(priced)
    await summarize(priced)
    snap = priced.stats.snapshot()["summarize_job"]
    assert (snap["cost"], snap["saved"]) == (None, None)  # summarize_job has no PriceTable price: unknown
    assert snap["input_tokens"] == 0
    job = make(FakeClock(), cloud, token_prices=Prices({"gpt-4o-mini": PRICES}))
    async with job:
        await job.generate_application(messages=[{"role": "user", "content": "Write a JSON letter"}])
        assert job.stats.snapshot()["application_generation"]["cost"] == PriceTable().application_generation


async def test_pricing_without_token_prices_counts_tokens_and_keeps_request_prices(
    clock: FakeClock, cloud: UsageCloud
) -> None:
    async with make(clock, cloud) as cache:
        await cache.generate_application(messages=[{"role": "user", "content": "Write a JSON letter"}])
        snap = cache.stats.snapshot()["application_generation"]
        assert snap["cost"] == PriceTable().application_generation
        assert (snap["input_tokens"], snap["output_tokens"], snap["cached_tokens"]) == (1000, 200, 400)
        assert snap["saved_by_prompt_cache"] == 0.0  # no token prices: the saving has no price
        assert "cf-aig-custom-cost" not in cloud.requests[0].headers


async def test_pricing_direct_route_sends_no_custom_cost(clock: FakeClock, cloud: UsageCloud) -> None:
    cache = DualCache(
        account_id="a" * 32,
        api_token="cf-token",
        openai_api_key="sk-key",
        kv=lambda ns: MemoryKVBackend(clock=clock),
        transport=httpx.MockTransport(cloud),
        openai_base_url="https://openai.test/v1",
        token_prices=Prices({"gpt-4o-mini": PRICES}),
        write_behind=False,
    )
    async with cache:
        await cache.generate_application(messages=[{"role": "user", "content": "Write a JSON letter"}])
        assert cache.stats.snapshot()["application_generation"]["cost"] == pytest.approx(CALL_COST)
    assert cloud.requests[0].url.host == "openai.test"
    assert "cf-aig-custom-cost" not in cloud.requests[0].headers


async def test_pricing_batch_of_embeddings_spreads_its_cost_over_its_texts(clock: FakeClock, cloud: UsageCloud) -> None:
    cloud.usage = {"prompt_tokens": 300}
    prices = Prices({"@cf/baai/bge-base-en-v1.5": TokenPrices(1e-6)})
    async with make(clock, cloud, token_prices=prices, prices=PriceTable(embeddings=0.5)) as cache:
        await cache.embed_many(["one", "two", "three"])  # one upstream call for three requests
        await cache.embed("two")  # a KV hit, saved at the mean cost per request
        snap = cache.stats.snapshot()["embeddings"]
    assert (snap["provider_calls"], snap["kv_hits"], snap["input_tokens"]) == (3, 1, 300)
    assert snap["cost"] == pytest.approx(300e-6)
    assert snap["saved"] == pytest.approx(100e-6)


def test_stats_usage_mixes_token_and_request_prices() -> None:
    stats = Stats(PriceTable(job_analysis=0.03))
    stats.usage("job_analysis", input_tokens=100, output_tokens=10, cached_tokens=0, cost=0.001)
    for _ in range(2):  # one answer priced by its tokens, one without usage (the per-request price)
        stats.record("job_analysis", Outcome.PROVIDER)
    snap = stats.snapshot()["job_analysis"]
    assert snap["cost"] == pytest.approx(0.001 + 0.03)
    stats.reset()
    assert stats.snapshot()["job_analysis"]["input_tokens"] == 0


async def test_pricing_report_shows_the_token_table(priced: DualCache) -> None:
    assert "tokens (provider)" not in priced.stats.report()
    await summarize(priced)
    report = priced.stats.report()
    line = next(x for x in report.splitlines() if x.startswith("summarize_job") and "40.0%" in x)
    assert line.split()[1:4] == ["1000", "200", "400"]
    assert line.split()[-1] == "0.000400"


# -- the emulator's prompt cache ---------------------------------------------------------------------------------


def test_prompt_cache_reports_the_longest_leading_messages_seen() -> None:
    cache = _models.PromptCache()
    system = {"role": "system", "content": "You grade job postings. Answer in JSON."}
    first = [system, {"role": "user", "content": "Posting one"}]
    assert cache.cached_tokens("m", first) == 0
    second = [system, {"role": "user", "content": "Posting two"}]
    assert cache.cached_tokens("m", second) == _models.token_count(_models.messages_text([system]))
    assert cache.cached_tokens("m", second) == _models.token_count(_models.messages_text(second))  # all of it
    assert cache.cached_tokens("other-model", second) == 0  # per model


def test_prompt_cache_forgets_the_least_recent_past_its_size() -> None:
    cache = _models.PromptCache(max_entries=2)
    cache.cached_tokens("m", [{"role": "user", "content": "a"}])
    cache.cached_tokens("m", [{"role": "user", "content": "b"}])
    cache.cached_tokens("m", [{"role": "user", "content": "c"}])
    assert cache.cached_tokens("m", [{"role": "user", "content": "a"}]) == 0
    with pytest.raises(ValueError, match="max_entries=0"):
        _models.PromptCache(max_entries=0)


@pytest.mark.parametrize("provider", ["openai", "workers-ai"])
async def test_pricing_emulator_prompt_cache_shows_in_the_stats(kv_emulator: Any, provider: str) -> None:
    system = {"role": "system", "content": f"You summarize job postings {uuid.uuid4().hex} and answer in JSON."}
    model = "gpt-4o-mini" if provider == "openai" else "@cf/meta/llama-3.1-8b-instruct"
    prices = Prices({model: TokenPrices.per_million(2.0, 8.0, 0.5)})
    cache = DualCache.from_outputs(
        kv_emulator.outputs,  # type: ignore[attr-defined]
        api_token=TOKEN,
        openai_api_key="sk-local",
        policies=Policies.with_overrides({"summarize_job": SUMMARIZE}),
        token_prices=prices,
        write_behind=False,
    )
    async with cache:
        for posting in ("one", "two"):
            messages = [system, {"role": "user", "content": f"Posting {posting}"}]
            await cache.run("summarize_job", key=uuid.uuid4().hex, model=model, messages=messages, provider=provider)
        snap = cache.stats.snapshot()["summarize_job"]
    cached = _models.token_count(_models.messages_text([system]))  # the second request's shared first message
    assert (snap["provider_calls"], snap["cached_tokens"]) == (2, cached)
    assert snap["saved_by_prompt_cache"] == pytest.approx(cached * (2.0 - 0.5) / 1e6)
    sent = [r for r in kv_emulator.control.requests() if r["surface"] == "gateway"][-2:]  # type: ignore[attr-defined]
    assert {json.loads(r["headers"]["cf-aig-custom-cost"])["per_cache_read_token"] for r in sent} == {0.5e-6}


def readme_block(heading: str) -> str:
    from tests.docs_support import PROJECT_DIR, doc_block

    return doc_block(PROJECT_DIR / "docs" / "observability.md", heading)


def test_pricing_readme_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "pricing.py"
    script.write_text(readme_block("Token prices and the prompt cache"), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["1000 200 400", "0.000240 0.000030"]
    assert any(line.startswith("application_generation") and "40.0%" in line for line in lines)
