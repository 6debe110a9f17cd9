"""The emulator's HTTP application: the Cloudflare APIs dualcache uses, served from local state.

URL shapes, envelopes, status codes, headers and limits follow shared/reference/cloudflare-facts.md:
§1 Workers KV REST API, §2 AI Gateway (management API and the ``/v1`` proxy with its caching rules),
§3 Workers AI. Where the fact sheet leaves something open (§6), the choice made here is commented.

Routing works on the raw (still percent-encoded) path, so a KV key holding ``/`` or ``%`` survives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.parser
import email.policy
import hashlib
import json
import logging
import math
import os
import random
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualcache._policy import GATEWAY_MAX_TTL, GATEWAY_MIN_TTL, KV_MIN_TTL
from dualcache.local import _models
from dualcache.local._clock import Clock
from dualcache.local._store import CachedResponse, KVEntry, Store

__all__ = ["EmulatorState", "FaultSpec", "create_app"]

logger = logging.getLogger(__name__)

# Limits (cloudflare-facts §1.1, §1.3, §2.4, §3.1).
KEY_MAX_BYTES = 512
VALUE_MAX_BYTES = 25 * 1024 * 1024
METADATA_MAX_BYTES = 1024
BULK_WRITE_MAX = 10_000
BULK_GET_MAX = 100
BULK_BODY_MAX_BYTES = 100 * 1000 * 1000
LIST_LIMIT_MAX = 1000
EMBED_BATCH_MAX = 100
CACHEABLE_REQUEST_MAX_BYTES = 25 * 1000 * 1000
MAX_EXPIRATION = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest expiration the emulator stores."""
CUSTOM_KEY_DEFAULT_TTL = 300
"""``cf-aig-cache-key`` on a gateway with caching off caches for 5 minutes (facts §2.2)."""
TIMEOUT_FAULT_SECONDS = 30.0
"""How long a ``timeout`` fault hangs a request (returns early when the server stops)."""

# Error codes. 10009 (key not found) and 10013 (namespace not found) are attested (facts §1.2, §6) and
# the Workers AI codes come from facts §3. The fact sheet has no codes for the other KV/API errors: the
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
WAI_NO_SUCH_MODEL = 5007
WAI_INCOMPLETE = 3003
WAI_INVALID_DATA = 5004

_REDACTED_HEADERS = frozenset(
    {"authorization", "cf-aig-authorization", "proxy-authorization", "x-auth-key", "api-key", "x-api-key", "cookie"}
)
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest"})
_FORWARDED_HEADERS = ("authorization", "content-type", "accept", "openai-organization", "openai-project")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
FAULT_TARGETS = ("kv", "gateway", "upstream")
FAULT_PROVIDERS = ("workers-ai", "openai")


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


