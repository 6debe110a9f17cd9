from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from dualcache import BackendUnavailableError, BadResponseError, GatewayMode, Operation, OperationPolicy, Policies
from dualcache._exceptions import AuthenticationError, BackendError, ConfigError, RateLimitedError
from dualcache._gateway import (
    CallRecord,
    GatewayRetryPlan,
    Provider,
    RetryAction,
    RetryPolicy,
    Route,
    UpstreamClient,
    choose_routes,
    decide_retry,
    decode_base64_embedding,
    embedding_request,
    gateway_headers,
    normalize_openai_embeddings,
    parse_json_object,
    plan_gateway_retries,
    should_fall_back,
)
from dualcache._kv import parse_retry_after

P = Policies()


def test_gateway_headers_cached_operation() -> None:
    h = gateway_headers(P.embeddings, Operation.EMBEDDINGS, cache_key="dualcache:embeddings:abc")
    assert h == {
        "cf-aig-cache-ttl": "3600",
        "cf-aig-cache-key": "dualcache:embeddings:abc",
        "cf-aig-metadata": '{"operation":"embeddings","request":"abc"}',
    }


def test_gateway_headers_skip_with_user_and_token() -> None:
    h = gateway_headers(P.job_analysis, Operation.JOB_ANALYSIS, gateway_token=SecretStr("gw-secret"), user_id="u:1")
    assert h["cf-aig-skip-cache"] == "true"
    assert "cf-aig-cache-ttl" not in h and "cf-aig-cache-key" not in h
    assert h["cf-aig-authorization"] == "Bearer gw-secret"
    assert json.loads(h["cf-aig-metadata"]) == {"operation": "job_analysis", "user_id": "u%3A1"}


def test_gateway_headers_skip_ignores_a_cache_key_and_sets_collect_log() -> None:
    h = gateway_headers(P.resume_parsing, Operation.RESUME_PARSING, cache_key="dualcache:resume_parsing:" + "f" * 64)
    assert h == {
        "cf-aig-skip-cache": "true",
        "cf-aig-metadata": '{"operation":"resume_parsing","request":"ffffffffffffffff"}',
        "cf-aig-collect-log": "true",
    }


def test_gateway_headers_are_latin1_safe_for_unicode_user_ids() -> None:
    h = gateway_headers(P.job_analysis, Operation.JOB_ANALYSIS, user_id="Zoë ✓")
    for value in h.values():
        value.encode("latin-1")


@pytest.mark.parametrize(
    ("gateway", "direct", "fallback", "expected"),
    [
        pytest.param(True, True, True, [Route.GATEWAY, Route.DIRECT], id="gateway-then-direct"),
        pytest.param(True, True, False, [Route.GATEWAY], id="fallback-off"),
        pytest.param(False, True, True, [Route.DIRECT], id="no-gateway"),
        pytest.param(False, False, True, [], id="nothing"),
    ],
)
def test_choose_routes(gateway: bool, direct: bool, fallback: bool, expected: list[Route]) -> None:
    policy = OperationPolicy(kv=False, gateway=GatewayMode.SKIP, direct_fallback=fallback)
    assert choose_routes(gateway_configured=gateway, direct_configured=direct, policy=policy) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(BackendUnavailableError("x", backend="gw", status_code=503), True, id="unavailable"),
        pytest.param(RateLimitedError("x", backend="gw"), False, id="rate-limited"),
        pytest.param(AuthenticationError("x", backend="gw", status_code=401), False, id="auth"),
        pytest.param(BadResponseError("x", backend="gw"), False, id="bad-response"),
        pytest.param(BackendError("x", backend="gw", status_code=400), False, id="bad-request"),
    ],
)
def test_should_fall_back_only_when_unavailable(error: BackendError, expected: bool) -> None:
    assert should_fall_back(error) is expected


R = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=4.0, total_timeout=10.0)


