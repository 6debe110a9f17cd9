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
import hmac
import ipaddress
import json
import logging
import math
import os
import random
import re
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualcache._exceptions import ConfigError
from dualcache._outputs import is_loopback_host
from dualcache._policy import GATEWAY_MAX_TTL, GATEWAY_MIN_TTL, KV_MIN_TTL
from dualcache._untrusted import redact_url
from dualcache.local import _ai_rest, _models
from dualcache.local._clock import Clock
from dualcache.local._store import CachedResponse, KVEntry, Store

__all__ = ["DataPlane", "EmulatorState", "FaultSpec", "create_app"]

logger = logging.getLogger(__name__)

# Limits (cloudflare-facts §1.1, §1.3, §2.4, §3.1).
KEY_MAX_BYTES = 512
VALUE_MAX_BYTES = 25 * 1024 * 1024
METADATA_MAX_BYTES = 1024
BULK_WRITE_MAX = 10_000
BULK_GET_MAX = 100
BULK_BODY_MAX_BYTES = 100 * 1000 * 1000
LIST_LIMIT_MIN = 10
"""The smallest ``limit`` a key listing takes. Cloudflare's REST minimum is not attested (facts §6: "10?");
issue 10 and DATAPLANE.md take 10, so both surfaces refuse 1..9 rather than accept what production may not."""
LIST_LIMIT_MAX = 1000
DATA_PLANE_BATCH_MAX = 100
"""Keys per bulk read, write or delete on the data plane (DATAPLANE.md)."""
DATA_PLANE_BULK_BODY_MAX_BYTES = 32 * 1024 * 1024
DATA_PLANE_PUT_BODY_MAX_BYTES = 25 * 1024 * 1024 + 1024
DATA_PLANE_PATH = "dataplane"
"""The data plane is served under ``{emulator}/dataplane`` (its ``data_plane_url``)."""
DEFAULT_RETRY_AFTER = 60
"""``retry-after`` (seconds) of an injected 429 unless the fault says otherwise. Facts §1.2: a 429 of the
Cloudflare API carries ``retry-after`` (seconds); its value is not attested (the block lasts up to 5 minutes).
``ratelimit`` / ``x-ratelimit-*`` headers are named there but their exact shape is not, so none are sent."""
EMBED_BATCH_MAX = 100
CACHEABLE_REQUEST_MAX_BYTES = 25 * 1000 * 1000
MAX_EXPIRATION = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest expiration the emulator stores."""
HEALTH_MODEL = "@cf/baai/bge-base-en-v1.5"
"""The model the data plane's ``GET /health`` embeds with, as the health Worker does."""
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
CODE_DP_ROUTE = 10003
CODE_DP_METHOD = 10004
"""The data-plane Worker's own codes for no such route / method (infra/worker/dataplane.js)."""
DATA_PLANE_AUTH_ERROR = {"code": CODE_AUTH, "message": "Authentication error"}
"""The one error a data-plane request without the right token gets (DATAPLANE.md: it never says why)."""
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
SURFACES = ("api", "data_plane", "gateway", "other")
FAULT_PROVIDERS = ("workers-ai", "openai")
MODEL_COUNTERS_MAX = 256
"""Distinct model names counted by name in ``stats["upstream"]`` and ``stats["direct"]``; further names
(clients choose them) are counted together under :data:`OTHER_MODELS`, so the counters and the stats
response stay small."""
MODEL_NAME_MAX = 200
"""Longest model name counted by name (longer ones go to :data:`OTHER_MODELS`)."""
OTHER_MODELS = "(other)"
LOGGED_TEXT_MAX = 2048
"""Longest path, query or header value kept in the request log (longer ones are cut, ``…`` appended)."""
_MODEL_GROUPS = frozenset({"upstream", "direct"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


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
        retry_after: For ``kv`` and ``gateway`` with ``status`` 429: the ``retry-after`` header (seconds) the
            injected 429 carries, as the real API's does (default 60).
    """

    error_rate: float = 0.0
    status: int = 503
    latency_ms: float = 0.0
    timeout: bool = False
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    provider: str | None = None
    retry_after: int = DEFAULT_RETRY_AFTER

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
        else:
            allowed.add("retry_after")
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
        retry_after = data.get("retry_after", DEFAULT_RETRY_AFTER)
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or not 0 <= retry_after <= 86_400:
            raise ValueError(f"faults.{target}.retry_after = {retry_after!r}: must be an integer 0..86400 (seconds)")
        if "retry_after" in data and status != 429:
            raise ValueError(f"faults.{target}.retry_after is sent with 429 answers only; status is {status}")
        return cls(float(rate), status, float(latency), timeout, seed, random.Random(seed), provider, retry_after)

    def to_json(self) -> dict[str, Any]:
        """The spec as it was set."""
        return {
            "error_rate": self.error_rate,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "timeout": self.timeout,
            "seed": self.seed,
            **({"provider": self.provider} if self.provider is not None else {}),
            **({"retry_after": self.retry_after} if self.status == 429 else {}),
        }


KV_OPERATIONS = ("get", "get_metadata", "put", "delete", "list", "bulk_get", "bulk_write", "bulk_delete")


def _empty_stats() -> dict[str, Any]:
    return {
        # KV operations through the Cloudflare REST API (what the account's API budget pays for).
        "kv": dict.fromkeys(KV_OPERATIONS, 0),
        # KV operations through the data plane (the Worker's API), its refused requests and health checks.
        "data_plane": {**dict.fromkeys(KV_OPERATIONS, 0), "unauthorized": 0, "health": 0},
        "gateway": dict.fromkeys(("hits", "misses", "skips", "rate_limited", "refused", "retries"), 0),
        "upstream": Counter(),
        "direct": Counter(),
        "faults": dict.fromkeys(FAULT_TARGETS, 0),
        "api": {"unauthorized": 0},
        # Requests served per surface: ``api`` = Cloudflare API (``/client/v4``), ``data_plane``,
        # ``gateway`` (the ``/v1`` proxy), ``other`` (no such route). Control calls are not counted.
        "surfaces": dict.fromkeys(SURFACES, 0),
        "requests": 0,
    }


def surface_of(segments: list[str]) -> str:
    """Which surface a request path (split on ``/``, leading empty segment kept) belongs to."""
    if segments[1:3] == ["client", "v4"]:
        return "api"
    if len(segments) >= 2 and segments[1] == DATA_PLANE_PATH:
        return "data_plane"
    if len(segments) >= 2 and segments[1] == "v1":
        return "gateway"
    return "other"


@dataclass(frozen=True)
class DataPlane:
    """What the emulated data plane serves: the Worker's token and bindings.

    Attributes:
        token: The bearer token every route but ``GET /health`` needs (the Worker's ``DUALCACHE_TOKEN``).
        account_id: The account owning the namespaces.
        namespaces: Namespace id of each binding name (``SESSIONS``, ...), as the Worker's KV bindings.
        gateway_id: The gateway ``GET /health`` probes.
    """

    token: str = field(repr=False)
    account_id: str
    namespaces: Mapping[str, str]
    gateway_id: str


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
        data_plane: Serve the data-plane API under ``/dataplane`` with these bindings and token; ``None``
            leaves it out (every ``/dataplane`` path is then 404).
        bound_host: The interface the server listens on. Requests must name a loopback host in their
            ``Host`` header (``127.0.0.1``, ``localhost``, ``[::1]``, with any port), which stops DNS
            rebinding from a web page; a server bound elsewhere on purpose also accepts that host, and one
            bound to a wildcard (``0.0.0.0``, ``::``) any IP address (never another name).

    Raises:
        ConfigError: ``openai_upstream`` is not an http(s) URL (the message shows it without credentials).
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        token: str | None = None,
        openai_upstream: str | None = None,
        max_logged_requests: int = 10_000,
        data_plane: DataPlane | None = None,
        bound_host: str = "127.0.0.1",
    ) -> None:
        if openai_upstream and not openai_upstream.startswith(("http://", "https://")):
            raise ConfigError(f"openai_upstream {redact_url(openai_upstream)!r} is not an http(s) URL")
        self.store = store
        self.data_plane = data_plane
        self.bound_host = bound_host
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
        """Add ``n`` to counter ``stats[group][name]``.

        The per-model groups (``upstream``, ``direct``) count at most :data:`MODEL_COUNTERS_MAX` names; any
        further name, or one longer than :data:`MODEL_NAME_MAX`, counts under :data:`OTHER_MODELS`.
        """
        with self._lock:
            counters = self.stats[group]
            if group in _MODEL_GROUPS and name not in counters:
                if len(name) > MODEL_NAME_MAX or len(counters) >= MODEL_COUNTERS_MAX:
                    name = OTHER_MODELS
            counters[name] += n

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request naming ``host_header`` may be served (see ``bound_host``)."""
        if not host_header:
            return False
        match = re.match(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?$", host_header)
        if match is None:
            return False
        host = (match["v6"] or match["name"]).lower()
        if is_loopback_host(host):
            return True
        bound = self.bound_host.lower().strip("[]")
        if bound in _WILDCARD_HOSTS:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return False  # a DNS name could be rebound to this machine by a web page
            return True
        return host == bound

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

    def log_request(self, request: Request, surface: str) -> None:
        """Record a served request of ``surface`` (lower-cased header names, credentials redacted)."""
        headers = {}
        for name, value in request.headers.items():
            lname = name.lower()
            if lname in _REDACTED_HEADERS:
                # Keep an auth scheme (a test may check "Bearer"); anything else could be part of the secret.
                scheme = value.split(" ", 1)[0] if " " in value else ""
                value = f"{scheme} <redacted>" if scheme.lower() in _AUTH_SCHEMES else "<redacted>"
            headers[lname] = _cut(value)
        with self._lock:
            self.stats["requests"] += 1
            self.stats["surfaces"][surface] += 1
            self.requests.append(
                {
                    "surface": surface,
                    "method": request.method,
                    # As sent (percent-encoding kept), so a test can see how a client encoded a key.
                    "path": _cut(_raw_path(request)),
                    "query": _cut(request.url.query),
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

    def fault_error(self, target: str, status: int) -> HTTPError:
        """The Cloudflare-envelope answer of an injected ``status`` on ``target``; a 429 carries ``retry-after``."""
        spec = self.faults.get(target)
        retry_after = spec.retry_after if spec is not None else DEFAULT_RETRY_AFTER
        headers = {"retry-after": str(retry_after)} if status == 429 else None
        name = "KV" if target == "kv" else target
        return cf_error(status, CODE_FAULT, f"injected fault (dualcache emulator): {name} answered {status}", headers)

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


def _cut(text: str) -> str:
    return text if len(text) <= LOGGED_TEXT_MAX else text[:LOGGED_TEXT_MAX] + "…"


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


class LimitViolation(Exception):
    """A request broke one of KV's limits: the field, the limit, and a message naming the value.

    Raised by the checks below; the surface's :class:`KVProfile` turns it into the answer, the one place
    where the REST API and the data plane differ in how a violation is reported.
    """

    def __init__(
        self,
        field: str,
        limit: int | None,
        message: str,
        *,
        oversize: bool = False,
        extra: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit
        self.message = message
        self.oversize = oversize
        self.index: int | None = None
        self.extra = dict(extra or {})

    def at(self, index: int) -> LimitViolation:
        """This violation, as one of item ``index`` of a batch."""
        self.index = index
        return self


@dataclass(frozen=True)
class KVProfile:
    """How one surface (the REST API or the data plane) serves the one KV store: limits and error shapes.

    Attributes:
        name: ``rest`` or ``data_plane``.
        stats_group: The stats group its KV operations are counted in.
        bulk_write_max: Pairs per bulk write.
        bulk_delete_max: Keys per bulk delete.
        bulk_get_max: Keys per bulk read.
        bulk_body_max: Largest body (bytes) of a bulk request.
        put_body_max: Largest body (bytes) of a single put, or ``None`` (only the value limit applies).
        oversize_status: Fields whose size violations are 413 (every other violation is 400).
        error_fields: A violation's error object also carries ``field``, ``limit`` and a batch item's
            ``index``, with a code per field.
        max_expiration: The latest expiration (unix seconds) accepted.
        empty_bulk_get: A bulk read of no keys is an empty result (else a 400).
        expiration_on_request: A value GET returns the ``expiration`` header only with ``?expiration=true``.
        metadata_header: A value GET returns the metadata as ASCII JSON in ``cf-kv-metadata``.
        legacy_bulk_delete: ``DELETE /bulk`` deletes too, besides ``POST /bulk/delete``.
    """

    name: str
    stats_group: str
    bulk_write_max: int
    bulk_delete_max: int
    bulk_get_max: int
    bulk_body_max: int
    put_body_max: int | None
    oversize_status: tuple[str, ...]
    error_fields: bool
    max_expiration: int
    empty_bulk_get: bool
    expiration_on_request: bool
    metadata_header: bool
    legacy_bulk_delete: bool

    def violation(self, violation: LimitViolation) -> HTTPError:
        """The answer to ``violation`` on this surface."""
        error: dict[str, Any] = {"code": CODE_BAD_REQUEST, "message": violation.message}
        if self.error_fields:
            error.update(code=DATA_PLANE_FIELD_CODES.get(violation.field, CODE_BAD_REQUEST), field=violation.field)
            if violation.limit is not None:
                error["limit"] = violation.limit
            if violation.index is not None:
                error["index"] = violation.index
            error.update(violation.extra)
        status = 413 if violation.oversize and violation.field in self.oversize_status else 400
        return HTTPError(envelope(None, status=status, errors=[error]))


DATA_PLANE_FIELD_CODES = {
    "key": 10020,
    "metadata": 10021,
    "value": 10022,
    "expiration_ttl": 10023,
    "expiration": 10024,
    "body": 10025,
    "keys": 10026,
    "limit": 10027,
    "type": 10028,
    "cursor": 10029,
    "prefix": 10030,
}
"""The data-plane Worker's error code per violated field (its own numbering, infra/worker/dataplane.js)."""
DATA_PLANE_MAX_SECONDS = 2**31 - 1
"""The binding takes ``expiration`` / ``expirationTtl`` as 32-bit integers, so the Worker refuses larger ones."""


REST_KV = KVProfile(
    name="rest",
    stats_group="kv",
    bulk_write_max=BULK_WRITE_MAX,
    bulk_delete_max=BULK_WRITE_MAX,
    bulk_get_max=BULK_GET_MAX,
    bulk_body_max=BULK_BODY_MAX_BYTES,
    put_body_max=None,
    # The REST status of an oversized value is not in the fact sheet; 413 Payload Too Large is what an
    # HTTP server says. Every other violation is 400.
    oversize_status=("value", "body"),
    error_fields=False,
    max_expiration=MAX_EXPIRATION,
    # Whether REST takes a bulk read of no keys is not in the fact sheet; it is refused here.
    empty_bulk_get=False,
    expiration_on_request=False,
    metadata_header=False,
    legacy_bulk_delete=True,
)
"""The Workers KV REST API (facts §1)."""

DATA_PLANE_KV = KVProfile(
    name="data_plane",
    stats_group="data_plane",
    bulk_write_max=DATA_PLANE_BATCH_MAX,
    bulk_delete_max=DATA_PLANE_BATCH_MAX,
    bulk_get_max=DATA_PLANE_BATCH_MAX,
    bulk_body_max=DATA_PLANE_BULK_BODY_MAX_BYTES,
    put_body_max=DATA_PLANE_PUT_BODY_MAX_BYTES,
    oversize_status=("body",),
    error_fields=True,
    max_expiration=DATA_PLANE_MAX_SECONDS,
    empty_bulk_get=True,
    expiration_on_request=True,
    metadata_header=True,
    legacy_bulk_delete=False,
)
"""The data-plane Worker's API (infra/worker/DATAPLANE.md): 100 keys a batch, 32 MiB bodies, ``field``/``limit``."""


def _check_key(key: str) -> None:
    if key in ("", ".", ".."):
        raise LimitViolation("key", KEY_MAX_BYTES, f"Invalid key name {key!r}: a key cannot be empty, '.' or '..'")
    size = len(key.encode("utf-8"))
    if size > KEY_MAX_BYTES:
        # Status for an over-long key is not in the fact sheet; 400 like the other validation errors.
        raise LimitViolation("key", KEY_MAX_BYTES, f"key name is {size} bytes; the maximum is {KEY_MAX_BYTES} bytes")


def _check_metadata(metadata: Any, *, key: str) -> str | None:
    if metadata is None:
        return None
    # Measured as JavaScript's JSON.stringify writes it (compact, non-ASCII kept as UTF-8, not \uXXXX
    # escapes), which is how a Worker's metadata is serialized; facts §1.3 say "1024 bytes (serialized JSON)".
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise LimitViolation(
            "metadata", METADATA_MAX_BYTES, f"metadata of key {key!r} is not valid JSON (NaN or Infinity)"
        ) from None
    size = len(text.encode("utf-8"))
    if size > METADATA_MAX_BYTES:
        raise LimitViolation(
            "metadata",
            METADATA_MAX_BYTES,
            f"metadata of key {key!r} is {size} bytes serialized; the maximum is {METADATA_MAX_BYTES} bytes",
        )
    return text


def _check_value_size(value: bytes, *, key: str) -> None:
    if len(value) > VALUE_MAX_BYTES:
        raise LimitViolation(
            "value",
            VALUE_MAX_BYTES,
            f"value of key {key!r} is {len(value)} bytes; the maximum is {VALUE_MAX_BYTES} (25 MiB)",
            oversize=True,
        )


async def _read_body(request: Request, limit: int | None) -> bytes:
    """The request body; a :class:`LimitViolation` of ``body`` when it is over ``limit`` bytes."""
    if limit is not None:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise LimitViolation(
                "body", limit, f"request body is {declared} bytes; the maximum is {limit} bytes", oversize=True
            )
    body = await request.body()
    if limit is not None and len(body) > limit:
        raise LimitViolation(
            "body", limit, f"request body is {len(body)} bytes; the maximum is {limit} bytes", oversize=True
        )
    return body


def _int_query(request: Request, name: str, limit: int) -> int | None:
    """An integer query parameter; a :class:`LimitViolation` of ``name`` when it is not one."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        number = float(raw)
    except ValueError:
        raise LimitViolation(name, limit, f"{name}={raw!r} is not a number") from None
    if not math.isfinite(number) or number != int(number):
        raise LimitViolation(name, limit, f"{name}={raw!r} is not an integer")
    return int(number)


def _expiration(
    now: float, expiration: Any, expiration_ttl: Any, *, key: str, latest: int = MAX_EXPIRATION
) -> int | None:
    """Resolve ``expiration`` / ``expiration_ttl`` (ttl wins, facts §1.1) to unix seconds, at most ``latest``."""
    for name, value in (("expiration", expiration), ("expiration_ttl", expiration_ttl)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value != int(value)
        ):
            raise LimitViolation(name, KV_MIN_TTL, f"Invalid {name} {value!r} for key {key!r}: must be an integer")
    resolved = now + expiration_ttl if expiration_ttl is not None else expiration
    if resolved is not None and resolved > latest:
        # Cloudflare's REST upper bound is not in the fact sheet; year 9999 keeps the value storable (SQLite
        # INTEGER). The data plane's is the binding's 32-bit range.
        name = "expiration_ttl" if expiration_ttl is not None else "expiration"
        raise LimitViolation(
            name,
            KV_MIN_TTL,  # the field's limit as the Worker reports it; the upper bound is in the message
            f"Invalid {name} {expiration_ttl if expiration_ttl is not None else expiration} for key {key!r}: "
            f"the expiration must be before {latest}" + (" (year 9999)" if latest == MAX_EXPIRATION else ""),
        )
    if expiration_ttl is not None:
        if expiration_ttl < KV_MIN_TTL:
            raise LimitViolation(
                "expiration_ttl",
                KV_MIN_TTL,
                f"Invalid expiration_ttl of {expiration_ttl}. Please specify integer greater than or equal to "
                f"{KV_MIN_TTL}.",
            )
        return int(now + expiration_ttl)
    if expiration is not None:
        if expiration < now + KV_MIN_TTL:
            raise LimitViolation(
                "expiration",
                KV_MIN_TTL,
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
    """The KV routes of one surface, over the one store: ``profile`` says which limits and shapes apply."""

    def __init__(self, state: EmulatorState, profile: KVProfile) -> None:
        self.state = state
        self.profile = profile

    def count(self, operation: str) -> None:
        self.state.count(self.profile.stats_group, operation)

    async def item(
        self, request: Request, account_id: str, namespace_id: str, raw: list[str], seg: list[str]
    ) -> Response | None:
        """Serve a route under one namespace (``values/{key}``, ``metadata/{key}``, ``keys``, ``bulk[/...]``).

        ``raw`` holds the path segments after the namespace as sent, ``seg`` the same decoded. Returns None
        when no route matches.
        """
        n = len(seg)
        try:
            if n >= 2 and seg[0] in ("values", "metadata"):
                key = unquote("/".join(raw[1:]))
                if seg[0] == "values":
                    return await self.value(request, account_id, namespace_id, key)
                return await self.metadata(request, account_id, namespace_id, key)
            if n == 1 and seg[0] == "keys":
                return await self.keys(request, account_id, namespace_id)
            if n in (1, 2) and seg[0] == "bulk":
                return await self.bulk(request, account_id, namespace_id, seg[1] if n == 2 else None)
        except LimitViolation as violation:
            raise self.profile.violation(violation) from None
        return None

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
        profile = self.profile
        if request.method == "GET":
            self.count("get")
            entry = state.store.kv_get(namespace_id, key, now)
            if entry is None:
                raise cf_error(404, CODE_KEY_NOT_FOUND, "get: 'key not found'")
            headers: dict[str, str] = {}
            if entry.expiration is not None and (
                not profile.expiration_on_request or _truthy(request.query_params.get("expiration"))
            ):
                headers["expiration"] = str(entry.expiration)
            if profile.metadata_header and entry.metadata is not None:
                # ASCII JSON: a header holds Latin-1 only, so non-ASCII metadata travels as \uXXXX escapes.
                headers["cf-kv-metadata"] = json.dumps(json.loads(entry.metadata), separators=(",", ":"))
            return Response(entry.value, media_type="application/octet-stream", headers=headers)
        if request.method == "PUT":
            self.count("put")
            expiration = _int_query(request, "expiration", KV_MIN_TTL)
            ttl = _int_query(request, "expiration_ttl", KV_MIN_TTL)
            body = await _read_body(request, profile.put_body_max)
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
                        raise LimitViolation(
                            "metadata", METADATA_MAX_BYTES, "the 'metadata' part is not valid JSON"
                        ) from None
                    metadata_text = _check_metadata(metadata, key=key)
            else:
                value = body
            _check_value_size(value, key=key)
            exp = _expiration(now, expiration, ttl, key=key, latest=profile.max_expiration)
            state.store.kv_put_many(namespace_id, [KVEntry(key, value, metadata_text, exp)])
            return envelope({})
        if request.method == "DELETE":
            self.count("delete")
            state.store.kv_delete_many(namespace_id, [key])
            return envelope({})
        raise _method_not_allowed(request)

    async def metadata(self, request: Request, account_id: str, namespace_id: str, key: str) -> Response:
        if request.method != "GET":
            raise _method_not_allowed(request)
        self.namespace(account_id, namespace_id)
        _check_key(key)
        self.count("get_metadata")
        entry = self.state.store.kv_get(namespace_id, key, self.state.clock.now())
        if entry is None:
            raise cf_error(404, CODE_KEY_NOT_FOUND, "get: 'key not found'")
        return envelope(json.loads(entry.metadata) if entry.metadata is not None else None)

    async def keys(self, request: Request, account_id: str, namespace_id: str) -> Response:
        if request.method != "GET":
            raise _method_not_allowed(request)
        self.namespace(account_id, namespace_id)
        self.count("list")
        params = request.query_params
        raw_limit = params.get("limit")
        limit = LIST_LIMIT_MAX
        if raw_limit is not None and raw_limit != "":
            limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 7 else -1
            if not LIST_LIMIT_MIN <= limit <= LIST_LIMIT_MAX:
                # The REST minimum is not attested (facts §6, "10?"): 10 is taken, as in issue 10 and
                # DATAPLANE.md, so a client that works here never sends a limit production might refuse.
                shown = str(limit) if limit >= 0 else repr(raw_limit)
                raise LimitViolation(
                    "limit",
                    LIST_LIMIT_MAX,
                    f"limit={shown} must be an integer {LIST_LIMIT_MIN}..{LIST_LIMIT_MAX}",
                    extra={"min": LIST_LIMIT_MIN},
                )
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
        if (action is None and method == "DELETE" and self.profile.legacy_bulk_delete) or (
            action == "delete" and method == "POST"
        ):
            return await self._bulk_delete(request, namespace_id)
        if action == "get" and method == "POST":
            return await self._bulk_get(request, namespace_id)
        raise _method_not_allowed(request)

    async def _bulk_write(self, request: Request, namespace_id: str) -> Response:
        state = self.state
        self.count("bulk_write")
        data = await self._bulk_json(request)
        if not isinstance(data, list):
            raise LimitViolation("body", None, "bulk write body must be a JSON array of {key, value, ...}")
        most = self.profile.bulk_write_max
        if len(data) > most:
            raise LimitViolation("keys", most, f"bulk write of {len(data)} keys; the maximum is {most} keys")
        now = state.clock.now()
        entries = []
        for index, item in enumerate(data):
            try:
                entries.append(self._bulk_item(index, item, now))
            except LimitViolation as violation:
                raise violation.at(index) from None
        state.store.kv_put_many(namespace_id, entries)
        return envelope({"successful_key_count": len(entries), "unsuccessful_keys": []})

    async def _bulk_json(self, request: Request) -> Any:
        await _read_body(request, self.profile.bulk_body_max)
        try:
            return await _json_body(request)
        except HTTPError:
            raise LimitViolation("body", None, "the request body is not valid JSON") from None

    def _bulk_item(self, index: int, item: Any, now: float) -> KVEntry:
        if not isinstance(item, Mapping):
            raise LimitViolation("body", None, f"item {index} must be an object with a string 'key'")
        key = item.get("key")
        if not isinstance(key, str):
            raise LimitViolation("key", KEY_MAX_BYTES, f"item {index} must be an object with a string 'key'")
        _check_key(key)
        raw = item.get("value")
        if not isinstance(raw, str):
            raise LimitViolation("value", None, f"item {index} (key {key!r}): 'value' must be a string")
        if item.get("base64"):
            try:
                value = base64.b64decode(raw, validate=True)
            except ValueError:
                raise LimitViolation("value", None, f"item {index} (key {key!r}): value is not base64") from None
        else:
            value = raw.encode("utf-8")
        _check_value_size(value, key=key)
        metadata = _check_metadata(item.get("metadata"), key=key)
        exp = _expiration(
            now, item.get("expiration"), item.get("expiration_ttl"), key=key, latest=self.profile.max_expiration
        )
        return KVEntry(key, value, metadata, exp)

    @staticmethod
    def _check_keys(keys: list[str]) -> None:
        for index, key in enumerate(keys):
            try:
                _check_key(key)
            except LimitViolation as violation:
                raise violation.at(index) from None

    async def _bulk_delete(self, request: Request, namespace_id: str) -> Response:
        self.count("bulk_delete")
        data = await self._bulk_json(request)
        if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
            raise LimitViolation("body", None, "bulk delete body must be a JSON array of key names")
        most = self.profile.bulk_delete_max
        if len(data) > most:
            raise LimitViolation("keys", most, f"bulk delete of {len(data)} keys; the maximum is {most} keys")
        self._check_keys(data)
        self.state.store.kv_delete_many(namespace_id, data)
        return envelope({"successful_key_count": len(data), "unsuccessful_keys": []})

    async def _bulk_get(self, request: Request, namespace_id: str) -> Response:
        self.count("bulk_get")
        data = await self._bulk_json(request)
        most = self.profile.bulk_get_max
        keys = data.get("keys") if isinstance(data, Mapping) else None
        if (
            not isinstance(keys, list)
            or not (keys or self.profile.empty_bulk_get)
            or not all(isinstance(k, str) for k in keys)
        ):
            least = 0 if self.profile.empty_bulk_get else 1
            raise LimitViolation("keys", most, f'bulk get body must be {{"keys": [{least}..{most} key names], ...}}')
        if len(keys) > most:
            raise LimitViolation("keys", most, f"bulk get of {len(keys)} keys; the maximum is {most} keys")
        assert isinstance(data, Mapping)
        kind = data.get("type", "text")
        if kind not in ("text", "json"):
            raise LimitViolation("type", None, f"type={kind!r}: must be 'text' or 'json'")
        with_metadata = data.get("withMetadata", False)
        if not isinstance(with_metadata, bool):
            raise LimitViolation("withMetadata", None, f"withMetadata={with_metadata!r}: must be true or false")
        self._check_keys(keys)
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
"""The gateway id Cloudflare's API schema accepts (issue 10): lowercase letters, digits and ``_``, in runs
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
        # Whether the real API checks the id of GET / PUT / DELETE against the schema before looking it up
        # (400) or just finds nothing (404) is not in the fact sheet; an id that cannot exist is refused as
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


def _data_plane_methods(seg: list[str]) -> tuple[str, ...] | None:
    """The methods the data plane serves on ``/kv/{B}/`` + ``seg`` (DATAPLANE.md's routes), or None: no route."""
    if len(seg) >= 2 and seg[0] == "values":
        return ("GET", "PUT", "DELETE")
    if len(seg) >= 2 and seg[0] == "metadata":
        return ("GET",)
    return {("keys",): ("GET",), ("bulk",): ("PUT",), ("bulk", "get"): ("POST",), ("bulk", "delete"): ("POST",)}.get(
        tuple(seg)
    )


def _method_not_allowed(request: Request) -> HTTPError:
    # Real code not in the fact sheet.
    return cf_error(405, CODE_METHOD, f"method {request.method} is not allowed on {request.url.path}")


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
        if n >= 2 and seg[0] == "ai":  # the AI REST API through a gateway (_ai_rest); None: not one of its routes
            served = await _ai_rest.route_ai(self, request, account_id, raw, seg)
            if served is not None:
                return served
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
        reply = await _ai_rest.gateway_invoke(self, gateway, provider, model, data, request, path=rest)
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
