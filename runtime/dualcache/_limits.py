"""Per-user limits and budgets: requests per window and dollars per window, per operation and user.

A :class:`UserLimits` says how much one user may use one operation: at most ``requests`` calls every ``per``
seconds, and at most ``dollars`` of (estimated) spend every ``dollars_per`` seconds. ``DualCache(user_limits=
{"job_analysis": UserLimits(...)})`` sets them; a call over a limit raises
:class:`~dualcache.UserLimitExceededError` before any I/O and is counted in ``limited``.

What counts:

* **Every admitted request counts, cached or not.** A KV hit, a gateway hit, a coalesced call and a
  provider call each use one request (``embed_many`` of *n* texts uses *n*). The AI Gateway's own spend
  limits never see KV hits (they are answered before the gateway), so a user hammering one cached answer
  is invisible there; these limits are where that user is counted.
* **Dollars are what the call would cost the provider**: the operation's price in the
  :class:`~dualcache.PriceTable` per request, charged when the call is admitted, whatever then serves it.
  That is the cost the cache is absorbing for that user, known before any I/O (so the check can be made
  before it), and the same figure ``Stats`` reports as ``cost + saved``. It is an estimate per request,
  not the provider's token bill. A dollar limit on an operation without a price is refused at construction.
* A call is charged when admitted: one that then fails still counts (retries of a failing call are
  what a limit has to bound).
* A call without a user id (``detect_spam``, or ``generate_application`` without ``user_id``) is not
  counted: there is no user to count it against. Limits on an operation whose calls can never carry a user
  id are refused at construction.

Where the counters live: **in this process** (:class:`UserLimiter`). Workers KV is not used for them: it
is eventually consistent (a counter read in another location can be up to about 60 s old) and takes one
write per second per key, so a counter kept there would be wrong under exactly the load it must bound.
Each process counts alone, so the error bound is documented, not hidden:

* with *N* processes serving the same users, a user may make up to *N* × the limit per window;
* windows are fixed (they start at a user's first call and last ``per`` seconds), so up to 2 × the limit
  may pass within ``per`` seconds straddling the end of one window and the start of the next;
* memory is bounded: at most ``max_users`` (operation, user) counters are kept; idle ones (every window
  over) are dropped first, and past the cap the least recently seen user's counter is dropped, which
  restarts that user's count (so the error is always towards admitting, never towards refusing).

Optionally, a limit's requests are counted by a Workers Rate Limiting binding of the data-plane Worker
(``UserLimits(binding=...)``, :class:`DataPlaneRateLimiter`): shared by every process, but per Cloudflare
location and eventually consistent (permissive), one count per call, windows of 10 or 60 s only, and one
request to the data plane per call. When it cannot be reached the local counter counts instead
(``limit_fallbacks``): a limit never turns a data-plane outage into an outage of the cache.

User ids are never kept or shown in clear: counters are keyed by the SHA-256 of the id, and errors and logs
name a user by the first 12 hex digits of it (:func:`user_label`), as KV keys hash ids that do not fit.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from dualcache._breaker import BreakerPolicy, CircuitBreaker
from dualcache._exceptions import BackendError, BackendUnavailableError, BadResponseError, ConfigError, SkippedError
from dualcache._keys import sha256_hex

__all__ = [
    "DEFAULT_MAX_USERS",
    "DataPlaneRateLimiter",
    "Refusal",
    "UserLimiter",
    "UserLimits",
    "rate_key",
    "user_label",
]

DEFAULT_MAX_USERS = 100_000
"""Default cap on the (operation, user) counters a :class:`UserLimiter` keeps (about 42 MB at the cap, measured)."""

_BINDING_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

_DOLLAR_SLACK = 1e-9
"""A nano-dollar of slack when comparing spend: sums of float prices are not exact (0.1 + 0.2 > 0.3)."""


def rate_key(operation: str, user_id: str) -> str:
    """The key a rate limiting binding counts a user's calls of ``operation`` under: no id in clear."""
    return f"{operation}:{sha256_hex(user_id)}"


def user_label(user_id: str) -> str:
    """How errors and logs name a user: the first 12 hex digits of the SHA-256 of the id, never the id."""
    return "user#" + sha256_hex(user_id)[:12]


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"UserLimits.{name}={value!r}: must be a finite number of seconds > 0")
    return float(value)