@pytest.mark.parametrize(
    ("attempt", "status", "retry_after", "elapsed", "expected"),
    [
        pytest.param(1, 400, None, 0.0, (RetryAction.DONE, 0.0), id="4xx-not-retried"),
        pytest.param(1, 401, None, 0.0, (RetryAction.DONE, 0.0), id="401-not-retried"),
        pytest.param(1, 503, None, 0.0, (RetryAction.RETRY, 0.5), id="5xx-backoff-1"),
        pytest.param(2, 502, None, 0.0, (RetryAction.RETRY, 1.0), id="5xx-backoff-2"),
        pytest.param(3, 503, None, 0.0, (RetryAction.GIVE_UP, 0.0), id="attempts-exhausted"),
        pytest.param(1, None, None, 0.0, (RetryAction.RETRY, 0.5), id="transport-error"),
        pytest.param(1, 429, 2.0, 0.0, (RetryAction.RETRY, 2.0), id="retry-after-honoured"),
        pytest.param(1, 429, 0.0, 0.0, (RetryAction.RETRY, 0.0), id="retry-after-zero"),
        pytest.param(1, 429, 60.0, 0.0, (RetryAction.GIVE_UP, 0.0), id="retry-after-too-long"),
        pytest.param(1, 503, None, 9.8, (RetryAction.GIVE_UP, 0.0), id="time-budget"),
    ],
)
def test_decide_retry(
    attempt: int, status: int | None, retry_after: float | None, elapsed: float, expected: tuple[RetryAction, float]
) -> None:
    assert decide_retry(R, attempt=attempt, status=status, retry_after=retry_after, elapsed=elapsed) == expected


def test_decide_retry_caps_the_backoff() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=3.0, total_timeout=100.0)
    assert decide_retry(policy, attempt=5, status=503, retry_after=None, elapsed=0.0) == (RetryAction.RETRY, 3.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("3", 3.0, id="seconds"),
        pytest.param("-1", 0.0, id="negative"),
        pytest.param("Wed, 21 Oct 2015 07:28:10 GMT", 10.0, id="http-date"),
        pytest.param("soon", None, id="garbage"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1445412480.0) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param({"a": 1}, {"a": 1}, id="object"),
        pytest.param('{"a": 1}', {"a": 1}, id="json-text"),
        pytest.param('```json\n{"a": 1}\n```', {"a": 1}, id="fenced"),
        pytest.param('Sure! {"a": 1} Hope it helps', {"a": 1}, id="embedded"),
    ],
)
def test_parse_json_object(answer: object, expected: dict[str, int]) -> None:
    assert parse_json_object(answer, backend="workers-ai") == expected


@pytest.mark.parametrize("answer", ["no json here", "[1, 2]", 42, None])
def test_parse_json_object_rejects_non_objects(answer: object) -> None:
    with pytest.raises(BadResponseError, match="not a JSON object"):
        parse_json_object(answer, backend="workers-ai")


def test_retry_policy_rejects_nonsense() -> None:
    from dualcache import ConfigError

    with pytest.raises(ConfigError, match="max_attempts=0"):
        RetryPolicy(max_attempts=0)


# -- explicit cache decision, gateway id and retry headers --------------------------------------------

CACHE_DECISION = ("cf-aig-cache-ttl", "cf-aig-skip-cache")


@pytest.mark.parametrize("op", list(Operation))
def test_gateway_headers_carry_exactly_one_cache_decision(op: Operation) -> None:
    policy = P.for_operation(op)
    h = gateway_headers(policy, op, cache_key="k", retries=plan_gateway_retries(RetryPolicy(), 10.0))
    assert [name for name in CACHE_DECISION if name in h] == (
        ["cf-aig-cache-ttl"] if policy.gateway is GatewayMode.CACHE else ["cf-aig-skip-cache"]
    )
    if policy.gateway is GatewayMode.CACHE:
        assert h["cf-aig-cache-ttl"] == str(policy.gateway_ttl)


