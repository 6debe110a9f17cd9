"""Validated model output: bad answers are not cached, fall back where the policy says, and are
counted; stored records failing the same checks are misses, overwritten."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from dualcache import (
    BadResponseError,
    ConfigError,
    DualCache,
    MemoryKVBackend,
    Namespace,
    Policies,
    RetryPolicy,
    StackOutputs,
)
from dualcache._answers import AnswerSchemas, check_vectors
from dualcache._keys import analysis_key, embed_key, spam_key
from dualcache._records import build_embedding_record, encode_json_record

ACCOUNT = "a" * 32
EMBED = "@cf/baai/bge-base-en-v1.5"
DIMS = 768
MSGS = [{"role": "user", "content": "Rate this job; answer in JSON with a score"}]
SPAM_MSGS = [{"role": "user", "content": "Is this posting spam? Answer in JSON"}]
OUTPUTS = StackOutputs.from_data(
    dict(
        stack="test",
        account_id=ACCOUNT,
        gateway_id="gw",
        api_base_url="https://api.test/client/v4",
        gateway_base_url="https://gw.test/v1",
        namespaces={n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},  # Cloudflare's id format
        worker_name="api",
    ),
    trusted_hosts=["api.test", "gw.test"],  # the mock hosts (untrusted hosts are refused: no token leaves for them)
)
GOOD_VECTOR = [0.25] * DIMS
GOOD_ANALYSIS = {"score": 72, "strengths": ["python"], "gaps": []}
GOOD_OPENAI = {"overallScore": 64, "analysis": {"fit": "ok"}}
GOOD_SPAM = {"isSpam": False, "confidence": 0.9}


def embedding_body(vectors_json: str) -> bytes:
    return f'{{"success": true, "errors": [], "result": {{"shape": [1, {DIMS}], "data": {vectors_json}}}}}'.encode()


def workers_ai_json_body(response_json: str) -> bytes:
    return f'{{"success": true, "errors": [], "result": {{"response": {response_json}}}}}'.encode()


def openai_body(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Cloud:
    """Gateway, direct Workers AI and OpenAI: queued raw bodies per route, then good answers."""

    def __init__(self) -> None:
        self.queued: dict[str, list[bytes]] = {"gateway": [], "direct": [], "openai": []}
        self.requests: list[tuple[str, httpx.Request]] = []

    def route(self, request: httpx.Request) -> str:
        host = request.url.host
        if host == "gw.test":
            return "openai" if "/openai/" in request.url.path else "gateway"
        return "openai" if host == "openai.test" else "direct"

    def routes(self) -> list[str]:
        return [r for r, _ in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        route = self.route(request)
        self.requests.append((route, request))
        queue = self.queued[route]
        if queue:
            return httpx.Response(200, content=queue.pop(0), headers={"content-type": "application/json"})
        if route == "openai":
            return httpx.Response(200, content=openai_body(json.dumps(GOOD_OPENAI)))
        body = json.loads(request.content)
        if "text" in body:
            texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
            return httpx.Response(200, content=embedding_body(json.dumps([GOOD_VECTOR] * len(texts))))
        answer = GOOD_SPAM if "spam" in json.dumps(body).lower() else GOOD_ANALYSIS
        return httpx.Response(200, content=workers_ai_json_body(json.dumps(answer)))


class Env:
    def __init__(self, *, direct_fallback: bool = True, gateway: bool = True) -> None:
        self.cloud = Cloud()
        self.backends: dict[Namespace, MemoryKVBackend] = {}

        def kv(ns: Namespace) -> MemoryKVBackend:
            return self.backends.setdefault(ns, MemoryKVBackend())

        async def no_sleep(_s: float) -> None:
            return None

        common: dict[str, Any] = {
            "api_token": "t",
            "openai_api_key": "sk",
            "kv": kv,
            "transport": httpx.MockTransport(self.cloud),
            "write_behind": False,
            "retry": RetryPolicy(max_attempts=1, total_timeout=30.0),
            "sleep": no_sleep,
            "openai_base_url": "https://openai.test/v1",
        }
        if gateway:
            overrides = {
                op: {"direct_fallback": direct_fallback} for op in ("embeddings", "job_analysis", "spam_detection")
            }
            self.cache = DualCache.from_outputs(OUTPUTS, policies=Policies.with_overrides(overrides), **common)
        else:
            self.cache = DualCache(account_id=ACCOUNT, api_base_url="https://api.test/client/v4", **common)

    def stored(self, ns: Namespace, key: str) -> bytes | None:
        item = self.backends.get(ns, MemoryKVBackend())._data.get(key)
        return None if item is None else item[0]

    def counts(self, op: str) -> tuple[int, int, int]:
        snap = self.cache.stats.snapshot()[op]
        return snap["provider_calls"], snap["errors"], snap["failures"]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env()
    async with e.cache:
        yield e


def strict_json(raw: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-JSON constant {name} in a stored record")

    return json.loads(raw, parse_constant=refuse)


BAD_VECTORS = [
    pytest.param("[[0.5, 0.25]]", id="wrong-dimension-2"),
    pytest.param(json.dumps([[0.1] * 5000]), id="wrong-dimension-5000"),
    pytest.param(json.dumps([[True] * DIMS]), id="booleans"),
    pytest.param("[[" + ", ".join(["NaN"] + ["0.5"] * (DIMS - 1)) + "]]", id="nan"),
    pytest.param("[[" + ", ".join(["Infinity"] + ["0.5"] * (DIMS - 1)) + "]]", id="infinity"),
    pytest.param("[[" + ", ".join(["1e39"] + ["0.5"] * (DIMS - 1)) + "]]", id="float32-overflow"),
    pytest.param('[["0.5"]]', id="strings"),
    pytest.param("[]", id="no-vector"),
]


@pytest.mark.parametrize("vectors", BAD_VECTORS)
async def test_embed_bad_gateway_answer_tries_direct_once_and_caches_the_good_one(env: Env, vectors: str) -> None:
    env.cloud.queued["gateway"].append(embedding_body(vectors))
    assert await env.cache.embed("text") == GOOD_VECTOR
    assert env.cloud.routes() == ["gateway", "direct"]
    assert env.counts("embeddings") == (1, 1, 0)  # one provider answer served, the bad one counted
    record = strict_json(env.stored(Namespace.EMBEDDINGS_CACHE, embed_key("text")) or b"")
    assert record["dims"] == DIMS


@pytest.mark.parametrize("vectors", BAD_VECTORS)
@pytest.mark.parametrize("gateway", [True, False], ids=["gateway-no-fallback", "direct"])
async def test_embed_bad_answer_without_fallback_is_bad_response_not_cached(vectors: str, gateway: bool) -> None:
    e = Env(direct_fallback=False, gateway=gateway)
    async with e.cache:
        e.cloud.queued["gateway" if gateway else "direct"].append(embedding_body(vectors))
        with pytest.raises(BadResponseError, match="embeddings"):
            await e.cache.embed("text")
        assert len(e.cloud.requests) == 1
        assert e.counts("embeddings") == (0, 1, 1)
        assert e.stored(Namespace.EMBEDDINGS_CACHE, embed_key("text")) is None
        assert await e.cache.embed("text") == GOOD_VECTOR  # the next call asks again (nothing bad was cached)


async def test_embed_many_bad_batch_tries_direct_once(env: Env) -> None:
    env.cloud.queued["gateway"].append(embedding_body(json.dumps([GOOD_VECTOR, [0.5, 0.5]])))
    assert await env.cache.embed_many(["a", "b"]) == [GOOD_VECTOR, GOOD_VECTOR]
    assert env.cloud.routes() == ["gateway", "direct"]
    for text in ("a", "b"):
        assert strict_json(env.stored(Namespace.EMBEDDINGS_CACHE, embed_key(text)) or b"")["dims"] == DIMS


@pytest.mark.parametrize("dims", [3, 5000])
async def test_embed_tampered_record_length_is_a_miss_and_overwritten(env: Env, dims: int) -> None:
    key = embed_key("text")
    backend = env.backends.setdefault(Namespace.EMBEDDINGS_CACHE, MemoryKVBackend())
    tampered = build_embedding_record("text", [0.5] * DIMS, EMBED, 0.0)
    tampered["dims"] = dims
    backend._data[key] = (json.dumps(tampered).encode(), None, None)
    assert await env.cache.embed("text") == GOOD_VECTOR
    assert env.counts("embeddings")[0] == 1  # recomputed
    assert strict_json(env.stored(Namespace.EMBEDDINGS_CACHE, key) or b"")["dims"] == DIMS


# -- JSON answers -----------------------------------------------------------------------------------------------

BAD_ANALYSES = [
    pytest.param("{}", id="empty"),
    pytest.param('{"unexpected": 1, "fields": "x"}', id="unexpected-fields"),
    pytest.param('{"score": "high"}', id="score-not-a-number"),
    pytest.param('{"score": 250}', id="score-out-of-range"),
    pytest.param('{"score": true}', id="score-bool"),
    pytest.param('{"score": NaN}', id="nan"),
    pytest.param('{"score": 50, "strengths": "not a list"}', id="strengths-not-a-list"),
    pytest.param('"no object at all"', id="not-an-object"),
]


@pytest.mark.parametrize("answer", BAD_ANALYSES)
async def test_analyze_job_bad_workers_ai_answer_falls_back_to_openai(env: Env, answer: str) -> None:
    # Job analysis skips the gateway cache and may go direct: the bad answer is tried direct once, then OpenAI.
    env.cloud.queued["gateway"].append(workers_ai_json_body(answer))
    env.cloud.queued["direct"].append(workers_ai_json_body(answer))
    assert await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == GOOD_OPENAI
    assert env.cloud.routes() == ["gateway", "direct", "openai"]
    provider_calls, errors, failures = env.counts("job_analysis")
    assert (provider_calls, failures) == (1, 0) and errors >= 2
    assert strict_json(env.stored(Namespace.JOB_ANALYSIS_CACHE, analysis_key("u", "j")) or b"") == GOOD_OPENAI


@pytest.mark.parametrize("answer", BAD_ANALYSES)
async def test_analyze_job_bad_answers_everywhere_are_not_cached(env: Env, answer: str) -> None:
    env.cloud.queued["gateway"].append(workers_ai_json_body(answer))
    env.cloud.queued["direct"].append(workers_ai_json_body(answer))
    env.cloud.queued["openai"].append(openai_body(answer if answer.startswith("{") else "{}"))
    with pytest.raises(BadResponseError, match="job_analysis answer|not a JSON object"):
        await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
    assert env.stored(Namespace.JOB_ANALYSIS_CACHE, analysis_key("u", "j")) is None
    assert env.counts("job_analysis")[2] == 1
    # Nothing bad was cached: the next call asks again and caches the good answer.
    assert await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == GOOD_ANALYSIS


@pytest.mark.parametrize("answer", ["{}", '{"verdict": "maybe"}', '{"isSpam": "yes"}', '{"confidence": 7}'])
async def test_detect_spam_bad_gateway_answer_tries_direct_once(env: Env, answer: str) -> None:
    env.cloud.queued["gateway"].append(workers_ai_json_body(answer))
    assert await env.cache.detect_spam(job_id="j", messages=SPAM_MSGS) == GOOD_SPAM
    assert env.cloud.routes() == ["gateway", "direct"]
    assert env.counts("spam_detection") == (1, 1, 0)
    assert strict_json(env.stored(Namespace.API_CACHE, spam_key("j")) or b"") == GOOD_SPAM


@pytest.mark.parametrize(
    ("op", "ns", "key", "call"),
    [
        pytest.param(
            "job_analysis",
            Namespace.JOB_ANALYSIS_CACHE,
            analysis_key("u", "j"),
            lambda c: c.analyze_job(user_id="u", job_id="j", messages=MSGS),
            id="analysis",
        ),
        pytest.param(
            "spam_detection",
            Namespace.API_CACHE,
            spam_key("j"),
            lambda c: c.detect_spam(job_id="j", messages=SPAM_MSGS),
            id="spam",
        ),
    ],
)
@pytest.mark.parametrize("stored", [{}, {"unexpected": 1}, {"score": "high"}])
async def test_stored_json_answer_failing_its_schema_is_a_miss_and_overwritten(
    env: Env, op: str, ns: Namespace, key: str, call: Any, stored: dict[str, Any]
) -> None:
    env.backends.setdefault(ns, MemoryKVBackend())._data[key] = (encode_json_record(stored), None, None)
    fresh = await call(env.cache)
    assert fresh != stored
    assert env.counts(op)[0] == 1
    assert strict_json(env.stored(ns, key) or b"") == fresh
    assert await call(env.cache) == fresh  # now a KV hit
    assert env.cache.stats.snapshot()[op]["kv_hits"] == 1


async def test_stored_valid_json_answer_is_a_hit(env: Env) -> None:
    key = analysis_key("u", "j")
    env.backends.setdefault(Namespace.JOB_ANALYSIS_CACHE, MemoryKVBackend())._data[key] = (
        encode_json_record({"overallScore": 90, "analysis": {"seed": "record"}}),
        None,
        None,
    )
    assert await env.cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == {
        "overallScore": 90,
        "analysis": {"seed": "record"},
    }
    assert env.cloud.requests == []


# -- the registry ------------------------------------------------------------------------------------------------


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    words: int


def test_answer_schemas_pydantic_model_for_a_custom_operation() -> None:
    schemas = AnswerSchemas.builtin()
    schemas.register("summaries", Summary)
    assert schemas.check("summaries", {"title": "x", "words": 3}, backend="t") == {"title": "x", "words": 3}
    with pytest.raises(BadResponseError, match=r"summaries answer does not fit its schema \(more: Extra inputs"):
        schemas.check("summaries", {"title": "x", "words": 3, "more": 1}, backend="t")
    schemas.register("summaries", None)
    assert schemas.get("summaries") is None
    assert schemas.is_valid("summaries", {"anything": 1})
    assert not schemas.is_valid("summaries", {"x": float("nan")})  # JSON safety holds without a schema


JSON_SCHEMA = {
    "type": "object",
    "required": ["label", "score"],
    "additionalProperties": False,
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "n": {"type": "integer"},
    },
}


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param({"label": "spam", "score": 0.5, "tags": ["a"], "n": 2}, None, id="ok"),
        pytest.param({"label": "spam"}, "missing required field", id="missing"),
        pytest.param({"label": "eggs", "score": 0.5}, "is not one of", id="enum"),
        pytest.param({"label": "spam", "score": 2}, "maximum", id="maximum"),
        pytest.param({"label": "spam", "score": True}, "expected number", id="bool-is-no-number"),
        pytest.param({"label": "spam", "score": 0.1, "x": 1}, "unexpected field", id="additional"),
        pytest.param({"label": "spam", "score": 0.1, "tags": ["a" * 11]}, r"tags\[0\]", id="items"),
        pytest.param({"label": "spam", "score": 0.1, "n": 1.5}, "expected integer", id="integer"),
    ],
)
def test_answer_schemas_json_schema_subset(answer: dict[str, Any], error: str | None) -> None:
    schemas = AnswerSchemas({"labels": JSON_SCHEMA})
    if error is None:
        assert schemas.check("labels", answer, backend="t") is answer
    else:
        with pytest.raises(BadResponseError, match=error):
            schemas.check("labels", answer, backend="t")


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"type": "object", "patternProperties": {}}, id="unsupported-keyword"),
        pytest.param({"type": "objekt"}, id="unknown-type"),
        pytest.param({"properties": {"a": {"format": "email"}}}, id="nested-unsupported"),
        pytest.param(dict, id="not-a-model"),
    ],
)
def test_answer_schemas_refuse_what_they_cannot_check(schema: Any) -> None:
    with pytest.raises(ConfigError, match="answer schema of 'x'"):
        AnswerSchemas({"x": schema})


def test_check_vectors_rounds_to_float32_and_counts() -> None:
    assert check_vectors([[0.1, 1]], count=1, dims=2) == [[0.10000000149011612, 1.0]]
    with pytest.raises(BadResponseError, match="expected 2 vectors"):
        check_vectors([[0.1]], count=2, dims=None)


# -- a custom operation through run() -------------------------------------------------------------------------

SUMMARIZE = {"kv": True, "kv_ttl": 86_400, "kv_namespace": "API_CACHE", "gateway": "cache", "gateway_ttl": 3600}


async def test_run_custom_operation_answer_checked_against_its_registered_schema() -> None:
    e = Env()
    overrides = {"summarize_job": {**SUMMARIZE, "scope": "global"}}
    e.cache = DualCache.from_outputs(
        OUTPUTS,
        api_token="t",
        kv=lambda ns: e.backends.setdefault(ns, MemoryKVBackend()),
        transport=httpx.MockTransport(e.cloud),
        write_behind=False,
        retry=RetryPolicy(max_attempts=1, total_timeout=30.0),
        policies=Policies.with_overrides(overrides),
    )
    async with e.cache:
        e.cache.answer_schemas.register("summarize_job", {"type": "object", "required": ["score", "strengths"]})
        # A summary missing a required field from the gateway (which would have cached it): tried direct once.
        e.cloud.queued["gateway"].append(workers_ai_json_body('{"score": 1}'))
        answer = await e.cache.run("summarize_job", key="job-1", model="@cf/meta/llama-3.1-8b-instruct", messages=MSGS)
        assert answer == GOOD_ANALYSIS
        assert e.cloud.routes() == ["gateway", "direct"]
        assert e.cache.stats.snapshot()["summarize_job"]["errors"] == 1
