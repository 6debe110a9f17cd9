"""The AI Gateway logs API (``/client/v4/accounts/{id}/ai-gateway/gateways/{gateway}/logs``) and the log store.

The gateway proxy records one entry per request it answers (from its cache or from a provider) with the
fields Cloudflare documents for a log item: ``id`` (the ``cf-aig-log-id`` of the answer), ``created_at``
(the emulator clock), ``provider``, ``model``, ``path``, ``success``, ``cached``, ``status_code``,
``duration`` (milliseconds, an integer), ``tokens_in``, ``tokens_out``, ``cost``, ``metadata`` (the
``cf-aig-metadata`` header as sent, a string), ``model_type``, ``request_type``, the content types and
``step``.

``GET .../logs`` lists them a page at a time (``page``, ``per_page``; ``result_info`` with ``page``,
``per_page``, ``count``, ``total_count``), with the filters ``cached``, ``success``, ``model``, ``provider``,
``start_date`` / ``end_date`` (ISO-8601, inclusive), ``order_by`` (``created_at``, ``provider``, ``model``,
``model_type``, ``success``, ``cached``) and ``order_by_direction`` (or its older name ``direction``).
Other documented filters (``filters=[...]``, costs, tokens, ``search``) are refused with a 400 naming them,
so a client never mistakes an unfiltered list for a filtered one.

Choices where Cloudflare's documentation is silent: the default order is ``created_at`` descending (newest
first, as the dashboard shows them); ``per_page`` defaults to 20 and may be 1..1000 like the emulator's
other lists. The store is bounded: at most ``capacity`` entries per gateway, the oldest dropped first (the
real store holds 10 M per gateway; with Auto Log Cleanup it also drops the oldest).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from dualcache.local._common import (
    CODE_BAD_REQUEST,
    CODE_GATEWAY_NOT_FOUND,
    _iso,
    _method_not_allowed,
    _page_params,
    cf_error,
    envelope,
)
from dualcache.local._models import token_count

if TYPE_CHECKING:
    from dualcache.local._state import EmulatorState

__all__ = ["DEFAULT_LOG_CAPACITY", "GatewayLogs", "LogsAPI", "log_entry"]

DEFAULT_LOG_CAPACITY = 10_000
"""Log entries kept per gateway (oldest dropped first)."""

METADATA_MAX = 2048
"""Longest ``cf-aig-metadata`` kept in a log entry (a longer one is dropped from the entry)."""

# US dollars per million tokens (input, output) of the models the emulator prices: Cloudflare's Workers AI list
# prices for them. Any other model's cost is left out (null), never invented.
_PRICES_PER_M: dict[str, tuple[float, float]] = {
    "@cf/baai/bge-base-en-v1.5": (0.067, 0.0),
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast": (0.29, 2.25),
}

_ORDER_BY = ("created_at", "provider", "model", "model_type", "success", "cached")
_SUPPORTED = frozenset(
    {
        "page",
        "per_page",
        "cached",
        "success",
        "model",
        "provider",
        "start_date",
        "end_date",
        "order_by",
        "order_by_direction",
        "direction",
        "meta_info",
    }
)


@dataclass(frozen=True, slots=True)
class _Entry:
    time: float
    item: dict[str, Any]


class GatewayLogs:
    """The log entries of every gateway, at most ``capacity`` per gateway (the oldest dropped first).

    Args:
        capacity: Entries kept per gateway (>= 1).
    """

    def __init__(self, capacity: int = DEFAULT_LOG_CAPACITY) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r}: must be an integer >= 1")
        self.capacity = capacity
        self._logs: dict[tuple[str, str], deque[_Entry]] = {}

    def add(self, account_id: str, gateway_id: str, now: float, item: dict[str, Any]) -> None:
        """Store one entry of a gateway, created at ``now`` (emulator seconds)."""
        logs = self._logs.get((account_id, gateway_id))
        if logs is None:
            logs = self._logs[(account_id, gateway_id)] = deque(maxlen=self.capacity)
        logs.append(_Entry(now, item))

    def entries(self, account_id: str, gateway_id: str) -> list[_Entry]:
        """The entries of one gateway, oldest first."""
        return list(self._logs.get((account_id, gateway_id), ()))


def _request_tokens(data: Any) -> int | None:
    """Input tokens of an embeddings request (``text``: a string or a list), whose answer carries no usage."""
    text = data.get("text") if isinstance(data, Mapping) else None
    texts = [text] if isinstance(text, str) else text if isinstance(text, list) else None
    if texts is None or not all(isinstance(t, str) for t in texts):
        return None
    return sum(token_count(t) for t in texts)


def _usage(body: bytes) -> tuple[int | None, int | None]:
    """``(tokens_in, tokens_out)`` from a JSON answer's ``usage`` (OpenAI's, or Workers AI's in ``result``)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if isinstance(data, Mapping) and isinstance(data.get("result"), Mapping):
        data = data["result"]
    usage = data.get("usage") if isinstance(data, Mapping) else None
    if not isinstance(usage, Mapping):
        return None, None
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        tokens_in if isinstance(tokens_in, int) else None,
        tokens_out if isinstance(tokens_out, int) else (0 if isinstance(tokens_in, int) else None),
    )