def test_gateway_headers_name_the_gateway_and_its_retries() -> None:
    plan = GatewayRetryPlan(
        max_attempts=3, retry_delay_ms=200, backoff="constant", request_timeout_ms=9600, client_attempts=1
    )
    h = gateway_headers(P.spam_detection, Operation.SPAM_DETECTION, gateway_id="gw-1", retries=plan)
    assert {k: v for k, v in h.items() if k != "cf-aig-metadata"} == {
        "cf-aig-cache-ttl": "86400",
        "cf-aig-gateway-id": "gw-1",
        "cf-aig-max-attempts": "3",
        "cf-aig-retry-delay": "200",
        "cf-aig-backoff": "constant",
        "cf-aig-request-timeout": "9600",
    }


def test_plan_gateway_retries_gateway_owner_fits_the_waits_in_the_budget() -> None:
    plan = plan_gateway_retries(RetryPolicy(max_attempts=3, base_delay=0.2), 10.0)
    assert plan.headers() == {
        "cf-aig-max-attempts": "3",
        "cf-aig-retry-delay": "200",
        "cf-aig-backoff": "constant",
        "cf-aig-request-timeout": "9600",  # the budget less the two waits
    }
    assert plan.client_attempts == 1
    assert plan.worst_case_upstream_attempts == 4  # 3, or 4 if the header counts retries


def test_plan_gateway_retries_client_owner_asks_the_gateway_for_one_attempt() -> None:
    plan = plan_gateway_retries(RetryPolicy(max_attempts=3, owner="client"), 10.0)
    assert (plan.max_attempts, plan.client_attempts, plan.request_timeout_ms) == (1, 3, 10_000)


@pytest.mark.parametrize(
    ("retry", "budget", "attempts", "delay_ms", "timeout_ms"),
    [
        pytest.param(RetryPolicy(max_attempts=9, base_delay=0.2), 10.0, 5, 200, 9_200, id="capped-at-5"),
        pytest.param(RetryPolicy(base_delay=0.0), 10.0, 3, 100, 9_800, id="delay-at-least-100ms"),
        pytest.param(RetryPolicy(base_delay=30.0, max_delay=30.0), 60.0, 3, 5_000, 50_000, id="delay-at-most-5s"),
        pytest.param(RetryPolicy(max_attempts=5, base_delay=1.0), 3.0, 2, 1_000, 2_000, id="waits-within-half"),
        pytest.param(RetryPolicy(max_attempts=1), 0.5, 1, 200, 500, id="one-attempt-gets-it-all"),
    ],
)
def test_plan_gateway_retries_bounds(
    retry: RetryPolicy, budget: float, attempts: int, delay_ms: int, timeout_ms: int
) -> None:
    plan = plan_gateway_retries(retry, budget)
    assert (plan.max_attempts, plan.retry_delay_ms, plan.request_timeout_ms) == (attempts, delay_ms, timeout_ms)
    # Every attempt's timeout plus the waits between them never exceeds the budget for the first attempt.
    assert plan.request_timeout_ms + (plan.max_attempts - 1) * plan.retry_delay_ms <= budget * 1000


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), float("inf"), True])
def test_plan_gateway_retries_rejects_a_bad_budget(budget: float) -> None:
    with pytest.raises(ConfigError, match="budget"):
        plan_gateway_retries(RetryPolicy(), budget)


def test_retry_policy_rejects_an_unknown_owner() -> None:
    with pytest.raises(ConfigError, match="owner='nobody'"):
        RetryPolicy(owner="nobody")  # type: ignore[arg-type]


