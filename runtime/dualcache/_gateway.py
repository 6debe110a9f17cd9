"""Calls to the AI providers, through the AI Gateway or direct.

Pure decisions first (policy -> ``cf-aig-*`` headers, which route to take, whether to retry and how
long to wait), then one thin async client that sends requests and follows those decisions.

Routes (cloudflare-facts §2.1):

* Workers AI through the gateway: ``{gateway_base_url}/{account}/{gateway}/workers-ai/{model}``;
  direct: ``{api_base_url}/accounts/{account}/ai/run/{model}``. Both with ``Authorization: Bearer
  <Cloudflare API token>``.
* OpenAI through the gateway: ``{gateway_base_url}/{account}/{gateway}/openai/{path}``; direct:
  ``{openai_base_url}/{path}`` (``https://api.openai.com/v1``). Both with the OpenAI key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, assert_never
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from dualcache._breaker import BreakerPolicy, CircuitBreaker
from dualcache._budgets import Timeouts
from dualcache._exceptions import (
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    ConfigError,
    RateLimitedError,
    SkippedError,
)
from dualcache._keys import escape_part
from dualcache._kv import parse_retry_after, raise_for_status
from dualcache._policy import GatewayMode, Operation, OperationPolicy
from dualcache._redact import SecretHeaders, auth_headers, redact_url, scrubbed
from dualcache._transport import Abandoner, BudgetExceeded, run_bounded

__all__ = [
    "DEFAULT_OPENAI_BASE_URL",
    "CallRecord",
    "Provider",
    "RetryAction",
    "RetryPolicy",
    "Route",
    "UpstreamClient",
    "UpstreamResult",
    "choose_routes",
    "decide_retry",
    "gateway_headers",
    "parse_json_object",
    "should_fall_back",
]

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Provider(StrEnum):
    """An AI provider, named as in gateway URLs."""

    WORKERS_AI = "workers-ai"
    OPENAI = "openai"


class Route(Enum):
    """Which way a request goes."""

    GATEWAY = "gateway"
    DIRECT = "direct"


# ---------------------------------------------------------------------------------------------------
# Pure decisions


def gateway_headers(
    policy: OperationPolicy,
    operation: Operation,
    *,
    gateway_token: SecretStr | None = None,
    user_id: str | None = None,
    cache_key: str | None = None,
) -> dict[str, str]:
    """Return the ``cf-aig-*`` headers a gateway request of ``operation`` carries under ``policy``.

    * gateway ``cache``: ``cf-aig-cache-ttl`` (and ``cf-aig-cache-key`` when ``cache_key`` is given);
      gateway ``skip``: ``cf-aig-skip-cache: true``;
    * ``cf-aig-authorization`` when a gateway token is given;
    * ``cf-aig-metadata`` with the operation, and the user id for user-scoped calls (escaped, hashed
      when long; metadata is not part of the gateway's cache key, cloudflare-facts §0/peers §5);
      and ``request``, the first 16 hex digits of ``cache_key``'s hash when given (in either mode), so the
      gateway logs tell repeats of one request apart;
    * ``cf-aig-collect-log`` when the policy sets it.
    """
    headers: dict[str, str] = SecretHeaders()  # its repr masks cf-aig-authorization
    match policy.gateway:
        case GatewayMode.CACHE:
            headers["cf-aig-cache-ttl"] = str(policy.gateway_ttl)
            if cache_key:
                headers["cf-aig-cache-key"] = cache_key
        case GatewayMode.SKIP:
            headers["cf-aig-skip-cache"] = "true"
        case _ as unreachable:
            assert_never(unreachable)
    if gateway_token is not None and gateway_token.get_secret_value():
        headers |= auth_headers(gateway_token, header="cf-aig-authorization")
    metadata: dict[str, str] = {"operation": operation.value}
    if user_id:
        metadata["user_id"] = escape_part(user_id)
    if cache_key:  # the request's id in the gateway logs (repeat intervals per request); a hash, never content
        metadata["request"] = cache_key.rsplit(":", 1)[-1][:16]
    headers["cf-aig-metadata"] = json.dumps(metadata, separators=(",", ":"))
    if policy.collect_log is not None:
        headers["cf-aig-collect-log"] = "true" if policy.collect_log else "false"
    return headers


def choose_routes(*, gateway_configured: bool, direct_configured: bool, policy: OperationPolicy) -> list[Route]:
    """Return the routes to try, in order: the gateway when configured, then direct when allowed.

    With no gateway configured, the direct provider endpoint is the only route (as the seed does).
    """
    if not gateway_configured:
        return [Route.DIRECT] if direct_configured else []
    if policy.direct_fallback and direct_configured:
        return [Route.GATEWAY, Route.DIRECT]
    return [Route.GATEWAY]


def should_fall_back(error: BackendError) -> bool:
    """Whether a failed gateway call may be retried on the next route.

    Only unavailability (connection failures, timeouts, 5xx after retries) falls back. A 429 does not:
    the gateway's rate limit is a limit the operator set, and going around it would defeat it. A 401/403
    is a credentials problem, and a malformed answer would not be fixed by another route.
    """
    return isinstance(error, BackendUnavailableError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds of the retries on 429/5xx and transport errors.

    Attributes:
        max_attempts: Attempts per route, the first one included (>= 1).
        base_delay: First backoff in seconds; doubled after each attempt.
        max_delay: Cap of one backoff, and of a ``Retry-After`` we are willing to honour.
        total_timeout: Seconds all attempts on one route may take, waits included: each attempt's timeout
            is cut to what is left, so one route never takes much longer than this (a call that falls
            back from the gateway to the direct route may take twice this).
    """

    max_attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 5.0
    total_timeout: float = 90.0  # room for one full 60 s attempt (the default upstream_timeout) plus retries

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts={self.max_attempts!r}: must be an integer >= 1")
        for name, value, allow_zero in (
            ("base_delay", self.base_delay, True),
            ("max_delay", self.max_delay, True),
            ("total_timeout", self.total_timeout, False),
        ):
            # NaN compares false with everything, so a plain `< 0` lets it through (and then a wait never ends).
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and not allow_zero)
            ):
                bound = ">= 0" if allow_zero else "> 0"
                raise ConfigError(f"RetryPolicy.{name}={value!r}: must be a finite number of seconds {bound}")


