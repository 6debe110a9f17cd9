"""The emulator's HTTP application: the Cloudflare APIs dualcache uses, served from local state.

URL shapes, envelopes, status codes, headers and limits follow Cloudflare's documentation of the Workers KV
REST API, AI Gateway (management API and the ``/v1`` proxy with its caching rules) and Workers AI. Where
that documentation leaves something open, the choice made here is commented.

Routing works on the raw (still percent-encoded) path, so a KV key holding ``/`` or ``%`` survives.

One module per API: :mod:`._kv_api` (Workers KV REST), :mod:`._gateway_api` (AI Gateway management),
:mod:`._model_api` (Workers AI ``/ai/run`` and the providers behind the gateway), :mod:`._proxy` (the gateway
proxy), :mod:`._ai_rest` (the AI REST API through a gateway, and the gateway's retries), :mod:`._data_plane` (the
data-plane Worker) and :mod:`._control` (``/__emulator``); shared pieces are in
:mod:`._common` and :mod:`._state`. This module routes a request to them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualcache.local._ai_rest import _AiRest
from dualcache.local._common import CODE_ROUTE, DATA_PLANE_PATH, HTTPError, _raw_segments, cf_error, envelope
from dualcache.local._control import _refuse_cross_site, control
from dualcache.local._data_plane import _DataPlaneAPI
from dualcache.local._gateway_api import _Gateways
from dualcache.local._kv_api import _KV, REST_KV
from dualcache.local._logs_api import LogsAPI
from dualcache.local._model_api import _Models
from dualcache.local._proxy import _Proxy
from dualcache.local._state import DataPlane, EmulatorState, FaultSpec, check_api_token, surface_of

__all__ = ["DataPlane", "EmulatorState", "FaultSpec", "create_app"]

logger = logging.getLogger(__name__)

ApiRoute = Callable[[Request, str, list[str], list[str]], Awaitable[Response | None]]
"""A Cloudflare API route: ``(request, account_id, raw, seg)`` -> its answer, or None when the path is not its
own. ``raw`` and ``seg`` are the path segments after ``/client/v4/accounts/{account_id}``, as sent (still
percent-encoded) and decoded."""


class _Handler:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.kv = _KV(state, REST_KV)
        self.gateways = _Gateways(state)
        self.models = _Models(state)
        self.data_plane = _DataPlaneAPI(state)
        self.gateway_proxy = _Proxy(state, self.models)
        self.ai_rest = _AiRest(state, self.models, self.gateway_proxy)
        # The /client/v4/accounts/{id}/... APIs, asked in order; the first answer that is not None is served.
        self.logs = LogsAPI(state)
        # ai_rest (the AI REST API through a gateway) before models: /ai/run/{model} with cf-aig-gateway-id is
        # a gateway request, without it the direct Workers AI route.
        self.api_routes: list[ApiRoute] = [
            self.kv.route,
            self.logs.route,
            self.gateways.route,
            self.ai_rest.route,
            self.models.route,
        ]

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
                return await control(self.state, request, segments[2:])
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
            check_api_token(self.state, request)
            return await self.route_api(request, seg[4], raw[5:], seg[5:])
        if len(seg) >= 5 and seg[1] == "v1":
            return await self.gateway_proxy.proxy(request, seg[2], seg[3], seg[4], raw[5:])
        if len(seg) >= 2 and seg[1] == DATA_PLANE_PATH and self.state.data_plane is not None:
            return await self.data_plane.route_data_plane(request, self.state.data_plane, raw[2:], seg[2:])
        raise cf_error(
            404, CODE_ROUTE, f"Could not route to {request.url.path}, perhaps your object identifier is invalid?"
        )

    async def route_api(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response:
        for api_route in self.api_routes:
            served = await api_route(request, account_id, raw, seg)
            if served is not None:
                return served
        raise cf_error(
            404, CODE_ROUTE, f"Could not route to {request.url.path}, perhaps your object identifier is invalid?"
        )


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
