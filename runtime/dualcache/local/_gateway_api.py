"""The AI Gateway management API (``/client/v4/accounts/{id}/ai-gateway/gateways``): create, list, read,
update and delete gateways.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dualcache.local._common import (
    CODE_BAD_REQUEST,
    CODE_GATEWAY_NOT_FOUND,
    _iso,
    _json_body,
    _method_not_allowed,
    _page_params,
    cf_error,
    envelope,
)
from dualcache.local._state import EmulatorState

# -- AI Gateway management ----------------------------------------------------------------------------

_GATEWAY_REQUIRED = (
    "cache_invalidate_on_update",
    "cache_ttl",
    "collect_logs",
    "rate_limiting_interval",
    "rate_limiting_limit",
)
_GATEWAY_OPTIONAL = (
    "rate_limiting_technique",
    "authentication",
    "log_management",
    "log_management_strategy",
    "logpush",
    "logpush_public_key",
    "retry_backoff",
    "retry_delay",
    "retry_max_attempts",
    "zdr",
    "store_id",
    "dlp",
    "otel",
    "stripe",
    "workers_ai_billing_mode",
    "byok_only",
    "guardrails",
    "spend_limits",
    "log_classification",
)


def validate_gateway(data: Any, *, gateway_id: str | None) -> dict[str, Any]:
    """Validate a create (``gateway_id`` None: taken from the body) or update body (the management API's).

    Raises:
        HTTPError: a 400 envelope naming the bad field.
    """
    if not isinstance(data, Mapping):
        raise cf_error(400, CODE_BAD_REQUEST, "body must be a JSON object of gateway settings")
    settings: dict[str, Any] = {}
    if gateway_id is None:
        gid = data.get("id")
        if not isinstance(gid, str) or not 1 <= len(gid) <= GATEWAY_ID_MAX:
            raise cf_error(400, CODE_BAD_REQUEST, f"id={gid!r}: required, 1..{GATEWAY_ID_MAX} characters")
        check_gateway_id(gid)
        settings["id"] = gid
    else:
        settings["id"] = gateway_id
    missing = [name for name in _GATEWAY_REQUIRED if name not in data]
    if missing:
        raise cf_error(400, CODE_BAD_REQUEST, f"missing required field(s): {', '.join(missing)}")
    for name in ("cache_invalidate_on_update", "collect_logs"):
        if not isinstance(data[name], bool):
            raise cf_error(400, CODE_BAD_REQUEST, f"{name}={data[name]!r}: must be true or false")
    for name in ("cache_ttl", "rate_limiting_interval", "rate_limiting_limit"):
        value = data[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise cf_error(400, CODE_BAD_REQUEST, f"{name}={value!r}: must be an integer >= 0 or null")
    technique = data.get("rate_limiting_technique")
    if technique is not None and technique not in ("fixed", "sliding"):
        raise cf_error(400, CODE_BAD_REQUEST, f"rate_limiting_technique={technique!r}: must be 'fixed' or 'sliding'")
    log_management = data.get("log_management")
    if log_management is not None and (
        not isinstance(log_management, int) or not 10_000 <= log_management <= 10_000_000
    ):
        raise cf_error(400, CODE_BAD_REQUEST, f"log_management={log_management!r}: must be 10000..10000000")
    strategy = data.get("log_management_strategy")
    if strategy is not None and strategy not in ("STOP_INSERTING", "DELETE_OLDEST"):
        raise cf_error(
            400, CODE_BAD_REQUEST, f"log_management_strategy={strategy!r}: must be STOP_INSERTING or DELETE_OLDEST"
        )
    attempts = data.get("retry_max_attempts")
    if attempts is not None and (not isinstance(attempts, int) or not 1 <= attempts <= 5):
        raise cf_error(400, CODE_BAD_REQUEST, f"retry_max_attempts={attempts!r}: must be 1..5")
    if "authentication" in data and not isinstance(data["authentication"], bool):
        raise cf_error(400, CODE_BAD_REQUEST, f"authentication={data['authentication']!r}: must be true or false")
    for name in _GATEWAY_REQUIRED + _GATEWAY_OPTIONAL:
        if name in data:
            settings[name] = data[name]
    settings.setdefault("rate_limiting_technique", "fixed")
    settings.setdefault("authentication", False)
    return settings


GATEWAY_ID_MAX = 64
GATEWAY_ID_PATTERN = re.compile(r"^[a-z0-9_]+(?:-[a-z0-9_]+)*$")
"""The gateway id Cloudflare's API schema accepts: lowercase letters, digits and ``_``, in runs
joined by single ``-``; so no upper case, no leading, trailing or doubled ``-``."""


def check_gateway_id(gateway_id: str) -> None:
    """Refuse a gateway id Cloudflare's schema rejects, with a 400 envelope naming it.

    Raises:
        HTTPError: the id is not 1..64 characters matching :data:`GATEWAY_ID_PATTERN`.
    """
    if len(gateway_id) > GATEWAY_ID_MAX or not GATEWAY_ID_PATTERN.fullmatch(gateway_id):
        raise cf_error(
            400,
            CODE_BAD_REQUEST,
            f"id={gateway_id!r} is not a valid gateway id: 1..{GATEWAY_ID_MAX} characters of a-z, 0-9 and '_', "
            "in groups joined by single '-' (pattern ^[a-z0-9_]+(?:-[a-z0-9_]+)*$)",
        )


class _Gateways:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def _view(self, account_id: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**settings, "account_tag": account_id, "is_default": False}

    async def collection(self, request: Request, account_id: str) -> Response:
        store = self.state.store
        if request.method == "POST":
            settings = validate_gateway(await _json_body(request), gateway_id=None)
            if store.gateway(account_id, settings["id"]) is not None:
                # Cloudflare does not document the real code/status; this one is the emulator's.
                raise cf_error(400, 7001, f"a gateway with id {settings['id']!r} already exists")
            stamp = _iso(self.state.clock.now())
            settings.update(created_at=stamp, modified_at=stamp)
            store.put_gateway(account_id, settings)
            return envelope(self._view(account_id, settings))
        if request.method != "GET":
            raise _method_not_allowed(request)
        page, per_page = _page_params(request)
        search = request.query_params.get("search", "")
        items = [g for g in store.gateways(account_id) if search in g["id"]]
        chunk = items[(page - 1) * per_page : page * per_page]
        info = {"page": page, "per_page": per_page, "count": len(chunk), "total_count": len(items)}
        return envelope([self._view(account_id, g) for g in chunk], result_info=info)

    async def item(self, request: Request, account_id: str, gateway_id: str) -> Response:
        store = self.state.store
        # Whether the real API checks the id of GET / PUT / DELETE against the schema before looking it up
        # (400) or just finds nothing (404) is not documented; an id that cannot exist is refused as
        # a create would refuse it, so a client bug surfaces the same way on every route.
        check_gateway_id(gateway_id)
        current = store.gateway(account_id, gateway_id)
        if current is None:
            raise cf_error(404, CODE_GATEWAY_NOT_FOUND, f"gateway {gateway_id!r} not found")
        if request.method == "GET":
            return envelope(self._view(account_id, current))
        if request.method == "PUT":
            settings = validate_gateway(await _json_body(request), gateway_id=gateway_id)
            settings.update(created_at=current["created_at"], modified_at=_iso(self.state.clock.now()))
            store.put_gateway(account_id, settings)
            if settings.get("cache_invalidate_on_update"):
                store.clear_gateway_cache(account_id, gateway_id)
            return envelope(self._view(account_id, settings))
        if request.method == "DELETE":
            store.delete_gateway(account_id, gateway_id)
            return envelope(self._view(account_id, current))
        raise _method_not_allowed(request)

    async def route(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response | None:
        """``/client/v4/accounts/{id}/ai-gateway/gateways[/{gateway_id}]``; None: no such route."""
        n = len(seg)
        if n >= 2 and seg[:2] == ["ai-gateway", "gateways"]:
            if n == 2:
                return await self.collection(request, account_id)
            if n == 3:
                return await self.item(request, account_id, seg[2])
        return None