# -- embeddings: request shape and base64 decoding ---------------------------------------------------


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def test_embedding_request_workers_ai_and_openai() -> None:
    assert embedding_request("@cf/baai/bge-base-en-v1.5", "t") == (
        Provider.WORKERS_AI,
        "@cf/baai/bge-base-en-v1.5",
        {"text": "t"},
    )
    assert embedding_request("@cf/baai/bge-base-en-v1.5", ["t"], pooling="cls")[2] == {"text": ["t"], "pooling": "cls"}
    assert embedding_request("text-embedding-3-small", ["t"], encoding="float") == (
        Provider.OPENAI,
        "embeddings",
        {"model": "text-embedding-3-small", "input": ["t"], "encoding_format": "float"},
    )
    assert embedding_request("text-embedding-3-small", "t")[2]["encoding_format"] == "base64"
    with pytest.raises(ConfigError, match="'hex'"):
        embedding_request("text-embedding-3-small", "t", encoding="hex")


def test_decode_base64_embedding_is_little_endian_float32() -> None:
    assert decode_base64_embedding(_b64([0.5, -2.0, 1.25])) == [0.5, -2.0, 1.25]
    assert decode_base64_embedding(base64.b64encode(struct.pack(">f", 0.5)).decode()) != [0.5]


@pytest.mark.parametrize(
    "value", ["not base64!", base64.b64encode(b"abc").decode(), "", base64.b64encode(b"\x00" * 5).decode()]
)
def test_decode_base64_embedding_rejects_bad_values(value: str) -> None:
    with pytest.raises(BadResponseError, match="embedding"):
        decode_base64_embedding(value)


def test_normalize_openai_embeddings_orders_and_decodes_both_encodings() -> None:
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": _b64([3.0, 4.0])},
            {"object": "embedding", "index": 0, "embedding": [1.0, 2.0]},
        ],
        "model": "text-embedding-3-small",
    }
    assert normalize_openai_embeddings(body)["data"] == [[1.0, 2.0], [3.0, 4.0]]
    assert normalize_openai_embeddings(body)["shape"] == [2, 2]
    with pytest.raises(BadResponseError, match="'data'"):
        normalize_openai_embeddings({"data": "x"})


# -- the two URL shapes, through httpx.MockTransport ------------------------------------------------

ACCOUNT = "a" * 32


def _client(
    api: str, handler: Any, *, openai_key: str | None = "sk-test", retry: RetryPolicy | None = None
) -> UpstreamClient:
    transport = httpx.MockTransport(handler)
    return UpstreamClient(
        httpx.AsyncClient(transport=transport),
        account_id=ACCOUNT,
        api_base_url="https://api.test/client/v4",
        gateway_base_url="https://gw.test/v1",
        gateway_id="gw",
        api_token=SecretStr("cf-token"),
        gateway_token=None,
        openai_api_key=SecretStr(openai_key) if openai_key else None,
        openai_base_url="https://openai.test/v1",
        gateway_api=api,  # type: ignore[arg-type]
        retry=retry or RetryPolicy(max_attempts=3, base_delay=0.2),
    )


def _answer(seen: list[httpx.Request], status: int = 200) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if status != 200:
            return httpx.Response(status, json={"success": False, "errors": [{"code": 1, "message": "down"}]})
        if request.url.path.endswith("/embeddings"):
            return httpx.Response(200, json={"data": [{"index": 0, "embedding": _b64([0.25, 0.5])}]})
        if "chat/completions" in request.url.path:
            return httpx.Response(
                200, json={"choices": [{"message": {"content": "{}"}}]}, headers={"cf-aig-log-id": "L"}
            )
        return httpx.Response(
            200,
            json={"result": {"data": [[0.1]]}, "success": True},
            headers={"cf-aig-cache-status": "MISS", "cf-aig-log-id": "01JADMCQQQBWH3NXZ5GCRN98DP"},
        )

    return handler


async def _call(client: UpstreamClient, provider: Provider, path: str, payload: dict[str, Any]) -> Any:
    record = CallRecord()
    op = Operation.EMBEDDINGS if provider is Provider.WORKERS_AI or path == "embeddings" else Operation.JOB_ANALYSIS
    result = await client.call(provider, path, payload, operation=op, policy=P.for_operation(op), record=record)
    return result, record


