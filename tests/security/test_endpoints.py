"""Tokens go to trusted endpoints only: base URLs, hosts and ids are checked before any request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from dualcache import ConfigError, DualCache, Namespace, StackOutputs
from dualcache._gateway import UpstreamClient
from dualcache._kv import CloudflareKVBackend
from dualcache._outputs import check_base_url

ACCOUNT = "0123456789abcdef0123456789abcdef"
TOKEN = "cf-api-token-that-must-stay-home"


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "stack": "dev",
        "account_id": ACCOUNT,
        "gateway_id": "jobmatch-ai-dev",
        "namespaces": {b.value: f"{i:032x}" for i, b in enumerate(Namespace, start=1)},
        "worker_name": "jobmatch-ai-api-dev",
    }
    data.update(changes)
    return data


class Recorder:
    """An httpx transport handler that records every request and answers 200."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"success": True, "result": {"shape": [1, 2], "data": [[0.1, 0.2]]}})


@pytest.fixture(autouse=True)
def no_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUALCACHE_TRUSTED_HOSTS", raising=False)


HOSTILE = [
    pytest.param({"api_base_url": "http://attacker.example/client/v4"}, "plain http", id="api-http-attacker"),
    pytest.param({"api_base_url": "https://attacker.example/client/v4"}, "not api.cloudflare.com", id="api-https"),
    pytest.param({"gateway_base_url": "http://attacker.example/v1"}, "plain http", id="gateway-http-attacker"),
    pytest.param({"gateway_base_url": "https://attacker.example/v1"}, "not gateway.ai.cloudflare.com", id="gw-https"),
    pytest.param({"data_plane_url": "http://attacker.example"}, "plain http", id="data-plane-http"),
    pytest.param({"gateway_id": "../../../../evil-gw?q="}, "gateway_id: String should match pattern", id="gw-id"),
    pytest.param(
        {"namespaces": {b.value: "../../../../../evil?x=" for b in Namespace}},
        "namespace ids are 32 lowercase hex",
        id="namespace-id",
    ),
    pytest.param({"account_id": "../" + "a" * 29}, "is not 32 lowercase hex", id="account-id"),
    pytest.param({"api_base_url": "https://api.cloudflare.com/../../x"}, "'..' path segment", id="dot-segments"),
    pytest.param({"api_base_url": "https://api.cloudflare.com@attacker.example/v4"}, "not a plain", id="userinfo"),
    pytest.param({"api_base_url": "https://api.cloudflare.com.attacker.example/v4"}, "not api.cl", id="suffix"),
    pytest.param({"api_base_url": "https://api.cloudflare.com\\@attacker.example/"}, "not a plain", id="backslash"),
    pytest.param({"api_base_url": "https://api.cloudflare.com/client/v4?x=1"}, "not a plain", id="query"),
    pytest.param({"worker_name": "../evil"}, "is not a Worker name", id="worker-name"),
    pytest.param({"data_plane_worker_name": "Evil Worker"}, "is not a Worker name", id="data-plane-worker-name"),
]


@pytest.mark.parametrize(("changes", "fragment"), HOSTILE)
async def test_outputs_untrusted_endpoint_or_id_sends_no_token(changes: dict[str, Any], fragment: str) -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match="is not a valid dualcache StackOutputs") as info:
        outputs = StackOutputs.from_data(_data(**changes))
        async with DualCache.from_outputs(
            outputs, api_token=TOKEN, data_plane_token=TOKEN, transport=httpx.MockTransport(recorder)
        ) as cache:
            await cache.embed("hello")
    assert fragment in str(info.value)
    assert recorder.requests == []


@pytest.mark.parametrize(("changes", "fragment"), HOSTILE)
def test_outputs_from_env_refuses_untrusted_endpoints(
    changes: dict[str, Any], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALCACHE_OUTPUTS", json.dumps(_data(**changes)))
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match=r"^\$DUALCACHE_OUTPUTS is not a valid dualcache StackOutputs") as info:
        DualCache.from_env(transport=httpx.MockTransport(Recorder()))
    assert fragment in str(info.value)


def test_outputs_model_copy_cannot_smuggle_an_untrusted_url() -> None:
    outputs = StackOutputs.from_data(_data())
    with pytest.raises(ConfigError, match="plain http"):
        outputs.model_copy(update={"api_base_url": "http://attacker.example/client/v4"})
    assert outputs.model_copy().api_base_url == "https://api.cloudflare.com/client/v4"


def test_outputs_error_never_shows_a_password_in_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        StackOutputs.from_data(_data(gateway_base_url="https://user:hunter2@gateway.ai.cloudflare.com/v1"))
    assert "hunter2" not in str(info.value)
    assert "***@gateway.ai.cloudflare.com" in str(info.value)