@dataclass(frozen=True, slots=True)
class UserLimits:
    """How much one user may use one operation (see the module docstring for what counts).

    Attributes:
        requests: At most this many requests per ``per`` seconds (an integer >= 1), or ``None``: no request
            limit. Cached answers count.
        per: The request window, in seconds (> 0).
        dollars: At most this many US dollars (the operation's price per request in the
            :class:`~dualcache.PriceTable`) per ``dollars_per`` seconds (finite, >= 0; 0 refuses every
            priced call), or ``None``: no dollar limit.
        dollars_per: The dollar window, in seconds (> 0; default one day).
        binding: Count ``requests`` in the data-plane Worker's Workers Rate Limiting binding of this name
            (``POST /ratelimit/{binding}``, the stack's ``dataPlane.rateLimits``) instead of in this process;
            ``requests`` and ``per`` (10 or 60) must then be the binding's declared ``limit`` and ``period``:
            they are what the local counter uses when the data plane cannot be reached. ``None``: per process.

    Raises:
        ConfigError: a value out of range (a bool is not a count), or neither limit set; the message names
            the field and the value.
    """

    requests: int | None = None
    per: float = 60.0
    dollars: float | None = None
    dollars_per: float = 86_400.0
    binding: str | None = None

    def __post_init__(self) -> None:
        n = self.requests
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"UserLimits.requests={n!r}: must be an integer >= 1, or None for no request limit")
        d = self.dollars
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < math.inf):
            raise ConfigError(f"UserLimits.dollars={d!r}: must be a finite number of dollars >= 0, or None")
        object.__setattr__(self, "per", _check_seconds("per", self.per))
        object.__setattr__(self, "dollars_per", _check_seconds("dollars_per", self.dollars_per))
        if n is None and d is None:
            raise ConfigError("UserLimits: set requests= or dollars= (or both); with neither nothing is limited")
        b = self.binding
        if b is not None:
            if not isinstance(b, str) or not _BINDING_NAME.fullmatch(b):
                raise ConfigError(f"UserLimits.binding={b!r}: must be a rate limiting binding name (A-Z 0-9 _)")
            if n is None:
                raise ConfigError(f"UserLimits.binding={b!r} counts requests: set requests= (the binding's limit)")
            if self.per not in (10.0, 60.0):
                raise ConfigError(
                    f"UserLimits.per={self.per!r}: with binding={b!r} it must be the binding's period, 10 or 60 s"
                )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was not admitted: which limit (``"requests"`` or ``"dollars"``), the limit as text (e.g.
    ``"10 requests per 60 s"``), and the seconds until it could be (``math.inf`` when one call alone needs
    more than the whole limit)."""

    limit: str
    description: str
    retry_after: float


class _Counter:
    __slots__ = ("dollar_start", "idle_at", "request_start", "requests", "spent")

    def __init__(self, now: float) -> None:
        self.request_start = self.dollar_start = self.idle_at = now
        self.requests = 0
        self.spent = 0.0


class UserLimiter:
    """Per-process counters of :class:`UserLimits`: fixed windows per (operation, user), bounded memory.

    Error bound (see the module docstring): each process counts alone, so *N* processes admit up to
    *N* × the limit per window; a fixed window admits up to 2 × the limit across a window boundary; a
    counter dropped past ``max_users`` restarts that user's count. Every error admits more, never less.

    Args:
        clock: Monotonic seconds (tests pass a fake one); ``time.monotonic`` by default.
        max_users: Most (operation, user) counters kept at once (>= 1).

    Raises:
        ConfigError: ``max_users`` is not an integer >= 1.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None, max_users: int = DEFAULT_MAX_USERS) -> None:
        if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
            raise ConfigError(f"UserLimiter max_users={max_users!r}: must be an integer >= 1")
        self._clock = clock or time.monotonic
        self.max_users = max_users
        self._counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()
        self.evicted = 0
        """Counters dropped past ``max_users`` while a window was still running (their users' counts restarted)."""

    def __len__(self) -> int:
        return len(self._counters)

    def acquire(
        self, operation: str, user_id: str, limits: UserLimits, *, requests: int = 1, dollars: float = 0.0
    ) -> Refusal | None:
        """Count ``requests`` requests costing ``dollars`` of ``user_id`` in ``operation``, if both fit.

        All or nothing: when either limit would be passed nothing is counted, and the refusal with the
        longer wait is returned (the caller must wait at least that long). No I/O.

        Returns:
            ``None`` when admitted (and counted), else the :class:`Refusal`.
        """
        now = self._clock()
        key = (operation, sha256_hex(user_id))
        counter = self._counters.get(key)
        if counter is None:
            counter = _Counter(now)
        if now >= counter.request_start + limits.per:
            counter.request_start, counter.requests = now, 0
        if now >= counter.dollar_start + limits.dollars_per:
            counter.dollar_start, counter.spent = now, 0.0
        refusals: list[Refusal] = []
        if limits.requests is not None and counter.requests + requests > limits.requests:
            wait = math.inf if requests > limits.requests else counter.request_start + limits.per - now
            refusals.append(Refusal("requests", f"{limits.requests} requests per {limits.per:g} s", wait))
        if limits.dollars is not None and dollars > 0 and counter.spent + dollars > limits.dollars + _DOLLAR_SLACK:
            wait = (
                math.inf
                if dollars > limits.dollars + _DOLLAR_SLACK
                else counter.dollar_start + limits.dollars_per - now
            )
            refusals.append(Refusal("dollars", f"${limits.dollars:g} per {limits.dollars_per:g} s", wait))
        if refusals:
            if key in self._counters:
                self._counters.move_to_end(key)
            return max(refusals, key=lambda r: r.retry_after)
        counter.requests += requests
        counter.spent += dollars
        counter.idle_at = max(
            counter.request_start + limits.per if limits.requests is not None else now,
            counter.dollar_start + limits.dollars_per if limits.dollars is not None else now,
        )
        self._counters[key] = counter
        self._counters.move_to_end(key)
        self._evict(now)
        return None

    def _evict(self, now: float) -> None:
        """Drop idle counters from the least recently seen end, then any past ``max_users``."""
        while self._counters:
            key, oldest = next(iter(self._counters.items()))
            if oldest.idle_at <= now:
                del self._counters[key]
            elif len(self._counters) > self.max_users:
                del self._counters[key]
                self.evicted += 1
            else:
                break


