"""The emulator's own control API (``/__emulator/...``): stats, request log, reset, clock and faults."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dualcache.local._common import HTTPError
from dualcache.local._state import FAULT_TARGETS, EmulatorState, FaultSpec


async def control(state: EmulatorState, request: Request, seg: list[str]) -> Response:
    """Serve ``/__emulator/`` + ``seg``: stats, the request log, reset, the clock and faults."""
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
            return _control_error(f"unknown fault target(s) {', '.join(unknown)}; valid: {', '.join(FAULT_TARGETS)}")
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


def _control_error(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)
