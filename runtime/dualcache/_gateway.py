"""Calls to the AI providers, through the AI Gateway or direct.

Pure decisions first (policy -> ``cf-aig-*`` headers, which route to take, whether to retry and how
long to wait), then one thin async client that sends requests and follows those decisions.

Routes. The gateway has two URL shapes, chosen per stack by ``StackOutputs.gateway_api``:

* ``legacy`` (the ``gateway.ai.cloudflare.com`` URLs, AI Gateway's documented universal endpoint):

  * Workers AI: ``{gateway_base_url}/{account}/{gateway}/workers-ai/{model}`` with ``Authorization: Bearer
    <Cloudflare API token>``;
  * OpenAI: ``{gateway_base_url}/{account}/{gateway}/openai/{path}`` with the OpenAI key.

* ``rest`` (the AI REST API on ``api.cloudflare.com``, the gateway named by a ``cf-aig-gateway-id`` header):

  * Workers AI: ``{api_base_url}/accounts/{account}/ai/run/{model}``. Cloudflare documents that this path
    "continues to work" and that Workers AI requests name their gateway with ``cf-aig-gateway-id``; it does
    not say in so many words that the header turns the model-in-path route into a gateway request. Both
    cases are handled: the answer is parsed the same way with or without the envelope, and an answer
    without ``cf-aig-cache-status`` is simply not a gateway hit.
  * OpenAI chat: ``{api_base_url}/accounts/{account}/ai/v1/chat/completions`` with the model named
    ``openai/<model>`` and ``Authorization: Bearer <Cloudflare API token>``: the call is billed through
    Unified Billing (or the gateway's stored provider key); the OpenAI key is not sent there.
  * OpenAI embeddings: the REST API documents ``/ai/v1/embeddings`` for Workers AI models only, so an
    OpenAI embedding keeps the legacy gateway URL (with the OpenAI key) in both shapes.

Direct routes (no gateway): Workers AI ``{api_base_url}/accounts/{account}/ai/run/{model}`` without
``cf-aig-gateway-id``; OpenAI ``{openai_base_url}/{path}`` (``https://api.openai.com/v1``) with the OpenAI key.

Retries have one owner per route (see :func:`plan_gateway_retries`): on the gateway route the gateway
retries upstream failures as the request's ``cf-aig-max-attempts`` / ``cf-aig-retry-delay`` /
``cf-aig-request-timeout`` headers say, and the client sends one attempt; on the direct route the client
retries within :class:`RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import math
import re
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Literal, NamedTuple, assert_never
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
from dualcache._outputs import GATEWAY_APIS, GatewayApi
from dualcache._policy import GatewayMode, Operation, OperationPolicy
from dualcache._pricing import Usage, parse_usage
from dualcache._redact import SecretHeaders, auth_headers, redact_url, scrubbed
from dualcache._transport import Abandoner, BudgetExceeded, run_bounded

__all__ = [
    "DEFAULT_OPENAI_BASE_URL",
    "GATEWAY_MAX_ATTEMPTS",
    "CallRecord",
    "GatewayRetryPlan",
    "Provider",
    "RetryAction",
    "RetryPolicy",
    "Route",
    "UpstreamClient",
    "UpstreamResult",
    "choose_routes",
    "decide_retry",
    "decode_base64_embedding",
    "embedding_request",
    "gateway_headers",
    "normalize_openai_embeddings",
    "parse_json_object",
    "plan_gateway_retries",
    "should_fall_back",
]

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
GATEWAY_MAX_ATTEMPTS = 5
"""Most ``cf-aig-max-attempts`` the gateway takes (request-handling docs: "maximum of 5")."""
_GATEWAY_DELAY_MIN_MS = 100  # the smallest delay the dashboard offers; the header's lower bound is not documented
_GATEWAY_DELAY_MAX_MS = 5_000  # cf-aig-retry-delay: "in milliseconds (max 5000)"
_REST_OPENAI_PATHS = frozenset({"chat/completions"})
"""OpenAI paths the REST API serves for third-party models (``/ai/v1/...``); others keep the legacy URL."""


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
    gateway_id: str | None = None,
    retries: GatewayRetryPlan | None = None,
) -> dict[str, str]:
    """Return the ``cf-aig-*`` headers a gateway request of ``operation`` carries under ``policy``.

    * exactly one explicit cache decision, never the gateway's (or the dashboard's) default: gateway
      ``cache``: ``cf-aig-cache-ttl: <policy ttl>`` (and ``cf-aig-cache-key`` when ``cache_key`` is given);
      gateway ``skip``: ``cf-aig-skip-cache: true``;
    * ``cf-aig-gateway-id`` when ``gateway_id`` is given (the REST shape names its gateway this way);
    * ``cf-aig-max-attempts``, ``cf-aig-retry-delay``, ``cf-aig-backoff`` and ``cf-aig-request-timeout``
      when ``retries`` is given (see :func:`plan_gateway_retries`);
    * ``cf-aig-authorization`` when a gateway token is given;
    * ``cf-aig-metadata`` with the operation, and the user id for user-scoped calls (escaped, hashed
      when long; metadata is not part of the gateway's cache key);
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
    if gateway_id is not None:
        headers["cf-aig-gateway-id"] = gateway_id
    if retries is not None:
        headers |= retries.headers()
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

    With no gateway configured, the direct provider endpoint is the only route.
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
        owner: Who retries on the gateway route. ``"gateway"`` (the default): the request asks the gateway
            for ``max_attempts`` attempts (``cf-aig-max-attempts``, at most 5) and the client sends it once;
            ``"client"``: the request asks the gateway for one attempt and the client retries. Either way
            retries never multiply. The direct route has no gateway: the client retries there.
    """

    max_attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 5.0
    total_timeout: float = 90.0  # room for one full 60 s attempt (the default upstream_timeout) plus retries
    owner: Literal["gateway", "client"] = "gateway"

    def __post_init__(self) -> None:
        if self.owner not in ("gateway", "client"):
            raise ConfigError(f"RetryPolicy.owner={self.owner!r}: must be 'gateway' or 'client'")
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


@dataclass(frozen=True, slots=True)
class GatewayRetryPlan:
    """What one gateway request asks the gateway to do about upstream failures (see :func:`plan_gateway_retries`).

    Attributes:
        max_attempts: ``cf-aig-max-attempts`` (1..5).
        retry_delay_ms: ``cf-aig-retry-delay``, milliseconds (100..5000).
        backoff: ``cf-aig-backoff``; always ``constant``, so the gateway's waits are known exactly (the
            docs name the exponential and linear methods but not their formulas).
        request_timeout_ms: ``cf-aig-request-timeout``, milliseconds: how long one upstream attempt may
            take to its first byte.
        client_attempts: How many attempts the client itself makes on the gateway route.
    """

    max_attempts: int
    retry_delay_ms: int
    backoff: Literal["constant"]
    request_timeout_ms: int
    client_attempts: int

    def headers(self) -> dict[str, str]:
        """The four ``cf-aig-*`` request headers of this plan."""
        return {
            "cf-aig-max-attempts": str(self.max_attempts),
            "cf-aig-retry-delay": str(self.retry_delay_ms),
            "cf-aig-backoff": self.backoff,
            "cf-aig-request-timeout": str(self.request_timeout_ms),
        }

    @property
    def worst_case_upstream_attempts(self) -> int:
        """Most upstream attempts the gateway route of one call can cause.

        ``client_attempts`` times the gateway's attempts. The docs call ``cf-aig-max-attempts`` both a
        number of attempts ("maximum of 5 tries") and of retries ("Retry attempts (max 5)"); read as
        retries, the gateway makes one more attempt than the header says, so this counts that reading.
        """
        return self.client_attempts * (self.max_attempts + 1)


def plan_gateway_retries(retry: RetryPolicy, budget: float) -> GatewayRetryPlan:
    """Derive the gateway's retry headers for a gateway route of ``budget`` seconds, so retries add up.

    With ``retry.owner == "gateway"`` the gateway gets ``min(retry.max_attempts, 5)`` attempts and the client
    makes one; with ``"client"`` the gateway gets one attempt and the client makes ``retry.max_attempts``.
    The gateway waits ``retry_delay_ms`` (``retry.base_delay``, clamped to 100..5000 ms) between attempts,
    constant; the waits are kept to at most half the budget (fewer attempts otherwise). Each attempt may
    take the budget less those waits (``cf-aig-request-timeout``), as a client attempt may take what is
    left of its budget: a slow but healthy answer is not cut, and retries serve fast failures (5xx, 429).

    Worst case of one call (docs/runtime.md, "Retries"): the client waits at most ``budget``
    on the gateway route (it abandons the request then, and falls back to the direct route when the policy
    allows it), then at most the direct route's budget; the upstream sees at most
    :attr:`GatewayRetryPlan.worst_case_upstream_attempts` attempts from the gateway route (a gateway may
    keep retrying after the client gave up: "on the final retry attempt, your gateway will wait until the
    request completes") plus ``retry.max_attempts`` on the direct route.

    Raises:
        ConfigError: ``budget`` is not a positive finite number of seconds.
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"gateway route budget={budget!r}: must be a positive finite number of seconds")
    delay_ms = min(_GATEWAY_DELAY_MAX_MS, max(_GATEWAY_DELAY_MIN_MS, round(retry.base_delay * 1000)))
    attempts = min(retry.max_attempts, GATEWAY_MAX_ATTEMPTS) if retry.owner == "gateway" else 1
    while attempts > 1 and (attempts - 1) * delay_ms > budget * 500:  # waits within half the budget (ms)
        attempts -= 1
    timeout_ms = max(1, math.floor(budget * 1000) - (attempts - 1) * delay_ms)
    return GatewayRetryPlan(
        max_attempts=attempts,
        retry_delay_ms=delay_ms,
        backoff="constant",
        request_timeout_ms=timeout_ms,
        client_attempts=1 if retry.owner == "gateway" else retry.max_attempts,
    )


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


