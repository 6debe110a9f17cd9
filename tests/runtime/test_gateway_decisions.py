from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from dualcache import BackendUnavailableError, BadResponseError, GatewayMode, Operation, OperationPolicy, Policies
from dualcache._exceptions import AuthenticationError, BackendError, RateLimitedError
from dualcache._gateway import (
    RetryAction,
    RetryPolicy,
    Route,
    choose_routes,
    decide_retry,
    gateway_headers,
    parse_json_object,
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
