"""A request budget for the Cloudflare REST API: stay inside the account's rate limit, and stop after a 429.

The whole Cloudflare API allows **1,200 requests per 5 minutes per token** (and per user), shared with
``pulumi up``, wrangler and the dashboard; past it, *every* call of the token gets 429 for the next
5 minutes (Cloudflare's API rate limits). A :class:`RequestBudget`
is the one gate in front of such a token:

* a **sliding window** of the requests this process sent, capped at ``api_limit - headroom``
  (default 1,200 - 200 = **1,000 per 5 minutes**). The 200 left over are for the deploys and tools that
  share the token: a ``pulumi up`` of the stack makes a few dozen calls, wrangler paces itself to
  1,200 with 100 of headroom (workers-sdk PR #11367), so 200 leaves room for both at once;
* the **server's own view**, when it tells us: ``ratelimit`` / ``ratelimit-policy`` (IETF draft, in
  either of its two syntaxes) and ``x-ratelimit-limit`` / ``-remaining`` / ``-reset``. Cloudflare's
  documentation names both families in different places and we have not seen which one the API sends,
  so both are read; ``remaining`` counts every client of the token, so we stop ``headroom`` short of it;
* a **block** after a 429: no request until ``retry-after`` has passed, or :attr:`default_block`
  seconds (60) when the answer says nothing.

While blocked or out of budget, :meth:`acquire` either waits (never longer than its ``max_wait``, which
callers set from their own time budget, so a caller never waits for the budget longer than its KV
timeout) or raises :class:`~dualcache.SkippedError` with ``reason="rate_limited"`` or ``"budget"``: nothing
was sent, so callers count a skip, not an error. One log line marks the start and the end of each block
or exhaustion, never one per request.

Budgets are shared per token: :meth:`RequestBudget.for_token` keeps one per (API base URL, token hash)
in the process, so two ``DualCache`` objects with one token, or any other caller of the same REST API
(the direct Workers AI route is one), draw from the same budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from dualcache._exceptions import ConfigError, SkippedError

__all__ = [
    "CLOUDFLARE_API_LIMIT",
    "CLOUDFLARE_API_WINDOW",
    "RateLimitInfo",
    "RequestBudget",
    "parse_rate_limit_headers",
]

logger = logging.getLogger(__name__)

CLOUDFLARE_API_LIMIT = 1200
"""Requests the Cloudflare API allows per token in one window."""
CLOUDFLARE_API_WINDOW = 300.0
"""The Cloudflare API's rate-limit window, in seconds (5 minutes)."""

_EPOCH_THRESHOLD = 1_000_000_000  # a "reset" this large is a unix time, not a number of seconds

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one response's headers say about the rate limit (each field ``None`` when not said).

    Attributes:
        limit: Requests allowed per window (the quota).
        remaining: Requests left in the current window, for every client of the token.
        reset: Seconds until the window resets (``remaining`` is back to ``limit``).
        window: Length of the window, in seconds.
        retry_after: Seconds the server asks us to wait before the next request.
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None
    window: float | None = None
    retry_after: float | None = None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().strip('"'))
    except ValueError:
        return None
    return number if number >= 0 else None


def _delta(value: float | None, now: float) -> float | None:
    # x-ratelimit-reset is delta-seconds at most APIs but a unix time at some (GitHub); accept both.
    if value is None:
        return None
    return max(0.0, value - now) if value >= _EPOCH_THRESHOLD else value


_PARAM = re.compile(r"([A-Za-z_-]+)\s*=\s*\"?([0-9.]+)\"?")