def embedding_request(
    model: str, texts: str | list[str], *, pooling: str = "mean", encoding: str = "base64"
) -> tuple[Provider, str, dict[str, Any]]:
    """Return ``(provider, path, body)`` of an embeddings request of ``texts`` to ``model``.

    A Workers AI model (``@cf/...``) takes ``{"text": ...}`` (``pooling`` only when it is not the bge models'
    default, mean) at the model's path; any other model is OpenAI's ``embeddings`` with ``model``, ``input``
    and ``encoding_format``. ``encoding`` is ``base64`` (what the OpenAI SDK sends by default, a quarter of
    the bytes) or ``float``: the answer is decoded the same either way (:func:`normalize_openai_embeddings`),
    and the KV key never depends on it, while the gateway's cache key does (the upstream body differs).

    Raises:
        ConfigError: ``encoding`` is not ``float`` or ``base64``.
    """
    if encoding not in ("float", "base64"):
        raise ConfigError(f"embedding encoding {encoding!r}: must be 'float' or 'base64'")
    if model.startswith("@cf/"):
        payload: dict[str, Any] = {"text": texts}
        if pooling != "mean":
            payload["pooling"] = pooling
        return Provider.WORKERS_AI, model, payload
    return Provider.OPENAI, "embeddings", {"model": model, "input": texts, "encoding_format": encoding}