class RetryAction(Enum):
    """What to do after one attempt."""

    DONE = "done"
    """Success, or an error no retry can fix: return or raise now."""
    RETRY = "retry"
    """Wait the given delay, then try again."""
    GIVE_UP = "give_up"
    """Retryable, but attempts or time are exhausted (or the server asks for a longer wait)."""


def decide_retry(
    policy: RetryPolicy, *, attempt: int, status: int | None, retry_after: float | None, elapsed: float
) -> tuple[RetryAction, float]:
    """Decide what follows attempt number ``attempt`` (1-based).

    Args:
        policy: The bounds.
        attempt: How many attempts were made so far.
        status: The HTTP status, or ``None`` for a transport error or timeout.
        retry_after: Seconds asked by a ``Retry-After`` header, if any.
        elapsed: Seconds spent on this route so far.

    Returns:
        The action and, for :attr:`RetryAction.RETRY`, the delay in seconds.
    """
    if status is not None and status not in _RETRY_STATUSES:
        return RetryAction.DONE, 0.0
    if attempt >= policy.max_attempts:
        return RetryAction.GIVE_UP, 0.0
    if retry_after is not None:
        if retry_after > policy.max_delay:
            return RetryAction.GIVE_UP, 0.0
        delay = retry_after
    else:
        delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    if elapsed + delay >= policy.total_timeout:
        return RetryAction.GIVE_UP, 0.0
    return RetryAction.RETRY, delay


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json_object(value: Any, *, backend: str) -> dict[str, Any]:
    """Return the JSON object a model answered: a dict as is, or text holding one (code fences allowed).

    Raises:
        BadResponseError: no JSON object in the answer.
    """
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        text = value.strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1)
        candidates = [text]
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
        for candidate in candidates:
            try:
                data = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    raise BadResponseError(f"{backend}: the model's answer is not a JSON object: {str(value)[:120]!r}", backend=backend)


# ---------------------------------------------------------------------------------------------------
# I/O


@dataclass(slots=True)
class CallRecord:
    """What one logical call did, filled in as it goes (also when it fails).

    Attributes:
        attempts: HTTP requests sent.
        faults: Failures met (failed attempts, a gateway given up for the direct route).
        skipped: Layers (``gateway``, ``provider``) a request was not sent to: an open circuit breaker,
            or no place at the layer's pool within the budget.
    """

    attempts: int = 0
    faults: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """An upstream answer.

    Attributes:
        data: The parsed JSON (for Workers AI, the ``result`` of its envelope).
        route: The route that answered.
        cache_status: ``cf-aig-cache-status`` (``HIT``/``MISS``) when the gateway answered, else ``None``.
        log_id: ``cf-aig-log-id`` when present.
    """

    data: Any
    route: Route
    cache_status: str | None = None
    log_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def gateway_hit(self) -> bool:
        """Whether the gateway served this from its cache."""
        return self.route is Route.GATEWAY and (self.cache_status or "").upper() == "HIT"