class DataPlaneRateLimiter:
    """``POST {data_plane_url}/ratelimit/{binding}`` (a Workers Rate Limiting binding of the data-plane Worker).

    The binding counts per Cloudflare location and is eventually consistent: permissive, never exact. One
    call is one count. A failure (unreachable, a timeout, a 5xx, a 401, a 404 because the stack declares
    no such binding, an answer of another shape) raises, and the caller falls back to its local counter;
    after ``breaker`` consecutive failures, calls are skipped for its cool-down, so an outage costs one
    timeout now and then, not one per call.

    Args:
        client: The HTTP client (the KV pool's: the data plane is the same host).
        data_plane_url: The Worker's base URL.
        token: Its bearer token.
        timeout: Seconds one call may take.
        breaker: When to stop trying for a while.
        clock: Monotonic clock of the breaker.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        data_plane_url: str,
        token: SecretStr,
        timeout: float = 1.0,
        breaker: BreakerPolicy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._base = data_plane_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self.breaker = CircuitBreaker("data-plane rate limiter", breaker, clock=clock)

    async def limit(self, binding: str, key: str) -> bool:
        """One ``env[binding].limit({key})``: whether the key is within the binding's limit.

        Raises:
            SkippedError: the breaker is open (nothing was sent).
            BackendError: the call failed or its answer is not ``{"result": {"success": bool}}``.
        """
        if not self.breaker.allow():
            raise SkippedError(
                "the data-plane rate limiter is skipped while its breaker is open",
                backend="data-plane",
                reason="circuit_open",
                retry_after=self.breaker.retry_after(),
            )
        try:
            response = await self._client.post(
                f"{self._base}/ratelimit/{binding}",
                content=json.dumps({"key": key}),
                headers={
                    "authorization": f"Bearer {self._token.get_secret_value()}",
                    "content-type": "application/json",
                },
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            self.breaker.failure()
            raise BackendUnavailableError(
                f"data-plane rate limiter unreachable: {type(exc).__name__}", backend="data-plane"
            ) from exc
        if response.status_code != 200:
            self.breaker.failure()
            raise BackendError(
                f"data-plane rate limiter {binding} answered {response.status_code}",
                backend="data-plane",
                status_code=response.status_code,
            )
        try:
            success = response.json()["result"]["success"]
        except (ValueError, KeyError, TypeError):
            success = None
        if not isinstance(success, bool):
            self.breaker.failure()
            raise BadResponseError(
                f"data-plane rate limiter {binding}: not a {{success: bool}} answer", backend="data-plane"
            )
        self.breaker.success()
        return success