def log_entry(
    *,
    log_id: str,
    now: float,
    provider: str,
    model: str,
    path: str,
    status: int,
    cached: bool,
    duration_ms: float,
    body: bytes,
    request: Any,
    metadata: str | None,
    request_content_type: str | None,
    response_content_type: str,
) -> dict[str, Any]:
    """Build one log item with the documented fields (see the module docstring); ``request`` is the parsed
    request body (its input tokens count when the answer has no ``usage``)."""
    tokens_in, tokens_out = _usage(body) if status < 400 else (None, None)
    if tokens_in is None and status < 400 and (counted := _request_tokens(request)) is not None:
        tokens_in, tokens_out = counted, 0  # an embedding: the gateway counts its input, it has no output
    price = _PRICES_PER_M.get(model)
    cost: float | None = None
    if price is not None and tokens_in is not None:
        # A cached answer costs nothing: the provider was not called.
        cost = 0.0 if cached else round((tokens_in * price[0] + (tokens_out or 0) * price[1]) / 1e6, 9)
    return {
        "id": log_id,
        "created_at": _iso(now),
        "provider": provider,
        "model": model,
        "model_type": None,
        "path": path,
        "success": status < 400,
        "cached": cached,
        "status_code": status,
        "duration": max(0, round(duration_ms)),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost": cost,
        "custom_cost": False,
        "metadata": metadata if metadata is not None and len(metadata) <= METADATA_MAX else None,
        "request_type": None,
        "request_content_type": request_content_type,
        "response_content_type": response_content_type,
        "step": 0,
    }


def _bool_param(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise cf_error(400, CODE_BAD_REQUEST, f"{name}={raw!r}: must be true or false")


def _date_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise cf_error(400, CODE_BAD_REQUEST, f"{name}={raw!r}: must be an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class LogsAPI:
    """``GET /client/v4/accounts/{id}/ai-gateway/gateways/{gateway}/logs``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def route(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response | None:
        """Serve the logs list; ``None`` for any other path."""
        if len(seg) != 4 or seg[0] != "ai-gateway" or seg[1] != "gateways" or seg[3] != "logs":
            return None
        if request.method != "GET":
            raise _method_not_allowed(request)
        gateway_id = seg[2]
        if self.state.store.gateway(account_id, gateway_id) is None:
            raise cf_error(404, CODE_GATEWAY_NOT_FOUND, f"gateway {gateway_id!r} not found in account {account_id}")
        return self.list(request, account_id, gateway_id)

    def list(self, request: Request, account_id: str, gateway_id: str) -> Response:
        """One page of a gateway's log entries, filtered and ordered as asked."""
        unsupported = sorted(set(request.query_params) - _SUPPORTED)
        if unsupported:
            raise cf_error(
                400,
                CODE_BAD_REQUEST,
                f"the emulator's logs list does not filter by {', '.join(unsupported)}; "
                f"it takes {', '.join(sorted(_SUPPORTED))}",
            )
        page, per_page = _page_params(request)
        cached, success = _bool_param(request, "cached"), _bool_param(request, "success")
        model, provider = request.query_params.get("model"), request.query_params.get("provider")
        start = _date_param(request, "start_date")
        end = _date_param(request, "end_date")
        order_by = request.query_params.get("order_by") or "created_at"
        if order_by not in _ORDER_BY:
            raise cf_error(400, CODE_BAD_REQUEST, f"order_by={order_by!r}: must be one of {', '.join(_ORDER_BY)}")
        direction = request.query_params.get("order_by_direction") or request.query_params.get("direction") or "desc"
        if direction not in ("asc", "desc"):
            raise cf_error(400, CODE_BAD_REQUEST, f"order_by_direction={direction!r}: must be asc or desc")
        found = [
            e
            for e in self.state.gateway_logs.entries(account_id, gateway_id)
            if (cached is None or e.item["cached"] is cached)
            and (success is None or e.item["success"] is success)
            and (model is None or e.item["model"] == model)
            and (provider is None or e.item["provider"] == provider)
            and (start is None or e.time >= start)
            and (end is None or e.time <= end)
        ]
        # Stable sorts: ties keep the order of creation (oldest first for asc, newest first for desc).
        reverse = direction == "desc"
        if order_by == "created_at":
            found.sort(key=lambda e: e.time, reverse=reverse)
        else:
            found.sort(key=lambda e: (e.item[order_by] is not None, str(e.item[order_by])), reverse=reverse)
        total = len(found)
        items = [e.item for e in found[(page - 1) * per_page : page * per_page]]
        info: dict[str, Any] = {
            "page": page,
            "per_page": per_page,
            "count": len(items),
            "total_count": total,
            "total_pages": math.ceil(total / per_page) if total else 0,
        }
        if found:
            durations = [int(e.item["duration"]) for e in found]
            costs = [float(e.item["cost"]) for e in found if e.item["cost"] is not None]
            info |= {"min_duration": min(durations), "max_duration": max(durations)}
            if costs:
                info |= {"min_cost": min(costs), "max_cost": max(costs)}
        return envelope(items, result_info=info)
