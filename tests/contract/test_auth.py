"""Auth: every route but /health needs the bearer token; a refusal says nothing about why."""

from __future__ import annotations

import httpx
import pytest

from tests.contract.helpers import value_path
from tests.contract.workerd import DataPlane

AUTH_ERROR = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}
ROUTES = [
    pytest.param("GET", "/kv/SESSIONS/values/k", id="get"),
    pytest.param("GET", "/kv/SESSIONS/metadata/k", id="metadata"),
    pytest.param("PUT", "/kv/SESSIONS/values/k", id="put"),
    pytest.param("DELETE", "/kv/SESSIONS/values/k", id="delete"),
    pytest.param("POST", "/kv/SESSIONS/bulk/get", id="bulk-get"),
    pytest.param("PUT", "/kv/SESSIONS/bulk", id="bulk-put"),
    pytest.param("POST", "/kv/SESSIONS/bulk/delete", id="bulk-delete"),
    pytest.param("GET", "/kv/SESSIONS/keys", id="list"),
    pytest.param("GET", "/kv/NO_SUCH_BINDING/keys", id="unknown-binding"),
    pytest.param("GET", "/elsewhere", id="unknown-route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer wrong-token", id="wrong"),
        pytest.param("Bearer", id="bare-scheme"),
        pytest.param("Basic dXNlcjpwYXNz", id="other-scheme"),
    ],
)
def test_dataplane_refuses_a_missing_or_wrong_token_alike(
    dataplane: DataPlane, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    response = httpx.request(method, dataplane.url + path, headers=headers, content=b"[]")
    assert response.status_code == 401
    assert response.json() == AUTH_ERROR


def test_dataplane_refuses_the_token_with_a_suffix_or_another_case(dataplane: DataPlane) -> None:
    assert dataplane.token is not None
    for token in (dataplane.token + "x", dataplane.token[:-1], dataplane.token.upper(), f" {dataplane.token}"):
        response = httpx.get(dataplane.url + "/kv/SESSIONS/keys", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json() == AUTH_ERROR


def test_dataplane_accepts_the_right_token(client: httpx.Client, prefix: str) -> None:
    assert client.put(value_path("SESSIONS", prefix + "k"), content=b"v").status_code == 200
    assert client.get(value_path("SESSIONS", prefix + "k")).content == b"v"


def test_dataplane_takes_the_bearer_scheme_in_any_case(dataplane: DataPlane, prefix: str) -> None:
    headers = {"authorization": f"bearer {dataplane.token}"}
    assert httpx.get(dataplane.url + "/kv/SESSIONS/keys", params={"prefix": prefix}, headers=headers).status_code == 200


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_dataplane_without_a_configured_token_refuses_everything(
    dataplane_without_token: DataPlane, method: str, path: str
) -> None:
    assert dataplane_without_token.token is None
    for headers in ({}, {"authorization": "Bearer"}, {"authorization": "Bearer anything"}):
        response = httpx.request(method, dataplane_without_token.url + path, headers=headers, content=b"[]")
        assert response.status_code == 401
        assert response.json() == AUTH_ERROR


def test_dataplane_serves_health_without_auth(dataplane: DataPlane) -> None:
    response = httpx.get(dataplane.url + "/health", params={"probes": "0"})
    body = response.json()
    assert response.status_code == (200 if body["ok"] else 503)
    kv = ["SESSIONS", "RATE_LIMITS", "OAUTH_STATES", "JOB_ANALYSIS_CACHE", "EMBEDDINGS_CACHE", "API_CACHE"]
    assert {name: body["bindings"][name] for name in kv} == dict.fromkeys(kv, True)
    assert body["checks"] == {}
    assert set(body["secrets"]) == {"OPENAI_API_KEY", "CF_AIG_TOKEN"}  # whether set, never a value
    if dataplane.name == "workerd":
        # The test Worker binds the six namespaces only (no AI, no gateway vars), so the report is not ok.
        assert response.status_code == 503 and body["bindings"]["AI"] is False


def test_dataplane_health_runs_the_kv_probe(dataplane: DataPlane) -> None:
    body = httpx.get(dataplane.url + "/health").json()
    assert body["checks"]["kv"]["ok"] is True and body["checks"]["kv"]["namespace"] == "API_CACHE"
    gateway = body["checks"]["gateway"]
    if dataplane.name == "workerd":
        assert gateway == {"ok": False, "ms": gateway["ms"], "error": "AI is not bound"}
    else:  # the emulator has the stack's gateway and a local embedding model
        assert gateway["ok"] is True and gateway["dimensions"] == 768
