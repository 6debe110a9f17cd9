"""``DualCache``: the runtime object services use — KV first, AI Gateway second, the provider last."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, assert_never

import httpx
from pydantic import SecretStr

from dualcache._answers import AnswerSchemas, check_vectors
from dualcache._breaker import BreakerPolicy, CircuitBreaker
from dualcache._budget import RequestBudget
from dualcache._budgets import PoolLimits, Timeouts
from dualcache._exceptions import (
    BackendError,
    BadResponseError,
    ConfigError,
    InvalidInputError,
    SkippedError,
    UsageError,
)
from dualcache._gateway import (
    DEFAULT_OPENAI_BASE_URL,
    CallRecord,
    Provider,
    RetryPolicy,
    Sleep,
    UpstreamClient,
    UpstreamResult,
    parse_json_object,
)
from dualcache._keys import (
    canonical_json,
    check_utf8,
    embed_key,
    embedding_fingerprint,
    gateway_cache_key,
    record_key,
    sha256_hex,
    user_prefix,
)
from dualcache._kv import (
    Clock,
    CloudflareKVBackend,
    DataPlaneKVBackend,
    KVBackend,
    KVBatchRead,
    KVEntry,
    KVStore,
    SQLiteKVBackend,
)
from dualcache._outputs import DEFAULT_API_BASE_URL, OUTPUTS_ENV_VAR, StackOutputs
from dualcache._params import check_json_content, check_sampling, is_json_safe
from dualcache._policy import GatewayMode, Namespace, Operation, OperationPolicy, Policies, Scope
from dualcache._records import (
    DEFAULT_DECODE_MEMO_BYTES,
    EMBED_INPUT_MAX_CHARS,
    RecordStatus,
    build_embedding_record,
    encode_json_record,
    expected_dimensions,
    judge_embedding_record,
    judge_json_record,
    should_coalesce,
    should_read_kv,
    should_write_kv,
)
from dualcache._singleflight import Flight, SharedReads, SingleFlight
from dualcache._stats import Outcome, PriceTable, Stats
from dualcache._transport import Abandoner, build_client
from dualcache._writebehind import WriteBehind, WriteBehindPolicy

__all__ = ["DATA_PLANE_TOKEN_ENV_VAR", "DEFAULT_DATA_DIR", "DualCache", "KVBackendFactory", "Models"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

KVBackendFactory = Callable[[Namespace], KVBackend]
"""Builds the backend of one namespace (called once per namespace, on first use)."""

DATA_PLANE_TOKEN_ENV_VAR = "DUALCACHE_DATA_PLANE_TOKEN"
"""Environment variable holding the data-plane token read by :meth:`DualCache.from_env`."""

DEFAULT_DATA_DIR = Path(".dualcache")
"""Where the SQLite KV file lives when neither outputs nor a KV backend are given."""

_EMBED_BATCH = 100  # Workers AI bge-base takes at most 100 texts a call (the emulator enforces the same).

_RESUME_PROMPT = (
    "You are an expert resume parser. Extract the candidate's details from the resume and answer with one JSON "
    "object with the keys: name, email, phone, location, summary, skills (list of strings), experience (list of "
    "{title, company, start, end, description}), education (list of {degree, institution, year})."
)


_POOLINGS = ("mean", "cls")


@dataclass(frozen=True, slots=True)
class Models:
    """The model each operation uses (the seed's choices by default), and how embeddings are computed.

    The embedding key covers everything that changes a vector: ``embeddings`` (and so its dimension),
    ``embedding_pooling``, ``embedding_max_chars`` and the policy's ``version``. A change of any of them
    is a miss (a new key), never a vector of another shape; the old records expire by their TTL. The
    seed's configuration (the defaults, no version) keeps the seed's keys, ``embed:{sha256(text)}``.

    Attributes:
        embedding_pooling: Workers AI's ``pooling`` for the bge models: ``"mean"`` (their default, not
            sent) or ``"cls"`` (sent; its vectors are not compatible with mean ones).
        embedding_max_chars: The text sent to the model is cut to this many characters (the seed: 2,000);
            the key hashes the full text.

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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True, slots=True)
class _Call:
    """One provider call of a JSON operation: the provider, its model, extra body fields."""

    provider: Provider
    model: str
    params: Mapping[str, Any]


def _check_id(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a non-empty string, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise InvalidInputError(f"{name} is empty; pass a non-empty {name}")
    check_utf8(name, value)
    return value


def _parse_provider(value: object, name: str) -> Provider:
    try:
        return Provider(value)  # type: ignore[arg-type]  # a wrong type is a ValueError too
    except ValueError:
        valid = ", ".join(repr(p.value) for p in Provider)
        raise InvalidInputError(f"{name}={value!r:.80} is not a provider; valid: {valid}") from None


_RESERVED_PARAMS = frozenset({"response_format", "stream"})


def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    reserved = sorted(_RESERVED_PARAMS & set(params))
    if reserved:
        raise InvalidInputError(
            f"{', '.join(reserved)} cannot be passed to run(): the answer is always asked for in JSON mode, unstreamed"
        )
    try:
        json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"params are not JSON-serializable: {exc}") from None
    return dict(params)


def _secret(value: str | SecretStr | None, name: str) -> SecretStr | None:
    if value is None or isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str or SecretStr, got {type(value).__name__}")
    return SecretStr(value) if value else None


def _check_text(text: object, name: str = "text") -> str:
    if not isinstance(text, str):
        raise InvalidInputError(f"{name} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError(f"{name} is empty (or only whitespace); pass the text to process")
    check_utf8(name, text)
    return text


def _check_messages(messages: object) -> list[dict[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes) or not messages:
        raise InvalidInputError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, got " + repr(messages)[:80]
        )
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InvalidInputError(f"messages[{i}] must be a dict with 'role' (str) and 'content', got {m!r:.80}")
        content = m["content"]
        if isinstance(content, str):
            if not content.strip():
                raise InvalidInputError(f"messages[{i}].content is empty")
        elif not isinstance(content, list) or not content:
            raise InvalidInputError(f"messages[{i}].content must be a non-empty string or list of parts")
        out.append(dict(m))
    if is_json_safe(out):  # exact JSON types, checked: json.dumps cannot fail (every call, hits included)
        return out
    check_json_content(out, "messages")  # lone surrogates, NaN/Infinity: InvalidInputError, before any I/O
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"messages are not JSON-serializable: {exc}") from None
    return out


_JSON_INSTRUCTION = {"role": "system", "content": "Answer with one JSON object."}


