"""The data-plane Worker's API (``{emulator}/dataplane``, infra/worker/DATAPLANE.md): KV through the Worker's
routes and limits, and its ``GET /health``.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dualcache._policy import KV_MIN_TTL
from dualcache.local._common import (
    CODE_DP_METHOD,
    CODE_DP_ROUTE,
    CODE_NAMESPACE_NOT_FOUND,
    DATA_PLANE_AUTH_ERROR,
    HTTPError,
    _iso,
    _method_not_allowed,
    cf_error,
    envelope,
    new_log_id,
)
from dualcache.local._kv_api import _KV, DATA_PLANE_KV
from dualcache.local._model_api import run_workers_ai
from dualcache.local._state import DataPlane, EmulatorState
from dualcache.local._store import KVEntry

HEALTH_MODEL = "@cf/baai/bge-base-en-v1.5"
"""The model the data plane's ``GET /health`` embeds with, as the health Worker does."""


def _data_plane_methods(seg: list[str]) -> tuple[str, ...] | None:
    """The methods the data plane serves on ``/kv/{B}/`` + ``seg`` (DATAPLANE.md's routes), or None: no route."""
    if len(seg) >= 2 and seg[0] == "values":
        return ("GET", "PUT", "DELETE")
    if len(seg) >= 2 and seg[0] == "metadata":
        return ("GET",)
    return {("keys",): ("GET",), ("bulk",): ("PUT",), ("bulk", "get"): ("POST",), ("bulk", "delete"): ("POST",)}.get(
        tuple(seg)
    )


class _DataPlaneAPI:
    """The data-plane Worker's API under ``/dataplane`` (its KV routes and ``GET /health``)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.data_plane_kv = _KV(state, DATA_PLANE_KV)

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


async def _timed(probe: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one health probe: ``{"ok": True, "ms", ...detail}`` or ``{"ok": False, "ms", "error"}``."""
    started = time.monotonic()
    try:
        detail = await probe()
    except RuntimeError as exc:
        return {"ok": False, "ms": round((time.monotonic() - started) * 1000), "error": str(exc)}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000), **detail}
