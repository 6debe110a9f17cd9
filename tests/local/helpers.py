"""Helpers shared by the emulator tests."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import httpx


class KVNamespace:
    """A fresh namespace and helpers to build its URLs."""

    def __init__(self, client: httpx.Client, account_id: str) -> None:
        self.client = client
        self.account_id = account_id
        title = f"test-{uuid.uuid4().hex}"
        r = client.post(f"/client/v4/accounts/{account_id}/storage/kv/namespaces", json={"title": title})
        assert r.status_code == 200, r.text
        self.id: str = r.json()["result"]["id"]
        self.base = f"/client/v4/accounts/{account_id}/storage/kv/namespaces/{self.id}"

    def value_url(self, encoded_key: str) -> str:
        return f"{self.base}/values/{encoded_key}"

    def put(self, encoded_key: str, value: bytes, **params: Any) -> httpx.Response:
        return self.client.put(self.value_url(encoded_key), content=value, params=params)

    def get(self, encoded_key: str) -> httpx.Response:
        return self.client.get(self.value_url(encoded_key))


class Gateways:
    """Creates gateways with given settings and builds their proxy URLs."""

    def __init__(self, client: httpx.Client, account_id: str) -> None:
        self.client = client
        self.account_id = account_id

    @staticmethod
    def body(gateway_id: str, **settings: Any) -> dict[str, Any]:
        """A create body with every required field (caching and rate limiting off), ``settings`` on top."""
        return {
            "id": gateway_id,
            "cache_invalidate_on_update": True,
            "cache_ttl": 0,
            "collect_logs": True,
            "rate_limiting_interval": 0,
            "rate_limiting_limit": 0,
            **settings,
        }

    def create(self, **settings: Any) -> str:
        gateway_id = f"gw-{uuid.uuid4().hex[:12]}"
        body = self.body(gateway_id, **settings)
        r = self.client.post(f"/client/v4/accounts/{self.account_id}/ai-gateway/gateways", json=body)
        assert r.status_code == 200, r.text
        return gateway_id

    def url(self, gateway_id: str, path: str) -> str:
        return f"/v1/{self.account_id}/{gateway_id}/{path}"


def error_codes(response: httpx.Response) -> list[int]:
    """The ``errors[].code`` of a Cloudflare envelope (asserting its shape)."""
    body = response.json()
    assert body["success"] is False
    assert body["result"] is None
    assert isinstance(body["messages"], list)
    return [e["code"] for e in body["errors"]]


def free_port() -> int:
    """A port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DataPlaneClient:
    """Requests to one binding of the emulator's data plane, with (or without) its bearer token."""

    def __init__(self, client: httpx.Client, data_plane_url: str, token: str | None, binding: str = "SESSIONS") -> None:
        self.client = client
        self.url = data_plane_url
        self.headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        self.base = f"{data_plane_url}/kv/{binding}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.request(method, f"{self.base}/{path}", headers=headers, **kwargs)

    def put(self, encoded_key: str, value: bytes, **params: Any) -> httpx.Response:
        return self.request("PUT", f"values/{encoded_key}", content=value, params=params)

    def get(self, encoded_key: str, **params: Any) -> httpx.Response:
        return self.request("GET", f"values/{encoded_key}", params=params)


def violation(response: httpx.Response) -> tuple[int, str, int]:
    """``(status, field, limit)`` of a data-plane limit violation (asserting the envelope's shape)."""
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    (error,) = body["errors"]
    assert isinstance(error["code"], int) and error["message"]
    return response.status_code, error["field"], error["limit"]
