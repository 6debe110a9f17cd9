"""The caching engine under every operation: KV, then the AI Gateway, then the provider.

:class:`CacheEngine` is what an operation is built on, keyed by an :class:`~dualcache.Operation` and its
:class:`~dualcache.OperationPolicy`, knowing nothing of embeddings or chat:

* the KV layer: a namespace's store (:meth:`CacheEngine.kv`), reading one key (a failure is a counted
  miss, never raised), bulk reads, reads shared by concurrent callers of the same key, and the hit path
  (:meth:`CacheEngine._read_hit`: the KV read, else a record still queued for writing);
* the upstream layers: one call through the gateway (or direct) with its attempts, faults and skips
  counted;
* single-flight: a miss computed once for every identical concurrent caller, detached from each;
* the write path: the cache's own records written behind the call (or synchronously), and
  :meth:`CacheEngine.flush`;
* stats: every outcome counted once per caller;
* invalidation: records removed from KV, the write-behind queue and the decode memo, and computations
  in flight told not to store what they were computing.

The operations built on it (``dualcache._embed_ops``, ``dualcache._json_ops``) decide keys, payloads and
how a stored record is decoded; :class:`~dualcache.DualCache` composes them with this engine and builds
its state. The input checks of ids and texts every operation shares live here too, run before any I/O.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import SecretStr

from dualcache._breaker import BreakerPolicy, CircuitBreaker
from dualcache._budget import RequestBudget
from dualcache._budgets import Timeouts
from dualcache._exceptions import BackendError, InvalidInputError, SkippedError, UsageError, UserLimitExceededError
from dualcache._gateway import CallRecord, Provider, UpstreamClient, UpstreamResult
from dualcache._keys import check_utf8, gateway_cache_key
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
from dualcache._limits import DataPlaneRateLimiter, Refusal, UserLimiter, UserLimits, rate_key, user_label
from dualcache._outputs import StackOutputs
from dualcache._policy import Namespace, Operation, OperationPolicy
from dualcache._pricing import Prices, TokenPrices
from dualcache._records import RecordStatus, should_coalesce
from dualcache._singleflight import Flight, SharedReads, SingleFlight
from dualcache._stats import Outcome, Stats
from dualcache._transport import Abandoner
from dualcache._writebehind import WriteBehind

if TYPE_CHECKING:
    from dualcache._otel import Telemetry

__all__ = ["CacheEngine"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")


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


def _check_id(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a non-empty string, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise InvalidInputError(f"{name} is empty; pass a non-empty {name}")
    check_utf8(name, value)
    return value


def _check_text(text: object, name: str = "text") -> str:
    if not isinstance(text, str):
        raise InvalidInputError(f"{name} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError(f"{name} is empty (or only whitespace); pass the text to process")
    check_utf8(name, text)
    return text


class CacheEngine:
    """The generic caching engine: the KV, gateway and provider layers, single-flight, write-behind, stats
    and invalidation, for any :class:`~dualcache.Operation` under its policy.

    A base class, not used alone: :class:`~dualcache.DualCache` derives from it (through the operations)
    and sets the state declared here in its constructor, the one place that builds collaborators.
    """

    outputs: StackOutputs | None
    timeouts: Timeouts
    stats: Stats
    _closed: bool
    _clock: Clock
    _kv_factory: Callable[[Namespace], KVBackend] | None  # a KVBackendFactory
    _kv_http: httpx.AsyncClient
    _api_token: SecretStr | None
    _data_plane_token: SecretStr | None
    _rest_budget: RequestBudget | None
    _data_dir: Path
    _stores: dict[Namespace, KVStore]
    _breaker_policy: BreakerPolicy
    _monotonic: Callable[[], float]
    _upstream: UpstreamClient
    _on_upstream: Callable[[Operation, UpstreamResult], object] | None
    _flights: SingleFlight
    _reads: SharedReads
    _writes: WriteBehind | None
    _computing: int  # computations that may write a record (see _forgotten_since)
    _forgets: list[tuple[KVStore, str, bool]]
    _memo: OrderedDict[str, tuple[bytes, list[float], int]]  # the decode memo (dropped on forget)
    _memo_used: int
    _user_limits: dict[str, UserLimits]  # per operation name (dualcache._limits)
    _user_limiter: UserLimiter
    _rate_limiter: DataPlaneRateLimiter | None  # the data plane's rate limiting bindings, when a limit names one
    _telemetry: Telemetry | None  # OpenTelemetry hooks (dualcache._otel); None: off, one branch per hook
    _token_prices: Prices | None  # per-token prices (dualcache._pricing); None: the per-request PriceTable only
    # The JSON memo: checked JSON records by KV key, (bytes, operation, answer schema, bytes charged); see
    # JsonOperations._decode_json. Dropped on forget, as the decode memo.
    _json_memo: OrderedDict[str, tuple[bytes, str, Any, int]]
    _json_memo_used: int

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this DualCache is closed; create a new one")

    async def _admit(self, op: Operation, user_id: str | None, n: int = 1) -> None:
        """Count ``n`` requests of ``user_id`` against ``op``'s per-user limits, or raise.

        The one check at the entry of every operation call, after its input checks and before any other I/O;
        cached answers count too (see ``dualcache._limits``). A call without a user id is not counted. With
        a ``binding``, requests are counted by the data plane's rate limiting binding (one count a call);
        when it cannot be reached, by the local counter instead (counted in ``limit_fallbacks``).

        Raises:
            UserLimitExceededError: the user is over a limit (counted in ``limited``).
        """
        limits = self._user_limits.get(op.value)
        if limits is None or user_id is None:
            return
        dollars = (self.stats.prices.price(op) or 0.0) * n
        local: UserLimits | None = limits
        refusal: Refusal | None = None
        if limits.binding is not None and self._rate_limiter is not None:
            try:
                admitted = await self._rate_limiter.limit(limits.binding, rate_key(op.value, user_id))
            except BackendError as exc:  # a cache must never become an outage: count it locally instead
                self.stats.limit_fallback(op)
                logger.debug(
                    "%s: rate limiter %s not used (%s); counted in this process", op.value, limits.binding, exc
                )
            else:
                local = dataclasses.replace(limits, requests=None, binding=None) if limits.dollars is not None else None
                if not admitted:
                    # The binding says no more than that; its window is at most `per` long.
                    refusal = Refusal("requests", f"{limits.requests} requests per {limits.per:g} s", limits.per)
        if refusal is None and local is not None:
            refusal = self._user_limiter.acquire(op.value, user_id, local, requests=n, dollars=dollars)
        if refusal is None:
            return
        self.stats.limited(op, n)
        user = user_label(user_id)
        wait = "never under this limit (one call needs more than all of it)"
        if refusal.retry_after != float("inf"):
            wait = f"retry in {round(refusal.retry_after, 1):g} s"
        logger.debug("%s: %s over its %s limit, %s", op.value, user, refusal.limit, wait)
        raise UserLimitExceededError(
            f"{op.value}: {user} is over its limit of {refusal.description} ({n} more asked); {wait}",
            operation=op.value,
            limit=refusal.limit,
            retry_after=refusal.retry_after,
            user=user,
        )

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
        started = time.perf_counter()
        try:
            value = await store.get(key)
            self.stats.observe(op, "kv_read", time.perf_counter() - started)
            return value, True
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
        started = time.perf_counter()
        batch = await store.get_many_partial(keys)
        if not batch.errors:
            self.stats.observe(op, "kv_read", time.perf_counter() - started)
        for exc in batch.errors:
            lost = sum(1 for e in batch.failed.values() if e is exc)
            if isinstance(exc, SkippedError):
                self.stats.skip(op, "kv")
                continue
            self.stats.error(op)
            logger.warning("%s: KV bulk read failed, %d keys treated as misses: %s", op.value, lost, exc)
        return batch

    async def _kv_read_chunks(
        self, op: Operation, store: KVStore, keys: list[str]
    ) -> dict[str, tuple[bytes | None, bool]]:
        """Bulk-read ``keys``, <= 100 a request; return ``(value, ok)`` per key. A failed chunk costs only its
        own keys (``ok`` false), counted once in ``errors``."""
        batch = await self._kv_read_many(op, store, keys)
        return {k: (None, _busy(batch.failed[k])) if k in batch.failed else (batch.values.get(k), True) for k in keys}

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
            if self._telemetry is None:
                raw, ok = await self._read_shared(op, store, flight_key, key)
            else:
                raw, ok = await self._traced_read(op, store, flight_key, key)
        except BaseException:
            self.stats.record(op, Outcome.FAILED)
            raise
        read, value = decode(op, key, raw) if ok else (None, None)
        if value is None and (pending := self._pending(store, key)) is not None:
            value = decode(op, key, pending)[1]
        if value is not None:
            self.stats.record(op, Outcome.KV_HIT)
        return read, value

    async def _traced_read(self, op: Operation, store: KVStore, flight_key: str, key: str) -> tuple[bytes | None, bool]:
        """:meth:`_read_shared` inside a KV read span (tracing on)."""
        assert self._telemetry is not None
        with self._telemetry.kv_read(store.binding, 1) as found:
            raw, ok = await self._read_shared(op, store, flight_key, key)
            found(int(raw is not None))
        return raw, ok

    def _pending(self, store: KVStore, key: str) -> bytes | None:
        """The record of ``key`` still in the write-behind queue (a miss served from it is a KV hit)."""
        return None if self._writes is None else self._writes.pending(store, key)

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

    async def _kv_write(self, op: Operation, store: KVStore, entries: list[KVEntry]) -> None:
        """Write ``entries`` (one put, or one bulk write); a failure is counted, never raised."""
        if not entries:
            return
        started = time.perf_counter()
        try:
            if len(entries) == 1:
                e = entries[0]
                await store.put(e.key, e.value, ttl=e.ttl, metadata=e.metadata)
            else:
                await store.put_many(entries)
            self.stats.observe(op, "kv_write", time.perf_counter() - started)
        except SkippedError as exc:
            self.stats.skip(op, "kv")
            logger.debug("%s: KV write of %d key(s) skipped (%s)", op.value, len(entries), exc.reason)
        except BackendError as exc:
            self.stats.error(op)
            logger.warning("%s: KV write of %d key(s) failed, answer still served: %s", op.value, len(entries), exc)

    # -- single-flight, the upstream layers, stats --------------------------------------------------

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
            if self._telemetry is not None:
                self._telemetry.coalesced()
            return _copy_result(value), Outcome.COALESCED
        return value, outcome

    def _joinable(self, prefix: str, keys: Iterable[str]) -> dict[str, Flight]:
        found: dict[str, Flight] = {}
        for k in keys:
            flight = self._flights.get(prefix + k)
            if flight is not None:
                found[k] = flight
        return found

    def _joinable_reads(self, prefix: str, keys: Iterable[str]) -> dict[str, asyncio.Future[Any]]:
        found: dict[str, asyncio.Future[Any]] = {}
        for k in keys:
            future = self._reads.join(prefix + k)
            if future is not None:
                found[k] = future
        return found

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
        requests: int = 1,
    ) -> UpstreamResult:
        """One upstream call of ``op``; ``requests`` is how many requests of it the answer serves (the texts of
        a batch of embeddings), for the token figures of :meth:`~dualcache.Stats.usage`."""
        record = CallRecord()
        # Computed whatever the gateway mode: sent as cf-aig-cache-key when caching, and always as the request's
        # id in cf-aig-metadata, which the gateway logs keep (the repeat intervals of `dualcache report`).
        cache_key = gateway_cache_key(op.value, provider.value, path, payload, user_id=user_id, version=policy.version)
        started = time.perf_counter()
        model = payload.get("model")
        model = model if isinstance(model, str) else path  # OpenAI names it in the body; Workers AI in the path
        prices = None if self._token_prices is None else self._token_prices.for_call(op.value, model)
        # The gateway prices the call as we do (its analytics then agree with these stats).
        extra = None if prices is None else {"cf-aig-custom-cost": prices.custom_cost_header()}
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
                extra_gateway_headers=extra,
            )
            self._count_usage(op, result, prices, requests)
            logger.debug(
                "%s: %s via %s, cache status %s, log id %s",
                op.value,
                provider.value,
                result.route.value,
                result.cache_status,
                result.log_id,
            )
            self.stats.observe(op, "gateway" if result.gateway_hit else "provider", time.perf_counter() - started)
            if self._on_upstream is not None:
                try:
                    self._on_upstream(op, result)
                except Exception:  # an observer must never fail the call it observes
                    logger.exception("%s: the on_upstream hook raised; the answer is still served", op.value)
            return result
        finally:
            self.stats.upstream(op, record.attempts)
            if record.faults:
                self.stats.error(op, record.faults)
            for layer in record.skipped:
                self.stats.skip(op, layer)

    def _count_usage(self, op: Operation, result: UpstreamResult, prices: TokenPrices | None, requests: int) -> None:
        """Count the tokens of an answer (and its cost when token prices apply) in the stats."""
        usage = result.usage
        if usage is None:
            return
        self.stats.usage(
            op,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            cost=None if prices is None else prices.cost(usage),
            prompt_cache_saving=0.0 if prices is None else prices.prompt_cache_saving(usage),
            requests=requests,
            gateway_hit=result.gateway_hit,
        )

    @staticmethod
    def _outcome(result: UpstreamResult) -> Outcome:
        return Outcome.GATEWAY_HIT if result.gateway_hit else Outcome.PROVIDER

    # -- write-behind -------------------------------------------------------------------------------

    async def _kv_save(self, op: Operation, store: KVStore, entries: list[KVEntry]) -> None:
        """Write the cache's own records: queued for write-behind (returns at once), or synchronously."""
        if self._telemetry is not None:
            with self._telemetry.kv_write(store.binding, len(entries), write_behind=self._writes is not None):
                await self._kv_save_now(op, store, entries)
            return
        await self._kv_save_now(op, store, entries)

    async def _kv_save_now(self, op: Operation, store: KVStore, entries: list[KVEntry]) -> None:
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

    # -- invalidation -------------------------------------------------------------------------------

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
            checked = self._json_memo.pop(k, None)
            if checked is not None:
                self._json_memo_used -= checked[3]
        if removed:
            logger.info("%s: forgot %d record(s) in %s", op.value, len(removed), store.binding or "KV")
        return len(removed)