@dataclass
class FaultSpec:
    """What to do to requests of one target (``kv``, ``gateway`` or ``upstream``).

    Attributes:
        error_rate: Fraction 0..1 of requests answered with ``status`` (drawn from a seeded RNG).
        status: HTTP status of injected errors.
        latency_ms: Delay added before answering.
        timeout: Hang (up to 30 s, less when the server stops) so the client times out.
        seed: Seed of the RNG that draws errors, for reproducible runs.
        provider: For the ``upstream`` target only: restrict the fault to one provider (``workers-ai`` or
            ``openai``), so a test can fail Workers AI and keep OpenAI up; ``None`` hits every provider.
    """

    error_rate: float = 0.0
    status: int = 503
    latency_ms: float = 0.0
    timeout: bool = False
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    provider: str | None = None

    @classmethod
    def parse(cls, target: str, data: Any) -> FaultSpec:
        """Validate the JSON for one target.

        Raises:
            ValueError: unknown keys or out-of-range values; the message names them.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"faults.{target} must be an object, got {data!r}")
        allowed = {"error_rate", "status", "latency_ms", "timeout", "seed"}
        if target == "upstream":
            allowed.add("provider")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(
                f"faults.{target}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
            )
        rate = data.get("error_rate", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"faults.{target}.error_rate = {rate!r}: must be a number 0..1")
        status = data.get("status", 503)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"faults.{target}.status = {status!r}: must be an HTTP error status 400..599")
        latency = data.get("latency_ms", 0)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency <= 60_000:
            raise ValueError(f"faults.{target}.latency_ms = {latency!r}: must be a number 0..60000")
        timeout = data.get("timeout", False)
        if not isinstance(timeout, bool):
            raise ValueError(f"faults.{target}.timeout = {timeout!r}: must be true or false")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"faults.{target}.seed = {seed!r}: must be an integer")
        provider = data.get("provider")
        if provider is not None and provider not in FAULT_PROVIDERS:
            raise ValueError(f"faults.{target}.provider = {provider!r}: must be one of {', '.join(FAULT_PROVIDERS)}")
        return cls(float(rate), status, float(latency), timeout, seed, random.Random(seed), provider)

    def to_json(self) -> dict[str, Any]:
        """The spec as it was set."""
        return {
            "error_rate": self.error_rate,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "timeout": self.timeout,
            "seed": self.seed,
            **({"provider": self.provider} if self.provider is not None else {}),
        }


def _empty_stats() -> dict[str, Any]:
    return {
        "kv": dict.fromkeys(
            ("get", "get_metadata", "put", "delete", "list", "bulk_get", "bulk_write", "bulk_delete"), 0
        ),
        "gateway": dict.fromkeys(("hits", "misses", "skips", "rate_limited", "refused"), 0),
        "upstream": Counter(),
        "direct": Counter(),
        "faults": dict.fromkeys(FAULT_TARGETS, 0),
        "api": {"unauthorized": 0},
        "requests": 0,
    }


class EmulatorState:
    """Everything the app serves from: the store, the clock, counters, faults and settings.

    Args:
        store: The SQLite state.
        clock: The one clock (default: a fresh :class:`Clock`).
        token: API token every ``/client/v4`` request (and Workers AI through the gateway) must carry
            as ``Authorization: Bearer <token>``; ``None`` = no authentication.
        openai_upstream: Base URL of an OpenAI-compatible server to forward ``openai/*`` to, instead
            of the local models.
        max_logged_requests: Size of the request log kept for ``GET /__emulator/requests``.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        token: str | None = None,
        openai_upstream: str | None = None,
        max_logged_requests: int = 10_000,
    ) -> None:
        self.store = store
        self.clock = clock or Clock()
        self.token = token or None
        self.openai_upstream = openai_upstream.rstrip("/") if openai_upstream else None
        self.stats: dict[str, Any] = _empty_stats()
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_logged_requests)
        self.faults: dict[str, FaultSpec] = {}
        self.stopping = threading.Event()
        self._rate_windows: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()
        self._http: httpx.AsyncClient | None = None

    # -- bookkeeping --------------------------------------------------------------------------------

    def count(self, group: str, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``stats[group][name]``."""
        with self._lock:
            self.stats[group][name] += n

    def reset(self) -> None:
        """Clear counters and the request log (state, faults and the clock stay)."""
        with self._lock:
            self.stats = _empty_stats()
            self.requests.clear()
            self._rate_windows.clear()

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON data."""
        with self._lock:
            return json.loads(json.dumps(self.stats))  # type: ignore[no-any-return]

    def log_request(self, request: Request) -> None:
        """Record a served request (lower-cased header names, credentials redacted)."""
        headers = {}
        for name, value in request.headers.items():
            lname = name.lower()
            if lname in _REDACTED_HEADERS:
                # Keep an auth scheme (a test may check "Bearer"); anything else could be part of the secret.
                scheme = value.split(" ", 1)[0] if " " in value else ""
                value = f"{scheme} <redacted>" if scheme.lower() in _AUTH_SCHEMES else "<redacted>"
            headers[lname] = value
        with self._lock:
            self.stats["requests"] += 1
            self.requests.append(
                {
                    "method": request.method,
                    # As sent (percent-encoding kept), so a test can see how a client encoded a key.
                    "path": _raw_path(request),
                    "query": request.url.query,
                    "headers": headers,
                    "time": self.clock.now(),
                }
            )

    async def http(self) -> httpx.AsyncClient:
        """The client used to forward to ``openai_upstream`` (created on first use)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))
        return self._http

    async def aclose(self) -> None:
        """Close the forwarding client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- faults -------------------------------------------------------------------------------------

    async def apply_fault(self, target: str, provider: str | None = None) -> int | None:
        """Sleep and/or decide an injected error for ``target``; return the status to answer, or None."""
        spec = self.faults.get(target)
        if spec is None or (spec.provider is not None and spec.provider != provider):
            return None
        if spec.latency_ms > 0:
            await self._sleep(spec.latency_ms / 1000.0)
        if spec.timeout:
            self.count("faults", target)
            await self._sleep(TIMEOUT_FAULT_SECONDS)
            return 504
        if spec.error_rate > 0 and spec.rng.random() < spec.error_rate:
            self.count("faults", target)
            return spec.status
        return None

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    # -- rate limiting ------------------------------------------------------------------------------

    def rate_limited(self, account_id: str, gateway: Mapping[str, Any]) -> float | None:
        """Admit one request to ``gateway`` or return the seconds until it could be admitted.

        ``fixed``: calendar windows of ``interval`` seconds; ``sliding``: the last ``interval`` seconds
        (facts §2.6). Refused requests do not count against the window.
        """
        limit = gateway.get("rate_limiting_limit") or 0
        interval = gateway.get("rate_limiting_interval") or 0
        if limit <= 0 or interval <= 0:
            return None
        now = self.clock.now()
        key = (account_id, str(gateway["id"]))
        with self._lock:
            window = self._rate_windows.setdefault(key, deque())
            if gateway.get("rate_limiting_technique") == "sliding":
                while window and window[0] <= now - interval:
                    window.popleft()
                if len(window) >= limit:
                    return max(1.0, window[0] + interval - now)
            else:
                start = math.floor(now / interval) * interval
                while window and window[0] < start:
                    window.popleft()
                if len(window) >= limit:
                    return max(1.0, start + interval - now)
            window.append(now)
            return None


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


# -- KV ---------------------------------------------------------------------------------------------


def _check_key(key: str) -> None:
    if key in ("", ".", ".."):
        raise cf_error(400, CODE_BAD_REQUEST, f"Invalid key name {key!r}: a key cannot be empty, '.' or '..'")
    size = len(key.encode("utf-8"))
    if size > KEY_MAX_BYTES:
        # Status for an over-long key is not in the fact sheet; 400 like the other validation errors.
        raise cf_error(400, CODE_BAD_REQUEST, f"key name is {size} bytes; the maximum is {KEY_MAX_BYTES} bytes")


def _check_metadata(metadata: Any, *, key: str) -> str | None:
    if metadata is None:
        return None
    # Measured as JavaScript's JSON.stringify writes it (compact, non-ASCII kept as UTF-8, not \uXXXX
    # escapes), which is how a Worker's metadata is serialized; facts §1.3 say "1024 bytes (serialized JSON)".
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise cf_error(400, CODE_BAD_REQUEST, f"metadata of key {key!r} is not valid JSON (NaN or Infinity)") from None
    size = len(text.encode("utf-8"))
    if size > METADATA_MAX_BYTES:
        raise cf_error(
            400, CODE_BAD_REQUEST, f"metadata of key {key!r} is {size} bytes serialized; the maximum is 1024 bytes"
        )
    return text


def _check_value_size(value: bytes, *, key: str) -> None:
    if len(value) > VALUE_MAX_BYTES:
        # The exact status is not in the fact sheet; 413 Payload Too Large is what an HTTP server says.
        raise cf_error(
            413,
            CODE_BAD_REQUEST,
            f"value of key {key!r} is {len(value)} bytes; the maximum is {VALUE_MAX_BYTES} (25 MiB)",
        )


def _expiration(now: float, expiration: Any, expiration_ttl: Any, *, key: str) -> int | None:
    """Resolve ``expiration`` / ``expiration_ttl`` (ttl wins, facts §1.1) to unix seconds."""
    for name, value in (("expiration", expiration), ("expiration_ttl", expiration_ttl)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value != int(value)
        ):
            raise cf_error(400, CODE_BAD_REQUEST, f"Invalid {name} {value!r} for key {key!r}: must be an integer")
    resolved = now + expiration_ttl if expiration_ttl is not None else expiration
    if resolved is not None and resolved > MAX_EXPIRATION:
        # Cloudflare's upper bound is not in the fact sheet; this one keeps the value storable (SQLite INTEGER).
        name = "expiration_ttl" if expiration_ttl is not None else "expiration"
        raise cf_error(
            400,
            CODE_BAD_REQUEST,
            f"Invalid {name} {expiration_ttl if expiration_ttl is not None else expiration} for key {key!r}: "
            f"the expiration must be before {MAX_EXPIRATION} (year 9999)",
        )
    if expiration_ttl is not None:
        if expiration_ttl < KV_MIN_TTL:
            raise cf_error(
                400,
                CODE_BAD_REQUEST,
                f"Invalid expiration_ttl of {expiration_ttl}. Please specify integer greater than or equal to "
                f"{KV_MIN_TTL}.",
            )
        return int(now + expiration_ttl)
    if expiration is not None:
        if expiration < now + KV_MIN_TTL:
            raise cf_error(
                400,
                CODE_BAD_REQUEST,
                f"Invalid expiration of {expiration}. Expiration times must be at least {KV_MIN_TTL} seconds in "
                "the future.",
            )
        return int(expiration)
    return None


def _parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise cf_error(400, CODE_BAD_REQUEST, "multipart body could not be parsed (missing boundary?)")
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = payload
    return parts


class _KV:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def namespace(self, account_id: str, namespace_id: str) -> None:
        if self.state.store.namespace(account_id, namespace_id) is None:
            raise cf_error(404, CODE_NAMESPACE_NOT_FOUND, "namespace not found")

    async def namespaces(self, request: Request, account_id: str) -> Response:
        store = self.state.store
        if request.method == "POST":
            data = await _json_body(request)
            title = data.get("title") if isinstance(data, Mapping) else None
            if not isinstance(title, str) or not title.strip():
                raise cf_error(400, CODE_BAD_REQUEST, "title is required: a non-empty string")
            if store.namespace_by_title(account_id, title) is not None:
                # Real code not in the fact sheet.
                raise cf_error(400, 10014, f"a namespace with title {title!r} already exists in this account")
            namespace_id = uuid.uuid4().hex
            store.create_namespace(account_id, namespace_id, title)
            return envelope(self._ns(namespace_id, title))
        if request.method != "GET":
            raise _method_not_allowed(request)
        page, per_page = _page_params(request)
        items = store.namespaces(account_id)
        chunk = items[(page - 1) * per_page : page * per_page]
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(items),
            "total_pages": max(1, math.ceil(len(items) / per_page)),
        }
        return envelope([self._ns(i, t) for i, t in chunk], result_info=info)

    @staticmethod
    def _ns(namespace_id: str, title: str) -> dict[str, Any]:
        return {"id": namespace_id, "title": title, "supports_url_encoding": True}

    async def one_namespace(self, request: Request, account_id: str, namespace_id: str) -> Response:
        store = self.state.store
        found = store.namespace(account_id, namespace_id)
        if found is None:
            raise cf_error(404, CODE_NAMESPACE_NOT_FOUND, "namespace not found")
        if request.method == "GET":
            return envelope(self._ns(*found))
        if request.method == "PUT":
            data = await _json_body(request)
            title = data.get("title") if isinstance(data, Mapping) else None
            if not isinstance(title, str) or not title.strip():
                raise cf_error(400, CODE_BAD_REQUEST, "title is required: a non-empty string")
            store.create_namespace(account_id, namespace_id, title)
            return envelope(self._ns(namespace_id, title))
        if request.method == "DELETE":
            store.delete_namespace(account_id, namespace_id)
            return envelope({})
        raise _method_not_allowed(request)

    async def value(self, request: Request, account_id: str, namespace_id: str, key: str) -> Response:
        state = self.state
        self.namespace(account_id, namespace_id)
        _check_key(key)
        now = state.clock.now()
        if request.method == "GET":
            state.count("kv", "get")
            entry = state.store.kv_get(namespace_id, key, now)
            if entry is None:
                raise cf_error(404, CODE_KEY_NOT_FOUND, "get: 'key not found'")
            headers = {"expiration": str(entry.expiration)} if entry.expiration is not None else {}
            return Response(entry.value, media_type="application/octet-stream", headers=headers)
        if request.method == "PUT":
            state.count("kv", "put")
            expiration = _int_param(request.query_params.get("expiration"), "expiration")
            ttl = _int_param(request.query_params.get("expiration_ttl"), "expiration_ttl")
            body = await request.body()
            content_type = request.headers.get("content-type", "")
            metadata_text: str | None = None
            if content_type.lower().startswith("multipart/form-data"):
                parts = _parse_multipart(body, content_type)
                if "value" not in parts:
                    raise cf_error(400, CODE_BAD_REQUEST, "multipart body has no 'value' part")
                value = parts["value"]
                if "metadata" in parts and parts["metadata"].strip():
                    try:
                        metadata = json.loads(parts["metadata"])
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise cf_error(400, CODE_BAD_REQUEST, "the 'metadata' part is not valid JSON") from None
                    metadata_text = _check_metadata(metadata, key=key)
            else:
                value = body
            _check_value_size(value, key=key)
            exp = _expiration(now, expiration, ttl, key=key)
            state.store.kv_put_many(namespace_id, [KVEntry(key, value, metadata_text, exp)])
            return envelope({})
        if request.method == "DELETE":
            state.count("kv", "delete")
            state.store.kv_delete_many(namespace_id, [key])
            return envelope({})
        raise _method_not_allowed(request)

    async def metadata(self, request: Request, account_id: str, namespace_id: str, key: str) -> Response:
        if request.method != "GET":
            raise _method_not_allowed(request)
        self.namespace(account_id, namespace_id)
        _check_key(key)
        self.state.count("kv", "get_metadata")
        entry = self.state.store.kv_get(namespace_id, key, self.state.clock.now())
        if entry is None:
            raise cf_error(404, CODE_KEY_NOT_FOUND, "get: 'key not found'")
        return envelope(json.loads(entry.metadata) if entry.metadata is not None else None)

    async def keys(self, request: Request, account_id: str, namespace_id: str) -> Response:
        if request.method != "GET":
            raise _method_not_allowed(request)
        self.namespace(account_id, namespace_id)
        self.state.count("kv", "list")
        params = request.query_params
        limit = _int_param(params.get("limit"), "limit")
        limit = LIST_LIMIT_MAX if limit is None else limit
        if not 1 <= limit <= LIST_LIMIT_MAX:
            # The real minimum is not known (facts §6); any 1..1000 is accepted here.
            raise cf_error(400, CODE_BAD_REQUEST, f"limit={limit} must be 1..{LIST_LIMIT_MAX}")
        cursor = params.get("cursor") or None
        after: str | None = None
        if cursor:
            try:
                after = base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("utf-8")
            except (ValueError, UnicodeError):
                raise cf_error(400, CODE_BAD_REQUEST, f"cursor={cursor!r} is not a cursor this API returned") from None
        entries, more = self.state.store.kv_list(
            namespace_id, prefix=params.get("prefix", ""), after=after, limit=limit, now=self.state.clock.now()
        )
        result = []
        for e in entries:
            item: dict[str, Any] = {"name": e.key}
            if e.expiration is not None:
                item["expiration"] = e.expiration
            if e.metadata is not None:
                item["metadata"] = json.loads(e.metadata)
            result.append(item)
        next_cursor = (
            base64.urlsafe_b64encode(entries[-1].key.encode("utf-8")).decode("ascii").rstrip("=")
            if more and entries
            else ""
        )
        return envelope(result, result_info={"count": len(result), "cursor": next_cursor})

    async def bulk(self, request: Request, account_id: str, namespace_id: str, action: str | None) -> Response:
        self.namespace(account_id, namespace_id)
        method = request.method
        if action is None and method == "PUT":
            return await self._bulk_write(request, namespace_id)
        if (action is None and method == "DELETE") or (action == "delete" and method == "POST"):
            return await self._bulk_delete(request, namespace_id)
        if action == "get" and method == "POST":
            return await self._bulk_get(request, namespace_id)
        raise _method_not_allowed(request)

    async def _bulk_write(self, request: Request, namespace_id: str) -> Response:
        state = self.state
        state.count("kv", "bulk_write")
        body = await request.body()
        if len(body) > BULK_BODY_MAX_BYTES:
            raise cf_error(413, CODE_BAD_REQUEST, f"bulk write body is {len(body)} bytes; the maximum is 100 MB")
        data = await _json_body(request)
        if not isinstance(data, list):
            raise cf_error(400, CODE_BAD_REQUEST, "bulk write body must be a JSON array of {key, value, ...}")
        if len(data) > BULK_WRITE_MAX:
            raise cf_error(400, CODE_BAD_REQUEST, f"bulk write of {len(data)} pairs; the maximum is {BULK_WRITE_MAX}")
        now = state.clock.now()
        entries = []
        for index, item in enumerate(data):
            if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
                raise cf_error(400, CODE_BAD_REQUEST, f"item {index} must be an object with a string 'key'")
            key = item["key"]
            _check_key(key)
            raw = item.get("value")
            if not isinstance(raw, str):
                raise cf_error(400, CODE_BAD_REQUEST, f"item {index} (key {key!r}): 'value' must be a string")
            if item.get("base64"):
                try:
                    value = base64.b64decode(raw, validate=True)
                except ValueError:
                    raise cf_error(400, CODE_BAD_REQUEST, f"item {index} (key {key!r}): value is not base64") from None
            else:
                value = raw.encode("utf-8")
            _check_value_size(value, key=key)
            metadata = _check_metadata(item.get("metadata"), key=key)
            exp = _expiration(now, item.get("expiration"), item.get("expiration_ttl"), key=key)
            entries.append(KVEntry(key, value, metadata, exp))
        state.store.kv_put_many(namespace_id, entries)
        return envelope({"successful_key_count": len(entries), "unsuccessful_keys": []})

    async def _bulk_delete(self, request: Request, namespace_id: str) -> Response:
        self.state.count("kv", "bulk_delete")
        data = await _json_body(request)
        if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
            raise cf_error(400, CODE_BAD_REQUEST, "bulk delete body must be a JSON array of key names")
        if len(data) > BULK_WRITE_MAX:
            raise cf_error(400, CODE_BAD_REQUEST, f"bulk delete of {len(data)} keys; the maximum is {BULK_WRITE_MAX}")
        for key in data:
            _check_key(key)
        self.state.store.kv_delete_many(namespace_id, data)
        return envelope({"successful_key_count": len(data), "unsuccessful_keys": []})

    async def _bulk_get(self, request: Request, namespace_id: str) -> Response:
        self.state.count("kv", "bulk_get")
        data = await _json_body(request)
        keys = data.get("keys") if isinstance(data, Mapping) else None
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise cf_error(400, CODE_BAD_REQUEST, 'bulk get body must be {"keys": [1..100 key names], ...}')
        if len(keys) > BULK_GET_MAX:
            raise cf_error(400, CODE_BAD_REQUEST, f"bulk get of {len(keys)} keys; the maximum is {BULK_GET_MAX}")
        assert isinstance(data, Mapping)
        kind = data.get("type", "text")
        if kind not in ("text", "json"):
            raise cf_error(400, CODE_BAD_REQUEST, f"type={kind!r}: must be 'text' or 'json'")
        with_metadata = data.get("withMetadata", False)
        if not isinstance(with_metadata, bool):
            raise cf_error(400, CODE_BAD_REQUEST, f"withMetadata={with_metadata!r}: must be true or false")
        for key in keys:
            _check_key(key)
        found = self.state.store.kv_get_many(namespace_id, keys, self.state.clock.now())
        values: dict[str, Any] = {}
        for key in keys:
            entry = found.get(key)
            if entry is None:
                values[key] = None
                continue
            try:
                text = entry.value.decode("utf-8")
            except UnicodeDecodeError:
                raise cf_error(
                    400, CODE_BAD_REQUEST, f"value of key {key!r} is binary; bulk get returns text values only"
                ) from None
            value: Any = text
            if kind == "json":
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise cf_error(400, CODE_BAD_REQUEST, f"value of key {key!r} is not valid JSON") from None
            if with_metadata:
                item: dict[str, Any] = {
                    "value": value,
                    "metadata": json.loads(entry.metadata) if entry.metadata is not None else None,
                }
                if entry.expiration is not None:
                    item["expiration"] = entry.expiration
                values[key] = item
            else:
                values[key] = value
        return envelope({"values": values})


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
    """Validate a create (``gateway_id`` None: taken from the body) or update body (facts §2.7).

    Raises:
        HTTPError: a 400 envelope naming the bad field.
    """
    if not isinstance(data, Mapping):
        raise cf_error(400, CODE_BAD_REQUEST, "body must be a JSON object of gateway settings")
    settings: dict[str, Any] = {}
    if gateway_id is None:
        gid = data.get("id")
        if not isinstance(gid, str) or not 1 <= len(gid) <= 64:
            raise cf_error(400, CODE_BAD_REQUEST, f"id={gid!r}: required, 1..64 characters")
        if "/" in gid:
            raise cf_error(400, CODE_BAD_REQUEST, f"id={gid!r}: must not contain '/'")
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
                # Real code/status not in the fact sheet.
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


# -- models (local, or forwarded) ---------------------------------------------------------------------


@dataclass
class ModelReply:
    """A provider's answer: status, JSON body (or raw bytes when forwarded) and whether a local model made it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    local: bool = True


def _json_reply(status: int, data: Any) -> ModelReply:
    return ModelReply(status, json.dumps(data).encode("utf-8"))


def _wai_error(status: int, code: int, message: str) -> ModelReply:
    return _json_reply(
        status, {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    )


def run_workers_ai(model: str, data: Any) -> ModelReply:
    """Run a local Workers AI model on ``data`` (the request JSON); envelope per facts §3."""
    if model in _models.WORKERS_AI_EMBEDDING_MODELS:
        if not isinstance(data, Mapping) or "text" not in data:
            return _wai_error(400, WAI_INCOMPLETE, "Type: 'text' is required: a string or an array of 1..100 strings")
        text = data["text"]
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return _wai_error(
                400, WAI_INVALID_DATA, "'text' must be a non-empty string or an array of non-empty strings"
            )
        if len(texts) > EMBED_BATCH_MAX:
            return _wai_error(400, WAI_INVALID_DATA, f"'text' has {len(texts)} items; the maximum is {EMBED_BATCH_MAX}")
        pooling = data.get("pooling", "mean")
        if pooling not in ("mean", "cls"):
            return _wai_error(400, WAI_INVALID_DATA, f"pooling={pooling!r}: must be 'mean' or 'cls'")
        dims = _models.WORKERS_AI_EMBEDDING_MODELS[model]
        vectors = [_models.embed(f"{pooling}:{t}" if pooling == "cls" else t, dims) for t in texts]
        return _json_reply(
            200,
            {
                "result": {"shape": [len(vectors), dims], "data": vectors, "pooling": pooling},
                "success": True,
                "errors": [],
                "messages": [],
            },
        )
    if model in _models.TEXT_MODELS:
        if not isinstance(data, Mapping):
            return _wai_error(400, WAI_INCOMPLETE, "body must be an object with 'prompt' or 'messages'")
        if isinstance(data.get("messages"), list) and data["messages"]:
            prompt_text = _models.messages_text(data["messages"])
        elif isinstance(data.get("prompt"), str) and data["prompt"]:
            prompt_text = data["prompt"]
        else:
            return _wai_error(400, WAI_INCOMPLETE, "one of 'prompt' (string) or 'messages' (array) is required")
        if data.get("stream"):
            return _wai_error(400, WAI_INVALID_DATA, "streaming is not supported by the local emulator's models")
        response_format = data.get("response_format")
        answer, _ = _models.generate(
            model, prompt_text, response_format if isinstance(response_format, Mapping) else None
        )
        prompt_tokens = _models.token_count(prompt_text)
        completion_tokens = _models.token_count(answer if isinstance(answer, str) else json.dumps(answer))
        json_mode = isinstance(response_format, Mapping) and response_format.get("type") in (
            "json_object",
            "json_schema",
        )
        if isinstance(answer, str) or json_mode:
            response: Any = answer  # JSON mode: result.response is an object (facts §3.2)
        else:
            response = json.dumps(answer)  # JSON asked in the prompt only: a string holding JSON
        return _json_reply(
            200,
            {
                "result": {
                    "response": response,
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
                "success": True,
                "errors": [],
                "messages": [],
            },
        )
    return _wai_error(400, WAI_NO_SUCH_MODEL, f"No such model {model} or task")


def _openai_model_error(model: Any) -> ModelReply:
    return _json_reply(
        404,
        {
            "error": {
                "message": f"The model `{model}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
    )


def _openai_bad_request(message: str, param: str | None = None) -> ModelReply:
    return _json_reply(
        400, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    )


def _known(model: Any, names: frozenset[str] | dict[str, int]) -> str | None:
    """The known model ``model`` names, allowing dated snapshots (``gpt-4o-mini-2024-07-18``)."""
    if not isinstance(model, str):
        return None
    for name in sorted(names, key=len, reverse=True):
        if model == name or (model.startswith(name + "-") and model[len(name) + 1 : len(name) + 2].isdigit()):
            return name
    return None


def run_openai(path: str, data: Any, now: float) -> ModelReply:
    """Answer an OpenAI ``chat/completions`` or ``embeddings`` request with a local model."""
    if not isinstance(data, Mapping):
        return _openai_bad_request("the request body must be a JSON object")
    model = data.get("model")
    if path == "chat/completions":
        if _known(model, _models.OPENAI_CHAT_MODELS) is None:
            return _openai_model_error(model)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_bad_request("'messages' must be a non-empty array", "messages")
        if data.get("stream"):
            return _openai_bad_request("streaming is not supported by the local emulator's models", "stream")
        response_format = data.get("response_format")
        prompt_text = _models.messages_text(messages)
        if (
            isinstance(response_format, Mapping)
            and response_format.get("type") == "json_object"
            and "json" not in prompt_text.lower()
        ):
            # OpenAI's JSON mode refuses a conversation that never asks for JSON; a client that relied on a
            # lenient emulator would fail in production.
            return _openai_bad_request(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                "messages",
            )
        answer, is_json = _models.generate(
            str(model), prompt_text, response_format if isinstance(response_format, Mapping) else None
        )
        content = json.dumps(answer) if is_json else str(answer)
        prompt_tokens = _models.token_count(prompt_text)
        completion_tokens = _models.token_count(content)
        digest = hashlib.sha256(f"{model}\x00{prompt_text}".encode()).hexdigest()[:24]
        return _json_reply(
            200,
            {
                "id": f"chatcmpl-local{digest}",
                "object": "chat.completion",
                "created": int(now),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": "fp_dualcache_local",
            },
        )
    if path == "embeddings":
        name = _known(model, _models.OPENAI_EMBEDDING_MODELS)
        if name is None:
            return _openai_model_error(model)
        raw = data.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return _openai_bad_request("'input' must be a non-empty string or an array of non-empty strings", "input")
        if len(texts) > 2048:
            return _openai_bad_request(f"'input' has {len(texts)} items; the maximum is 2048", "input")
        dims = data.get("dimensions", _models.OPENAI_EMBEDDING_MODELS[name])
        if (
            isinstance(dims, bool)
            or not isinstance(dims, int)
            or not 1 <= dims <= _models.OPENAI_EMBEDDING_MODELS[name]
        ):
            return _openai_bad_request(f"dimensions={dims!r} is out of range for {model}", "dimensions")
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _openai_bad_request(f"encoding_format={encoding!r}: must be 'float' or 'base64'", "encoding_format")
        items = []
        for index, text in enumerate(texts):
            vector = _models.embed(text, dims)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii") if encoding == "base64" else vector
            )
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_models.token_count(t) for t in texts)
        return _json_reply(
            200,
            {
                "object": "list",
                "data": items,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )
    return _json_reply(
        404,
        {
            "error": {
                "message": f"the local emulator serves chat/completions and embeddings, not {path!r}",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        },
    )


def _fault_reply(provider: str, status: int) -> ModelReply:
    message = f"injected fault (dualcache emulator): upstream answered {status}"
    if provider == "openai":
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return _json_reply(status, {"error": {"message": message, "type": kind, "param": None, "code": kind}})
    return _wai_error(status, CODE_FAULT, message)


# -- the app ------------------------------------------------------------------------------------------


def _method_not_allowed(request: Request) -> HTTPError:
    # Real code not in the fact sheet.
    return cf_error(405, CODE_METHOD, f"method {request.method} is not allowed on {request.url.path}")


class _Handler:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.kv = _KV(state)
        self.gateways = _Gateways(state)

    async def __call__(self, request: Request) -> Response:
        segments = _raw_segments(request)
        if len(segments) >= 2 and segments[1] == "__emulator":
            try:
                return await self.control(request, segments[2:])
            except HTTPError as exc:
                return exc.response
        self.state.log_request(request)
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
                raise cf_error(fault, CODE_FAULT, f"injected fault (dualcache emulator): KV answered {fault}")
            if n == 3:
                return await self.kv.namespaces(request, account_id)
            namespace_id = seg[3]
            if n == 4:
                return await self.kv.one_namespace(request, account_id, namespace_id)
            if n >= 6 and seg[4] in ("values", "metadata"):
                key = unquote("/".join(raw[5:]))
                if seg[4] == "values":
                    return await self.kv.value(request, account_id, namespace_id, key)
                return await self.kv.metadata(request, account_id, namespace_id, key)
            if n == 5 and seg[4] == "keys":
                return await self.kv.keys(request, account_id, namespace_id)
            if seg[4] == "bulk" and n in (5, 6):
                return await self.kv.bulk(request, account_id, namespace_id, seg[5] if n == 6 else None)
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
            raise cf_error(fault, CODE_FAULT, f"injected fault (dualcache emulator): gateway answered {fault}")
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


async def _control_json(request: Request) -> Any:
    try:
        body = await request.body()
        return json.loads(body) if body else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(_control_error(f"body is not JSON: {exc}")) from None


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
