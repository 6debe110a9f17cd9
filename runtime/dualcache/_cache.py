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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import SecretStr

from dualcache._breaker import BreakerPolicy, CircuitBreaker
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
from dualcache._keys import analysis_key, check_utf8, embed_key, gateway_cache_key, spam_key
from dualcache._kv import Clock, CloudflareKVBackend, KVBackend, KVEntry, KVStore, SQLiteKVBackend
from dualcache._outputs import DEFAULT_API_BASE_URL, OUTPUTS_ENV_VAR, StackOutputs
from dualcache._policy import GatewayMode, Namespace, Operation, OperationPolicy, Policies
from dualcache._records import (
    EMBED_INPUT_MAX_CHARS,
    RecordStatus,
    build_embedding_record,
    encode_json_record,
    judge_embedding_record,
    judge_json_record,
    should_coalesce,
    should_read_kv,
    should_write_kv,
)
from dualcache._singleflight import SingleFlight
from dualcache._stats import Outcome, PriceTable, Stats
from dualcache._transport import Abandoner, build_client

__all__ = ["DEFAULT_DATA_DIR", "DualCache", "KVBackendFactory", "Models"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

KVBackendFactory = Callable[[Namespace], KVBackend]
"""Builds the backend of one namespace (called once per namespace, on first use)."""

DEFAULT_DATA_DIR = Path(".dualcache")
"""Where the SQLite KV file lives when neither outputs nor a KV backend are given."""

_EMBED_BATCH = 100  # Workers AI bge-base takes at most 100 texts a call (the emulator enforces the same).

_RESUME_PROMPT = (
    "You are an expert resume parser. Extract the candidate's details from the resume and answer with one JSON "
    "object with the keys: name, email, phone, location, summary, skills (list of strings), experience (list of "
    "{title, company, start, end, description}), education (list of {degree, institution, year})."
)


@dataclass(frozen=True, slots=True)
class Models:
    """The model each operation uses (the seed's choices by default).

    A change of ``embeddings`` makes every stored embedding of the old model a miss, overwritten on use.
    """

    embeddings: str = "@cf/baai/bge-base-en-v1.5"
    job_analysis: str = "@cf/meta/llama-3.1-8b-instruct"
    job_analysis_fallback: str = "gpt-4o-mini"
    spam_detection: str = "@cf/meta/llama-3.1-8b-instruct"
    application_generation: str = "gpt-4o-mini"
    resume_parsing_text: str = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    resume_parsing_image: str = "gpt-4o"


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

    Args:
        outputs: The stack's outputs. With them, KV is the Cloudflare REST API and AI calls go through
            the stack's AI Gateway. Without them, KV is a SQLite file under ``data_dir`` and AI calls go
            to the direct provider endpoints (Workers AI needs ``account_id``).
        api_token: Cloudflare API token (KV and Workers AI).
        gateway_token: Token sent as ``cf-aig-authorization`` (authenticated gateways).
        openai_api_key: OpenAI key (generation, image resumes, the job-analysis fallback).
        account_id: Cloudflare account id when no outputs are given.
        api_base_url: Cloudflare API base when no outputs are given.
        policies: Cache policies; default: those of ``outputs``, else SPEC.md's defaults.
        kv: Builds the KV backend of a namespace; default: Cloudflare REST with outputs, else SQLite.
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
        decode_memo_size: How many decoded embedding records to keep, keyed by their exact stored bytes
            (a hit on unchanged bytes skips JSON decoding; it never serves anything KV did not return).
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
        decode_memo_size: int = 256,
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
        if decode_memo_size < 0:
            raise ConfigError(f"decode_memo_size={decode_memo_size!r}: must be >= 0")
        self.outputs = outputs
        self.policies = policies or (outputs.policies if outputs else Policies())
        self.models = models or Models()
        self.stats = Stats(prices)
        self._clock: Clock = clock or time.time
        self._api_token = _secret(api_token, "api_token")
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
        self._memo: OrderedDict[str, tuple[bytes, list[float]]] = OrderedDict()
        self._memo_size = decode_memo_size
        self._closed = False
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
        **kwargs: Any,
    ) -> DualCache:
        """Build a cache for the stack described by ``outputs`` (other arguments as in the constructor)."""
        if not isinstance(outputs, StackOutputs):
            raise ConfigError(f"outputs must be a StackOutputs, got {type(outputs).__name__}")
        return cls(outputs, api_token=api_token, gateway_token=gateway_token, openai_api_key=openai_api_key, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> DualCache:
        """Build a cache from the environment: ``DUALCACHE_OUTPUTS`` (a path or the JSON),
        ``CLOUDFLARE_API_TOKEN``, ``CF_AIG_TOKEN`` and ``OPENAI_API_KEY`` (each optional but the first).

        Raises:
            ConfigError: ``DUALCACHE_OUTPUTS`` is unset or invalid.
        """
        outputs = StackOutputs.from_env(OUTPUTS_ENV_VAR)
        kwargs.setdefault("api_token", os.environ.get("CLOUDFLARE_API_TOKEN") or None)
        kwargs.setdefault("gateway_token", os.environ.get("CF_AIG_TOKEN") or None)
        kwargs.setdefault("openai_api_key", os.environ.get("OPENAI_API_KEY") or None)
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
        """Close the HTTP client and the KV backends. Calls after this raise :class:`~dualcache.UsageError`."""
        if self._closed:
            return
        self._closed = True
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
            return CloudflareKVBackend(
                self._kv_http,
                api_base_url=self.outputs.api_base_url,
                account_id=self.outputs.account_id,
                namespace_id=self.outputs.namespace_id(namespace),
                api_token=self._api_token,
                # Every phase within the longer KV budget; a read is abandoned at kv_read by KVStore before.
                timeout=max(self.timeouts.kv_read, self.timeouts.kv_write),
            )
        return SQLiteKVBackend(self._data_dir / "kv.sqlite3", namespace.value, clock=self._clock)

    def kv(self, binding: Namespace | str) -> KVStore:
        """Return async access to one of the six namespaces (``SESSIONS``, ``RATE_LIMITS``, ...).

        Raises:
            InvalidInputError: ``binding`` names no namespace.
        """
        self._check_open()
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
                breaker=CircuitBreaker(f"kv {namespace.value}", self._breaker_policy, clock=self._monotonic),
                abandoner=Abandoner(self.timeouts.grace),
            )
            self._stores[namespace] = store
        return store

    def _store(self, policy: OperationPolicy) -> KVStore:
        assert policy.kv_namespace is not None  # guaranteed by OperationPolicy when kv is on
        return self.kv(policy.kv_namespace)

    async def _kv_read(self, op: Operation, store: KVStore, key: str) -> tuple[bytes | None, bool]:
        """Return ``(value, ok)``; a failure is a miss, counted in ``errors``; a read not sent (open
        breaker, no place at the pool) is a miss counted in ``kv_skipped``.

        Logged at debug level only: an outage is logged once, by the breaker, not once per key.
        """
        try:
            return await store.get(key), True
        except SkippedError as exc:
            self.stats.skip(op, "kv")
            logger.debug("%s: KV read of %r skipped (%s), treated as a miss", op.value, key, exc.reason)
            return None, False
        except BackendError as exc:
            self.stats.error(op)
            logger.debug("%s: KV read of %r failed, treated as a miss: %s", op.value, key, exc)
            return None, False

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
    ) -> UpstreamResult:
        record = CallRecord()
        cache_key = (
            gateway_cache_key(op.value, provider.value, path, payload, user_id=user_id)
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
        """Run ``compute`` (single-flight on ``flight_key`` when the policy allows) and count the outcome."""
        try:
            if flight_key is not None and should_coalesce(policy):
                (value, outcome), coalesced = await self._flights.run(f"{op.value}\x00{flight_key}", compute)
                if coalesced:
                    value, outcome = _copy_result(value), Outcome.COALESCED
            else:
                value, outcome = await compute()
        except BaseException:
            self.stats.record(op, Outcome.FAILED)
            raise
        self.stats.record(op, outcome)
        return value

    @staticmethod
    def _outcome(result: UpstreamResult) -> Outcome:
        return Outcome.GATEWAY_HIT if result.gateway_hit else Outcome.PROVIDER

    # -- embeddings ---------------------------------------------------------------------------------

    def _judge_embedding(self, key: str, raw: bytes | None) -> tuple[RecordStatus, list[float] | None]:
        if raw is not None and self._memo_size:
            memo = self._memo.get(key)
            if memo is not None and (memo[0] is raw or memo[0] == raw):
                self._memo.move_to_end(key)
                return RecordStatus.HIT, list(memo[1])
        status, vector = judge_embedding_record(raw, self.models.embeddings)
        if status is RecordStatus.HIT and vector is not None and raw is not None and self._memo_size:
            self._memo[key] = (raw, vector)
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
            return status, list(vector)
        return status, vector

    def _embedding_entry(self, key: str, text: str, vector: list[float], ttl: int | None) -> KVEntry:
        record = build_embedding_record(text, vector, self.models.embeddings, self._clock())
        return KVEntry(key, encode_json_record(record), ttl)

    @staticmethod
    def _vectors(result: UpstreamResult, expected: int) -> list[list[float]]:
        data = result.data.get("data") if isinstance(result.data, dict) else None
        if (
            not isinstance(data, list)
            or len(data) != expected
            or not all(isinstance(v, list) and v and all(isinstance(x, int | float) for x in v) for v in data)
        ):
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise_bad = f"workers-ai embeddings: expected {expected} vectors in result.data, got {got}"
            raise BadResponseError(raise_bad, backend="workers-ai")
        return [[float(x) for x in v] for v in data]

    async def embed(self, text: str) -> list[float]:
        """Return the embedding of ``text`` (KV, then gateway, then Workers AI).

        The key hashes the full text; the text sent to the model is cut to 2,000 characters (as the
        seed does). Identical concurrent calls share one upstream call and one KV write.

        Raises:
            InvalidInputError: ``text`` is empty or not a string.
            ConfigError: Workers AI is not configured.
            BackendError: the provider failed on every route (KV failures never raise).
        """
        self._check_open()
        _check_text(text)
        self._upstream.check_configured(Provider.WORKERS_AI)
        op, policy = Operation.EMBEDDINGS, self.policies.embeddings
        key = embed_key(text)

        async def compute() -> tuple[list[float], Outcome]:
            read: RecordStatus | None = RecordStatus.MISSING
            if should_read_kv(policy):
                raw, ok = await self._kv_read(op, self._store(policy), key)
                read, vector = self._judge_embedding(key, raw) if ok else (None, None)
                if vector is not None:
                    return vector, Outcome.KV_HIT
            payload = {"text": text[:EMBED_INPUT_MAX_CHARS]}
            result = await self._upstream_call(op, Provider.WORKERS_AI, self.models.embeddings, payload, policy=policy)
            vector = self._vectors(result, 1)[0]
            if should_write_kv(policy, read):
                await self._kv_write(op, self._store(policy), [self._embedding_entry(key, text, vector, policy.kv_ttl)])
            return vector, self._outcome(result)

        return await self._serve(op, policy, key, compute)

    async def embed_many(self, texts: Sequence[str]) -> list[list[float]]:
        """Return the embeddings of ``texts``, in input order, duplicates included.

        One KV bulk read per 100 distinct keys, one upstream call per 100 distinct misses (a text
        repeated in the batch is sent once), one KV bulk write for the new records. Texts already in
        flight in this process (another ``embed``/``embed_many``) are awaited, not sent again.

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
        keys = [embed_key(t) for t in texts]
        distinct: dict[str, str] = dict(zip(keys, texts, strict=True))
        results: dict[str, list[float]] = {}
        outcomes: dict[str, Outcome] = {}
        coalesce = should_coalesce(policy)
        waiting: dict[str, asyncio.Future[Any]] = {}
        if coalesce:
            for k in distinct:
                fut = self._flights.in_flight(f"{op.value}\x00{k}")
                if fut is not None:
                    waiting[k] = fut
        lead = [k for k in distinct if k not in waiting]
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[Any]] = {}
        if coalesce:
            for k in lead:
                futures[k] = loop.create_future()
                self._flights.start(f"{op.value}\x00{k}", futures[k])
        try:
            await self._embed_lead(op, policy, lead, distinct, results, outcomes)
        except BaseException as exc:
            for k, fut in futures.items():
                if fut.done():
                    continue
                if k in results:
                    fut.set_result((results[k], outcomes[k]))
                elif isinstance(exc, asyncio.CancelledError):
                    fut.cancel()  # joiners see the cancellation, as with a cancelled task
                else:
                    fut.set_exception(exc)
            self.stats.record(op, Outcome.FAILED, len(texts))
            raise
        for k, fut in futures.items():
            fut.set_result((results[k], outcomes[k]))
        try:
            for k, fut in waiting.items():
                value, _ = await asyncio.shield(fut)
                results[k], outcomes[k] = value, Outcome.COALESCED
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

    async def _embed_lead(
        self,
        op: Operation,
        policy: OperationPolicy,
        lead: list[str],
        distinct: Mapping[str, str],
        results: dict[str, list[float]],
        outcomes: dict[str, Outcome],
    ) -> None:
        if not lead:
            return
        reads: dict[str, RecordStatus | None] = dict.fromkeys(lead, RecordStatus.MISSING)
        if should_read_kv(policy):
            store = self._store(policy)
            try:
                raws = await store.get_many(lead)
            except BackendError as exc:
                self.stats.error(op)
                logger.warning("%s: KV bulk read failed, %d keys treated as misses: %s", op.value, len(lead), exc)
                reads = dict.fromkeys(lead, None)
            else:
                for k in lead:
                    status, vector = self._judge_embedding(k, raws.get(k))
                    reads[k] = status
                    if vector is not None:
                        results[k], outcomes[k] = vector, Outcome.KV_HIT
        misses = [k for k in lead if k not in results]
        by_input: dict[str, list[str]] = {}
        for k in misses:
            by_input.setdefault(distinct[k][:EMBED_INPUT_MAX_CHARS], []).append(k)
        inputs = list(by_input)
        for i in range(0, len(inputs), _EMBED_BATCH):
            chunk = inputs[i : i + _EMBED_BATCH]
            result = await self._upstream_call(
                op, Provider.WORKERS_AI, self.models.embeddings, {"text": chunk}, policy=policy
            )
            outcome = self._outcome(result)
            for text_in, vector in zip(chunk, self._vectors(result, len(chunk)), strict=True):
                for j, k in enumerate(by_input[text_in]):
                    # Two texts with the same first 2,000 characters share one upstream item.
                    results[k], outcomes[k] = (
                        (vector if j == 0 else list(vector)),
                        (outcome if j == 0 else Outcome.COALESCED),
                    )
        entries = [
            self._embedding_entry(k, distinct[k], results[k], policy.kv_ttl)
            for k in misses
            if should_write_kv(policy, reads[k])
        ]
        if entries:
            await self._kv_write(op, self._store(policy), entries)

    # -- JSON operations ----------------------------------------------------------------------------

    async def _cached_json(
        self,
        op: Operation,
        key: str,
        fetch: Callable[[], Awaitable[tuple[dict[str, Any], Outcome]]],
    ) -> dict[str, Any]:
        policy = self.policies.for_operation(op)

        async def compute() -> tuple[dict[str, Any], Outcome]:
            read: RecordStatus | None = RecordStatus.MISSING
            if should_read_kv(policy):
                raw, ok = await self._kv_read(op, self._store(policy), key)
                if ok:
                    read, value = judge_json_record(raw)
                    if value is not None:
                        return value, Outcome.KV_HIT
                else:
                    read = None
            value, outcome = await fetch()
            if should_write_kv(policy, read):
                await self._kv_write(op, self._store(policy), [KVEntry(key, encode_json_record(value), policy.kv_ttl)])
            return value, outcome

        return await self._serve(op, policy, key, compute)

    async def _workers_ai_json(
        self,
        op: Operation,
        model: str,
        payload: Mapping[str, Any],
        *,
        user_id: str | None = None,
    ) -> tuple[dict[str, Any], Outcome]:
        policy = self.policies.for_operation(op)
        # JSON mode (cloudflare-facts §3): result.response is then an object; a string is parsed too.
        payload = {**payload, "response_format": {"type": "json_object"}}
        result = await self._upstream_call(op, Provider.WORKERS_AI, model, payload, policy=policy, user_id=user_id)
        answer = result.data.get("response") if isinstance(result.data, dict) else result.data
        return parse_json_object(answer, backend="workers-ai"), self._outcome(result)

    async def _openai_chat(
        self,
        op: Operation,
        payload: Mapping[str, Any],
        *,
        user_id: str | None = None,
    ) -> tuple[str, Outcome]:
        policy = self.policies.for_operation(op)
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

    async def analyze_job(self, *, user_id: str, job_id: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Return the compatibility analysis of a job for a user (a JSON object).

        Cached in KV per user and job (``analysis:{userId}:{jobId}``, 7 days by default), gateway cache
        skipped. Workers AI answers first; when it fails (on every route), OpenAI answers instead.

        Raises:
            InvalidInputError: an empty id, or malformed ``messages``.
            ConfigError: neither Workers AI nor OpenAI is configured.
            BackendError: both providers failed.
        """
        self._check_open()
        key = analysis_key(user_id, job_id)
        msgs = _check_messages(messages)
        op = Operation.JOB_ANALYSIS
        try:
            self._upstream.check_configured(Provider.WORKERS_AI)
            workers_ai = True
        except ConfigError:
            self._upstream.check_configured(Provider.OPENAI)
            workers_ai = False
        try:
            self._upstream.check_configured(Provider.OPENAI)
            openai = True
        except ConfigError:
            openai = False

        async def fetch() -> tuple[dict[str, Any], Outcome]:
            if workers_ai:
                try:
                    return await self._workers_ai_json(
                        op, self.models.job_analysis, {"messages": msgs}, user_id=user_id
                    )
                except BackendError as exc:
                    if not openai:
                        raise
                    self.stats.error(op)
                    logger.warning("job_analysis: Workers AI failed (%s); falling back to OpenAI", exc)
            payload = {
                "model": self.models.job_analysis_fallback,
                "messages": _with_json_instruction(msgs),
                "temperature": 0.3,
                "response_format": {"type": "json_object"},
            }
            content, outcome = await self._openai_chat(op, payload, user_id=user_id)
            return parse_json_object(content, backend="openai"), outcome

        return await self._cached_json(op, key, fetch)

    async def detect_spam(self, *, job_id: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Return the spam verdict for a job posting (a JSON object).

        Cached in KV per job (``spam:{jobId}``, 7 days) and in the gateway (24 hours) by default.

        Raises:
            InvalidInputError: an empty id, or malformed ``messages``.
            ConfigError: Workers AI is not configured.
            BackendError: the provider failed on every route.
        """
        self._check_open()
        key = spam_key(job_id)
        msgs = _check_messages(messages)
        self._upstream.check_configured(Provider.WORKERS_AI)
        op = Operation.SPAM_DETECTION

        async def fetch() -> tuple[dict[str, Any], Outcome]:
            return await self._workers_ai_json(op, self.models.spam_detection, {"messages": msgs})

        return await self._cached_json(op, key, fetch)

    async def generate_application(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        user_id: str | None = None,
        json_output: bool = True,
        temperature: float = 0.7,
        max_tokens: int = 3000,
    ) -> dict[str, Any] | str:
        """Generate a resume or cover letter with OpenAI (never cached: personalized and meant fresh).

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
        payload: dict[str, Any] = {
            "model": self.models.application_generation,
            "messages": msgs,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if json_output:
            payload["messages"] = _with_json_instruction(msgs)
            payload["response_format"] = {"type": "json_object"}

        async def compute() -> tuple[dict[str, Any] | str, Outcome]:
            content, outcome = await self._openai_chat(op, payload, user_id=user_id)
            return (parse_json_object(content, backend="openai") if json_output else content), outcome

        return await self._serve(op, self.policies.application_generation, None, compute)

    async def parse_resume(
        self,
        *,
        text: str | None = None,
        pdf: bytes | None = None,
        image_url: str | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Parse a resume into a JSON object: from its text or PDF (Workers AI, Llama 3.3 70B) or an
        image (OpenAI, GPT-4o vision). Not cached in KV; the gateway logs it for analytics.

        Pass exactly one of ``text``, ``pdf`` (the file's bytes; text is extracted locally with pypdf,
        the ``pdf`` extra) or ``image_url`` (``https://`` or ``data:image/...``).

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
        policy = self.policies.resume_parsing
        if image_url is not None:
            if not isinstance(image_url, str) or not image_url.startswith(("https://", "http://", "data:image/")):
                raise InvalidInputError(f"image_url must be an http(s) URL or a data:image/ URL, got {image_url!r:.80}")
            self._upstream.check_configured(Provider.OPENAI)
            payload: dict[str, Any] = {
                "model": self.models.resume_parsing_image,
                "messages": [
                    {"role": "system", "content": _RESUME_PROMPT},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]},
                ],
                "response_format": {"type": "json_object"},
            }

            async def from_image() -> tuple[dict[str, Any], Outcome]:
                content, outcome = await self._openai_chat(op, payload, user_id=user_id)
                return parse_json_object(content, backend="openai"), outcome

            return await self._serve(op, policy, None, from_image)
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

        async def from_text() -> tuple[dict[str, Any], Outcome]:
            return await self._workers_ai_json(
                op, self.models.resume_parsing_text, {"messages": messages}, user_id=user_id
            )

        return await self._serve(op, policy, None, from_text)
