"""The emulator's state: counters, request log, faults, rate-limit windows and settings, shared by every API."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request

from dualcache._exceptions import ConfigError
from dualcache._outputs import is_loopback_host
from dualcache._untrusted import redact_url
from dualcache.local._clock import Clock
from dualcache.local._common import CODE_AUTH, CODE_FAULT, DATA_PLANE_PATH, HTTPError, _bearer, _raw_path, cf_error
from dualcache.local._logs_api import DEFAULT_LOG_CAPACITY, GatewayLogs
from dualcache.local._store import Store

__all__ = ["DataPlane", "EmulatorState", "FaultSpec", "check_api_token"]

DEFAULT_RETRY_AFTER = 60
"""``retry-after`` (seconds) of an injected 429 unless the fault says otherwise. A 429 of the
Cloudflare API carries ``retry-after`` (seconds); its value is not documented (the block lasts up to 5 minutes).
``ratelimit`` / ``x-ratelimit-*`` headers are documented but their exact shape is not, so none are sent."""

TIMEOUT_FAULT_SECONDS = 30.0
"""How long a ``timeout`` fault hangs a request (returns early when the server stops)."""

_REDACTED_HEADERS = frozenset(
    {"authorization", "cf-aig-authorization", "proxy-authorization", "x-auth-key", "api-key", "x-api-key", "cookie"}
)
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest"})

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


def _cut(text: str) -> str:
    return text if len(text) <= LOGGED_TEXT_MAX else text[:LOGGED_TEXT_MAX] + "…"


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
        "data_plane": {
            **dict.fromkeys(KV_OPERATIONS, 0),
            "unauthorized": 0,
            "health": 0,
            "ratelimit_ok": 0,
            "ratelimit_limited": 0,
        },
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
        rate_limits: The Workers Rate Limiting bindings, ``{name: (limit, period)}`` (``POST /ratelimit/{name}``).
    """

    token: str = field(repr=False)
    account_id: str
    namespaces: Mapping[str, str]
    gateway_id: str
    rate_limits: Mapping[str, tuple[int, int]] = field(default_factory=dict)


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
        max_gateway_logs: AI Gateway log entries kept per gateway for the logs API (oldest dropped first).
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
        max_gateway_logs: int = DEFAULT_LOG_CAPACITY,
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
        self.gateway_logs = GatewayLogs(max_gateway_logs)
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
        (AI Gateway's rate limiting). Refused requests do not count against the window.
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


def check_api_token(state: EmulatorState, request: Request) -> None:
    """Refuse a Cloudflare API request without ``state.token`` as its bearer token (no token: all pass).

    Raises:
        HTTPError: 401 when the token is missing, 403 when it is wrong.
    """
    token = state.token
    if token is None:
        return
    given = request.headers.get("authorization")
    if not given:
        # Cloudflare's exact status for a missing token is not documented: 401 here, 403 for a
        # wrong one, both with code 10000 "Authentication error". Clients treat 401 and 403 alike.
        state.count("api", "unauthorized")
        raise cf_error(401, CODE_AUTH, "Authentication error: missing Authorization: Bearer <API token>")
    if _bearer(given) != token:
        state.count("api", "unauthorized")
        raise cf_error(403, CODE_AUTH, "Authentication error")