@pytest.mark.parametrize(
    ("url", "role", "expected"),
    [
        pytest.param("https://api.cloudflare.com/client/v4/", "api_base_url", "https://api.cloudflare.com/client/v4"),
        pytest.param(
            "https://gateway.ai.cloudflare.com/v1", "gateway_base_url", "https://gateway.ai.cloudflare.com/v1"
        ),
        pytest.param("http://127.0.0.1:8787/client/v4", "api_base_url", "http://127.0.0.1:8787/client/v4", id="v4"),
        pytest.param("http://127.9.9.9:1/v1", "gateway_base_url", "http://127.9.9.9:1/v1", id="127/8"),
        pytest.param("http://[::1]:8787/v1", "gateway_base_url", "http://[::1]:8787/v1", id="ipv6-loopback"),
        pytest.param("http://localhost:8787/dataplane", "data_plane_url", "http://localhost:8787/dataplane"),
        pytest.param("https://kv.example.com", "data_plane_url", "https://kv.example.com", id="custom-domain"),
        pytest.param("https://jobmatch-ai-dualcache-dev.acme.workers.dev", "data_plane_url", None, id="workers-dev"),
        pytest.param("https://my_worker.acme.workers.dev", "data_plane_url", None, id="worker-name-with-underscore"),
    ],
)
def test_check_base_url_accepts_cloudflare_loopback_and_https_data_planes(
    url: str, role: Any, expected: str | None
) -> None:
    assert check_base_url(url, role=role) == (expected or url)


@pytest.mark.parametrize(
    ("url", "trusted", "accepted"),
    [
        pytest.param("https://proxy.corp.example/v1", "proxy.corp.example", True, id="exact"),
        pytest.param("https://gw.corp.example/v1", "*.corp.example", True, id="wildcard"),
        pytest.param("https://corp.example/v1", "*.corp.example", False, id="wildcard-needs-a-subdomain"),
        pytest.param("http://proxy.corp.example/v1", "proxy.corp.example", False, id="https-only-by-default"),
        pytest.param("http://10.0.0.5:8787/v1", "http://10.0.0.5", True, id="http-opt-in"),
        pytest.param("https://other.example/v1", "proxy.corp.example", False, id="another-host"),
    ],
)
def test_check_base_url_other_hosts_need_the_opt_in(
    url: str, trusted: str, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="DUALCACHE_TRUSTED_HOSTS"):
        check_base_url(url, role="gateway_base_url")
    monkeypatch.setenv("DUALCACHE_TRUSTED_HOSTS", f"unrelated.example, {trusted}")
    if accepted:
        assert check_base_url(url, role="gateway_base_url") == url
        monkeypatch.delenv("DUALCACHE_TRUSTED_HOSTS")
        assert StackOutputs.from_data(_data(gateway_base_url=url), trusted_hosts=[trusted]).gateway_base_url == url
    else:
        with pytest.raises(ConfigError, match="DUALCACHE_TRUSTED_HOSTS"):
            check_base_url(url, role="gateway_base_url")


def test_outputs_trusted_hosts_are_never_read_from_the_outputs_themselves() -> None:
    with pytest.raises(ConfigError, match="trusted_hosts: Extra inputs are not permitted"):
        StackOutputs.from_data(
            _data(api_base_url="https://attacker.example/client/v4", trusted_hosts=["attacker.example"])
        )


async def test_kv_rest_backend_quotes_ids_in_the_path() -> None:
    recorder = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        backend = CloudflareKVBackend(
            client,
            api_base_url="https://api.cloudflare.com/client/v4",
            account_id="../acct?x=",
            namespace_id="../../evil?x=#",
            api_token=TOKEN,
        )
        await backend.delete("k")
    (request,) = recorder.requests
    assert request.url.host == "api.cloudflare.com"
    assert request.url.raw_path.decode() == (
        "/client/v4/accounts/..%2Facct%3Fx%3D/storage/kv/namespaces/..%2F..%2Fevil%3Fx%3D%23/values/k"
    )


async def test_gateway_url_quotes_the_account_and_gateway_ids() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(Recorder())) as http:
        client = UpstreamClient(
            http,
            account_id="acct/../x",
            api_base_url="https://api.cloudflare.com/client/v4",
            gateway_base_url="https://gateway.ai.cloudflare.com/v1",
            gateway_id="../../evil-gw?q=",
            api_token=None,
            gateway_token=None,
            openai_api_key=None,
        )
    assert client.gateway_url == "https://gateway.ai.cloudflare.com/v1/acct%2F..%2Fx/..%2F..%2Fevil-gw%3Fq%3D"
