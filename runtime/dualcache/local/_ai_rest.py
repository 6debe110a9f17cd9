"""The emulator's AI REST API and the gateway's own retries.

The AI REST API (Cloudflare's ``ai-gateway/usage/rest-api`` page and its 2026-05-21 changelog) lives under the
Cloudflare API, ``/client/v4/accounts/{account}/ai/...``, and names its gateway with a ``cf-aig-gateway-id``
header. Served here, through the same gateway proxy as the legacy ``/v1/{account}/{gateway}/...`` URLs (one
cache, one set of faults and counters):

* ``POST /ai/run/{model}`` with ``cf-aig-gateway-id``: the Workers AI model through that gateway. Without the
  header it stays the direct Workers AI route (served by the API router, counted as ``direct``).
* ``POST /ai/run`` with ``{"model": "@cf/...", "input": {...}}`` and ``cf-aig-gateway-id``: the same, with the
  model in the body. Only Workers AI models are emulated here (the envelope answer of third-party models is
  not documented).
* ``POST /ai/v1/chat/completions``: OpenAI's chat shape. ``model`` is ``openai/<model>`` (third-party models
  are ``author/model``; only OpenAI is emulated) through the gateway named by the header, or the account's
  ``default`` gateway when the header is absent (auto-created on the first authenticated request, with the
  documented settings: authentication and logs on, caching and rate limiting off); or ``@cf/<model>``
  (Workers AI's OpenAI-compatible route), which needs the header to go through a gateway and is a direct
  Workers AI call without it.
* ``POST /ai/v1/embeddings``: documented for Workers AI models only (Workers AI's OpenAI-compatible
  endpoints), so only ``@cf/...`` models; ``encoding_format: base64`` answers base64 little-endian float32,
  as OpenAI does.

``/ai/v1/responses`` and ``/ai/v1/messages`` exist in Cloudflare's API but are not emulated (404).

The gateway's retries (Cloudflare's ``configuration/request-handling`` and ``manage-gateway#retry-requests``
pages), on every gateway request, legacy or REST: ``cf-aig-max-attempts`` (1..5), ``cf-aig-retry-delay`` (ms,
max 5000), ``cf-aig-backoff`` (constant, linear, exponential) and ``cf-aig-request-timeout`` (ms to the first
byte, per attempt; "on the final retry attempt, your gateway will wait until the request completes"), each
defaulting to the gateway's ``retry_max_attempts`` / ``retry_delay`` / ``retry_backoff`` settings (one attempt
when unset). Choices where the docs are silent, commented below: the header counts attempts (the first one
included), an upstream 429 or 5xx (or an attempt past its timeout) is retried, a timed-out attempt answers
504, and the waits are ``delay``, ``delay * k`` and ``delay * 2**(k-1)`` before retry ``k``. Each upstream
attempt is counted in ``stats["upstream"]``, each retry in ``stats["gateway"]["retries"]``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from dualcache.local import _models
from dualcache.local._common import (
    CODE_BAD_REQUEST,
    CODE_FAULT,
    CODE_METHOD,
    CODE_ROUTE,
    _iso,
    _json_body,
    cf_error,
    new_log_id,
    openai_error,
)
from dualcache.local._gateway_api import check_gateway_id, validate_gateway
from dualcache.local._model_api import ModelReply, _json_reply, _Models, _openai_bad_request, _wai_error
from dualcache.local._state import EmulatorState

if TYPE_CHECKING:
    from starlette.types import Message

    from dualcache.local._proxy import _Proxy

__all__ = ["DEFAULT_GATEWAY_ID", "RETRY_STATUSES", "_AiRest", "gateway_invoke"]

DEFAULT_GATEWAY_ID = "default"
"""The gateway a REST request without ``cf-aig-gateway-id`` goes through (created on first use)."""
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Upstream statuses the emulated gateway retries. The docs say "when an upstream provider returns an error"
without a list; these are the transient ones (a 4xx other than 429 would fail the same way again)."""
MAX_ATTEMPTS = 5
MAX_RETRY_DELAY_MS = 5_000
BACKOFFS = ("constant", "linear", "exponential")
_COMPAT_PATHS = ("v1/chat/completions", "v1/embeddings")
"""Workers AI's OpenAI-compatible paths: ``/ai/v1/...`` (REST) and ``workers-ai/v1/...`` (legacy)."""
_DEFAULT_GATEWAY_SETTINGS: dict[str, Any] = {
    "id": DEFAULT_GATEWAY_ID,
    "cache_invalidate_on_update": False,
    "cache_ttl": 0,
    "collect_logs": True,
    "rate_limiting_interval": 0,
    "rate_limiting_limit": 0,
    "authentication": True,
}
"""What an auto-created ``default`` gateway gets (``manage-gateway``: authentication on, log collection on,
caching off (TTL 0), rate limiting off; ``cache_invalidate_on_update`` is not stated: off here)."""


