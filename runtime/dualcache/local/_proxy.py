"""The AI Gateway proxy (``gateway.ai.cloudflare.com/v1/...``, served under ``/v1``): gateway lookup, faults,
authentication, rate limiting and the response cache in front of the providers.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from dualcache._policy import GATEWAY_MAX_TTL, GATEWAY_MIN_TTL
from dualcache.local._ai_rest import gateway_invoke
from dualcache.local._common import (
    CODE_BAD_REQUEST,
    CODE_GATEWAY_AUTH,
    CODE_GATEWAY_NOT_FOUND,
    CODE_RATE_LIMITED,
    CODE_ROUTE,
    _bearer,
    _json_body,
    _method_not_allowed,
    _truthy,
    cf_error,
    new_log_id,
    openai_error,
)
from dualcache.local._logs_api import log_entry
from dualcache.local._model_api import ModelReply, _Models
from dualcache.local._state import EmulatorState, check_api_token
from dualcache.local._store import CachedResponse

CACHEABLE_REQUEST_MAX_BYTES = 25 * 1000 * 1000

CUSTOM_KEY_DEFAULT_TTL = 300
"""``cf-aig-cache-key`` on a gateway with caching off caches for 5 minutes (as Cloudflare documents)."""


class _Proxy:
    """The AI Gateway proxy: ``/v1/{account}/{gateway}/{provider}/...``, with its cache, rate limit and auth."""

    def __init__(self, state: EmulatorState, models: _Models) -> None:
        self.state = state
        self.models = models

    async def proxy(
        self, request: Request, account_id: str, gateway_id: str, provider: str, raw: list[str]
    ) -> Response:
        state = self.state
        started = time.perf_counter()
        if request.method != "POST":
            raise _method_not_allowed(request)
        gateway = state.store.gateway(account_id, gateway_id)
        if gateway is None:
            # What the real gateway does for an unknown id is not documented (it may create a
            # default gateway); the emulator serves only gateways that exist.
            raise cf_error(404, CODE_GATEWAY_NOT_FOUND, f"gateway {gateway_id!r} not found in account {account_id}")
        fault = await state.apply_fault("gateway")
        if fault is not None:
            raise state.fault_error("gateway", fault)
        if gateway.get("authentication"):
            given = _bearer(request.headers.get("cf-aig-authorization"))
            # With an emulator token the header must carry it; without one any non-empty token passes.
            # The real status is not documented ("the request fails", 401-type errors): 401.
            if given is None or (state.token is not None and given != state.token):
                state.count("gateway", "refused")
                raise cf_error(
                    401, CODE_GATEWAY_AUTH, "Unauthorized: this gateway requires cf-aig-authorization: Bearer <token>"
                )
        retry_after = state.rate_limited(account_id, gateway)
        if retry_after is not None:
            state.count("gateway", "rate_limited")
            raise cf_error(
                429,
                CODE_RATE_LIMITED,
                "Rate limited: too many requests to this gateway",
                headers={"retry-after": str(math.ceil(retry_after))},
            )
        rest = "/".join(unquote(s) for s in raw)
        if provider == "workers-ai":
            model = rest
            if not model:
                raise cf_error(404, CODE_ROUTE, "workers-ai needs a model: /workers-ai/{model_id}")
            check_api_token(state, request)  # the provider credential of Workers AI is the Cloudflare token
            data = await _json_body(request)
        elif provider == "openai":
            if _bearer(request.headers.get("authorization")) is None:
                raise openai_error(
                    401,
                    "You didn't provide an API key. Provide it in an Authorization header (Bearer auth).",
                    "invalid_request_error",
                )
            data = await _json_body(request, openai=True)
            model = str(data.get("model", "")) if isinstance(data, Mapping) else ""
        else:
            raise cf_error(400, CODE_BAD_REQUEST, f"provider {provider!r} is not emulated; use workers-ai or openai")

        skip = _truthy(request.headers.get("cf-aig-skip-cache") or request.headers.get("cf-skip-cache"))
        ttl_header = request.headers.get("cf-aig-cache-ttl") or request.headers.get("cf-cache-ttl")
        custom_key = request.headers.get("cf-aig-cache-key")
        ttl: int = int(gateway.get("cache_ttl") or 0)
        if ttl_header is not None:
            try:
                ttl = int(ttl_header)
            except ValueError:
                ttl = -1
            if not GATEWAY_MIN_TTL <= ttl <= GATEWAY_MAX_TTL:
                raise cf_error(
                    400,
                    CODE_BAD_REQUEST,
                    f"cf-aig-cache-ttl={ttl_header!r}: must be {GATEWAY_MIN_TTL}..{GATEWAY_MAX_TTL} seconds",
                )
        elif ttl == 0 and custom_key:
            ttl = CUSTOM_KEY_DEFAULT_TTL
        body = await request.body()
        cacheable = ttl > 0 and not skip and len(body) <= CACHEABLE_REQUEST_MAX_BYTES
        now = state.clock.now()
        log_id = new_log_id(now)
        headers = {"cf-aig-log-id": log_id, "cf-aig-request-id": log_id}
        cache_key = (
            custom_key
            or hashlib.sha256(
                b"\x00".join(
                    [
                        provider.encode(),
                        rest.encode(),
                        model.encode(),
                        (request.headers.get("authorization") or "").encode(),
                        body,
                    ]
                )
            ).hexdigest()
        )
        if cacheable:
            hit = state.store.cache_get(account_id, gateway_id, cache_key, now)
            if hit is not None:
                state.count("gateway", "hits")
                headers["cf-aig-cache-status"] = "HIT"
                local = provider == "workers-ai" or state.openai_upstream is None
                reply = ModelReply(hit.status, hit.body, hit.content_type, local)
                self._log(
                    request, account_id, gateway_id, provider, model, rest, data, reply, log_id, now, started, True
                )
                return self.models.reply_response(reply, headers)
        state.count("gateway", "skips" if skip else "misses")
        reply = await gateway_invoke(self.models, gateway, provider, model, data, request, path=rest)
        if cacheable and reply.status == 200:
            state.store.cache_put(
                account_id,
                gateway_id,
                cache_key,
                CachedResponse(reply.status, reply.content_type, reply.body),
                state.clock.now() + ttl,
            )
        headers["cf-aig-cache-status"] = "MISS"
        self._log(request, account_id, gateway_id, provider, model, rest, data, reply, log_id, now, started, False)
        return self.models.reply_response(reply, headers)

    def _log(
        self,
        request: Request,
        account_id: str,
        gateway_id: str,
        provider: str,
        model: str,
        path: str,
        data: Any,
        reply: ModelReply,
        log_id: str,
        now: float,
        started: float,
        cached: bool,
    ) -> None:
        """Store the log entry of one answered request (the logs API serves it under ``log_id``)."""
        entry = log_entry(
            log_id=log_id,
            now=now,
            provider=provider,
            model=model,
            path=path,
            status=reply.status,
            cached=cached,
            duration_ms=(time.perf_counter() - started) * 1000,
            body=reply.body,
            request=data,
            metadata=request.headers.get("cf-aig-metadata"),
            request_content_type=request.headers.get("content-type"),
            response_content_type=reply.content_type,
        )
        self.state.gateway_logs.add(account_id, gateway_id, now, entry)