def _with_json_instruction(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``messages`` with a system line asking for JSON when none of them mentions JSON.

    OpenAI's JSON mode (``response_format: json_object``) refuses, with a 400, a conversation in which
    the word "json" never appears; the caller's messages need not say it, since asking for JSON is
    this library's choice.
    """
    for m in messages:
        content = m.get("content")
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, Mapping) else part
            if isinstance(text, str) and "json" in text.lower():
                return messages
    return [dict(_JSON_INSTRUCTION), *messages]


def _busy(exc: BaseException) -> bool:
    """Whether a KV read that was not sent found KV merely busy (no place at the pool's gate in time).

    Then KV is up and the key counts as missing, so the fresh answer is written; after a failure, a 429
    block or an open breaker, the write is skipped instead (``should_write_kv`` of a failed read).
    """
    return isinstance(exc, SkippedError) and exc.reason == "admission"


def _copy_result(value: T) -> T:
    """A private copy for a coalesced caller, so callers never share a mutable answer."""
    if isinstance(value, list) and all(type(x) is float for x in value):
        copied: Any = list(value)
        return copied  # type: ignore[no-any-return]
    return copy.deepcopy(value)


class DualCache:
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
        policies: Cache policies; default: those of ``outputs``, else SPEC.md's defaults.
        kv: Builds the KV backend of a namespace; default: the data plane or Cloudflare REST with outputs
            (see ``outputs``), else SQLite.
        transport: httpx transport for every HTTP request (tests pass ``httpx.MockTransport``); each
            layer still gets its own admission gate in front of it.
        clock: Unix-time clock (record timestamps, default KV backends' expiry).
        data_dir: Folder of the SQLite KV file (default ``.dualcache``).
        prices: Price table for cost and saved; the seed's figures by default.
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
            KV did not return. Least recently used records leave first.
        decode_memo_size: An optional cap on the number of memo entries on top of the byte budget
            (``None``: bytes only; 0 turns the memo off).
        write_behind: How the cache's own KV writes (new records of embeddings, analyses, spam verdicts)
            are made: ``True`` (default) queues them for background bulk writes with the default
            :class:`WriteBehindPolicy`, so no caller waits for a write; a policy sets the queue's bounds;
            ``False`` writes synchronously, before the call returns (the :meth:`kv` stores are always
            synchronous).
        timeouts: The time budget of each layer (defaults tabled in :class:`~dualcache.Timeouts`).
        limits: Pool and admission sizes of each layer.
        breaker: When the circuit breakers (one per KV namespace, the gateway, each provider) open.
        monotonic: Monotonic clock of the breakers and retry budgets (tests pass a fake one).
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
    ) -> None:
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
        self.answer_schemas = AnswerSchemas.builtin()
        self._computing = 0  # computations that may write a record (see _forgotten_since)
        self._forgets: list[tuple[KVStore, str, bool]] = []
        self._clock: Clock = clock or time.time
        self._api_token = _secret(api_token, "api_token")
        self._data_plane_token = _secret(data_plane_token, "data_plane_token")
        if rest_budget is not None and not isinstance(rest_budget, RequestBudget):
            raise ConfigError(f"rest_budget must be a RequestBudget, got {type(rest_budget).__name__}")
        self._rest_budget = rest_budget
        self._data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        # One pool per layer, so slow model calls never hold the connections KV hits need (issue 13).
        self._transport = transport
        self._kv_http = build_client("kv", self.limits.kv, self.timeouts.kv_http(), transport=transport)
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
        )

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

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this DualCache is closed; create a new one")

    # -- KV access ----------------------------------------------------------------------------------

    def _build_backend(self, namespace: Namespace) -> KVBackend:
        if self._kv_factory is not None:
            return self._kv_factory(namespace)
        if self.outputs is not None:
            if self.outputs.data_plane_url is not None and self._data_plane_token is not None:
                return DataPlaneKVBackend(
                    self._kv_http,
                    data_plane_url=self.outputs.data_plane_url,
                    binding=namespace.value,
                    token=self._data_plane_token,
                    # Every phase within the longer KV budget; a read is abandoned at kv_read by KVStore before.
                    timeout=max(self.timeouts.kv_read, self.timeouts.kv_write),
                )
            return CloudflareKVBackend(
                self._kv_http,
                api_base_url=self.outputs.api_base_url,
                account_id=self.outputs.account_id,
                namespace_id=self.outputs.namespace_id(namespace),
                api_token=self._api_token,
                # Every phase within the longer KV budget; a read is abandoned at kv_read by KVStore before.
                timeout=max(self.timeouts.kv_read, self.timeouts.kv_write),
                budget=self._rest_budget,
                budget_wait=self.timeouts.kv_read / 2,  # a caller never waits for the budget past its read budget
            )
        return SQLiteKVBackend(self._data_dir / "kv.sqlite3", namespace.value, clock=self._clock)

    def kv(self, binding: Namespace | str) -> KVStore:
        """Return async access to one of the six namespaces (``SESSIONS``, ``RATE_LIMITS``, ...).

        Raises:
            InvalidInputError: ``binding`` names no namespace.
        """
        self._check_open()
        # A Namespace is a str: its name finds its store without building the enum (every hit comes here).
        known: KVStore | None = self._stores.get(binding) if isinstance(binding, str) else None  # type: ignore[call-overload]
        if known is not None:
            return known
        try:
            namespace = Namespace(binding)
        except ValueError:
            valid = ", ".join(n.value for n in Namespace)
            raise InvalidInputError(f"unknown namespace binding {binding!r}; valid bindings: {valid}") from None
        store = self._stores.get(namespace)
        if store is None:
            store = KVStore(
                self._build_backend(namespace),
                binding=namespace.value,
                timeout=self.timeouts.kv_read,
                write_timeout=self.timeouts.kv_write,
                queue_timeout=self.timeouts.kv_queue,
                breaker=CircuitBreaker(f"kv {namespace.value}", self._breaker_policy, clock=self._monotonic),
                abandoner=Abandoner(self.timeouts.grace),
            )
            self._stores[namespace] = store
        return store

    def _store(self, policy: OperationPolicy) -> KVStore:
        assert policy.kv_namespace is not None  # guaranteed by OperationPolicy when kv is on
        return self.kv(policy.kv_namespace)

    async def _kv_read(self, op: Operation, store: KVStore, key: str) -> tuple[bytes | None, bool]:
        """Return ``(value, ok)``; a failure is a miss, counted in ``errors``; a read not sent (a blocked REST
        budget, an open breaker, no place at the pool) is a miss counted in ``kv_skipped``.

        Logged at debug level only: an outage is logged once, by the breaker or the budget, not once per key.
        """
        try:
            return await store.get(key), True
        except SkippedError as exc:
            self.stats.skip(op, "kv")
            logger.debug("%s: KV read of %r skipped (%s), treated as a miss", op.value, key, exc.reason)
            return None, _busy(exc)
        except BackendError as exc:
            self.stats.error(op)
            logger.debug("%s: KV read of %r failed, treated as a miss: %s", op.value, key, exc)
            return None, False

    async def _kv_read_many(self, op: Operation, store: KVStore, keys: list[str]) -> KVBatchRead:
        """Bulk-read ``keys``; a failed chunk costs only its keys, counted once per chunk (errors or skips)."""
        batch = await store.get_many_partial(keys)
        for exc in batch.errors:
            lost = sum(1 for e in batch.failed.values() if e is exc)
            if isinstance(exc, SkippedError):
                self.stats.skip(op, "kv")
                continue
            self.stats.error(op)
            logger.warning("%s: KV bulk read failed, %d keys treated as misses: %s", op.value, lost, exc)
        return batch

    async def _kv_write(self, op: Operation, store: KVStore, entries: list[KVEntry]) -> None:
        """Write ``entries`` (one put, or one bulk write); a failure is counted, never raised."""
        if not entries:
            return
        try:
            if len(entries) == 1:
                e = entries[0]
                await store.put(e.key, e.value, ttl=e.ttl, metadata=e.metadata)
            else:
                await store.put_many(entries)
        except SkippedError as exc:
            self.stats.skip(op, "kv")
            logger.debug("%s: KV write of %d key(s) skipped (%s)", op.value, len(entries), exc.reason)
        except BackendError as exc:
            self.stats.error(op)
            logger.warning("%s: KV write of %d key(s) failed, answer still served: %s", op.value, len(entries), exc)

    # -- plumbing -----------------------------------------------------------------------------------

    async def _upstream_call(
        self,
        op: Operation,
        provider: Provider,
        path: str,
        payload: Mapping[str, Any],
        *,
        policy: OperationPolicy,
        user_id: str | None = None,
        check: Callable[[UpstreamResult], object] | None = None,
    ) -> UpstreamResult:
        record = CallRecord()
        cache_key = (
            gateway_cache_key(op.value, provider.value, path, payload, user_id=user_id, version=policy.version)
            if policy.gateway is GatewayMode.CACHE
            else None
        )
        try:
            result = await self._upstream.call(
                provider,
                path,
                payload,
                operation=op,
                policy=policy,
                record=record,
                user_id=user_id,
                cache_key=cache_key,
                check=check,
            )
            logger.debug(
                "%s: %s via %s, cache status %s, log id %s",
                op.value,
                provider.value,
                result.route.value,
                result.cache_status,
                result.log_id,
            )
            return result
        finally:
            self.stats.upstream(op, record.attempts)
            if record.faults:
                self.stats.error(op, record.faults)
            for layer in record.skipped:
                self.stats.skip(op, layer)

    async def _serve(
        self,
        op: Operation,
        policy: OperationPolicy,
        flight_key: str | None,
        compute: Callable[[], Awaitable[tuple[T, Outcome]]],
    ) -> T:
        """Run ``compute`` and count the outcome.

        With a ``flight_key`` and a policy that coalesces, the computation is single-flight: joined
        when one is in flight for the key, else launched detached from this caller (see
        ``_singleflight``), so cancelling this caller cancels no one else. Otherwise it runs in the
        caller. Callers enter here only on a miss: the KV read happens before.
        """
        try:
            if flight_key is not None and self._flights.enabled and should_coalesce(policy):
                value, outcome = await self._coalesced(f"{op.value}\x00{flight_key}", compute)
            else:
                value, outcome = await compute()
        except BaseException:
            self.stats.record(op, Outcome.FAILED)
            raise
        self.stats.record(op, outcome)
        return value

    async def _coalesced(
        self, flight_key: str, compute: Callable[[], Awaitable[tuple[T, Outcome]]]
    ) -> tuple[T, Outcome]:
        flight = self._flights.get(flight_key)
        if flight is None:

            async def run(futures: Mapping[str, asyncio.Future[Any]]) -> None:
                futures[flight_key].set_result(await compute())

            flight = self._flights.launch([flight_key], run)[flight_key]
        ((value, outcome), first), *_ = await self._flights.wait([flight])
        if not first:  # another caller collected this answer first: it counts the outcome
            return _copy_result(value), Outcome.COALESCED
        return value, outcome

    async def _kv_save(self, op: Operation, store: KVStore, entries: list[KVEntry]) -> None:
        """Write the cache's own records: queued for write-behind (returns at once), or synchronously."""
        if self._writes is not None:
            self._writes.submit(op, store, entries)
        else:
            await self._kv_write(op, store, entries)

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until the queued KV writes have landed, at most ``timeout`` seconds (default: the
        write-behind policy's ``close_timeout``); the cache stays open.

        Returns:
            How many records are still queued or being written (0 without write-behind).
        """
        if self._writes is None:
            return 0
        return await self._writes.flush(timeout)

    def _undecodable(self, op: Operation, key: str, exc: Exception) -> tuple[RecordStatus, None]:
        # Whatever the decoder raises for a stored value (RecursionError on deep nesting, MemoryError on a
        # huge one, ...), the record is corrupt: a miss, overwritten by the fresh answer. Never raised.
        logger.warning(
            "%s: stored value of %r could not be decoded (%s: %.200s); treated as a corrupt record and overwritten",
            op.value,
            key,
            type(exc).__name__,
            exc,
        )
        return RecordStatus.CORRUPT, None

    def _decode_embedding(self, op: Operation, key: str, raw: bytes | None) -> tuple[RecordStatus, list[float] | None]:
        try:
            return self._judge_embedding(key, raw)
        except Exception as exc:
            return self._undecodable(op, key, exc)

    def _decode_json(self, op: Operation, key: str, raw: bytes | None) -> tuple[RecordStatus, dict[str, Any] | None]:
        try:
            status, value = judge_json_record(raw)
        except Exception as exc:
            return self._undecodable(op, key, exc)
        if value is not None and not self.answer_schemas.is_valid(op, value):
            # A stored answer that fails the operation's schema (tampered, or written before the schema) is a
            # miss: the fresh answer overwrites it.
            logger.warning("%s: stored answer of %r does not fit its schema; treated as a miss", op.value, key)
            return RecordStatus.CORRUPT, None
        return status, value

    def _pending(self, store: KVStore, key: str) -> bytes | None:
        """The record of ``key`` still in the write-behind queue (a miss served from it is a KV hit)."""
        return None if self._writes is None else self._writes.pending(store, key)

    @staticmethod
    def _outcome(result: UpstreamResult) -> Outcome:
        return Outcome.GATEWAY_HIT if result.gateway_hit else Outcome.PROVIDER

    # -- embeddings ---------------------------------------------------------------------------------

    def _judge_embedding(self, key: str, raw: bytes | None) -> tuple[RecordStatus, list[float] | None]:
        # The memo holds (stored bytes, decoded list, bytes charged), ~29 KB a 768-d record: a hit hands
        # out a copy of the list (callers may mutate it), 2 µs where a float32 array's tolist() costs 12.
        if raw is not None and self._memo_bytes:
            memo = self._memo.get(key)
            if memo is not None:
                if memo[0] is raw or memo[0] == raw:
                    self._memo.move_to_end(key)
                    return RecordStatus.HIT, list(memo[1])
                self._memo_used -= self._memo.pop(key)[2]  # KV holds new bytes: the old decode is stale
        status, vector = judge_embedding_record(raw, self.models.embeddings)
        if status is RecordStatus.HIT and vector is not None and raw is not None and self._memo_bytes:
            # The list's slots and its float objects (8 + 24 bytes a component), plus the tuple and links.
            cost = len(raw) + 32 * len(vector) + 200
            if cost <= self._memo_bytes:
                self._memo[key] = (raw, vector, cost)
                self._memo_used += cost
                while self._memo_used > self._memo_bytes or (
                    self._memo_entries is not None and len(self._memo) > self._memo_entries
                ):
                    self._memo_used -= self._memo.popitem(last=False)[1][2]
                return status, list(vector)
        return status, vector

    def _embed_payload(self, text: str | list[str]) -> dict[str, Any]:
        """The Workers AI body: ``pooling`` only when it is not the bge models' default (mean)."""
        payload: dict[str, Any] = {"text": text}
        if self.models.embedding_pooling != "mean":
            payload["pooling"] = self.models.embedding_pooling
        return payload

    def _embedding_entry(self, key: str, text: str, vector: list[float], ttl: int | None) -> KVEntry:
        record = build_embedding_record(text, vector, self.models.embeddings, self._clock())
        return KVEntry(key, encode_json_record(record), ttl)

    @staticmethod
    def _vectors(result: UpstreamResult, expected: int, dims: int | None = None) -> list[list[float]]:
        # The model's dimension, finite numbers only (dualcache._answers); rounded as a stored record would be:
        # a miss returns the very vector a later hit returns.
        data = result.data.get("data") if isinstance(result.data, dict) else None
        return check_vectors(data, count=expected, dims=dims)

    async def embed(self, text: str) -> list[float]:
        """Return the embedding of ``text`` (KV, then gateway, then Workers AI).

        The key hashes the full text; the text sent to the model is cut to 2,000 characters (as the
        seed does). Identical concurrent calls share one upstream call and one KV write. A hit reads
        KV and returns; only a miss enters single-flight. A cancelled call cancels no other.

        Raises:
            InvalidInputError: ``text`` is empty or not a string.
            ConfigError: Workers AI is not configured.
            BackendError: the provider failed on every route (KV failures never raise).
        """
        self._check_open()
        _check_text(text)
        self._upstream.check_configured(Provider.WORKERS_AI)
        op, policy = Operation.EMBEDDINGS, self.policies.embeddings
        key = self._embed_key(text)
        flight_key = f"{op.value}\x00{key}"
        read: RecordStatus | None = RecordStatus.MISSING
        # A key already in flight is joined without a KV read (its answer is what KV is about to hold).
        if should_read_kv(policy) and self._flights.get(flight_key) is None:
            read, vector = await self._read_hit(op, policy, flight_key, key, self._decode_embedding)
            if vector is not None:
                return vector

        async def compute() -> tuple[list[float], Outcome]:
            mark = self._begin_compute()
            try:
                payload = self._embed_payload(text[: self.models.embedding_max_chars])
                dims = expected_dimensions(self.models.embeddings)
                result = await self._upstream_call(
                    op,
                    Provider.WORKERS_AI,
                    self.models.embeddings,
                    payload,
                    policy=policy,
                    check=lambda r: self._vectors(r, 1, dims),
                )
                vector = self._vectors(result, 1, dims)[0]
                if should_write_kv(policy, read):
                    store = self._store(policy)
                    if not self._forgotten_since(mark, store, key):
                        await self._kv_save(op, store, [self._embedding_entry(key, text, vector, policy.kv_ttl)])
                return vector, self._outcome(result)
            finally:
                self._end_compute()

        return await self._serve(op, policy, key, compute)

    async def embed_many(self, texts: Sequence[str]) -> list[list[float]]:
        """Return the embeddings of ``texts``, in input order, duplicates included.

        One KV bulk read per 100 distinct keys (a failed one costs only its own keys), one upstream call
        per 100 distinct misses (a text repeated in the batch is sent once), one KV bulk write for the
        new records. Texts already in flight in this process (another ``embed``/``embed_many``) are
        awaited, not sent again. The misses are computed detached from this caller: when it is cancelled,
        the callers that joined them still get their answers.

        Raises:
            InvalidInputError: ``texts`` is not a list of non-empty strings.
            ConfigError: Workers AI is not configured.
            BackendError: the provider failed on every route.
        """
        self._check_open()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInputError(f"texts must be a list of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            _check_text(t, f"texts[{i}]")
        if not texts:
            return []
        self._upstream.check_configured(Provider.WORKERS_AI)
        op, policy = Operation.EMBEDDINGS, self.policies.embeddings
        fingerprint = self._embed_fingerprint()
        keys = [embed_key(t, fingerprint) for t in texts]
        distinct: dict[str, str] = dict(zip(keys, texts, strict=True))
        results: dict[str, list[float]] = {}
        outcomes: dict[str, Outcome] = {}
        coalesce = self._flights.enabled and should_coalesce(policy)
        prefix = f"{op.value}\x00"
        try:
            joined = self._joinable(prefix, distinct) if coalesce else {}
            todo = [k for k in distinct if k not in joined]
            reads: dict[str, RecordStatus | None] = dict.fromkeys(todo, RecordStatus.MISSING)
            if todo and should_read_kv(policy):
                reads = await self._embed_read(op, policy, prefix, todo, results, outcomes)
            misses = [k for k in todo if k not in results]
            if coalesce and misses:  # flights may have started for some of them during the read
                late = self._joinable(prefix, misses)
                joined.update(late)
                misses = [k for k in misses if k not in late]
            waits: list[tuple[str, Flight]] = list(joined.items())
            if misses and coalesce:

                async def run(futures: Mapping[str, asyncio.Future[Any]]) -> None:
                    answers: dict[str, tuple[list[float], Outcome]] = {}
                    try:
                        await self._embed_lead(op, policy, misses, distinct, reads, answers)
                    finally:  # what was answered before a failure is served; the rest gets the error
                        for k, answer in answers.items():
                            futures[prefix + k].set_result(answer)

                launched = self._flights.launch([prefix + k for k in misses], run)
                waits.extend((k, launched[prefix + k]) for k in misses)
            elif misses:
                answers: dict[str, tuple[list[float], Outcome]] = {}
                await self._embed_lead(op, policy, misses, distinct, reads, answers)
                for k, (vector, outcome) in answers.items():
                    results[k], outcomes[k] = vector, outcome
            if waits:
                collected = await self._flights.wait([flight for _, flight in waits])
                for (k, _), ((vector, outcome), first) in zip(waits, collected, strict=True):
                    results[k], outcomes[k] = (vector, outcome) if first else (list(vector), Outcome.COALESCED)
        except BaseException:
            self.stats.record(op, Outcome.FAILED, len(texts))
            raise
        out: list[list[float]] = []
        seen: set[str] = set()
        for k in keys:
            first = k not in seen
            seen.add(k)
            outcome = outcomes[k]
            if not first and outcome is not Outcome.KV_HIT:
                outcome = Outcome.COALESCED  # a duplicate inside the batch rode on the first one's answer
            self.stats.record(op, outcome)
            out.append(results[k] if first else list(results[k]))
        return out

    def _joinable(self, prefix: str, keys: Iterable[str]) -> dict[str, Flight]:
        found: dict[str, Flight] = {}
        for k in keys:
            flight = self._flights.get(prefix + k)
            if flight is not None:
                found[k] = flight
        return found

    async def _embed_read(
        self,
        op: Operation,
        policy: OperationPolicy,
        prefix: str,
        keys: list[str],
        results: dict[str, list[float]],
        outcomes: dict[str, Outcome],
    ) -> dict[str, RecordStatus | None]:
        """Read ``keys`` from KV (sharing the reads in progress of other callers); fill the hits, return every
        key's status (``None``: its read failed)."""
        store = self._store(policy)
        shared = self._flights.enabled
        waiting = self._joinable_reads(prefix, keys) if shared else {}
        mine = [k for k in keys if k not in waiting]
        slots = {k: self._reads.begin(prefix + k) for k in mine} if shared else {}
        got: dict[str, tuple[bytes | None, bool]] = {}
        try:
            got.update(await self._kv_read_chunks(op, store, mine))
        finally:
            for k, slot in slots.items():
                self._reads.end(prefix + k, slot, got.get(k))
        again: list[str] = []
        for k, future in waiting.items():
            answer = await asyncio.shield(future)
            if answer is None:  # that reader was cancelled before its read ended
                again.append(k)
            else:
                got[k] = answer
        if again:
            got.update(await self._kv_read_chunks(op, store, again))
        reads: dict[str, RecordStatus | None] = {}
        for k in keys:
            raw, ok = got[k]
            status, vector = self._decode_embedding(op, k, raw) if ok else (None, None)
            if vector is None and (pending := self._pending(store, k)) is not None:
                vector = self._decode_embedding(op, k, pending)[1]
            reads[k] = status
            if vector is not None:
                results[k], outcomes[k] = vector, Outcome.KV_HIT
        return reads

    def _joinable_reads(self, prefix: str, keys: Iterable[str]) -> dict[str, asyncio.Future[Any]]:
        found: dict[str, asyncio.Future[Any]] = {}
        for k in keys:
            future = self._reads.join(prefix + k)
            if future is not None:
                found[k] = future
        return found

    async def _kv_read_chunks(
        self, op: Operation, store: KVStore, keys: list[str]
    ) -> dict[str, tuple[bytes | None, bool]]:
        """Bulk-read ``keys``, <= 100 a request; return ``(value, ok)`` per key. A failed chunk costs only its
        own keys (``ok`` false), counted once in ``errors``."""
        batch = await self._kv_read_many(op, store, keys)
        return {k: (None, _busy(batch.failed[k])) if k in batch.failed else (batch.values.get(k), True) for k in keys}

    async def _read_hit(
        self,
        op: Operation,
        policy: OperationPolicy,
        flight_key: str,
        key: str,
        decode: Callable[[Operation, str, bytes | None], tuple[RecordStatus, V | None]],
    ) -> tuple[RecordStatus | None, V | None]:
        """The hit path of one key: the (shared) KV read, else a record still queued for writing.

        Returns ``(read, value)``: what the read found (``None`` when it failed), and the value on a hit,
        which is counted as a KV hit here.
        """
        store = self._store(policy)
        try:
            raw, ok = await self._read_shared(op, store, flight_key, key)
        except BaseException:
            self.stats.record(op, Outcome.FAILED)
            raise
        read, value = decode(op, key, raw) if ok else (None, None)
        if value is None and (pending := self._pending(store, key)) is not None:
            value = decode(op, key, pending)[1]
        if value is not None:
            self.stats.record(op, Outcome.KV_HIT)
        return read, value

    async def _read_shared(self, op: Operation, store: KVStore, flight_key: str, key: str) -> tuple[bytes | None, bool]:
        """``_kv_read`` of ``key``, shared with the concurrent readers of the same key (see ``SharedReads``)."""
        if not self._flights.enabled or store.answers_at_once:  # nobody can join a read that never suspends
            return await self._kv_read(op, store, key)
        while (waiting := self._reads.join(flight_key)) is not None:
            answer: tuple[bytes | None, bool] | None = await asyncio.shield(waiting)
            if answer is not None:
                return answer
        read = self._reads.begin(flight_key)
        got: tuple[bytes | None, bool] | None = None
        try:
            got = await self._kv_read(op, store, key)
            return got
        finally:
            self._reads.end(flight_key, read, got)

    async def _embed_lead(
        self,
        op: Operation,
        policy: OperationPolicy,
        lead: list[str],
        distinct: Mapping[str, str],
        reads: Mapping[str, RecordStatus | None],
        answers: dict[str, tuple[list[float], Outcome]],
    ) -> None:
        """Embed the misses ``lead`` upstream (<= 100 a call) into ``answers``, then write their records.

        On a failure, the records of the answers obtained before it are still written.
        """
        by_input: dict[str, list[str]] = {}
        for k in lead:
            by_input.setdefault(distinct[k][: self.models.embedding_max_chars], []).append(k)
        inputs = list(by_input)
        mark = self._begin_compute()
        try:
            try:
                for i in range(0, len(inputs), _EMBED_BATCH):
                    chunk = inputs[i : i + _EMBED_BATCH]
                    dims, n = expected_dimensions(self.models.embeddings), len(chunk)
                    result = await self._upstream_call(
                        op,
                        Provider.WORKERS_AI,
                        self.models.embeddings,
                        self._embed_payload(chunk),
                        policy=policy,
                        check=lambda r: self._vectors(r, n, dims),  # noqa: B023 - called before the loop moves on
                    )
                    outcome = self._outcome(result)
                    for text_in, vector in zip(chunk, self._vectors(result, n, dims), strict=True):
                        for j, k in enumerate(by_input[text_in]):
                            # Two texts with the same first characters (the input cut) share one upstream item.
                            answers[k] = (vector, outcome) if j == 0 else (list(vector), Outcome.COALESCED)
            except Exception:
                await self._save_embeddings(op, policy, lead, distinct, reads, answers, mark)
                raise
            await self._save_embeddings(op, policy, lead, distinct, reads, answers, mark)
        finally:
            self._end_compute()

    async def _save_embeddings(
        self,
        op: Operation,
        policy: OperationPolicy,
        lead: list[str],
        distinct: Mapping[str, str],
        reads: Mapping[str, RecordStatus | None],
        answers: Mapping[str, tuple[list[float], Outcome]],
        mark: int,
    ) -> None:
        store = self._store(policy) if policy.kv else None
        entries = [
            self._embedding_entry(k, distinct[k], answers[k][0], policy.kv_ttl)
            for k in lead
            if k in answers
            and should_write_kv(policy, reads[k])
            and not (store is not None and self._forgotten_since(mark, store, k))
        ]
        if entries and store is not None:
            await self._kv_save(op, store, entries)

    # -- JSON operations ----------------------------------------------------------------------------
    #
    # Every JSON operation, built in or custom, is one ``_run_json``: the KV key from the policy (scope,
    # version), the KV read (hit path, before single-flight), then the provider calls in order (the next
    # one when a provider fails on every route), single-flight, the record written behind, stats and cost.

    def _scoped_user(self, op: Operation, policy: OperationPolicy, user_id: object, *, strict: bool) -> str | None:
        """The user id that goes into ``op``'s keys: required by scope ``user``; with scope ``global``, refused
        when ``strict`` (custom operations), else left out of the key (kept for the gateway's metadata)."""
        if user_id is not None:
            user_id = _check_id(user_id, "user_id")
        if policy.scope is Scope.USER:
            if user_id is None and strict:
                raise InvalidInputError(
                    f"operation {op.value!r} has scope 'user' (its records are per user): pass user_id=, "
                    f"or set policies.{op.value}.scope to 'global'"
                )
            return user_id
        if user_id is not None and strict:
            raise InvalidInputError(
                f"operation {op.value!r} has scope 'global' (its records are shared by every user), so it takes "
                f"no user_id; drop user_id=, or set policies.{op.value}.scope to 'user'"
            )
        return None

    def _json_key(self, op: Operation, policy: OperationPolicy, key: str, user_id: str | None) -> str:
        """The KV key (also the single-flight key) of a JSON operation's record of ``key``."""
        if policy.scope is Scope.USER and user_id is None and (policy.kv or policy.gateway is GatewayMode.CACHE):
            raise InvalidInputError(
                f"operation {op.value!r} caches per user (scope 'user'): pass user_id=, "
                f"or set policies.{op.value}.scope to 'global'"
            )
        return record_key(op.value, key, user_id=user_id, version=policy.version)

    def _ready_calls(self, calls: Sequence[_Call]) -> list[_Call]:
        """The calls whose provider is configured (checked before any I/O), in order."""
        ready: list[_Call] = []
        first: ConfigError | None = None
        for call in calls:
            try:
                self._upstream.check_configured(call.provider)
            except ConfigError as exc:
                first = first or exc
                continue
            ready.append(call)
        if not ready:
            assert first is not None
            raise first
        return ready

    async def _run_json(
        self,
        op: Operation,
        policy: OperationPolicy,
        key: str,
        calls: Sequence[_Call],
        messages: list[dict[str, Any]],
        *,
        user_id: str | None,
        refresh: bool = False,
    ) -> dict[str, Any]:
        """Serve one JSON operation (see the section comment); ``key`` is its full KV key."""
        ready = self._ready_calls(calls)
        read: RecordStatus | None = RecordStatus.MISSING
        serve_key = key
        upstream_policy = policy
        if refresh:
            # Neither cache is read: KV is skipped here, the gateway is told cf-aig-skip-cache once. The fresh
            # answer overwrites the KV record. A refresh never joins (nor is joined by) an ordinary flight.
            # Cloudflare documents skip-cache as a bypass (cloudflare-facts §2.2); whether the fresh answer also
            # replaces the gateway's entry is not said. Both cases are fine with KV on (later calls hit the new
            # KV record); with KV off the old entry may be served until its TTL, as the README says.
            upstream_policy = policy.model_copy(update={"gateway": GatewayMode.SKIP, "gateway_ttl": None})
            serve_key = key + "\x00refresh"
        flight_key = f"{op.value}\x00{serve_key}"
        if not refresh and should_read_kv(policy) and self._flights.get(flight_key) is None:
            read, value = await self._read_hit(op, policy, flight_key, key, self._decode_json)
            if value is not None:
                return value

        async def fetch() -> tuple[dict[str, Any], Outcome]:
            for i, call in enumerate(ready):
                try:
                    return await self._chat_json(op, upstream_policy, call, messages, user_id=user_id)
                except BackendError as exc:
                    if i == len(ready) - 1:
                        raise
                    self.stats.error(op)
                    nxt = ready[i + 1]
                    logger.warning(
                        "%s: %s failed (%s); falling back to %s %s",
                        op.value,
                        call.provider.value,
                        exc,
                        nxt.provider.value,
                        nxt.model,
                    )
            raise AssertionError("unreachable: _ready_calls returns at least one call")

        async def compute() -> tuple[dict[str, Any], Outcome]:
            mark = self._begin_compute()
            try:
                value, outcome = await fetch()
                try:  # Workers AI answers were checked already (_chat_json); this catches OpenAI's
                    value = self.answer_schemas.check(op, value, backend="answer")
                except BadResponseError:
                    self.stats.error(op)
                    raise
                if should_write_kv(policy, read):
                    store = self._store(policy)
                    if not self._forgotten_since(mark, store, key):
                        await self._kv_save(op, store, [KVEntry(key, encode_json_record(value), policy.kv_ttl)])
                return value, outcome
            finally:
                self._end_compute()

        return await self._serve(op, policy, serve_key, compute)

    async def _chat_json(
        self,
        op: Operation,
        policy: OperationPolicy,
        call: _Call,
        messages: list[dict[str, Any]],
        *,
        user_id: str | None,
    ) -> tuple[dict[str, Any], Outcome]:
        """One chat call in JSON mode (cloudflare-facts §3 for Workers AI; OpenAI's ``json_object``)."""
        json_mode = {"type": "json_object"}
        match call.provider:
            case Provider.WORKERS_AI:
                payload = {"messages": messages, **call.params, "response_format": json_mode}

                def answer_of(result: UpstreamResult) -> dict[str, Any]:
                    # JSON mode: result.response is then an object; a string holding one is parsed too. Checked
                    # against the operation's answer schema inside the call, so a bad gateway answer goes direct.
                    answer = result.data.get("response") if isinstance(result.data, dict) else result.data
                    parsed = parse_json_object(answer, backend="workers-ai")
                    return self.answer_schemas.check(op, parsed, backend="workers-ai")

                result = await self._upstream_call(
                    op, Provider.WORKERS_AI, call.model, payload, policy=policy, user_id=user_id, check=answer_of
                )
                return answer_of(result), self._outcome(result)
            case Provider.OPENAI:
                payload = {
                    "model": call.model,
                    "messages": _with_json_instruction(messages),
                    **call.params,
                    "response_format": json_mode,
                }
                content, outcome = await self._openai_chat(op, payload, policy=policy, user_id=user_id)
                return parse_json_object(content, backend="openai"), outcome
            case _ as unreachable:
                assert_never(unreachable)

    async def _openai_chat(
        self,
        op: Operation,
        payload: Mapping[str, Any],
        *,
        policy: OperationPolicy,
        user_id: str | None = None,
    ) -> tuple[str, Outcome]:
        result = await self._upstream_call(
            op, Provider.OPENAI, "chat/completions", payload, policy=policy, user_id=user_id
        )
        try:
            content = result.data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BadResponseError("openai: no choices[0].message.content in the answer", backend="openai") from exc
        if not isinstance(content, str):
            raise BadResponseError("openai: choices[0].message.content is not a string", backend="openai")
        return content, self._outcome(result)

    async def run(
        self,
        operation: Operation | str,
        *,
        key: str,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        user_id: str | None = None,
        provider: Provider | str = Provider.WORKERS_AI,
        fallback: tuple[Provider | str, str] | None = None,
        refresh: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Return the JSON answer of a chat call of ``operation``, cached per the operation's policy.

        This is the machinery of the built-in JSON operations (``analyze_job`` and ``detect_spam`` are thin
        uses of it), open to any operation the policies declare (``Policies.with_overrides`` or
        ``<project>:policies.<name>.*`` in the stack file): KV first (key ``{name}[:{user}][:%v{version}]:{key}``,
        see :meth:`record_key`), then the AI Gateway, then the provider, with single-flight, retries,
        the gateway-to-direct fallback, write-behind, stats and cost (``PriceTable(<name>=...)``; without a
        price the cost is reported unknown).

        Args:
            operation: The operation's name; its policy must exist (not ``embeddings``: use :meth:`embed`).
            key: What the answer is about (a job id, a document id ...); escaped in the KV key.
            model: The model: a Workers AI model id (``@cf/...``) or an OpenAI model name.
            messages: The chat messages (``{"role": ..., "content": ...}``).
            user_id: Required when the operation's scope is ``user`` (records per user), refused when
                ``global``. Also sent in ``cf-aig-metadata``.
            provider: ``"workers-ai"`` (default) or ``"openai"``.
            fallback: ``(provider, model)`` to call when ``provider`` fails on every route.
            refresh: Skip both caches once (no KV read, ``cf-aig-skip-cache: true`` to the gateway) and
                overwrite the KV record with the fresh answer.
            **params: Further body fields for the provider (``temperature``, ``max_tokens`` ...). The answer
                is always asked for in JSON mode, so ``response_format`` and ``stream`` are refused.

        Raises:
            InvalidInputError: an unknown operation, a bad key, user id, provider, model, messages or params
                (before any I/O); the message names the argument.
            ConfigError: no provider of the call is configured.
            BackendError: every provider failed (KV failures never raise: they are misses).
        """
        self._check_open()
        op = Operation.parse(operation)
        policy = self.policies.for_operation(op)
        if op is Operation.EMBEDDINGS:
            raise InvalidInputError("operation 'embeddings' is not a chat operation: use embed() or embed_many()")
        user = self._scoped_user(op, policy, user_id, strict=True)
        kv_key = self._json_key(op, policy, _check_id(key, "key"), user)
        msgs = _check_messages(messages)
        extra = _check_params(params)
        calls = [_Call(_parse_provider(provider, "provider"), _check_id(model, "model"), extra)]
        if fallback is not None:
            if not isinstance(fallback, tuple) or len(fallback) != 2:
                raise InvalidInputError(f"fallback must be a (provider, model) tuple, got {fallback!r:.80}")
            calls.append(
                _Call(_parse_provider(fallback[0], "fallback provider"), _check_id(fallback[1], "model"), extra)
            )
        if not isinstance(refresh, bool):
            raise InvalidInputError(f"refresh must be a bool, got {refresh!r}")
        check_json_content(extra, "params")  # NaN, lone surrogates: before any I/O
        for call in calls:  # the documented ranges of each provider the params go to
            check_sampling(extra, provider=call.provider.value, where="run: ")
        return await self._run_json(op, policy, kv_key, calls, msgs, user_id=user, refresh=refresh)

    async def analyze_job(
        self, *, user_id: str, job_id: str, messages: Sequence[Mapping[str, Any]], refresh: bool = False
    ) -> dict[str, Any]:
        """Return the compatibility analysis of a job for a user (a JSON object).

        The built-in operation ``job_analysis``, a :meth:`run` with the seed's models: cached in KV per user
        and job (``analysis:{userId}:{jobId}``, 7 days by default), gateway cache skipped. Workers AI answers
        first; when it fails (on every route), OpenAI answers instead. ``refresh=True`` skips the caches once
        and overwrites the record (see :meth:`run`); :meth:`forget` removes it.

        Raises:
            InvalidInputError: an empty id, or malformed ``messages``.
            ConfigError: neither Workers AI nor OpenAI is configured.
            BackendError: both providers failed.
        """
        self._check_open()
        op = Operation.JOB_ANALYSIS
        policy = self.policies.for_operation(op)
        user = _check_id(user_id, "user_id")
        key = self._json_key(op, policy, _check_id(job_id, "job_id"), user)
        msgs = _check_messages(messages)
        calls = [
            _Call(Provider.WORKERS_AI, self.models.job_analysis, {}),
            _Call(Provider.OPENAI, self.models.job_analysis_fallback, {"temperature": 0.3}),
        ]
        return await self._run_json(op, policy, key, calls, msgs, user_id=user, refresh=refresh)

    async def detect_spam(
        self, *, job_id: str, messages: Sequence[Mapping[str, Any]], refresh: bool = False
    ) -> dict[str, Any]:
        """Return the spam verdict for a job posting (a JSON object).

        The built-in operation ``spam_detection``, a :meth:`run` with the seed's model: cached in KV per job
        (``spam:{jobId}``, 7 days) and in the gateway (24 hours) by default. ``refresh=True`` skips both
        caches once and overwrites the KV record.

        Raises:
            InvalidInputError: an empty id, or malformed ``messages``.
            ConfigError: Workers AI is not configured.
            BackendError: the provider failed on every route.
        """
        self._check_open()
        op = Operation.SPAM_DETECTION
        policy = self.policies.for_operation(op)
        key = self._json_key(op, policy, _check_id(job_id, "job_id"), None)
        msgs = _check_messages(messages)
        calls = [_Call(Provider.WORKERS_AI, self.models.spam_detection, {})]
        return await self._run_json(op, policy, key, calls, msgs, user_id=None, refresh=refresh)

    async def generate_application(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        user_id: str | None = None,
        json_output: bool = True,
        temperature: float = 0.7,
        max_tokens: int = 3000,
    ) -> dict[str, Any] | str:
        """Generate a resume or cover letter with OpenAI (never cached by default: personalized and meant fresh).

        With ``json_output`` this is the built-in operation ``application_generation`` run like any JSON
        operation (:meth:`run`), keyed by the SHA-256 of the request, so a stack that turns its KV on caches
        it per user. Text answers (``json_output=False``) are never cached.

        Args:
            messages: The chat messages.
            user_id: Sent in ``cf-aig-metadata`` for per-user analytics and spend limits.
            json_output: Ask for a JSON object and return it as a dict (as the seed does); else the text.
            temperature: Sampling temperature.
            max_tokens: Answer length cap.

        Raises:
            InvalidInputError: malformed ``messages``.
            ConfigError: OpenAI is not configured.
            BackendError: the provider failed.
        """
        self._check_open()
        msgs = _check_messages(messages)
        if user_id is not None:
            _check_text(user_id, "user_id")
        self._upstream.check_configured(Provider.OPENAI)
        op = Operation.APPLICATION_GENERATION
        policy = self.policies.for_operation(op)
        params = check_sampling(
            {"temperature": temperature, "max_tokens": max_tokens}, provider="openai", where="generate_application: "
        )
        model = self.models.application_generation
        if json_output:
            user = self._scoped_user(op, policy, user_id, strict=False)
            request = canonical_json([model, msgs, params])
            key = self._json_key(op, policy, sha256_hex(request), user)
            calls = [_Call(Provider.OPENAI, model, params)]
            return await self._run_json(op, policy, key, calls, msgs, user_id=user_id)
        payload: dict[str, Any] = {"model": model, "messages": msgs, **params}

        async def compute() -> tuple[dict[str, Any] | str, Outcome]:
            return await self._openai_chat(op, payload, policy=policy, user_id=user_id)

        return await self._serve(op, policy, None, compute)

    async def parse_resume(
        self,
        *,
        text: str | None = None,
        pdf: bytes | None = None,
        image_url: str | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Parse a resume into a JSON object: from its text or PDF (Workers AI, Llama 3.3 70B) or an
        image (OpenAI, GPT-4o vision). Not cached in KV by default; the gateway logs it for analytics.

        Pass exactly one of ``text``, ``pdf`` (the file's bytes; text is extracted locally with pypdf,
        the ``pdf`` extra) or ``image_url`` (``https://`` or ``data:image/...``). This is the built-in
        operation ``resume_parsing`` run like any JSON operation (:meth:`run`), keyed by the SHA-256 of the
        resume's text (or image URL), so a stack that turns its KV on caches it per user.

        Raises:
            InvalidInputError: not exactly one input, an empty or unreadable one.
            ImportError: ``pdf`` given without the ``pdf`` extra installed.
            ConfigError: the provider needed is not configured.
            BackendError: the provider failed.
        """
        self._check_open()
        given = [name for name, v in (("text", text), ("pdf", pdf), ("image_url", image_url)) if v is not None]
        if len(given) != 1:
            raise InvalidInputError(
                f"parse_resume takes exactly one of text=, pdf=, image_url=; got {', '.join(given) or 'none'}"
            )
        if user_id is not None:
            _check_text(user_id, "user_id")
        op = Operation.RESUME_PARSING
        policy = self.policies.for_operation(op)
        user = self._scoped_user(op, policy, user_id, strict=False)
        if image_url is not None:
            if not isinstance(image_url, str) or not image_url.startswith(("https://", "http://", "data:image/")):
                raise InvalidInputError(f"image_url must be an http(s) URL or a data:image/ URL, got {image_url!r:.80}")
            self._upstream.check_configured(Provider.OPENAI)
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": _RESUME_PROMPT},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]},
            ]
            key = self._json_key(op, policy, "image-" + sha256_hex(image_url), user)
            calls = [_Call(Provider.OPENAI, self.models.resume_parsing_image, {})]
            return await self._run_json(op, policy, key, calls, messages, user_id=user_id)
        if pdf is not None:
            from dualcache._pdf import extract_pdf_text

            resume_text = extract_pdf_text(pdf)
        else:
            resume_text = _check_text(text)
        self._upstream.check_configured(Provider.WORKERS_AI)
        messages = [
            {"role": "system", "content": _RESUME_PROMPT},
            {"role": "user", "content": resume_text},
        ]
        key = self._json_key(op, policy, "text-" + sha256_hex(resume_text), user)
        calls = [_Call(Provider.WORKERS_AI, self.models.resume_parsing_text, {})]
        return await self._run_json(op, policy, key, calls, messages, user_id=user_id)

    # -- keys and invalidation ----------------------------------------------------------------------

    def _embed_fingerprint(self) -> str | None:
        # Computed once per (models, policies): both are frozen, and every embed call needs it (a SHA-256 of
        # canonical JSON per hit was a third of the in-process hit).
        memo = self._fingerprint_memo
        if memo is not None and memo[0] is self.models and memo[1] is self.policies:
            return memo[2]
        m = self.models
        fingerprint = embedding_fingerprint(
            m.embeddings,
            dimensions=expected_dimensions(m.embeddings),
            pooling=m.embedding_pooling,
            max_input_chars=m.embedding_max_chars,
            version=self.policies.embeddings.version,
        )
        self._fingerprint_memo = (self.models, self.policies, fingerprint)
        return fingerprint

    def _embed_key(self, text: str) -> str:
        return embed_key(text, self._embed_fingerprint())

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

    def _begin_compute(self) -> int:
        """Note a computation that may write a record; returns the mark :meth:`_forgotten_since` takes."""
        self._computing += 1
        return len(self._forgets)

    def _end_compute(self) -> None:
        self._computing -= 1
        if self._computing == 0:
            self._forgets.clear()  # no computation started before these forgets is left

    def _forgotten_since(self, mark: int, store: KVStore, key: str) -> bool:
        """Whether ``key`` of ``store`` was forgotten after the computation that took ``mark`` began: its
        answer was computed from what the caller has since invalidated, so it is served but not stored."""
        return any(
            s is store and (key == k or (is_prefix and key.startswith(k))) for s, k, is_prefix in self._forgets[mark:]
        )

    async def _remove(
        self, op: Operation, store: KVStore, *, keys: Sequence[str] = (), prefix: str | None = None
    ) -> int:
        """Remove records from KV, from the write-behind queue and from computations in flight; return the count."""
        if self._computing:
            self._forgets.extend((store, k, False) for k in keys)
            if prefix is not None:
                self._forgets.append((store, prefix, True))
        removed: set[str] = set()
        if self._writes is not None:
            removed.update(self._writes.discard(store, keys=keys, prefix=prefix))
            removed.update(await self._writes.settle(store, keys=keys, prefix=prefix))
        found = [k for k in keys if await store.get(k) is not None]
        if prefix is not None:
            found += [k.name async for k in store.list_keys(prefix=prefix)]
        if found:
            await store.delete_many(found)
        removed.update(found)
        for k in removed:
            memo = self._memo.pop(k, None)
            if memo is not None:
                self._memo_used -= memo[2]
        if removed:
            logger.info("%s: forgot %d record(s) in %s", op.value, len(removed), store.binding or "KV")
        return len(removed)

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