def _params(header: str | None) -> dict[str, float]:
    """``limit=1200, remaining=5, reset=30`` or ``"default";r=5;t=30`` -> ``{name: number}``."""
    if not header:
        return {}
    return {name.lower(): float(num) for name, num in _PARAM.findall(header)}


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitInfo:
    """Read every rate-limit header family Cloudflare is documented to send.

    * ``retry-after``: delta-seconds or an HTTP date (RFC 9110).
    * ``ratelimit`` / ``ratelimit-policy``: the IETF draft, in its older syntax
      (``ratelimit: limit=1200, remaining=5, reset=30``; ``ratelimit-policy: 1200;w=300``) or its newer one
      (``ratelimit: "default";r=5;t=30``; ``ratelimit-policy: "default";q=1200;w=300``), and the draft's
      separate ``ratelimit-limit`` / ``-remaining`` / ``-reset`` fields.
    * ``x-ratelimit-limit`` / ``-remaining`` / ``-reset`` (reset as seconds, or as a unix time).

    When both families are present, the smaller ``remaining`` and the later ``reset`` win (the cautious
    reading). Unparseable values are ignored.

    Args:
        headers: The response headers (case-insensitive mapping, such as ``httpx.Headers``).
        now: Current unix time for HTTP-date and unix-time values; ``time.time()`` when ``None``.
    """
    from dualcache._kv import parse_retry_after

    wall = time.time() if now is None else now
    lower = {k.lower(): v for k, v in headers.items()}
    limits: list[float] = []
    remainings: list[float] = []
    resets: list[float] = []
    window: float | None = None

    combined = _params(lower.get("ratelimit"))
    for name in ("limit", "q"):
        if name in combined:
            limits.append(combined[name])
    for name in ("remaining", "r"):
        if name in combined:
            remainings.append(combined[name])
    for name in ("reset", "t"):
        if name in combined:
            resets.append(combined[name])
    policy_header = lower.get("ratelimit-policy")
    if policy_header:
        policy = _params(policy_header)
        if "q" in policy:
            limits.append(policy["q"])
        else:
            # Older syntax: the quota is the bare leading number ("1200;w=300").
            lead = _number(policy_header.split(";", 1)[0].split(",", 1)[0])
            if lead is not None:
                limits.append(lead)
        window = policy.get("w")
    for prefix in ("ratelimit-", "x-ratelimit-"):
        for name, into in (("limit", limits), ("remaining", remainings)):
            found = _number(lower.get(prefix + name))
            if found is not None:
                into.append(found)
        reset = _delta(_number(lower.get(prefix + "reset")), wall)
        if reset is not None:
            resets.append(reset)
    return RateLimitInfo(
        limit=int(min(limits)) if limits else None,
        remaining=int(min(remainings)) if remainings else None,
        reset=max(resets) if resets else None,
        window=window,
        retry_after=parse_retry_after(lower.get("retry-after"), now=wall),
    )


_REGISTRY: dict[str, RequestBudget] = {}
_REGISTRY_LOCK = threading.Lock()


