"""Paths and checks shared by the contract tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

MIB = 1024 * 1024


def value_path(binding: str, key: str) -> str:
    """``/kv/{binding}/values/{key}`` with the key percent-encoded (slashes too)."""
    return f"/kv/{binding}/values/{quote(key, safe='')}"


def metadata_path(binding: str, key: str) -> str:
    """``/kv/{binding}/metadata/{key}``."""
    return f"/kv/{binding}/metadata/{quote(key, safe='')}"


def ok_result(response: httpx.Response) -> Any:
    """The ``result`` of a successful envelope, after checking the status and the envelope's shape."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["errors"] == [], body
    return body["result"]


def limit_error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    """The one error object of a failed envelope, after checking the status and the shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["result"] is None, body
    (error,) = body["errors"]
    assert isinstance(error["code"], int) and isinstance(error["message"], str)
    return dict(error)
