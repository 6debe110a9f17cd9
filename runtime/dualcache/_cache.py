"""``DualCache``: the runtime object services use — KV first, AI Gateway second, the provider last.

The class is composed of three layers, one module each: the generic caching engine
(``dualcache._engine.CacheEngine``: KV reads and the hit path, the gateway and provider layers,
single-flight, write-behind, stats, invalidation) and the operations built on it
(``dualcache._embed_ops.EmbedOperations``: ``embed``, ``embed_many``; ``dualcache._json_ops.JsonOperations``:
``run`` and the built-in chat operations). This module builds the state they share (the constructor),
owns the lifecycle, and holds what spans every operation: record keys, user prefixes and ``forget``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import SecretStr

from dualcache._answers import AnswerSchemas
from dualcache._breaker import BreakerPolicy
from dualcache._budget import RequestBudget
from dualcache._budgets import PoolLimits, Timeouts
from dualcache._embed_ops import EmbedOperations
from dualcache._engine import _check_id, _check_text
from dualcache._exceptions import ConfigError, InvalidInputError
from dualcache._gateway import DEFAULT_OPENAI_BASE_URL, RetryPolicy, Sleep, UpstreamClient, UpstreamResult
from dualcache._json_ops import JsonOperations
from dualcache._keys import record_key, user_prefix
from dualcache._kv import Clock, KVBackend, KVStore
from dualcache._limits import DataPlaneRateLimiter, UserLimiter, UserLimits
from dualcache._otel import resolve_telemetry
from dualcache._outputs import DEFAULT_API_BASE_URL, OUTPUTS_ENV_VAR, StackOutputs
from dualcache._policy import Namespace, Operation, Policies, Scope
from dualcache._pricing import Prices
from dualcache._records import DEFAULT_DECODE_MEMO_BYTES, EMBED_INPUT_MAX_CHARS
from dualcache._singleflight import SharedReads, SingleFlight
from dualcache._stats import PriceTable, Stats
from dualcache._transport import build_client
from dualcache._writebehind import WriteBehind, WriteBehindPolicy

__all__ = ["DATA_PLANE_TOKEN_ENV_VAR", "DEFAULT_DATA_DIR", "DualCache", "KVBackendFactory", "Models"]

logger = logging.getLogger(__name__)

KVBackendFactory = Callable[[Namespace], KVBackend]
"""Builds the backend of one namespace (called once per namespace, on first use)."""

DATA_PLANE_TOKEN_ENV_VAR = "DUALCACHE_DATA_PLANE_TOKEN"
"""Environment variable holding the data-plane token read by :meth:`DualCache.from_env`."""

DEFAULT_DATA_DIR = Path(".dualcache")
"""Where the SQLite KV file lives when neither outputs nor a KV backend are given."""

_POOLINGS = ("mean", "cls")


@dataclass(frozen=True, slots=True)
class Models:
    """The model each operation uses (the existing Worker's choices by default), and how embeddings are computed.

    The embedding key covers everything that changes a vector: ``embeddings`` (and so its dimension),
    ``embedding_pooling``, ``embedding_max_chars`` and the policy's ``version``. A change of any of them
    is a miss (a new key), never a vector of another shape; the old records expire by their TTL. The
    default configuration (no version) keeps the default (unversioned) keys, ``embed:{sha256(text)}``.

    Attributes:
        embedding_pooling: Workers AI's ``pooling`` for the bge models: ``"mean"`` (their default, not
            sent) or ``"cls"`` (sent; its vectors are not compatible with mean ones).
        embedding_max_chars: The text sent to the model is cut to this many characters (default 2,000);
            the key hashes the full text.
        embedding_encoding: For an OpenAI embeddings model (any ``embeddings`` not starting with ``@cf/``):
            the ``encoding_format`` asked, ``"base64"`` (the OpenAI SDK's default) or ``"float"``. Not part
            of the KV key (both decode to the same vectors), part of the gateway's (the bodies differ).

    Raises:
        ConfigError: a pooling other than mean or cls, a ``embedding_max_chars`` < 1, or an empty model.
    """

    embeddings: str = "@cf/baai/bge-base-en-v1.5"
    job_analysis: str = "@cf/meta/llama-3.1-8b-instruct"
    job_analysis_fallback: str = "gpt-4o-mini"
    spam_detection: str = "@cf/meta/llama-3.1-8b-instruct"
    application_generation: str = "gpt-4o-mini"
    resume_parsing_text: str = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    resume_parsing_image: str = "gpt-4o"
    embedding_pooling: str = "mean"
    embedding_max_chars: int = EMBED_INPUT_MAX_CHARS
    embedding_encoding: str = "base64"

    def __post_init__(self) -> None:
        if self.embedding_encoding not in ("base64", "float"):
            raise ConfigError(f"Models.embedding_encoding={self.embedding_encoding!r}: must be 'base64' or 'float'")
        for name in (
            "embeddings",
            "job_analysis",
            "job_analysis_fallback",
            "spam_detection",
            "application_generation",
            "resume_parsing_text",
            "resume_parsing_image",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"Models.{name}={value!r}: must be a non-empty model name")
        if self.embedding_pooling not in _POOLINGS:
            raise ConfigError(f"Models.embedding_pooling={self.embedding_pooling!r}: must be 'mean' or 'cls'")
        n = self.embedding_max_chars
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"Models.embedding_max_chars={n!r}: must be an integer >= 1")


def _secret(value: str | SecretStr | None, name: str) -> SecretStr | None:
    if value is None or isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str or SecretStr, got {type(value).__name__}")
    return SecretStr(value) if value else None


def _check_user_limits(
    user_limits: Mapping[str, UserLimits | Mapping[str, Any]] | None, policies: Policies, stats: Stats
) -> dict[str, UserLimits]:
    """The per-user limits by operation name, each checked against the policies and the prices."""
    if user_limits is None:
        return {}
    if not isinstance(user_limits, Mapping):
        raise ConfigError(f"user_limits must map operation names to UserLimits, got {type(user_limits).__name__}")
    checked: dict[str, UserLimits] = {}
    for name, limits in user_limits.items():
        try:
            op = Operation.parse(name)
            policy = policies.for_operation(op)
        except InvalidInputError as exc:
            raise ConfigError(f"user_limits[{name!r}]: {exc}") from None
        if isinstance(limits, Mapping):
            try:
                limits = UserLimits(**limits)
            except TypeError as exc:
                raise ConfigError(
                    f"user_limits[{name!r}]: {exc}; fields: requests, per, dollars, dollars_per"
                ) from None
        if not isinstance(limits, UserLimits):
            raise ConfigError(f"user_limits[{name!r}] must be a UserLimits, got {type(limits).__name__}")
        if op is Operation.SPAM_DETECTION or (not op.builtin and policy.scope is Scope.GLOBAL):
            raise ConfigError(
                f"user_limits[{name!r}]: calls of {op.value!r} never carry a user id (scope 'global'), so a "
                "per-user limit would count nothing; limit a user-scoped operation"
            )
        if limits.dollars is not None and stats.prices.price(op) is None:
            raise ConfigError(
                f"user_limits[{name!r}].dollars={limits.dollars!r}: {op.value!r} has no price in the PriceTable, "
                f"so its spend cannot be counted; pass prices=PriceTable({op.value}=...) or drop dollars"
            )
        checked[op.value] = limits
    return checked


class DualCache(EmbedOperations, JsonOperations):
    """Dual-layer caching of AI calls: Workers KV, then the AI Gateway, then the provider.

    One instance per process (or per event loop); it owns one ``httpx.AsyncClient`` per layer (KV, the
    gateway, the direct providers), each with its own sized pool, an admission gate and time budgets
    (:class:`~dualcache.Timeouts`, :class:`~dualcache.PoolLimits`), and a circuit breaker per target
    (:class:`~dualcache.BreakerPolicy`). Close it with :meth:`aclose` or ``async with``. All collaborators
    can be injected; defaults are built only for arguments left ``None``.

    A hit reads KV and returns (no task, no single-flight). A miss is computed once for all identical
    concurrent callers, in a task detached from each of them: a cancelled caller only stops waiting,
    and the computation goes on for the others; it is cancelled when every caller waiting on it has
    been cancelled. New records are written behind the call (see ``write_behind``): a record's TTL
    counts from when it lands, and until then a miss on its key is served from the queue.

    Model answers are checked before they are returned or cached (``dualcache._answers``): vectors for the
    model's dimension and finite numbers, JSON answers against ``answer_schemas`` (an
    :class:`~dualcache.AnswerSchemas`: the built-in operations' schemas; register a custom operation's
    there). A bad answer is never cached; stored records failing the same checks are misses.

    Args:
        outputs: The stack's outputs. With them, KV is the stack's data-plane Worker (when the outputs
            carry a ``data_plane_url`` and ``data_plane_token`` is given) or else the Cloudflare REST API,
            and AI calls go through the stack's AI Gateway. Without them, KV is a SQLite file under
            ``data_dir`` and AI calls go to the direct provider endpoints (Workers AI needs ``account_id``).
        api_token: Cloudflare API token (KV over REST, and Workers AI).
        gateway_token: Token sent as ``cf-aig-authorization`` (authenticated gateways).
        openai_api_key: OpenAI key (generation, image resumes, the job-analysis fallback).
        data_plane_token: The data-plane Worker's token (its ``DUALCACHE_TOKEN`` secret). With it and a
            ``data_plane_url`` in the outputs, every namespace goes through the data plane: no Cloudflare
            API request on the cache path. A wrong token is a counted KV error (a miss), never an outage.
        rest_budget: Request budget of KV over the REST API; the process-wide one of ``api_token`` when
            ``None`` (see :class:`~dualcache.RequestBudget`). Never used for the data plane.
        account_id: Cloudflare account id when no outputs are given.
        api_base_url: Cloudflare API base when no outputs are given.
        policies: Cache policies; default: those of ``outputs``, else the built-in defaults.
        kv: Builds the KV backend of a namespace; default: the data plane or Cloudflare REST with outputs
            (see ``outputs``), else SQLite.
        transport: httpx transport for every HTTP request (tests pass ``httpx.MockTransport``); each
            layer still gets its own admission gate in front of it.
        clock: Unix-time clock (record timestamps, default KV backends' expiry).
        data_dir: Folder of the SQLite KV file (default ``.dualcache``).
        prices: Price table for cost and saved; default: the per-request estimates of ``PriceTable()``.
        retry: Retry bounds for provider calls.
        kv_timeout: Seconds a KV read may take before it counts as a miss; overrides
            ``timeouts.kv_read`` (default 1 s) when given.
        upstream_timeout: Seconds one provider request may take (also capped by what is left of the
            route's budget, ``timeouts.gateway`` or ``timeouts.provider``, and ``retry.total_timeout``).
        single_flight: Whether identical concurrent requests share one computation.
        models: Model of each operation.
        openai_base_url: Direct OpenAI base (used without a gateway, or as the direct fallback).
        sleep: Awaitable sleep used between retries (tests record the waits).
        decode_memo_bytes: Memory budget of the decode memo, in bytes (default 64 MiB, about 2,300
            768-d records; 0 turns it off). The memo keeps decoded embedding records keyed by their
            exact stored bytes: a hit on unchanged bytes skips decoding, and it never serves anything
            KV did not return. Least recently used records leave first. The same budget bounds the JSON
            memo beside it: the stored bytes of job analyses, spam verdicts and other JSON answers that
            passed their answer schema, so a hit on unchanged bytes under the same schema is not checked
            again (each caller still gets its own decoded copy).
        decode_memo_size: An optional cap on the number of entries of each memo on top of the byte budget
            (``None``: bytes only; 0 turns both memos off).
        write_behind: How the cache's own KV writes (new records of embeddings, analyses, spam verdicts)
            are made: ``True`` (default) queues them for background bulk writes with the default
            :class:`WriteBehindPolicy`, so no caller waits for a write; a policy sets the queue's bounds;
            ``False`` writes synchronously, before the call returns (the :meth:`kv` stores are always
            synchronous).
        timeouts: The time budget of each layer (defaults tabled in :class:`~dualcache.Timeouts`).
        limits: Pool and admission sizes of each layer.
        breaker: When the circuit breakers (one per KV namespace, the gateway, each provider) open.
        monotonic: Monotonic clock of the breakers and retry budgets (tests pass a fake one), and of the
            default ``user_limiter``.
        user_limits: Per-user limits and budgets by operation name, e.g. ``{"job_analysis":
            UserLimits(requests=20, per=60, dollars=1.0)}`` (a mapping of ``UserLimits`` fields works too).
            Every call with a user id counts, cached answers included; one over a limit raises
            :class:`~dualcache.UserLimitExceededError` before any I/O. See :class:`~dualcache.UserLimits`.
        user_limiter: Where those limits are counted: a :class:`~dualcache.UserLimiter` (per-process
            counters, bounded memory; the default, on ``monotonic``). A limit with ``binding=`` counts its
            requests in the data plane's rate limiting binding instead (it needs the data plane), falling
            back to this counter when the data plane cannot be reached (``limit_fallbacks``).
        token_prices: Per-token prices per model or operation (:class:`~dualcache.Prices`): the cost of a call
            whose answer reports its usage, the prompt cache's saving, and ``cf-aig-custom-cost`` on gateway
            requests. Calls it does not price (or answers without usage) keep the ``prices`` per request.
        tracing: OpenTelemetry spans (the ``otel`` extra): ``None`` (default) traces when a tracer provider was
            given or set globally before this cache was built; ``False`` never; ``True`` always (the global
            provider; an ``ImportError`` naming the extra without it).
        tracer_provider: The OpenTelemetry ``TracerProvider`` to trace with (default: the global one).
        on_upstream: Called with ``(operation, result)`` after every answered provider call (an
            :class:`~dualcache.UpstreamResult`: route, ``cache_status``, ``log_id`` = ``cf-aig-log-id``, the
            ``cf-aig-*`` headers), to correlate answers with the gateway's logs; an exception it raises is
            logged, never passed to the caller.
    """

    def __init__(
        self,
        outputs: StackOutputs | None = None,
        *,
        api_token: str | SecretStr | None = None,
        gateway_token: str | SecretStr | None = None,
        openai_api_key: str | SecretStr | None = None,
        data_plane_token: str | SecretStr | None = None,
        rest_budget: RequestBudget | None = None,
        account_id: str | None = None,
        api_base_url: str = DEFAULT_API_BASE_URL,
        policies: Policies | None = None,
        kv: KVBackendFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        prices: PriceTable | None = None,
        retry: RetryPolicy | None = None,
        kv_timeout: float | None = None,
        upstream_timeout: float = 60.0,
        single_flight: bool = True,
        models: Models | None = None,
        openai_base_url: str = DEFAULT_OPENAI_BASE_URL,
        sleep: Sleep | None = None,
        decode_memo_bytes: int = DEFAULT_DECODE_MEMO_BYTES,
        decode_memo_size: int | None = None,
        write_behind: WriteBehindPolicy | bool = True,
        timeouts: Timeouts | None = None,
        limits: PoolLimits | None = None,
        breaker: BreakerPolicy | None = None,
        monotonic: Callable[[], float] | None = None,
        user_limits: Mapping[str, UserLimits | Mapping[str, Any]] | None = None,
        user_limiter: UserLimiter | None = None,
        token_prices: Prices | None = None,
        tracing: bool | None = None,
        tracer_provider: Any = None,
        on_upstream: Callable[[Operation, UpstreamResult], object] | None = None,
    ) -> None:
        if on_upstream is not None and not callable(on_upstream):
            raise ConfigError(f"on_upstream must be callable, got {type(on_upstream).__name__}")
        self._on_upstream = on_upstream
        if outputs is not None and not isinstance(outputs, StackOutputs):
            raise ConfigError(f"outputs must be a StackOutputs, got {type(outputs).__name__}")
        for name, value in (("timeouts", timeouts), ("limits", limits), ("breaker", breaker)):
            expected = {"timeouts": Timeouts, "limits": PoolLimits, "breaker": BreakerPolicy}[name]
            if value is not None and not isinstance(value, expected):
                raise ConfigError(f"{name} must be a {expected.__name__}, got {type(value).__name__}")
        self.timeouts = timeouts or Timeouts()
        if kv_timeout is not None:
            self.timeouts = dataclasses.replace(self.timeouts, kv_read=kv_timeout)  # validated there
        if (
            isinstance(upstream_timeout, bool)
            or not isinstance(upstream_timeout, int | float)
            or not 0 < upstream_timeout < math.inf
        ):
            raise ConfigError(f"upstream_timeout={upstream_timeout!r}: must be a finite positive number of seconds")
        self.limits = limits or PoolLimits()
        self._breaker_policy = breaker or BreakerPolicy()
        self._monotonic = monotonic or time.monotonic
        if isinstance(decode_memo_bytes, bool) or not isinstance(decode_memo_bytes, int) or decode_memo_bytes < 0:
            raise ConfigError(
                f"decode_memo_bytes={decode_memo_bytes!r}: must be an integer >= 0 (0 turns the memo off)"
            )
        if decode_memo_size is not None and (
            isinstance(decode_memo_size, bool) or not isinstance(decode_memo_size, int) or decode_memo_size < 0
        ):
            raise ConfigError(f"decode_memo_size={decode_memo_size!r}: must be None or an integer >= 0")
        self.outputs = outputs
        self.policies = policies or (outputs.policies if outputs else Policies())
        self.models = models or Models()
        self.stats = Stats(prices, self.policies)
        self._user_limits = _check_user_limits(user_limits, self.policies, self.stats)
        if user_limiter is not None and not isinstance(user_limiter, UserLimiter):
            raise ConfigError(f"user_limiter must be a UserLimiter, got {type(user_limiter).__name__}")
        self._user_limiter = user_limiter or UserLimiter(clock=self._monotonic)
        self._rate_limiter: DataPlaneRateLimiter | None = None
        if token_prices is not None and not isinstance(token_prices, Prices):
            raise ConfigError(f"token_prices must be a Prices, got {type(token_prices).__name__}")
        self._token_prices = token_prices or None  # an empty Prices prices nothing: the fast path
        self._telemetry = resolve_telemetry(tracing, tracer_provider)
        self.answer_schemas = AnswerSchemas.builtin()
        self._computing = 0  # computations that may write a record (see _forgotten_since)
        self._forgets: list[tuple[KVStore, str, bool]] = []
        self._clock: Clock = clock or time.time
        self._api_token = _secret(api_token, "api_token")
        self._data_plane_token = _secret(data_plane_token, "data_plane_token")
        bound = sorted(name for name, lim in self._user_limits.items() if lim.binding is not None)
        if bound:
            url = outputs.data_plane_url if outputs is not None else None
            if url is None or self._data_plane_token is None:
                raise ConfigError(
                    f"user_limits[{bound[0]!r}].binding={self._user_limits[bound[0]].binding!r}: counting in a rate "
                    "limiting binding needs the stack's data plane (outputs with a data_plane_url, and "
                    "data_plane_token=); drop binding= to count in this process"
                )
        if rest_budget is not None and not isinstance(rest_budget, RequestBudget):
            raise ConfigError(f"rest_budget must be a RequestBudget, got {type(rest_budget).__name__}")
        self._rest_budget = rest_budget
        self._data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        # One pool per layer, so slow model calls never hold the connections KV hits need.
        self._transport = transport
        self._kv_http = build_client("kv", self.limits.kv, self.timeouts.kv_http(), transport=transport)
        if bound:
            assert outputs is not None and outputs.data_plane_url is not None and self._data_plane_token is not None
            self._rate_limiter = DataPlaneRateLimiter(
                self._kv_http,
                data_plane_url=outputs.data_plane_url,
                token=self._data_plane_token,
                timeout=self.timeouts.kv_read,  # a limit check is on the hit path, as a KV read is
                breaker=self._breaker_policy,
                clock=self._monotonic,
            )
        self._gateway_http = build_client(
            "gateway", self.limits.gateway, self.timeouts.attempt(self.timeouts.gateway), transport=transport
        )
        self._provider_http = build_client(
            "provider", self.limits.provider, self.timeouts.attempt(self.timeouts.provider), transport=transport
        )
        self._kv_factory = kv
        self._stores: dict[Namespace, KVStore] = {}
        self._flights = SingleFlight(enabled=single_flight)
        self._reads = SharedReads()
        self._fingerprint_memo: tuple[Models, Policies, str | None] | None = None
        self._memo: OrderedDict[str, tuple[bytes, list[float], int]] = OrderedDict()
        self._memo_bytes = decode_memo_bytes if decode_memo_size != 0 else 0
        self._memo_entries = decode_memo_size
        self._memo_used = 0
        self._json_memo: OrderedDict[str, tuple[bytes, str, Any, int]] = OrderedDict()
        self._json_memo_used = 0
        self._calls_memo = None
        self._closed = False
        if not isinstance(write_behind, WriteBehindPolicy | bool):
            raise ConfigError(f"write_behind must be a bool or a WriteBehindPolicy, got {type(write_behind).__name__}")
        self._writes: WriteBehind | None = None
        if write_behind is not False:
            policy = write_behind if isinstance(write_behind, WriteBehindPolicy) else WriteBehindPolicy()
            self._writes = WriteBehind(policy, self.stats)
        self._upstream = UpstreamClient(
            self._provider_http,
            account_id=outputs.account_id if outputs else account_id,
            api_base_url=outputs.api_base_url if outputs else api_base_url,
            gateway_base_url=outputs.gateway_base_url if outputs else None,
            gateway_id=outputs.gateway_id if outputs else None,
            api_token=self._api_token,
            gateway_token=_secret(gateway_token, "gateway_token"),
            openai_api_key=_secret(openai_api_key, "openai_api_key"),
            openai_base_url=openai_base_url,
            retry=retry,
            timeout=upstream_timeout,
            sleep=sleep,
            monotonic=self._monotonic,
            gateway_client=self._gateway_http,
            provider_client=self._provider_http,
            timeouts=self.timeouts,
            breaker=self._breaker_policy,
            gateway_api=outputs.gateway_api if outputs else "legacy",
        )
        if self._telemetry is not None:
            self._upstream.route_span = self._telemetry.route
            self._telemetry.instrument(self)

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_outputs(
        cls,
        outputs: StackOutputs,
        *,
        api_token: str | SecretStr | None = None,
        gateway_token: str | SecretStr | None = None,
        openai_api_key: str | SecretStr | None = None,
        data_plane_token: str | SecretStr | None = None,
        **kwargs: Any,
    ) -> DualCache:
        """Build a cache for the stack described by ``outputs`` (other arguments as in the constructor).

        With a ``data_plane_url`` in ``outputs`` and a ``data_plane_token``, KV goes through the data plane.
        """
        if not isinstance(outputs, StackOutputs):
            raise ConfigError(f"outputs must be a StackOutputs, got {type(outputs).__name__}")
        return cls(
            outputs,
            api_token=api_token,
            gateway_token=gateway_token,
            openai_api_key=openai_api_key,
            data_plane_token=data_plane_token,
            **kwargs,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> DualCache:
        """Build a cache from the environment, failing fast when KV would have no credential.

        Reads ``DUALCACHE_OUTPUTS`` (a path or the JSON; required), ``DUALCACHE_DATA_PLANE_TOKEN``,
        ``CLOUDFLARE_API_TOKEN``, ``CF_AIG_TOKEN`` and ``OPENAI_API_KEY``. An argument passed in ``kwargs``
        wins over its variable.

        What is required is what KV needs, since every cached operation and :meth:`kv` use it:

        * outputs with a ``data_plane_url``: ``DUALCACHE_DATA_PLANE_TOKEN`` (KV over the data plane), or
          else ``CLOUDFLARE_API_TOKEN`` (KV over the REST API, with a warning: it is rate-limited);
        * outputs without one: ``CLOUDFLARE_API_TOKEN`` (KV over the REST API);
        * neither when a ``kv=`` backend factory is passed.

        Provider credentials are optional, since a service may use one provider only (an OpenAI-only
        service needs no ``CLOUDFLARE_API_TOKEN`` with the data plane): ``CLOUDFLARE_API_TOKEN`` for Workers
        AI, ``OPENAI_API_KEY`` for OpenAI, ``CF_AIG_TOKEN`` for an authenticated gateway. A call that needs a
        missing one raises :class:`~dualcache.ConfigError` before any request.

        Raises:
            ConfigError: ``DUALCACHE_OUTPUTS`` is unset or invalid, or KV has no token; the message names
                the environment variable to set.
        """
        outputs = StackOutputs.from_env(OUTPUTS_ENV_VAR)
        kwargs.setdefault("api_token", os.environ.get("CLOUDFLARE_API_TOKEN") or None)
        kwargs.setdefault("gateway_token", os.environ.get("CF_AIG_TOKEN") or None)
        kwargs.setdefault("openai_api_key", os.environ.get("OPENAI_API_KEY") or None)
        kwargs.setdefault("data_plane_token", os.environ.get(DATA_PLANE_TOKEN_ENV_VAR) or None)
        if kwargs.get("kv") is None:
            if outputs.data_plane_url is not None and not kwargs["data_plane_token"]:
                if not kwargs["api_token"]:
                    raise ConfigError(
                        f"{DATA_PLANE_TOKEN_ENV_VAR} is not set: the outputs of stack {outputs.stack!r} name a data "
                        f"plane ({outputs.data_plane_url}) and KV needs its token (the stack's "
                        "jobmatch-ai:dataPlaneToken secret); or set CLOUDFLARE_API_TOKEN to use the rate-limited "
                        "REST API instead"
                    )
                logger.warning(
                    "%s is not set: KV of stack %r goes over the Cloudflare REST API (1,200 requests / 5 min per "
                    "token) although its outputs name a data plane",
                    DATA_PLANE_TOKEN_ENV_VAR,
                    outputs.stack,
                )
            elif outputs.data_plane_url is None and not kwargs["api_token"]:
                raise ConfigError(
                    f"CLOUDFLARE_API_TOKEN is not set: the outputs of stack {outputs.stack!r} have no data_plane_url, "
                    "so KV goes over the Cloudflare REST API, which needs a token with Workers KV Storage Read/Write"
                )
        return cls(outputs, **kwargs)

    def __repr__(self) -> str:
        where = f"stack={self.outputs.stack!r}" if self.outputs else f"data_dir={str(self._data_dir)!r}"
        return f"DualCache({where}, single_flight={self._flights.enabled}, closed={self._closed})"

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush the queued KV writes, then close the HTTP client and the KV backends.

        The flush is bounded by ``WriteBehindPolicy.close_timeout``; records it could not write are
        counted in ``kv_write_dropped``. Computations still in flight are cancelled first (their callers
        fail). Calls after this raise :class:`~dualcache.UsageError`.
        """
        if self._closed:
            return
        self._closed = True
        await self._flights.aclose()
        if self._writes is not None:
            await self._writes.aclose()
        for store in self._stores.values():
            await store.aclose()
        await self._upstream.aclose()
        for client in (self._kv_http, self._gateway_http, self._provider_http):
            await client.aclose()
        if self._transport is not None:
            await self._transport.aclose()  # injected: shared by the three clients, closed once

    # -- keys and invalidation ----------------------------------------------------------------------

    def record_key(self, operation: Operation | str, *, key: str, user_id: str | None = None) -> str:
        """Return the KV key under which ``operation`` stores its record of ``key`` (no I/O).

        For people who inspect KV by hand, e.g.
        ``wrangler kv key get --binding JOB_ANALYSIS_CACHE "$(python -c ...)"``: the namespace is the policy's
        ``kv_namespace``. The layout is ``{prefix}[:{user}][:%v{version}]:{key}`` with ids escaped (see
        :mod:`dualcache._keys`); for ``embeddings`` pass the text as ``key``.

        Raises:
            InvalidInputError: an unknown operation, an empty key, or a user id where the scope wants none
                (or none where it wants one).
        """
        op = Operation.parse(operation)
        policy = self.policies.for_operation(op)
        if op is Operation.EMBEDDINGS:
            return self._embed_key(_check_text(key, "key"))
        user = self._scoped_user(op, policy, user_id, strict=True)
        return record_key(op.value, _check_id(key, "key"), user_id=user, version=policy.version)

    def user_prefix(self, operation: Operation | str, user_id: str) -> str:
        """Return the prefix of every record of ``user_id`` in the user-scoped ``operation``, every version
        included (``wrangler kv key list --binding ... --prefix ...``); no other user's key starts with it.

        Raises:
            InvalidInputError: an unknown operation, one whose scope is ``global``, or an empty user id.
        """
        op = Operation.parse(operation)
        policy = self.policies.for_operation(op)
        if policy.scope is not Scope.USER:
            raise InvalidInputError(f"operation {op.value!r} has scope 'global': its records belong to no user")
        return user_prefix(op.value, _check_id(user_id, "user_id"))

    async def forget(self, operation: Operation | str, *, key: str, user_id: str | None = None) -> int:
        """Remove ``operation``'s record of ``key`` (of ``user_id`` when the scope is ``user``).

        The record is deleted from KV and dropped from the write-behind queue; a computation of it already
        in flight still answers its callers but does not store its answer. Only the current version's key
        is removed (old versions are misses already; :meth:`forget_user` removes every version).

        The gateway's cache is not touched (it cannot be purged per key): for an operation the gateway
        caches, the next identical request may be a gateway hit until ``gateway_ttl`` runs out. Pass
        ``refresh=True`` to that call (``cf-aig-skip-cache``), or bump the policy's ``version``.

        Returns:
            How many records were removed: 1, or 0 when there was none (or the operation's KV is off).

        Raises:
            InvalidInputError: as :meth:`record_key`.
            BackendError: KV failed (nothing is assumed removed: call again).
        """
        self._check_open()
        kv_key = self.record_key(operation, key=key, user_id=user_id)
        op = Operation.parse(operation)
        policy = self.policies.for_operation(op)
        if not policy.kv:
            return 0
        return await self._remove(op, self._store(policy), keys=[kv_key])

    async def forget_user(self, user_id: str) -> int:
        """Remove every user-scoped record of ``user_id``: in every operation whose scope is ``user`` and
        whose KV is on, in its namespace, every version.

        Per operation, one KV listing of the user's prefix (``{prefix}:{user}:``, one request per 1,000
        keys) and one bulk delete: escaped ids contain no ``:``, so the listing returns that user's
        records and no one else's, whatever the id (``:``, ``/``, ``%``, unicode). Queued and in-flight
        records are handled as in :meth:`forget`. On Cloudflare a key written in the last seconds may not
        be listed yet (KV listings are eventually consistent, up to about 60 s): call it again after a
        minute to be sure. Global operations (embeddings, spam verdicts) hold no user's records.

        Returns:
            How many records were removed.

        Raises:
            InvalidInputError: an empty user id.
            BackendError: KV failed (the operations done before it stay done: call again).
        """
        self._check_open()
        user = _check_id(user_id, "user_id")
        total = 0
        for op in self.policies.operations:
            policy = self.policies.for_operation(op)
            if policy.scope is Scope.USER and policy.kv:
                total += await self._remove(op, self._store(policy), prefix=user_prefix(op.value, user))
        return total
