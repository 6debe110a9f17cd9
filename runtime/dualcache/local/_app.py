"""The emulator's HTTP application: the Cloudflare APIs dualcache uses, served from local state.

URL shapes, envelopes, status codes, headers and limits follow shared/reference/cloudflare-facts.md:
§1 Workers KV REST API, §2 AI Gateway (management API and the ``/v1`` proxy with its caching rules),
§3 Workers AI. Where the fact sheet leaves something open (§6), the choice made here is commented.

Routing works on the raw (still percent-encoded) path, so a KV key holding ``/`` or ``%`` survives.

"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualcache._policy import GATEWAY_MAX_TTL, GATEWAY_MIN_TTL, KV_MIN_TTL
from dualcache.local._common import (
    CODE_AUTH,
    CODE_BAD_REQUEST,
    CODE_DP_METHOD,
    CODE_DP_ROUTE,
    CODE_GATEWAY_AUTH,
    CODE_GATEWAY_NOT_FOUND,
    CODE_NAMESPACE_NOT_FOUND,
    CODE_RATE_LIMITED,
    CODE_ROUTE,
    DATA_PLANE_AUTH_ERROR,
    DATA_PLANE_PATH,
    HTTPError,
    _bearer,
    _iso,
    _json_body,
    _method_not_allowed,
    _raw_segments,
    _truthy,
    cf_error,
    envelope,
    new_log_id,
    openai_error,
)
from dualcache.local._gateway_api import _Gateways
from dualcache.local._kv_api import _KV, DATA_PLANE_KV, REST_KV
from dualcache.local._model_api import (
    _FORWARDED_HEADERS,
    ModelReply,
    _fault_reply,
    _json_reply,
    run_openai,
    run_workers_ai,
)
from dualcache.local._state import FAULT_TARGETS, DataPlane, EmulatorState, FaultSpec, surface_of
from dualcache.local._store import CachedResponse, KVEntry

__all__ = ["DataPlane", "EmulatorState", "FaultSpec", "create_app"]

logger = logging.getLogger(__name__)

CACHEABLE_REQUEST_MAX_BYTES = 25 * 1000 * 1000

HEALTH_MODEL = "@cf/baai/bge-base-en-v1.5"
"""The model the data plane's ``GET /health`` embeds with, as the health Worker does."""
CUSTOM_KEY_DEFAULT_TTL = 300
"""``cf-aig-cache-key`` on a gateway with caching off caches for 5 minutes (facts §2.2)."""


def _data_plane_methods(seg: list[str]) -> tuple[str, ...] | None:
    """The methods the data plane serves on ``/kv/{B}/`` + ``seg`` (DATAPLANE.md's routes), or None: no route."""
    if len(seg) >= 2 and seg[0] == "values":
        return ("GET", "PUT", "DELETE")
    if len(seg) >= 2 and seg[0] == "metadata":
        return ("GET",)
    return {("keys",): ("GET",), ("bulk",): ("PUT",), ("bulk", "get"): ("POST",), ("bulk", "delete"): ("POST",)}.get(
        tuple(seg)
    )


