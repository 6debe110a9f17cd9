"""The embedding operations on the caching engine: ``embed`` and ``embed_many``.

:class:`EmbedOperations` decides what is particular to embeddings: the key (the SHA-256 of the text and the
embedding fingerprint of :class:`~dualcache.Models` and the policy's version), the Workers AI payload (the
text cut to ``embedding_max_chars``, ``pooling``), the checks of the vectors returned, the stored record and
its decode memo, and the batching of ``embed_many`` (one bulk read per 100 keys, one upstream call per 100
misses). Reads, single-flight, write-behind, stats and invalidation are the engine's
(:class:`~dualcache._engine.CacheEngine`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dualcache._answers import check_vectors
from dualcache._engine import CacheEngine, _check_id, _check_text
from dualcache._exceptions import InvalidInputError
from dualcache._gateway import Provider, UpstreamResult, embedding_request
from dualcache._keys import embed_key, embedding_fingerprint
from dualcache._kv import KVEntry
from dualcache._otel import traced
from dualcache._policy import Operation, OperationPolicy, Policies
from dualcache._records import (
    RecordStatus,
    build_embedding_record,
    encode_json_record,
    expected_dimensions,
    judge_embedding_record,
    should_coalesce,
    should_read_kv,
    should_write_kv,
)
from dualcache._singleflight import Flight
from dualcache._stats import Outcome

if TYPE_CHECKING:
    from dualcache._cache import Models

__all__ = ["EmbedOperations"]

_EMBED_BATCH = 100  # Workers AI bge-base takes at most 100 texts a call (the emulator enforces the same).


class EmbedOperations(CacheEngine):
    """The operation ``embeddings`` (:meth:`embed`, :meth:`embed_many`), built on :class:`CacheEngine`.

    A base of :class:`~dualcache.DualCache`, which sets the state declared here in its constructor.
    """

    policies: Policies
    models: Models
    _fingerprint_memo: tuple[Models, Policies, str | None] | None
    _memo_bytes: int  # the decode memo's byte budget (0: off)
    _memo_entries: int | None

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

    def _decode_embedding(self, op: Operation, key: str, raw: bytes | None) -> tuple[RecordStatus, list[float] | None]:
        try:
            return self._judge_embedding(key, raw)
        except Exception as exc:
            return self._undecodable(op, key, exc)

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

    def _embed_request(self, text: str | list[str]) -> tuple[Provider, str, dict[str, Any]]:
        """``(provider, path, body)`` of an embeddings call (Workers AI, or OpenAI: see ``embedding_request``)."""
        m = self.models
        return embedding_request(m.embeddings, text, pooling=m.embedding_pooling, encoding=m.embedding_encoding)

    def _embedding_entry(self, key: str, text: str, vector: list[float], ttl: int | None) -> KVEntry:
        record = build_embedding_record(text, vector, self.models.embeddings, self._clock())
        return KVEntry(key, encode_json_record(record), ttl)

    @staticmethod
    def _vectors(result: UpstreamResult, expected: int, dims: int | None = None) -> list[list[float]]:
        # The model's dimension, finite numbers only (dualcache._answers); rounded as a stored record would be:
        # a miss returns the very vector a later hit returns.
        data = result.data.get("data") if isinstance(result.data, dict) else None
        return check_vectors(data, count=expected, dims=dims)

    def _embed_provider(self) -> Provider:
        """The provider of the embeddings model, as :func:`embedding_request` chooses it (no body built)."""
        return Provider.WORKERS_AI if self.models.embeddings.startswith("@cf/") else Provider.OPENAI

    def _describe_embed(self, *_: Any, **__: Any) -> tuple[str, str | None, str | None]:
        return Operation.EMBEDDINGS.value, self.models.embeddings, self._embed_provider().value

    @traced(_describe_embed)
    async def embed(self, text: str, *, user_id: str | None = None) -> list[float]:
        """Return the embedding of ``text`` (KV, then gateway, then Workers AI).

        The key hashes the full text; the text sent to the model is cut to 2,000 characters (as the
        existing Worker does). Identical concurrent calls share one upstream call and one KV write. A hit reads
        KV and returns; only a miss enters single-flight. A cancelled call cancels no other.

        Args:
            text: The text to embed.
            user_id: Whose call this is, for the per-user limits only (embeddings are shared by every
                user: the id is in no key); ``None`` is not counted.

        Raises:
            InvalidInputError: ``text`` is empty or not a string, or ``user_id`` is empty.
            ConfigError: Workers AI is not configured.
            UserLimitExceededError: ``user_id`` is over the per-user limits of ``embeddings`` (before any I/O).
            BackendError: the provider failed on every route (KV failures never raise).
        """
        self._check_open()
        _check_text(text)
        if user_id is not None:
            _check_id(user_id, "user_id")
        self._upstream.check_configured(self._embed_provider())
        op, policy = Operation.EMBEDDINGS, self.policies.embeddings
        if user_id is not None and self._user_limits:  # no coroutine on the hit path without limits
            await self._admit(op, user_id)
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
                provider, path, payload = self._embed_request(text[: self.models.embedding_max_chars])
                dims = expected_dimensions(self.models.embeddings)
                result = await self._upstream_call(
                    op,
                    provider,
                    path,
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

    @traced(_describe_embed)
    async def embed_many(self, texts: Sequence[str], *, user_id: str | None = None) -> list[list[float]]:
        """Return the embeddings of ``texts``, in input order, duplicates included.

        One KV bulk read per 100 distinct keys (a failed one costs only its own keys), one upstream call
        per 100 distinct misses (a text repeated in the batch is sent once), one KV bulk write for the
        new records. Texts already in flight in this process (another ``embed``/``embed_many``) are
        awaited, not sent again. The misses are computed detached from this caller: when it is cancelled,
        the callers that joined them still get their answers.

        ``user_id`` is for the per-user limits only (as in :meth:`embed`): the call uses one request per text.

        Raises:
            InvalidInputError: ``texts`` is not a list of non-empty strings, or ``user_id`` is empty.
            ConfigError: Workers AI is not configured.
            UserLimitExceededError: ``user_id`` is over the per-user limits of ``embeddings`` (before any I/O;
                all or nothing: no text is counted).
            BackendError: the provider failed on every route.
        """
        self._check_open()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInputError(f"texts must be a list of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            _check_text(t, f"texts[{i}]")
        if user_id is not None:
            _check_id(user_id, "user_id")
        if not texts:
            return []
        self._upstream.check_configured(self._embed_provider())
        op, policy = Operation.EMBEDDINGS, self.policies.embeddings
        if user_id is not None and self._user_limits:
            await self._admit(op, user_id, len(texts))
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
            if joined and self._telemetry is not None:
                self._telemetry.coalesced()
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
            if self._telemetry is None:
                got.update(await self._kv_read_chunks(op, store, mine))
            else:
                with self._telemetry.kv_read(store.binding, len(mine)) as found:
                    got.update(await self._kv_read_chunks(op, store, mine))
                    found(sum(1 for raw, _ in got.values() if raw is not None))
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
                    provider, path, payload = self._embed_request(chunk)
                    result = await self._upstream_call(
                        op,
                        provider,
                        path,
                        payload,
                        policy=policy,
                        check=lambda r: self._vectors(r, n, dims),  # noqa: B023 - called before the loop moves on
                        requests=n,
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
