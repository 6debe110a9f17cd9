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
    CODE_BAD_REQUEST,
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


RATE_LIMIT_BODY_MAX = 4096
"""Largest ``POST /ratelimit/{B}`` body, in bytes (the Worker's bound)."""
RATE_LIMIT_KEY_MAX = 512
"""Longest rate-limit key, in UTF-8 bytes (the data plane's key limit)."""
RATE_LIMIT_KEYS_MAX = 100_000
"""Rate-limit counters kept per binding before those of past windows are dropped."""
CODE_DP_RATE_LIMITER = 10031
CODE_DP_KEY = 10020
CODE_DP_BODY = 10025


def _dp_error(status: int, code: int, message: str, field: str, limit: int | None = None) -> HTTPError:
    """A data-plane error naming the field (and its limit), as ``dataplane.js``'s ``limitError``."""
    error: dict[str, Any] = {"code": code, "message": message, "field": field}
    if limit is not None:
        error["limit"] = limit
    return HTTPError(envelope(None, status=status, errors=[error]))


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
        self._rate_counters: dict[str, dict[str, tuple[int, int]]] = {}  # binding -> key -> (window, count)

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
        if len(seg) == 2 and seg[0] == "ratelimit":
            if request.method != "POST":
                raise cf_error(405, CODE_DP_METHOD, "use POST on this path", headers={"allow": "POST"})
            return await self.rate_limit(request, plane, seg[1])
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

    async def rate_limit(self, request: Request, plane: DataPlane, name: str) -> Response:
        """``POST /ratelimit/{name}`` ``{"key"}``: one ``limit({key})`` of a Workers Rate Limiting binding.

        Cloudflare documents the binding's counters as per location, permissive and eventually consistent, and
        not how their window moves; the emulator keeps one exact fixed window per key (``period`` seconds,
        aligned on the emulator clock), so a test sees the limit bite at exactly ``limit`` + 1.
        """
        spec = plane.rate_limits.get(name)
        if spec is None:
            raise cf_error(
                404,
                CODE_DP_RATE_LIMITER,
                f"rate limiter not found: {name} is not a rate limiting binding of this Worker",
            )
        body = await request.body()
        if len(body) > RATE_LIMIT_BODY_MAX:
            raise _dp_error(
                413, CODE_DP_BODY, f"request body is over {RATE_LIMIT_BODY_MAX} bytes", "body", RATE_LIMIT_BODY_MAX
            )
        try:
            data = json.loads(body)
        except ValueError:
            raise _dp_error(400, CODE_BAD_REQUEST, "the request body is not valid JSON", "body") from None
        if not isinstance(data, dict):
            raise _dp_error(400, CODE_BAD_REQUEST, 'the body must be {"key": "..."}', "body")
        key = data.get("key")
        size = len(key.encode("utf-8", "surrogatepass")) if isinstance(key, str) else -1
        if not isinstance(key, str) or not 0 < size <= RATE_LIMIT_KEY_MAX or key in (".", ".."):
            raise _dp_error(400, CODE_DP_KEY, f"key must be a string of 1..{RATE_LIMIT_KEY_MAX} bytes", "key", 512)
        limit, period = spec
        window = int(self.state.clock.now() // period)
        counters = self._rate_counters.setdefault(name, {})
        if len(counters) > RATE_LIMIT_KEYS_MAX:  # bounded: drop the counters of windows already over
            for stale in [k for k, (w, _) in counters.items() if w != window]:
                del counters[stale]
        seen, count = counters.get(key, (window, 0))
        count = count if seen == window else 0
        success = count < limit
        counters[key] = (window, count + 1 if success else count)
        self.state.count("data_plane", "ratelimit_ok" if success else "ratelimit_limited")
        return envelope({"success": success})

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