# -- routes ----------------------------------------------------------------------------------------


class _AiRest:
    """The AI REST API routes, over the models and the one gateway proxy."""

    def __init__(self, state: EmulatorState, models: _Models, gateway_proxy: _Proxy) -> None:
        self.state = state
        self.models = models
        self.gateway_proxy = gateway_proxy

    async def route(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response | None:
        """Serve ``/client/v4/accounts/{account}/ai/...`` when it is a REST route through a gateway.

        Returns:
            The response, or ``None`` when the path is not one of these routes: the caller goes on routing
            (``/ai/run/{model}`` without ``cf-aig-gateway-id`` is the direct Workers AI route).
        """
        return await route_ai(self, request, account_id, raw, seg)


async def route_ai(api: _AiRest, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response | None:
    """See :meth:`_AiRest.route`."""
    gateway_id = request.headers.get("cf-aig-gateway-id")
    if len(seg) >= 3 and seg[:2] == ["ai", "run"]:
        if gateway_id is None:
            return None  # the direct Workers AI route (served by the API router)
        _check_post(request)
        return await _via_gateway(api, request, account_id, gateway_id, "workers-ai", raw[2:], None)
    if seg == ["ai", "run"]:
        _check_post(request)
        return await _run_envelope(api, request, account_id, gateway_id)
    if len(seg) >= 3 and seg[:2] == ["ai", "v1"]:
        _check_post(request)
        path = "/".join(seg[2:])
        if path not in ("chat/completions", "embeddings"):
            raise cf_error(
                404, CODE_ROUTE, f"/ai/v1/{path} is not emulated; the emulator serves chat/completions, embeddings"
            )
        return await _openai_shape(api, request, account_id, gateway_id, path)
    return None


def _check_post(request: Request) -> None:
    if request.method != "POST":
        raise cf_error(405, CODE_METHOD, f"method {request.method} is not allowed on {request.url.path}")


async def _run_envelope(api: _AiRest, request: Request, account_id: str, gateway_id: str | None) -> Response:
    """``POST /ai/run`` with ``{"model", "input"}``: Workers AI models through the named gateway."""
    data = await _json_body(request)
    model = data.get("model") if isinstance(data, Mapping) else None
    payload = data.get("input") if isinstance(data, Mapping) else None
    if not isinstance(model, str) or not isinstance(payload, Mapping):
        raise cf_error(400, CODE_BAD_REQUEST, 'body must be {"model": "...", "input": {...}}')
    if not model.startswith("@cf/"):
        raise cf_error(
            400, CODE_BAD_REQUEST, f"model {model!r}: the emulator serves /ai/run for Workers AI (@cf/...) only"
        )
    if gateway_id is None:
        raise cf_error(400, CODE_BAD_REQUEST, "Workers AI models need a cf-aig-gateway-id header on /ai/run")
    body = json.dumps(payload).encode("utf-8")
    raw = model.split("/")
    return await _via_gateway(api, request, account_id, gateway_id, "workers-ai", raw, body)


async def _openai_shape(api: _AiRest, request: Request, account_id: str, gateway_id: str | None, path: str) -> Response:
    """``/ai/v1/chat/completions`` and ``/ai/v1/embeddings`` (OpenAI's request and answer shapes)."""
    data = await _json_body(request, openai=True)
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, str) or not model:
        raise openai_error(400, "'model' is required: 'author/model' or '@cf/...'", "invalid_request_error")
    if model.startswith("@cf/"):
        # Workers AI's OpenAI-compatible endpoint: through the gateway with the header, direct without it.
        if gateway_id is None:
            api.state.count("direct", model)
            reply = await _compat(api.models, model, f"v1/{path}", data, request)
            return api.models.reply_response(reply, {})
        return await _via_gateway(api, request, account_id, gateway_id, "workers-ai", ["v1", *path.split("/")], None)
    author, _, name = model.partition("/")
    if path == "embeddings":
        # Cloudflare documents /ai/v1/embeddings for Workers AI models only.
        raise openai_error(
            400, f"model {model!r}: /ai/v1/embeddings takes Workers AI models (@cf/...)", "invalid_request_error"
        )
    if author != "openai" or not name:
        raise openai_error(
            400,
            f"model {model!r}: third-party models are named author/model; the emulator serves openai/<model>",
            "invalid_request_error",
        )
    body = json.dumps({**data, "model": name}).encode("utf-8")
    gateway = gateway_id if gateway_id is not None else DEFAULT_GATEWAY_ID
    return await _via_gateway(api, request, account_id, gateway, "openai", path.split("/"), body)


async def _via_gateway(
    api: _AiRest,
    request: Request,
    account_id: str,
    gateway_id: str,
    provider: str,
    raw: list[str],
    body: bytes | None,
) -> Response:
    """Send a REST request through the gateway proxy (the one the legacy URLs use), as the legacy request
    it stands for: ``body`` replaces the request's body when given, and the Cloudflare token of
    ``Authorization`` (already checked by the API router) authenticates to an authenticated gateway, as
    Cloudflare documents for the REST API ("the standard Authorization header is sufficient")."""
    check_gateway_id(gateway_id)
    if gateway_id == DEFAULT_GATEWAY_ID:
        _ensure_default_gateway(api.state, account_id)
    content = body if body is not None else await request.body()
    headers = {"content-length": str(len(content))}
    if "cf-aig-authorization" not in request.headers and request.headers.get("authorization"):
        headers["cf-aig-authorization"] = request.headers["authorization"]
    inner = _with(request, content, headers)
    return await api.gateway_proxy.proxy(inner, account_id, gateway_id, provider, raw)


def _ensure_default_gateway(state: EmulatorState, account_id: str) -> None:
    if state.store.gateway(account_id, DEFAULT_GATEWAY_ID) is None:
        settings = validate_gateway(_DEFAULT_GATEWAY_SETTINGS, gateway_id=None)
        stamp = _iso(state.clock.now())
        state.store.put_gateway(account_id, {**settings, "created_at": stamp, "modified_at": stamp})


def _with(request: Request, body: bytes, headers: Mapping[str, str]) -> Request:
    """A copy of ``request`` with ``body`` and ``headers`` set (the proxy reads both from its request)."""
    names = {name.encode("latin-1") for name in headers}
    kept = [(k, v) for k, v in request.scope["headers"] if k.lower() not in names]
    scope = {
        **request.scope,
        "headers": [*kept, *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())],
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


# -- the gateway's retries -------------------------------------------------------------------------


def _header_int(request: Request, name: str, low: int, high: int | None) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        # The real gateway's answer to a bad value is not documented; refusing it keeps client bugs visible.
        raise cf_error(400, CODE_BAD_REQUEST, f"{name}={raw!r}: must be an integer {bound}")
    return value


def retry_settings(request: Request, gateway: Mapping[str, Any]) -> tuple[int, int, str, int | None]:
    """``(attempts, delay_ms, backoff, timeout_ms)`` of one gateway request: its headers, else the gateway's
    settings. ``attempts`` counts the first attempt (the docs: "Number of attempts (maximum of 5 tries)").

    Raises:
        HTTPError: a header out of its documented range (400).
    """
    attempts = _header_int(request, "cf-aig-max-attempts", 1, MAX_ATTEMPTS)
    delay = _header_int(request, "cf-aig-retry-delay", 0, MAX_RETRY_DELAY_MS)
    timeout = _header_int(request, "cf-aig-request-timeout", 1, None)
    backoff = request.headers.get("cf-aig-backoff")
    if backoff is not None and backoff not in BACKOFFS:
        raise cf_error(400, CODE_BAD_REQUEST, f"cf-aig-backoff={backoff!r}: must be one of {', '.join(BACKOFFS)}")
    stored_backoff = gateway.get("retry_backoff")
    return (
        attempts if attempts is not None else int(gateway.get("retry_max_attempts") or 1),
        delay if delay is not None else int(gateway.get("retry_delay") or 0),
        backoff or (stored_backoff if stored_backoff in BACKOFFS else "constant"),
        timeout,
    )


def retry_wait_ms(delay_ms: int, backoff: str, retry: int) -> int:
    """The wait before retry number ``retry`` (1-based); the docs name the methods but not their formulas."""
    if backoff == "linear":
        return delay_ms * retry
    if backoff == "exponential":
        return int(delay_ms * 2 ** (retry - 1))
    return delay_ms


async def gateway_invoke(
    models: _Models,
    gateway: Mapping[str, Any],
    provider: str,
    model: str,
    data: Any,
    request: Request,
    *,
    path: str,
) -> ModelReply:
    """Call the model through the gateway, retried as the request's ``cf-aig-*`` retry headers (or the
    gateway's settings) say; each attempt counted in ``stats["upstream"]``, each retry in
    ``stats["gateway"]["retries"]``."""
    state = models.state
    attempts, delay_ms, backoff, timeout_ms = retry_settings(request, gateway)
    attempt = 0
    while True:
        attempt += 1
        final = attempt >= attempts
        call = _invoke_once(models, provider, model, data, request, path=path)
        if timeout_ms is None or final:  # "on the final retry attempt, your gateway will wait"
            reply = await call
        else:
            try:
                reply = await asyncio.wait_for(call, timeout_ms / 1000)
            except TimeoutError:
                # The status of a gateway request timeout is not documented: 504 (Gateway Timeout) here.
                reply = _timeout_reply(provider, timeout_ms)
        if final or reply.status not in RETRY_STATUSES:
            return reply
        state.count("gateway", "retries")
        await state._sleep(retry_wait_ms(delay_ms, backoff, attempt) / 1000)


async def _invoke_once(
    models: _Models, provider: str, model: str, data: Any, request: Request, *, path: str
) -> ModelReply:
    if provider == "workers-ai" and model in _COMPAT_PATHS:
        return await _compat(models, None, model, data, request)
    return await models.invoke(provider, model, data, request, path=path)


def _timeout_reply(provider: str, timeout_ms: int) -> ModelReply:
    message = f"the upstream did not answer within cf-aig-request-timeout={timeout_ms} ms"
    if provider == "openai":
        return _json_reply(504, {"error": {"message": message, "type": "timeout", "param": None, "code": None}})
    return _wai_error(504, CODE_FAULT, message)


# -- Workers AI's OpenAI-compatible shapes ----------------------------------------------------------


async def _compat(models: _Models, model: str | None, path: str, data: Any, request: Request) -> ModelReply:
    """Run a Workers AI model on an OpenAI-shaped request (``v1/chat/completions``, ``v1/embeddings``) and
    answer in OpenAI's shape. ``model`` is taken from the body when not given."""
    if not isinstance(data, Mapping):
        return _openai_bad_request("the request body must be a JSON object")
    name = model if model is not None else data.get("model")
    if not isinstance(name, str) or not name:
        return _openai_bad_request("'model' is required", "model")
    if path == "v1/embeddings":
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _openai_bad_request(f"encoding_format={encoding!r}: must be 'float' or 'base64'", "encoding_format")
        reply = await models.invoke("workers-ai", name, {"text": data.get("input")}, request, path=name)
        if reply.status != 200:
            return reply
        result = json.loads(reply.body)["result"]
        items = []
        for index, vector in enumerate(result["data"]):
            embedding: Any = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        texts = data.get("input")
        tokens = sum(_models.token_count(str(t)) for t in (texts if isinstance(texts, list) else [texts]))
        body = {
            "object": "list",
            "data": items,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return _json_reply(200, body)
    inputs = {k: v for k, v in data.items() if k != "model"}
    reply = await models.invoke("workers-ai", name, inputs, request, path=name)
    if reply.status != 200:
        return reply
    result = json.loads(reply.body)["result"]
    response = result.get("response")
    content = response if isinstance(response, str) else json.dumps(response)
    return _json_reply(
        200,
        {
            "id": f"chatcmpl-{new_log_id(models.state.clock.now()).lower()}",
            "object": "chat.completion",
            "created": int(models.state.clock.now()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": result.get("usage"),
        },
    )