class _Handler:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.kv = _KV(state, REST_KV)
        self.data_plane_kv = _KV(state, DATA_PLANE_KV)
        self.gateways = _Gateways(state)

    async def __call__(self, request: Request) -> Response:
        if not self.state.host_allowed(request.headers.get("host")):
            # DNS rebinding: a web page's own name resolved to this machine. Never served, never logged.
            return JSONResponse(
                {"error": "misdirected request: this emulator only answers Host 127.0.0.1, localhost or [::1]"},
                status_code=421,
            )
        segments = _raw_segments(request)
        if len(segments) >= 2 and segments[1] == "__emulator":
            refused = _refuse_cross_site(request)
            if refused is not None:
                return refused
            try:
                return await self.control(request, segments[2:])
            except HTTPError as exc:
                return exc.response
        self.state.log_request(request, surface_of(segments))
        try:
            return await self.route(request, segments)
        except HTTPError as exc:
            return exc.response
        except Exception:
            logger.exception("emulator error on %s %s", request.method, request.url.path)
            return envelope(None, status=500, errors=[{"code": 10002, "message": "internal error in the emulator"}])

    async def route(self, request: Request, raw: list[str]) -> Response:
        seg = [unquote(s) for s in raw]
        if len(seg) >= 5 and seg[1:4] == ["client", "v4", "accounts"]:
            self.check_api_token(request)
            return await self.route_api(request, seg[4], raw[5:], seg[5:])
        if len(seg) >= 5 and seg[1] == "v1":
            return await self.proxy(request, seg[2], seg[3], seg[4], raw[5:])
        if len(seg) >= 2 and seg[1] == DATA_PLANE_PATH and self.state.data_plane is not None:
            return await self.route_data_plane(request, self.state.data_plane, raw[2:], seg[2:])
        raise cf_error(
            404, CODE_ROUTE, f"Could not route to {request.url.path}, perhaps your object identifier is invalid?"
        )

    def check_api_token(self, request: Request) -> None:
        token = self.state.token
        if token is None:
            return
        given = request.headers.get("authorization")
        if not given:
            # Cloudflare's exact status for a missing token is not in the fact sheet: 401 here, 403 for a
            # wrong one, both with code 10000 "Authentication error". Clients treat 401 and 403 alike.
            self.state.count("api", "unauthorized")
            raise cf_error(401, CODE_AUTH, "Authentication error: missing Authorization: Bearer <API token>")
        if _bearer(given) != token:
            self.state.count("api", "unauthorized")
            raise cf_error(403, CODE_AUTH, "Authentication error")

    async def route_api(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response:
        n = len(seg)
        if n >= 3 and seg[:3] == ["storage", "kv", "namespaces"]:
            fault = await self.state.apply_fault("kv")
            if fault is not None:
                raise self.state.fault_error("kv", fault)
            if n == 3:
                return await self.kv.namespaces(request, account_id)
            namespace_id = seg[3]
            if n == 4:
                return await self.kv.one_namespace(request, account_id, namespace_id)
            served = await self.kv.item(request, account_id, namespace_id, raw[4:], seg[4:])
            if served is not None:
                return served
        if n >= 2 and seg[:2] == ["ai-gateway", "gateways"]:
            if n == 2:
                return await self.gateways.collection(request, account_id)
            if n == 3:
                return await self.gateways.item(request, account_id, seg[2])
        if n >= 3 and seg[:2] == ["ai", "run"]:
            if request.method != "POST":
                raise _method_not_allowed(request)
            model = "/".join(seg[2:])
            data = await _json_body(request)
            self.state.count("direct", model)
            reply = await self.invoke("workers-ai", model, data, request, path=model)
            return self.reply_response(reply, {})
        raise cf_error(
            404, CODE_ROUTE, f"Could not route to {request.url.path}, perhaps your object identifier is invalid?"
        )

    # -- the data plane ---------------------------------------------------------------------------

    async def route_data_plane(self, request: Request, plane: DataPlane, raw: list[str], seg: list[str]) -> Response:
        """``{data_plane_url}/...``: the data-plane Worker's API (DATAPLANE.md) over the same KV store."""
        if seg == ["health"]:
            if request.method != "GET":
                raise _method_not_allowed(request)
            return await self.data_plane_health(request, plane)
        # "Bearer <token>" as the Worker reads it: the scheme in any case (RFC 9110), the token exact.
        header = request.headers.get("authorization", "")
        given = header[len("Bearer ") :] if header[: len("Bearer ")].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(given.encode("utf-8"), plane.token.encode("utf-8")):
            # Missing and wrong get the same answer: it never says which (DATAPLANE.md, Auth).
            self.state.count("data_plane", "unauthorized")
            raise HTTPError(envelope(None, status=401, errors=[dict(DATA_PLANE_AUTH_ERROR)]))
        allowed = _data_plane_methods(seg[2:]) if len(seg) >= 3 and seg[0] == "kv" else None
        if allowed is None:
            raise cf_error(404, CODE_DP_ROUTE, f"no data-plane route {request.method} {request.url.path}")
        if request.method not in allowed:
            methods = ", ".join(allowed)
            raise cf_error(405, CODE_DP_METHOD, f"use {methods} on this path", headers={"allow": methods})
        namespace_id = plane.namespaces.get(seg[1])
        if namespace_id is None or self.state.store.namespace(plane.account_id, namespace_id) is None:
            valid = ", ".join(plane.namespaces)
            raise cf_error(404, CODE_NAMESPACE_NOT_FOUND, f"namespace not found: {seg[1]!r} is not one of {valid}")
        fault = await self.state.apply_fault("kv")  # KV down is down whichever way it is reached
        if fault is not None:
            raise self.state.fault_error("kv", fault)
        served = await self.data_plane_kv.item(request, plane.account_id, namespace_id, raw[2:], seg[2:])
        assert served is not None  # _data_plane_methods admits only routes item() serves
        return served

    async def data_plane_health(self, request: Request, plane: DataPlane) -> Response:
        """``GET /health``, as the Worker answers it: bindings present, a KV probe and a gateway probe."""
        state = self.state
        state.count("data_plane", "health")
        bindings = {
            name: state.store.namespace(plane.account_id, ns) is not None for name, ns in plane.namespaces.items()
        }
        bindings.update(AI=True, AI_GATEWAY_SLUG=True, CLOUDFLARE_ACCOUNT_ID=True)
        # The report's shape is health.js's (the Worker's GET /health is that code): the secrets it lists are
        # the app's provider keys, which the emulator does not hold; they do not count towards "ok".
        report: dict[str, Any] = {
            "bindings": bindings,
            "secrets": {"OPENAI_API_KEY": False, "CF_AIG_TOKEN": False},
            "checks": {},
        }
        if request.query_params.get("probes") != "0":
            report["checks"] = {
                "kv": await _timed(lambda: self._probe_kv(plane)),
                "gateway": await _timed(lambda: self._probe_gateway(plane)),
            }
        report["ok"] = all(bindings.values()) and all(c["ok"] for c in report["checks"].values())
        return JSONResponse(report, status_code=200 if report["ok"] else 503, headers={"cache-control": "no-store"})

    async def _probe_kv(self, plane: DataPlane) -> dict[str, Any]:
        fault = await self.state.apply_fault("kv")
        if fault is not None:
            raise RuntimeError(f"KV answered {fault}")
        namespace_id = plane.namespaces.get("API_CACHE")
        if namespace_id is None:
            raise RuntimeError("API_CACHE is not bound")
        key = f"health:{uuid.uuid4().hex}"
        now = self.state.clock.now()
        value = f"ok {_iso(now)}".encode()
        store = self.state.store
        store.kv_put_many(namespace_id, [KVEntry(key, value, None, int(now + KV_MIN_TTL))])
        read = store.kv_get(namespace_id, key, now)
        store.kv_delete_many(namespace_id, [key])
        if read is None or read.value != value:
            raise RuntimeError("read back something else than the value written")
        return {"namespace": "API_CACHE"}

    async def _probe_gateway(self, plane: DataPlane) -> dict[str, Any]:
        if self.state.store.gateway(plane.account_id, plane.gateway_id) is None:
            raise RuntimeError(f"gateway {plane.gateway_id!r} does not exist")
        fault = await self.state.apply_fault("gateway")
        if fault is None:
            self.state.count("gateway", "skips")  # the Worker's probe sets skipCache: it reaches the model
            self.state.count("upstream", HEALTH_MODEL)
            fault = await self.state.apply_fault("upstream", "workers-ai")
        if fault is not None:
            raise RuntimeError(f"the gateway answered {fault}")
        reply = run_workers_ai(HEALTH_MODEL, {"text": ["health check"]})
        dimensions = len(json.loads(reply.body)["result"]["data"][0])
        log_id = new_log_id(self.state.clock.now())
        return {"gateway": plane.gateway_id, "model": HEALTH_MODEL, "dimensions": dimensions, "logId": log_id}

    async def invoke(self, provider: str, model: str, data: Any, request: Request, *, path: str) -> ModelReply:
        """Call the model (upstream): count it, apply upstream faults, answer locally or forward."""
        self.state.count("upstream", model or "(none)")
        fault = await self.state.apply_fault("upstream", provider)
        if fault is not None:
            return _fault_reply(provider, fault)
        if provider == "workers-ai":
            return run_workers_ai(model, data)
        if self.state.openai_upstream is not None:
            return await self.forward(path, request)
        return run_openai(path, data, self.state.clock.now())

    async def forward(self, path: str, request: Request) -> ModelReply:
        assert self.state.openai_upstream is not None
        url = f"{self.state.openai_upstream}/{path}"
        headers = {h: request.headers[h] for h in _FORWARDED_HEADERS if h in request.headers}
        client = await self.state.http()
        try:
            upstream = await client.request(request.method, url, content=await request.body(), headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("forwarding to the OpenAI upstream failed: %s", type(exc).__name__)
            return _json_reply(
                502,
                {
                    "error": {
                        "message": f"the OpenAI upstream could not be reached: {type(exc).__name__}",
                        "type": "server_error",
                        "param": None,
                        "code": "upstream_unreachable",
                    }
                },
            )
        return ModelReply(
            upstream.status_code,
            upstream.content,
            upstream.headers.get("content-type", "application/json"),
            local=False,
        )

    @staticmethod
    def reply_response(reply: ModelReply, headers: dict[str, str]) -> Response:
        if reply.local:
            headers["x-dualcache-local-model"] = "true"
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers)

    # -- the gateway proxy ------------------------------------------------------------------------

    async def proxy(
        self, request: Request, account_id: str, gateway_id: str, provider: str, raw: list[str]
    ) -> Response:
        state = self.state
        if request.method != "POST":
            raise _method_not_allowed(request)
        gateway = state.store.gateway(account_id, gateway_id)
        if gateway is None:
            # What the real gateway does for an unknown id is not in the fact sheet (it may create a
            # default gateway); the emulator serves only gateways that exist.
            raise cf_error(404, CODE_GATEWAY_NOT_FOUND, f"gateway {gateway_id!r} not found in account {account_id}")
        fault = await state.apply_fault("gateway")
        if fault is not None:
            raise state.fault_error("gateway", fault)
        if gateway.get("authentication"):
            given = _bearer(request.headers.get("cf-aig-authorization"))
            # With an emulator token the header must carry it; without one any non-empty token passes.
            # The real status is not documented (facts §6: "the request fails", 401-type errors): 401.
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
            self.check_api_token(request)  # the provider credential of Workers AI is the Cloudflare token
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
                return self.reply_response(ModelReply(hit.status, hit.body, hit.content_type, local), headers)
        state.count("gateway", "skips" if skip else "misses")
        reply = await self.invoke(provider, model, data, request, path=rest)
        if cacheable and reply.status == 200:
            state.store.cache_put(
                account_id,
                gateway_id,
                cache_key,
                CachedResponse(reply.status, reply.content_type, reply.body),
                state.clock.now() + ttl,
            )
        headers["cf-aig-cache-status"] = "MISS"
        return self.reply_response(reply, headers)

    # -- control endpoints ------------------------------------------------------------------------

    async def control(self, request: Request, seg: list[str]) -> Response:
        state = self.state
        name = "/".join(seg)
        if name == "stats" and request.method == "GET":
            return JSONResponse(state.snapshot())
        if name == "requests" and request.method == "GET":
            return JSONResponse(list(state.requests))
        if name == "reset" and request.method == "POST":
            state.reset()
            return JSONResponse({"reset": True})
        if name == "clock" and request.method == "GET":
            return JSONResponse({"now": state.clock.now(), "offset": state.clock.offset})
        if name == "clock" and request.method == "POST":
            data = await _control_json(request)
            advance = data.get("advance") if isinstance(data, Mapping) else None
            if isinstance(advance, bool) or not isinstance(advance, int | float):
                return _control_error(f'body must be {{"advance": seconds}}, got {data!r}')
            try:
                now = state.clock.advance(float(advance))
            except ValueError as exc:
                return _control_error(str(exc))
            return JSONResponse({"now": now, "offset": state.clock.offset})
        if name == "faults" and request.method == "GET":
            return JSONResponse({t: spec.to_json() for t, spec in state.faults.items()})
        if name == "faults" and request.method == "POST":
            data = await _control_json(request)
            if not isinstance(data, Mapping):
                return _control_error(f"body must be an object keyed by {', '.join(FAULT_TARGETS)}")
            unknown = sorted(set(data) - set(FAULT_TARGETS))
            if unknown:
                return _control_error(
                    f"unknown fault target(s) {', '.join(unknown)}; valid: {', '.join(FAULT_TARGETS)}"
                )
            try:
                faults = {t: FaultSpec.parse(t, spec) for t, spec in data.items() if spec}
            except ValueError as exc:
                return _control_error(str(exc))
            state.faults = faults
            return JSONResponse({t: spec.to_json() for t, spec in faults.items()})
        return JSONResponse({"error": f"no control endpoint {request.method} /__emulator/{name}"}, status_code=404)


def _refuse_cross_site(request: Request) -> Response | None:
    """The control API answers only its own clients: no foreign ``Origin``, and POSTs with a JSON body type.

    A web page can send a cross-origin ``text/plain`` POST without a CORS preflight; requiring
    ``application/json`` forces one (which the emulator never grants), and a foreign ``Origin`` is refused
    outright, GETs included.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        own = {f"{scheme}://{request.headers.get('host', '')}".lower() for scheme in ("http", "https")}
        if origin.lower() not in own:
            return JSONResponse({"error": "cross-origin requests to /__emulator are refused"}, status_code=403)
    if request.method == "POST":
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return JSONResponse({"error": "POST /__emulator/... needs Content-Type: application/json"}, status_code=415)
    return None


async def _control_json(request: Request) -> Any:
    try:
        body = await request.body()
        return json.loads(body) if body else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(_control_error(f"body is not JSON: {exc}")) from None


async def _timed(probe: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one health probe: ``{"ok": True, "ms", ...detail}`` or ``{"ok": False, "ms", "error"}``."""
    started = time.monotonic()
    try:
        detail = await probe()
    except RuntimeError as exc:
        return {"ok": False, "ms": round((time.monotonic() - started) * 1000), "error": str(exc)}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000), **detail}


def _control_error(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def create_app(state: EmulatorState) -> Starlette:
    """Build the emulator's ASGI application over ``state`` (no server; usable with ``httpx.ASGITransport``).

    Args:
        state: What the app serves from (see :class:`EmulatorState`).

    Returns:
        A Starlette application. ``app.state.emulator`` is ``state``.
    """
    handler = _Handler(state)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    async def endpoint(request: Request) -> Response:
        return await handler(request)

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=_METHODS)], lifespan=lifespan)
    app.state.emulator = state
    return app