def decode_base64_embedding(value: str, *, backend: str = "openai") -> list[float]:
    """Decode one OpenAI ``encoding_format: base64`` embedding: little-endian float32 components.

    Raises:
        BadResponseError: not base64, or not a whole, non-zero number of float32 values.
    """
    bad: BadResponseError | None = None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        bad = BadResponseError(f"{backend} embeddings: an embedding is not valid base64", backend=backend)
    if bad is not None:
        raise bad
    if not raw or len(raw) % 4:
        raise BadResponseError(
            f"{backend} embeddings: a base64 embedding of {len(raw)} bytes is not a whole number of float32 values",
            backend=backend,
        )
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def normalize_openai_embeddings(body: Any, *, backend: str = "openai") -> dict[str, Any]:
    """Return an OpenAI embeddings answer in Workers AI's shape, ``{"shape": [n, d], "data": [[...], ...]}``.

    Items are put in ``index`` order; a base64 item (``encoding_format: base64``) is decoded to floats, a
    float item kept as it is, so both encodings give the same vectors (float32 values either way once stored).

    Raises:
        BadResponseError: no ``data`` list of embedding objects, or an item neither a list nor base64.
    """
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadResponseError(f"{backend} embeddings: no 'data' list of embedding objects", backend=backend)
    ordered = sorted(items, key=lambda i: i.get("index", 0) if isinstance(i.get("index", 0), int) else 0)
    vectors: list[Any] = []
    for item in ordered:
        embedding = item.get("embedding")
        vectors.append(decode_base64_embedding(embedding, backend=backend) if isinstance(embedding, str) else embedding)
    dims = len(vectors[0]) if vectors and isinstance(vectors[0], list) else 0
    return {"shape": [len(vectors), dims], "data": vectors, "model": body.get("model"), "usage": body.get("usage")}


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
        data: The parsed JSON (for Workers AI, the ``result`` of its envelope; for OpenAI embeddings,
            Workers AI's ``{"shape", "data"}`` shape with base64 items decoded, see
            :func:`normalize_openai_embeddings`).
        route: The route that answered.
        cache_status: ``cf-aig-cache-status`` (``HIT``/``MISS``) when the gateway answered, else ``None``.
        log_id: ``cf-aig-log-id`` when present: the gateway log entry of this request (opaque: a ULID on
            older accounts, a UUIDv7 on newer ones), for correlating a result with the gateway's logs.
        headers: Every ``cf-aig-*`` response header (``cf-aig-log-id``, ``cf-aig-request-id``,
            ``cf-aig-cache-status``, ``cf-aig-step`` ...), lower-cased: the gateway's metadata of this answer.
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

    @property
    def usage(self) -> Usage | None:
        """The answer's token usage (prompt, completion, prompt-cache tokens), ``None`` when it reports none."""
        return parse_usage(self.data)