@pytest.mark.parametrize(
    ("api", "url", "gateway_header"),
    [
        ("legacy", f"https://gw.test/v1/{ACCOUNT}/gw/workers-ai/@cf/baai/bge-base-en-v1.5", None),
        ("rest", f"https://api.test/client/v4/accounts/{ACCOUNT}/ai/run/@cf/baai/bge-base-en-v1.5", "gw"),
    ],
)
async def test_upstream_client_workers_ai_url_per_shape(api: str, url: str, gateway_header: str | None) -> None:
    seen: list[httpx.Request] = []
    client = _client(api, _answer(seen))
    result, record = await _call(client, Provider.WORKERS_AI, "@cf/baai/bge-base-en-v1.5", {"text": "t"})
    (request,) = seen
    assert str(request.url) == url
    assert request.headers.get("cf-aig-gateway-id") == gateway_header
    assert request.headers["authorization"] == "Bearer cf-token"
    assert request.headers["cf-aig-cache-ttl"] == "3600" and "cf-aig-skip-cache" not in request.headers
    assert (request.headers["cf-aig-max-attempts"], request.headers["cf-aig-request-timeout"]) == ("3", "9600")
    assert result.data == {"data": [[0.1]]}
    assert result.log_id == "01JADMCQQQBWH3NXZ5GCRN98DP" and result.cache_status == "MISS"
    assert record.attempts == 1


async def test_upstream_client_rest_openai_chat_names_the_model_and_uses_the_cloudflare_token() -> None:
    seen: list[httpx.Request] = []
    client = _client("rest", _answer(seen), openai_key=None)
    result, _ = await _call(client, Provider.OPENAI, "chat/completions", {"model": "gpt-4o-mini", "messages": []})
    (request,) = seen
    assert str(request.url) == f"https://api.test/client/v4/accounts/{ACCOUNT}/ai/v1/chat/completions"
    assert json.loads(request.content)["model"] == "openai/gpt-4o-mini"
    assert request.headers["authorization"] == "Bearer cf-token"
    assert request.headers["cf-aig-gateway-id"] == "gw"
    assert result.log_id == "L"


async def test_upstream_client_rest_openai_embeddings_keep_the_legacy_url_and_decode_base64() -> None:
    seen: list[httpx.Request] = []
    client = _client("rest", _answer(seen))
    payload = embedding_request("text-embedding-3-small", ["t"])[2]
    result, _ = await _call(client, Provider.OPENAI, "embeddings", payload)
    (request,) = seen
    assert str(request.url) == f"https://gw.test/v1/{ACCOUNT}/gw/openai/embeddings"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert "cf-aig-gateway-id" not in request.headers
    assert result.data["data"] == [[0.25, 0.5]]


async def test_upstream_client_rest_openai_embeddings_without_a_key_fail_before_io() -> None:
    seen: list[httpx.Request] = []
    client = _client("rest", _answer(seen), openai_key=None)
    client.check_configured(Provider.OPENAI)  # chat can go through the REST gateway route
    with pytest.raises(ConfigError, match="openai_api_key"):
        await _call(client, Provider.OPENAI, "embeddings", embedding_request("text-embedding-3-small", "t")[2])
    assert seen == []


async def test_upstream_client_gateway_owner_one_client_attempt_then_direct() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "gw.test":
            seen.append(request)
            return httpx.Response(503, json={"success": False, "errors": [{"code": 1, "message": "down"}]})
        return _answer(seen)(request)

    client = _client("legacy", handler)
    result, record = await _call(client, Provider.WORKERS_AI, "@cf/baai/bge-base-en-v1.5", {"text": "t"})
    assert [r.url.host for r in seen] == ["gw.test", "api.test"]  # one gateway attempt (its own 3 inside)
    assert "cf-aig-max-attempts" not in seen[1].headers  # the direct route: no gateway headers
    assert result.route is Route.DIRECT and record.attempts == 2


def test_upstream_client_rejects_an_unknown_shape() -> None:
    with pytest.raises(ConfigError, match="gateway_api='v2'"):
        _client("v2", _answer([]))