Sleep = Callable[[float], Awaitable[None]]


class UpstreamClient:
    """Sends provider requests on the routes the pure decisions pick, with bounded retries.

    Args:
        client: The ``httpx.AsyncClient`` of both routes unless one is given for a route (owned by the
            caller).
        account_id: Cloudflare account id, or ``None`` when Workers AI is not configured.
        api_base_url: Cloudflare API base (direct Workers AI).
        gateway_base_url: AI Gateway base, or ``None`` for no gateway.
        gateway_id: The gateway id, or ``None`` for no gateway.
        api_token: Cloudflare API token (Workers AI).
        gateway_token: Token for ``cf-aig-authorization`` on an authenticated gateway.
        openai_api_key: OpenAI key.
        openai_base_url: Direct OpenAI base.
        retry: Retry bounds.
        timeout: Seconds one HTTP request may take (also cut to what is left of the route's budget).
        sleep: Awaitable sleep (injected by tests to record the waits).
        monotonic: Monotonic clock for the retry budget and the circuit breakers.
        gateway_client: The gateway pool's client (default ``client``).
        provider_client: The direct routes' pool client (default ``client``).
        timeouts: Budgets: ``gateway`` bounds the gateway route of one call, ``provider`` the direct route
            (retries included; the tighter of these and ``retry.total_timeout`` wins).
        breaker: Circuit-breaker policy of the gateway and of each provider's direct route.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        account_id: str | None,
        api_base_url: str,
        gateway_base_url: str | None,
        gateway_id: str | None,
        api_token: SecretStr | None,
        gateway_token: SecretStr | None,
        openai_api_key: SecretStr | None,
        openai_base_url: str = DEFAULT_OPENAI_BASE_URL,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        sleep: Sleep | None = None,
        monotonic: Callable[[], float] | None = None,
        gateway_client: httpx.AsyncClient | None = None,
        provider_client: httpx.AsyncClient | None = None,
        timeouts: Timeouts | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        self._client = client
        self._clients = {Route.GATEWAY: gateway_client or client, Route.DIRECT: provider_client or client}
        self.timeouts = timeouts or Timeouts()
        self._abandoner = Abandoner(self.timeouts.grace)
        self.account_id = account_id
        self.api_base_url = api_base_url.rstrip("/")
        self.gateway_url = (
            f"{gateway_base_url.rstrip('/')}/{quote(account_id, safe='')}/{quote(gateway_id, safe='')}"
            if gateway_base_url and gateway_id and account_id
            else None
        )
        self._api_token = api_token
        self._gateway_token = gateway_token
        self._openai_key = openai_api_key
        self.openai_base_url = openai_base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._sleep: Sleep = sleep or asyncio.sleep
        self._monotonic = monotonic or time.monotonic
        self._breaker_policy = breaker or BreakerPolicy()
        self._breakers: dict[tuple[Route, Provider], CircuitBreaker] = {}

    def breaker(self, route: Route, provider: Provider) -> CircuitBreaker:
        """The circuit breaker of one route to one provider (``workers-ai (gateway)``, ``openai (direct)``...).

        The gateway's breakers are per provider too: the gateway passes a provider's 5xx through, so a
        failing Workers AI must not stop OpenAI calls through the same gateway (job analysis falls back to
        OpenAI exactly then).
        """
        key = (route, provider)
        found = self._breakers.get(key)
        if found is None:
            name = f"{provider.value} ({route.value})"
            found = self._breakers[key] = CircuitBreaker(name, self._breaker_policy, clock=self._monotonic)
        return found

    async def aclose(self) -> None:
        """Cancel abandoned requests still running (the caller closes the clients)."""
        await self._abandoner.aclose()

    def __repr__(self) -> str:
        gateway = redact_url(self.gateway_url) if self.gateway_url else None
        return f"UpstreamClient(gateway={gateway!r}, api_base_url={redact_url(self.api_base_url)!r})"

    @property
    def gateway_token(self) -> SecretStr | None:
        """The gateway token (for building headers)."""
        return self._gateway_token

    def check_configured(self, provider: Provider) -> None:
        """Raise before any I/O when ``provider`` cannot be reached with what was configured.

        Raises:
            ConfigError: the message says which argument is missing.
        """
        match provider:
            case Provider.WORKERS_AI:
                if self.account_id is None:
                    raise ConfigError(
                        "Workers AI needs a Cloudflare account: pass outputs (StackOutputs) or account_id=..."
                    )
                if self._api_token is None:
                    raise ConfigError("Workers AI needs a Cloudflare API token: pass api_token=...")
            case Provider.OPENAI:
                if self._openai_key is None:
                    raise ConfigError("OpenAI needs an API key: pass openai_api_key=...")
            case _ as unreachable:
                assert_never(unreachable)

    def _target(self, provider: Provider, route: Route, path: str) -> tuple[str, SecretHeaders]:
        # The headers are a SecretHeaders (its repr masks the token) built by auth_headers, whose frame ends
        # here: no frame that awaits the request holds the raw token (see dualcache._redact).
        match provider:
            case Provider.WORKERS_AI:
                auth = auth_headers(self._api_token)
                match route:
                    case Route.GATEWAY:
                        return f"{self.gateway_url}/workers-ai/{path}", auth
                    case Route.DIRECT:
                        return (
                            f"{self.api_base_url}/accounts/{quote(self.account_id or '', safe='')}/ai/run/{path}",
                            auth,
                        )
                    case _ as unreachable:
                        assert_never(unreachable)
            case Provider.OPENAI:
                auth = auth_headers(self._openai_key)
                match route:
                    case Route.GATEWAY:
                        return f"{self.gateway_url}/openai/{path}", auth
                    case Route.DIRECT:
                        return f"{self.openai_base_url}/{path}", auth
                    case _ as unreachable:
                        assert_never(unreachable)
            case _ as unreachable:
                assert_never(unreachable)

    async def call(
        self,
        provider: Provider,
        path: str,
        payload: Mapping[str, Any],
        *,
        operation: Operation,
        policy: OperationPolicy,
        record: CallRecord,
        user_id: str | None = None,
        cache_key: str | None = None,
        check: Callable[[UpstreamResult], object] | None = None,
    ) -> UpstreamResult:
        """POST ``payload`` to ``provider`` at ``path`` (a model id, or an OpenAI path).

        Tries the gateway, then the direct endpoint when the gateway is unavailable (or skipped: an open
        breaker, a full pool) and the policy allows it; retries 429/5xx within :class:`RetryPolicy` and
        the route's budget (:class:`~dualcache.Timeouts`) on each route.

        ``check`` validates an answer (see ``dualcache._answers``); a bad one (a
        :class:`~dualcache.BadResponseError`) is counted in ``record.faults`` and, from the gateway, tried once
        on the direct route when the policy allows it (the gateway may have cached it: asking it again would
        give the same answer); else it is raised.

        Raises:
            ConfigError: the provider is not configured.
            SkippedError: the last route was not tried (``reason`` says why).
            BackendError: every route failed (the last error).
        """
        self.check_configured(provider)
        routes = choose_routes(gateway_configured=self.gateway_url is not None, direct_configured=True, policy=policy)
        last: BackendError | None = None
        for route in routes:
            url, headers = self._target(provider, route, path)
            if route is Route.GATEWAY:
                headers |= gateway_headers(
                    policy, operation, gateway_token=self._gateway_token, user_id=user_id, cache_key=cache_key
                )
            try:
                result = await self._send(provider, route, url, headers, payload, record)
            except SkippedError as exc:
                last = exc
                record.skipped.append("gateway" if route is Route.GATEWAY else "provider")
                if route is Route.GATEWAY and len(routes) > 1:
                    logger.debug("%s via gateway skipped for %s (%s); trying direct", provider, operation, exc.reason)
                    continue
                raise
            except BackendError as exc:
                last = exc
                if route is Route.GATEWAY and should_fall_back(exc) and len(routes) > 1:
                    logger.warning("%s via gateway failed for %s (%s); trying direct", provider, operation, exc)
                    continue
                raise
            if check is None:
                return result
            try:
                check(result)
            except BadResponseError as exc:
                record.faults += 1
                last = exc
                if route is Route.GATEWAY and len(routes) > 1:
                    logger.warning("%s via gateway: bad answer for %s (%s); trying direct", provider, operation, exc)
                    continue
                raise
            return result
        assert last is not None  # routes is never empty: direct is always configured once checked
        raise last

    async def _send(
        self,
        provider: Provider,
        route: Route,
        url: str,
        headers: SecretHeaders,
        payload: Mapping[str, Any],
        record: CallRecord,
    ) -> UpstreamResult:
        backend = f"{provider.value} ({route.value})"
        client = self._clients[route]
        breaker = self.breaker(route, provider)
        route_budget = min(
            self.retry.total_timeout, self.timeouts.gateway if route is Route.GATEWAY else self.timeouts.provider
        )
        started = self._monotonic()
        attempt = 0
        previous: BackendError | None = None
        while True:
            attempt += 1
            # Each attempt gets what is left of the route's budget, so a slow upstream cannot stretch a call
            # past it (decide_retry only bounds the waits between attempts).
            budget = min(self.timeout, route_budget - (self._monotonic() - started))
            if budget <= 0 and previous is not None:
                raise previous  # the wait overran the budget (decide_retry leaves room, a late wake-up may not)
            budget = max(budget, 0.001)
            if not breaker.allow():
                raise SkippedError(
                    f"{backend}: circuit open, not sent",
                    backend=backend,
                    reason="circuit_open",
                    retry_after=breaker.retry_after(),
                ) from previous
            record.attempts += 1
            response: httpx.Response | None = None
            error: BackendError
            not_sent: SkippedError | None = None
            # Foreign exceptions are mapped here with a scrubbed copy as the cause (no request, no traceback:
            # see dualcache._redact), and raised only after the except block, so no __context__ holds the
            # original httpx exception and its request headers either.
            try:
                # httpx's per-phase timeouts end the request itself; run_bounded also bounds the whole attempt
                # for transports that ignore them (httpx.MockTransport) by abandoning it, never cancelling a
                # request the pool may hold.
                response = await run_bounded(
                    client.post(url, json=payload, headers=headers, timeout=self.timeouts.attempt(budget)),
                    budget,
                    self._abandoner,
                )
            except httpx.PoolTimeout as exc:  # our gate's AdmissionTimeout, or httpx's own: nothing was sent
                breaker.release()
                record.attempts -= 1  # nothing was sent
                not_sent = SkippedError(
                    f"{backend}: no free connection within {budget:.3g}s, not sent", backend=backend, reason="admission"
                )
                not_sent.__cause__ = scrubbed(exc)
            except (httpx.TimeoutException, BudgetExceeded) as exc:
                error = BackendUnavailableError(f"{backend}: timed out after {budget:.3g}s", backend=backend)
                error.__cause__ = scrubbed(exc)
            except httpx.HTTPError as exc:
                error = BackendUnavailableError(f"{backend}: {type(exc).__name__}: {scrubbed(exc)}", backend=backend)
                error.__cause__ = scrubbed(exc)
            if not_sent is not None:
                raise not_sent
            if response is not None:
                if response.status_code < 400:
                    breaker.success()
                    return self._parse(provider, route, backend, response)
                try:
                    raise_for_status(response, backend=backend, what="request")
                except BackendError as exc:
                    error = exc
            if isinstance(error, BackendUnavailableError):
                breaker.failure()
            elif isinstance(error, RateLimitedError):
                breaker.release()  # a limit, not an outage: no verdict on the target's health
            else:
                breaker.success()  # it answered (a 4xx): the target is up
            status = response.status_code if response is not None else None
            retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
            action, delay = decide_retry(
                self.retry,
                attempt=attempt,
                status=status,
                retry_after=retry_after,
                elapsed=self._monotonic() - started,
            )
            record.faults += 1
            match action:
                case RetryAction.DONE | RetryAction.GIVE_UP:
                    raise error
                case RetryAction.RETRY:
                    if self._monotonic() - started + delay >= route_budget:
                        raise error
                    logger.info("%s: attempt %d failed (%s); retrying in %.2fs", backend, attempt, status, delay)
                    previous = error
                    await self._sleep(delay)
                case _ as unreachable:
                    assert_never(unreachable)

    @staticmethod
    def _parse(provider: Provider, route: Route, backend: str, response: httpx.Response) -> UpstreamResult:
        bad: BadResponseError | None = None
        try:
            body = response.json()
        except ValueError as exc:
            bad = BadResponseError(f"{backend}: response is not JSON", backend=backend)
            bad.__cause__ = scrubbed(exc)
        if bad is not None:
            raise bad  # outside the except block: no __context__ with the response's frames
        data = body
        if provider is Provider.WORKERS_AI and isinstance(body, dict) and "result" in body:
            # Workers AI's envelope; through the gateway it may or may not be kept (cloudflare-facts §6),
            # so both shapes are accepted.
            if body.get("success") is False:
                raise BadResponseError(f"{backend}: unsuccessful envelope: {body.get('errors')!r}", backend=backend)
            data = body["result"]
        return UpstreamResult(
            data=data,
            route=route,
            cache_status=response.headers.get("cf-aig-cache-status") if route is Route.GATEWAY else None,
            log_id=response.headers.get("cf-aig-log-id"),
        )