class RouteSpan:
    """What :attr:`UpstreamClient.route_span` enters per route tried (``dualcache._otel`` traces with it).

    Entered with the route, the provider, the model and the request's headers (a hook may add to them: the
    trace context headers of the gateway route); ``answered`` is told the result when the route answers.
    """

    def answered(self, result: UpstreamResult) -> None:
        """Note the route's answer."""


RouteSpanFactory = Callable[[Route, Provider, str, MutableMapping[str, str]], AbstractContextManager[RouteSpan]]


Sleep = Callable[[float], Awaitable[None]]


class _Target(NamedTuple):
    url: str
    headers: SecretHeaders
    payload: Mapping[str, Any]
    gateway_id: str | None  # cf-aig-gateway-id to send (the REST shape), else None


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
        gateway_api: The gateway's URL shape: ``"legacy"`` (``gateway.ai.cloudflare.com``) or ``"rest"``
            (``api.cloudflare.com/.../ai/...`` with ``cf-aig-gateway-id``); see the module docstring.

    Raises:
        ConfigError: ``gateway_api`` is not one of the two shapes.
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
        gateway_api: GatewayApi = "legacy",
    ) -> None:
        if gateway_api not in GATEWAY_APIS:
            raise ConfigError(f"gateway_api={gateway_api!r}: must be one of {', '.join(GATEWAY_APIS)}")
        self.gateway_api: GatewayApi = gateway_api
        self.gateway_id = gateway_id if gateway_base_url and gateway_id and account_id else None
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
        self.route_span: RouteSpanFactory | None = None
        """Entered around each route tried, when set (tracing); ``None``: nothing is done."""

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
                # On the REST shape the gateway route of an OpenAI chat call authenticates with the Cloudflare
                # token; the OpenAI key is then needed only for the direct route and for embeddings.
                rest_ready = self.gateway_api == "rest" and self.gateway_id is not None and self._api_token is not None
                if self._openai_key is None and not rest_ready:
                    raise ConfigError("OpenAI needs an API key: pass openai_api_key=...")
            case _ as unreachable:
                assert_never(unreachable)

    def _usable(self, provider: Provider, route: Route, path: str) -> bool:
        """Whether ``route`` to ``provider`` has the credential it needs (only OpenAI's may be missing)."""
        if provider is not Provider.OPENAI:
            return True
        if route is Route.GATEWAY and self.gateway_api == "rest" and path in _REST_OPENAI_PATHS:
            return self._api_token is not None
        return self._openai_key is not None

    def _target(self, provider: Provider, route: Route, path: str, payload: Mapping[str, Any]) -> _Target:
        # The headers are a SecretHeaders (its repr masks the token) built by auth_headers, whose frame ends
        # here: no frame that awaits the request holds the raw token (see dualcache._redact).
        account = quote(self.account_id or "", safe="")
        rest = route is Route.GATEWAY and self.gateway_api == "rest"
        match provider:
            case Provider.WORKERS_AI:
                auth = auth_headers(self._api_token)
                match route:
                    case Route.GATEWAY if rest:
                        url = f"{self.api_base_url}/accounts/{account}/ai/run/{path}"
                        return _Target(url, auth, payload, self.gateway_id)
                    case Route.GATEWAY:
                        return _Target(f"{self.gateway_url}/workers-ai/{path}", auth, payload, None)
                    case Route.DIRECT:
                        return _Target(f"{self.api_base_url}/accounts/{account}/ai/run/{path}", auth, payload, None)
                    case _ as unreachable:
                        assert_never(unreachable)
            case Provider.OPENAI:
                match route:
                    case Route.GATEWAY if rest and path in _REST_OPENAI_PATHS:
                        # Third-party models are named author/model on the REST API (openai/gpt-4o-mini).
                        model = payload.get("model")
                        if isinstance(model, str) and "/" not in model:
                            payload = {**payload, "model": f"openai/{model}"}
                        url = f"{self.api_base_url}/accounts/{account}/ai/v1/{path}"
                        return _Target(url, auth_headers(self._api_token), payload, self.gateway_id)
                    case Route.GATEWAY:
                        url = f"{self.gateway_url}/openai/{path}"
                        return _Target(url, auth_headers(self._openai_key), payload, None)
                    case Route.DIRECT:
                        return _Target(f"{self.openai_base_url}/{path}", auth_headers(self._openai_key), payload, None)
                    case _ as unreachable:
                        assert_never(unreachable)
            case _ as unreachable:
                assert_never(unreachable)

    def retry_plan(self) -> GatewayRetryPlan:
        """The gateway retry headers of this client's gateway route (its budget: :meth:`route_budget`)."""
        return plan_gateway_retries(self.retry, self.route_budget(Route.GATEWAY))

    def route_budget(self, route: Route) -> float:
        """Seconds one call may spend on ``route``: the tighter of ``retry.total_timeout`` and the layer's budget."""
        layer = self.timeouts.gateway if route is Route.GATEWAY else self.timeouts.provider
        return min(self.retry.total_timeout, layer)

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
        extra_gateway_headers: Mapping[str, str] | None = None,
    ) -> UpstreamResult:
        """POST ``payload`` to ``provider`` at ``path`` (a model id, or an OpenAI path).

        ``extra_gateway_headers`` are added to the gateway route's headers (``cf-aig-custom-cost``).

        Tries the gateway, then the direct endpoint when the gateway is unavailable (or skipped: an open
        breaker, a full pool) and the policy allows it. Retries 429/5xx within :class:`RetryPolicy` and the
        route's budget (:class:`~dualcache.Timeouts`), one owner per route: on the gateway route the request
        carries :func:`plan_gateway_retries`' headers and the client sends it ``client_attempts`` times (once
        when the gateway owns retries); on the direct route the client retries.

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
        routes = choose_routes(
            gateway_configured=self.gateway_url is not None and self._usable(provider, Route.GATEWAY, path),
            direct_configured=self._usable(provider, Route.DIRECT, path),
            policy=policy,
        )
        if not routes:
            raise ConfigError(f"OpenAI {path} needs an API key on the routes of this stack: pass openai_api_key=...")
        last: BackendError | None = None
        for route in routes:
            target = self._target(provider, route, path, payload)
            headers = target.headers
            retry = self.retry
            if route is Route.GATEWAY:
                plan = self.retry_plan()
                headers |= gateway_headers(
                    policy,
                    operation,
                    gateway_token=self._gateway_token,
                    user_id=user_id,
                    cache_key=cache_key,
                    gateway_id=target.gateway_id,
                    retries=plan,
                )
                if plan.client_attempts != retry.max_attempts:
                    retry = dataclasses.replace(retry, max_attempts=plan.client_attempts)
                if extra_gateway_headers:
                    headers |= extra_gateway_headers
            try:
                result = await self._send_traced(
                    provider, route, target.url, headers, target.payload, record, retry, path
                )
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

    async def _send_traced(
        self,
        provider: Provider,
        route: Route,
        url: str,
        headers: SecretHeaders,
        payload: Mapping[str, Any],
        record: CallRecord,
        retry: RetryPolicy,
        path: str,
    ) -> UpstreamResult:
        """:meth:`_send`, inside :attr:`route_span` when one is set (the model: OpenAI's body field, else the
        Workers AI path, which is the model id)."""
        if self.route_span is None:
            return await self._send(provider, route, url, headers, payload, record, retry, path)
        model = payload.get("model")
        with self.route_span(route, provider, model if isinstance(model, str) else path, headers) as span:
            result = await self._send(provider, route, url, headers, payload, record, retry, path)
            span.answered(result)
            return result

    async def _send(
        self,
        provider: Provider,
        route: Route,
        url: str,
        headers: SecretHeaders,
        payload: Mapping[str, Any],
        record: CallRecord,
        retry: RetryPolicy,
        path: str,
    ) -> UpstreamResult:
        backend = f"{provider.value} ({route.value})"
        client = self._clients[route]
        breaker = self.breaker(route, provider)
        route_budget = self.route_budget(route)
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
                    return self._parse(provider, route, backend, response, path)
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
                retry,
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
    def _parse(provider: Provider, route: Route, backend: str, response: httpx.Response, path: str) -> UpstreamResult:
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
            # Workers AI's envelope; through the gateway it may or may not be kept (not documented),
            # so both shapes are accepted.
            if body.get("success") is False:
                raise BadResponseError(f"{backend}: unsuccessful envelope: {body.get('errors')!r}", backend=backend)
            data = body["result"]
        elif provider is Provider.OPENAI and path == "embeddings":
            data = normalize_openai_embeddings(body, backend=backend)
        return UpstreamResult(
            data=data,
            route=route,
            cache_status=response.headers.get("cf-aig-cache-status") if route is Route.GATEWAY else None,
            log_id=response.headers.get("cf-aig-log-id"),
            headers={k.lower(): v for k, v in response.headers.items() if k.lower().startswith("cf-aig-")},
        )