class RequestBudget:
    """A per-token gate in front of the Cloudflare REST API (see the module docstring).

    Thread-safe; holds no asyncio objects, so one budget serves every event loop of the process.

    Args:
        headroom: Requests per window left to other clients of the token (deploys, wrangler, the
            dashboard); the budget is ``api_limit - headroom`` (default 1,000 per 5 minutes).
        api_limit: The API's quota per window, until a ``ratelimit-policy`` header says otherwise.
        window: The window, in seconds.
        default_block: Seconds to stop after a 429 that carries no ``retry-after`` (at least 60).
        name: For log lines and errors.
        clock: Monotonic seconds; ``time.monotonic`` when ``None`` (tests inject one).
        sleep: Awaitable sleep used when a wait fits in the caller's ``max_wait``; ``asyncio.sleep``.

    Raises:
        ConfigError: ``headroom`` leaves no request, or ``default_block`` is under 60 s.
    """

    def __init__(
        self,
        *,
        headroom: int = 200,
        api_limit: int = CLOUDFLARE_API_LIMIT,
        window: float = CLOUDFLARE_API_WINDOW,
        default_block: float = 60.0,
        name: str = "cloudflare-api",
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if isinstance(api_limit, bool) or not isinstance(api_limit, int) or api_limit < 1:
            raise ConfigError(f"api_limit={api_limit!r}: must be a positive integer")
        if isinstance(headroom, bool) or not isinstance(headroom, int) or not 0 <= headroom < api_limit:
            raise ConfigError(f"headroom={headroom!r}: must be an integer 0..{api_limit - 1} (api_limit={api_limit})")
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window < math.inf:
            raise ConfigError(f"RequestBudget.window={window!r}: must be a finite positive number of seconds")
        if (
            isinstance(default_block, bool)
            or not isinstance(default_block, int | float)
            or not 60 <= default_block < math.inf
        ):
            raise ConfigError(
                f"RequestBudget.default_block={default_block!r}: must be a finite number of seconds >= 60"
            )
        self.headroom = headroom
        self.api_limit = api_limit
        self.window = float(window)
        self.default_block = float(default_block)
        self.name = name
        self._clock = clock or time.monotonic
        self._sleep: Sleep = sleep or asyncio.sleep
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self._blocked_until: float | None = None
        self._server_left: int | None = None  # requests we may still send before _server_reset_at
        self._server_reset_at: float | None = None
        self._exhausted = False  # for one log line per exhaustion, not one per request
        self.counts: dict[str, int] = {"sent": 0, "rate_limited": 0, "budget": 0, "blocks": 0}

    def __repr__(self) -> str:
        return (
            f"RequestBudget(name={self.name!r}, limit={self.limit}/{self.window:g}s, headroom={self.headroom}, "
            f"blocked={self.blocked_for() > 0})"
        )

    @classmethod
    def for_token(cls, token: SecretStr | str | None, *, api_base_url: str = "", **kwargs: object) -> RequestBudget:
        """Return the process-wide budget of ``token`` on ``api_base_url``, creating it on first use.

        Keyed by a SHA-256 of the base URL and the token (the token itself is never kept), so every
        caller with the same token shares one budget, and the emulator never shares the real API's.
        ``kwargs`` (as in the constructor) apply only when the budget is created.
        """
        digest = _token_digest(token, api_base_url)
        with _REGISTRY_LOCK:
            budget = _REGISTRY.get(digest)
            if budget is None:
                budget = cls(**kwargs)  # type: ignore[arg-type]
                _REGISTRY[digest] = budget
            return budget

    @staticmethod
    def clear_registry() -> None:
        """Forget every shared budget (for tests and long-lived processes that rotate tokens)."""
        with _REGISTRY_LOCK:
            _REGISTRY.clear()

    @property
    def limit(self) -> int:
        """Requests this process may send per window: ``api_limit - headroom``."""
        return max(1, self.api_limit - self.headroom)

    def blocked_for(self) -> float:
        """Seconds left of the current 429 block (0 when not blocked)."""
        with self._lock:
            return self._block_left(self._clock())

    def _block_left(self, now: float) -> float:
        if self._blocked_until is None:
            return 0.0
        left = self._blocked_until - now
        if left <= 0:
            self._blocked_until = None
            logger.warning("%s: rate-limit block over; requests resume", self.name)
            return 0.0
        return left

    def _wait_needed(self, now: float) -> tuple[float, str | None]:
        """``(seconds until a request may go, reason)``; ``(0, None)`` when one may go now."""
        block = self._block_left(now)
        if block > 0:
            return block, "rate_limited"
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        waits: list[float] = []
        if len(self._sent) >= self.limit:
            waits.append(self._sent[len(self._sent) - self.limit] + self.window - now)
        if self._server_reset_at is not None:
            if now >= self._server_reset_at:
                self._server_left = self._server_reset_at = None
            elif self._server_left is not None and self._server_left <= 0:
                waits.append(self._server_reset_at - now)
        if waits:
            return max(waits), "budget"
        return 0.0, None

    async def acquire(self, max_wait: float | None = 0.0, *, backend: str = "kv") -> None:
        """Take one request from the budget, waiting up to ``max_wait`` seconds for it.

        Args:
            max_wait: Longest wait accepted (callers pass a part of their own timeout); ``0`` never
                waits; ``None`` waits as long as it takes.
            backend: The layer named in the :class:`~dualcache.SkippedError` (``kv``, ``workers-ai``...).

        Raises:
            SkippedError: blocked after a 429 (``reason="rate_limited"``) or out of budget
                (``reason="budget"``) for longer than ``max_wait``; ``retry_after`` says how long.
        """
        deadline = None if max_wait is None else self._clock() + max(0.0, max_wait)
        while True:
            with self._lock:
                now = self._clock()
                wait, reason = self._wait_needed(now)
                if reason is None:
                    if self._exhausted:
                        self._exhausted = False
                        logger.warning("%s: request budget available again", self.name)
                    self._sent.append(now)
                    if self._server_left is not None:
                        self._server_left -= 1
                    self.counts["sent"] += 1
                    return
                if deadline is not None and now + wait > deadline:
                    self.counts[reason] += 1
                    if reason == "budget" and not self._exhausted:
                        self._exhausted = True
                        logger.warning(
                            "%s: request budget spent (%d per %gs, %d left to other clients of the token); "
                            "requests skipped for %.1fs",
                            self.name,
                            self.limit,
                            self.window,
                            self.headroom,
                            wait,
                        )
                    raise SkippedError(
                        f"{self.name}: {'blocked after a 429' if reason == 'rate_limited' else 'request budget spent'}"
                        f" for {wait:.1f}s more; request not sent",
                        backend=backend,
                        reason=reason,
                        retry_after=wait,
                    )
            await self._sleep(wait)

    def observe(self, status_code: int, headers: Mapping[str, str]) -> None:
        """Learn from one response: its rate-limit headers, and a block when it is a 429."""
        info = parse_rate_limit_headers(headers)
        with self._lock:
            now = self._clock()
            if info.limit is not None and info.limit > self.headroom:
                self.api_limit = info.limit
            if info.window is not None and info.window > 0:
                self.window = info.window
            if info.remaining is not None and info.reset is not None:
                # `remaining` counts every client of the token: leave the headroom to the others.
                self._server_left = info.remaining - self.headroom
                self._server_reset_at = now + info.reset
            if status_code == 429:
                seconds = info.retry_after if info.retry_after is not None else self.default_block
                until = now + max(seconds, 0.0)
                if self._blocked_until is None or until > self._blocked_until:
                    if self._blocked_until is None:
                        self.counts["blocks"] += 1
                        logger.warning(
                            "%s: 429 rate limited; no request for %.0fs%s",
                            self.name,
                            seconds,
                            "" if info.retry_after is not None else " (no retry-after; default)",
                        )
                    self._blocked_until = until


def _token_digest(token: SecretStr | str | None, api_base_url: str) -> str:
    # The token is read here only, in a frame that ends at once (never a local of a longer-lived frame).
    raw = token.get_secret_value() if isinstance(token, SecretStr) else (token or "")
    return hashlib.sha256(f"{api_base_url.rstrip('/')}\x00{raw}".encode()).hexdigest()
