"""Shared by every emulated API: error answers (Cloudflare envelope, OpenAI error), error codes and request
helpers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

DATA_PLANE_PATH = "dataplane"
"""The data plane is served under ``{emulator}/dataplane`` (its ``data_plane_url``)."""

# Error codes. 10009 (key not found) and 10013 (namespace not found) are documented by Cloudflare, and
# so are the Workers AI codes. Cloudflare documents no codes for the other KV/API errors: the
# ones below are this emulator's choices, so clients must rely on the HTTP status, not on these numbers.
CODE_KEY_NOT_FOUND = 10009
CODE_NAMESPACE_NOT_FOUND = 10013
CODE_AUTH = 10000
CODE_BAD_REQUEST = 10001
CODE_ROUTE = 7003
CODE_METHOD = 7001
CODE_GATEWAY_NOT_FOUND = 7002
CODE_GATEWAY_AUTH = 2009
CODE_RATE_LIMITED = 2003
CODE_FAULT = 9999
CODE_DP_ROUTE = 10003
CODE_DP_METHOD = 10004
"""The data-plane Worker's own codes for no such route / method (infra/worker/dataplane.js)."""
DATA_PLANE_AUTH_ERROR = {"code": CODE_AUTH, "message": "Authentication error"}
"""The one error a data-plane request without the right token gets (DATAPLANE.md: it never says why)."""
WAI_NO_SUCH_MODEL = 5007
WAI_INCOMPLETE = 3003
WAI_INVALID_DATA = 5004

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class HTTPError(Exception):
    """Raised inside a handler to answer with ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def envelope(
    result: Any = None,
    *,
    status: int = 200,
    errors: list[dict[str, Any]] | None = None,
    result_info: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A Cloudflare v4 envelope ``{success, errors, messages, result[, result_info]}``."""
    body: dict[str, Any] = {"success": not errors, "errors": errors or [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def cf_error(status: int, code: int, message: str, headers: Mapping[str, str] | None = None) -> HTTPError:
    """An :class:`HTTPError` carrying a Cloudflare error envelope."""
    return HTTPError(envelope(None, status=status, errors=[{"code": code, "message": message}], headers=headers))


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> HTTPError:
    """An :class:`HTTPError` carrying OpenAI's error shape."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return HTTPError(JSONResponse(body, status_code=status))


def new_log_id(now: float) -> str:
    """A ULID-like id (26 Crockford base-32 characters: 48-bit milliseconds + 80 random bits)."""
    value = (int(now * 1000) & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


# -- request helpers --------------------------------------------------------------------------------


def _raw_segments(request: Request) -> list[str]:
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
    return path.split("?", 1)[0].split("/")


async def _json_body(request: Request, *, openai: bool = False) -> Any:
    body = await request.body()
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if openai:
            raise openai_error(
                400, f"We could not parse the JSON body of your request: {exc}", "invalid_request_error"
            ) from None
        raise cf_error(400, CODE_BAD_REQUEST, f"request body is not valid JSON: {exc}") from None


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def _int_param(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        number = float(raw)
    except ValueError:
        raise cf_error(400, CODE_BAD_REQUEST, f"{name}={raw!r} is not a number") from None
    if not math.isfinite(number) or number != int(number):
        raise cf_error(400, CODE_BAD_REQUEST, f"{name}={raw!r} is not an integer")
    return int(number)


def _raw_path(request: Request) -> str:
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path


def _page_params(request: Request) -> tuple[int, int]:
    """``page`` (>= 1, default 1) and ``per_page`` (1..1000, default 20) of a paged list request."""
    page = _int_param(request.query_params.get("page"), "page") or 1
    per_page = _int_param(request.query_params.get("per_page"), "per_page") or 20
    if page < 1 or not 1 <= per_page <= 1000:
        raise cf_error(400, CODE_BAD_REQUEST, f"page={page} must be >= 1 and per_page={per_page} 1..1000")
    return page, per_page


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _method_not_allowed(request: Request) -> HTTPError:
    # Cloudflare does not document the real code; this one is the emulator's.
    return cf_error(405, CODE_METHOD, f"method {request.method} is not allowed on {request.url.path}")
