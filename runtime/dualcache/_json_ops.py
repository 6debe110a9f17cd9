"""The JSON operations on the caching engine: ``run`` and the built-in chat operations built on it.

:class:`JsonOperations` decides what is particular to a chat call answered in JSON: the checks of the
caller's messages and params (before any I/O), the KV key of the operation's scope and version, the
provider calls in order (the fallback when the first fails on every route), JSON mode for Workers AI and
OpenAI, and the answer schemas. ``analyze_job``, ``detect_spam``, ``generate_application`` and
``parse_resume`` are thin uses of it with their models and prompts. Reads, single-flight, write-behind,
stats and invalidation are the engine's (:class:`~dualcache._engine.CacheEngine`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, assert_never

from dualcache._answers import AnswerSchema, AnswerSchemas
from dualcache._engine import CacheEngine, _check_id, _check_text
from dualcache._exceptions import BackendError, BadResponseError, ConfigError, InvalidInputError
from dualcache._gateway import Provider, UpstreamResult, parse_json_object
from dualcache._keys import canonical_json, record_key, sha256_hex
from dualcache._kv import KVEntry
from dualcache._otel import traced
from dualcache._params import check_json_content, check_sampling, is_json_safe
from dualcache._policy import GatewayMode, Operation, OperationPolicy, Policies, Scope
from dualcache._records import RecordStatus, encode_json_record, judge_json_record, should_read_kv, should_write_kv
from dualcache._stats import Outcome

if TYPE_CHECKING:
    from dualcache._cache import Models

__all__ = ["JsonOperations"]

logger = logging.getLogger(__name__)

_RESUME_PROMPT = (
    "You are an expert resume parser. Extract the candidate's details from the resume and answer with one JSON "
    "object with the keys: name, email, phone, location, summary, skills (list of strings), experience (list of "
    "{title, company, start, end, description}), education (list of {degree, institution, year})."
)


@dataclass(frozen=True, slots=True)
class _Call:
    """One provider call of a JSON operation: the provider, its model, extra body fields."""

    provider: Provider
    model: str
    params: Mapping[str, Any]


_JsonMemoEntry = tuple[bytes, str, "AnswerSchema | None", int]
"""A stored JSON record that passed its checks: (its exact bytes, the operation's name, the answer schema it
was checked against, the bytes it is charged in the memo)."""

_JSON_MEMO_OVERHEAD = 300  # an entry's tuple, its key, the bytes object's header and the OrderedDict's links

# A record in the memo was judged already (bounded, UTF-8, nested at most RECORD_MAX_DEPTH, every number finite,
# no NaN constant): decoding the same bytes again needs none of judge_json_record's hooks, and gives an equal,
# independent object, as the decode of a hit without the memo does.
_PLAIN_DECODER = json.JSONDecoder()


def _decode_checked(raw: bytes) -> dict[str, Any]:
    """A fresh decode of a record that passed :func:`~dualcache._records.judge_json_record` before."""
    text = raw.decode("utf-8")
    if text[:1] == "{" and text[-1:] == "}":  # one object and nothing around it (what the cache writes)
        value: dict[str, Any] = _PLAIN_DECODER.raw_decode(text)[0]
        return value
    whole: dict[str, Any] = _PLAIN_DECODER.decode(text)  # JSON whitespace around the object
    return whole


_KEY_MEMO_SIZE = 1024  # KV keys of recent (operation, version, user, key), most recently used kept
_KEY_MEMO_MAX_CHARS = 256  # ids longer than this together are keyed afresh (the memo's memory stays small)


@functools.lru_cache(maxsize=_KEY_MEMO_SIZE)
def _memo_record_key(operation: str, key: str, user_id: str | None, version: str | None) -> str:
    """:func:`~dualcache._keys.record_key`, remembered: a pure function of its arguments, asked on every call."""
    return record_key(operation, key, user_id=user_id, version=version)


def _parse_provider(value: object, name: str) -> Provider:
    try:
        return Provider(value)  # type: ignore[arg-type]  # a wrong type is a ValueError too
    except ValueError:
        valid = ", ".join(repr(p.value) for p in Provider)
        raise InvalidInputError(f"{name}={value!r:.80} is not a provider; valid: {valid}") from None


_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})

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


def _plain_messages(messages: object) -> list[dict[str, Any]] | None:
    """The copy :func:`_check_messages` returns, when ``messages`` has the common shape: a non-empty list of
    ``{"role": str, "content": str}`` dicts, ASCII only, every content not blank (exact JSON types, nothing to
    escape, so the general checks would accept them as they are); else ``None`` (the general checks decide)."""
    if type(messages) is not list or not messages:
        return None
    for m in messages:
        if type(m) is not dict or len(m) != 2:
            return None
        role, content = m.get("role"), m.get("content")
        if type(role) is not str or type(content) is not str or not content or content.isspace():
            return None
        if not (role.isascii() and content.isascii()):
            return None
    return [m.copy() for m in messages]


def _check_messages(messages: object) -> list[dict[str, Any]]:
    plain = _plain_messages(messages)
    if plain is not None:  # the common shape, on every call (hits included)
        return plain
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


def _describe_run(
    self: JsonOperations, operation: Operation | str, *_: Any, **kwargs: Any
) -> tuple[str, str | None, str | None]:
    model, provider = kwargs.get("model"), kwargs.get("provider", Provider.WORKERS_AI)
    return Operation.parse(operation).value, model if isinstance(model, str) else None, Provider(provider).value


def _describe_builtin(operation: Operation, model: str, provider: Provider) -> Any:
    def describe(self: JsonOperations, *_: Any, **__: Any) -> tuple[str, str | None, str | None]:
        return operation.value, getattr(self.models, model), provider.value

    return describe


def _describe_resume(self: JsonOperations, *_: Any, **kwargs: Any) -> tuple[str, str | None, str | None]:
    if kwargs.get("image_url") is not None:
        return Operation.RESUME_PARSING.value, self.models.resume_parsing_image, Provider.OPENAI.value
    return Operation.RESUME_PARSING.value, self.models.resume_parsing_text, Provider.WORKERS_AI.value


class JsonOperations(CacheEngine):
    """The JSON operations (:meth:`run` and the built-in chat operations), built on :class:`CacheEngine`.

    A base of :class:`~dualcache.DualCache`, which sets the state declared here in its constructor.
    """

    policies: Policies
    models: Models
    answer_schemas: AnswerSchemas
    _memo_bytes: int  # the byte budget of each decode memo (0: off)
    _memo_entries: int | None
    _calls_memo: tuple[Models, dict[str, tuple[_Call, ...]]] | None  # see _builtin_calls

    # -- JSON operations ----------------------------------------------------------------------------
    #
    # Every JSON operation, built in or custom, is one ``_run_json``: the KV key from the policy (scope,
    # version), the KV read (hit path, before single-flight), then the provider calls in order (the next
    # one when a provider fails on every route), single-flight, the record written behind, stats and cost.

    def _decode_json(self, op: Operation, key: str, raw: bytes | None) -> tuple[RecordStatus, dict[str, Any] | None]:
        name = op.value
        try:
            if raw is not None and (memo := self._json_memo.get(key)) is not None:
                # Checked before: the same bytes, operation and schema object (a schema registered since, or a new
                # registry, is another object: the record is checked again). Each caller gets its own decode.
                if (memo[0] is raw or memo[0] == raw) and memo[1] == name and memo[2] is self.answer_schemas.get(name):
                    self._json_memo.move_to_end(key)
                    return RecordStatus.HIT, _decode_checked(raw)
                self._json_memo_used -= self._json_memo.pop(key)[3]  # other bytes (or schema): judged anew
            status, value = judge_json_record(raw)
        except Exception as exc:
            return self._undecodable(op, key, exc)
        if value is not None:
            schema = self.answer_schemas.get(name)
            if not self.answer_schemas.is_valid(name, value):
                # A stored answer that fails the operation's schema (tampered, or written before the schema) is a
                # miss: the fresh answer overwrites it.
                logger.warning("%s: stored answer of %r does not fit its schema; treated as a miss", name, key)
                return RecordStatus.CORRUPT, None
            if raw is not None:
                self._remember_json(key, (raw, name, schema, len(raw) + len(key) + _JSON_MEMO_OVERHEAD))
        return status, value

    def _remember_json(self, key: str, entry: _JsonMemoEntry) -> None:
        """Keep a checked record in the JSON memo, within the decode memo's budget (bytes, and entries when
        capped), least recently used first out; a record larger than the whole budget is not kept."""
        if entry[3] > self._memo_bytes:
            return
        self._json_memo[key] = entry
        self._json_memo_used += entry[3]
        while self._json_memo_used > self._memo_bytes or (
            self._memo_entries is not None and len(self._json_memo) > self._memo_entries
        ):
            self._json_memo_used -= self._json_memo.popitem(last=False)[1][3]

    def _builtin_calls(self, op: Operation) -> tuple[_Call, ...]:
        """The provider calls of a built-in chat operation (``job_analysis``, ``spam_detection``), in order.

        Built once per :class:`~dualcache.Models` (frozen), not per call: a hit needs only its key, which the
        models do not enter.
        """
        memo = self._calls_memo
        if memo is None or memo[0] is not self.models:
            m = self.models
            built: dict[str, tuple[_Call, ...]] = {
                Operation.JOB_ANALYSIS: (
                    _Call(Provider.WORKERS_AI, m.job_analysis, _NO_PARAMS),
                    _Call(Provider.OPENAI, m.job_analysis_fallback, MappingProxyType({"temperature": 0.3})),
                ),
                Operation.SPAM_DETECTION: (_Call(Provider.WORKERS_AI, m.spam_detection, _NO_PARAMS),),
            }
            memo = self._calls_memo = (m, built)
        return memo[1][op]

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
        if len(key) + (0 if user_id is None else len(user_id)) <= _KEY_MEMO_MAX_CHARS:
            return _memo_record_key(op.value, key, user_id, policy.version)
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

    def _check_reachable(self, calls: Sequence[_Call]) -> None:
        """Raise, before any I/O, what :meth:`_ready_calls` raises when no provider of ``calls`` is configured.

        Stops at the first configured provider: a hit needs no more, and an unconfigured fallback (no OpenAI
        key) costs no exception on every hit; the miss path lists the ready calls (:meth:`_ready_calls`).
        """
        first: ConfigError | None = None
        for call in calls:
            try:
                self._upstream.check_configured(call.provider)
            except ConfigError as exc:
                first = first or exc
                continue
            return
        assert first is not None, "a JSON operation has at least one provider call"
        raise first

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
        self._check_reachable(calls)
        if user_id is not None and self._user_limits:  # no coroutine on the hit path without limits
            await self._admit(op, user_id)
        read: RecordStatus | None = RecordStatus.MISSING
        serve_key = key
        upstream_policy = policy
        if refresh:
            # Neither cache is read: KV is skipped here, the gateway is told cf-aig-skip-cache once. The fresh
            # answer overwrites the KV record. A refresh never joins (nor is joined by) an ordinary flight.
            # Cloudflare documents skip-cache as a bypass (``cf-aig-skip-cache``); whether the fresh answer also
            # replaces the gateway's entry is not said. Both cases are fine with KV on (later calls hit the new
            # KV record); with KV off the old entry may be served until its TTL, as the README says.
            upstream_policy = policy.model_copy(update={"gateway": GatewayMode.SKIP, "gateway_ttl": None})
            serve_key = key + "\x00refresh"
        flight_key = f"{op.value}\x00{serve_key}"
        if not refresh and should_read_kv(policy) and self._flights.get(flight_key) is None:
            read, value = await self._read_hit(op, policy, flight_key, key, self._decode_json)
            if value is not None:
                return value
        ready = self._ready_calls(calls)

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
        """One chat call in JSON mode (Workers AI's ``response_format``; OpenAI's ``json_object``)."""
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

    @traced(_describe_run)
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
            UserLimitExceededError: ``user_id`` is over the operation's per-user limits (before any I/O).
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

    @traced(_describe_builtin(Operation.JOB_ANALYSIS, "job_analysis", Provider.WORKERS_AI))
    async def analyze_job(
        self, *, user_id: str, job_id: str, messages: Sequence[Mapping[str, Any]], refresh: bool = False
    ) -> dict[str, Any]:
        """Return the compatibility analysis of a job for a user (a JSON object).

        The built-in operation ``job_analysis``, a :meth:`run` with the default models: cached in KV per user
        and job (``analysis:{userId}:{jobId}``, 7 days by default), gateway cache skipped. Workers AI answers
        first; when it fails (on every route), OpenAI answers instead. ``refresh=True`` skips the caches once
        and overwrites the record (see :meth:`run`); :meth:`forget` removes it.

        Raises:
            InvalidInputError: an empty id, or malformed ``messages``.
            ConfigError: neither Workers AI nor OpenAI is configured.
            BackendError: both providers failed.
            UserLimitExceededError: ``user_id`` is over the operation's per-user limits (before any I/O).
        """
        self._check_open()
        op = Operation.JOB_ANALYSIS
        policy = self.policies.for_operation(op)
        user = _check_id(user_id, "user_id")
        key = self._json_key(op, policy, _check_id(job_id, "job_id"), user)
        msgs = _check_messages(messages)
        calls = self._builtin_calls(op)
        return await self._run_json(op, policy, key, calls, msgs, user_id=user, refresh=refresh)

    @traced(_describe_builtin(Operation.SPAM_DETECTION, "spam_detection", Provider.WORKERS_AI))
    async def detect_spam(
        self, *, job_id: str, messages: Sequence[Mapping[str, Any]], refresh: bool = False
    ) -> dict[str, Any]:
        """Return the spam verdict for a job posting (a JSON object).

        The built-in operation ``spam_detection``, a :meth:`run` with the default model: cached in KV per job
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
        calls = self._builtin_calls(op)
        return await self._run_json(op, policy, key, calls, msgs, user_id=None, refresh=refresh)

    @traced(_describe_builtin(Operation.APPLICATION_GENERATION, "application_generation", Provider.OPENAI))
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
            json_output: Ask for a JSON object and return it as a dict (as the existing Worker does); else the text.
            temperature: Sampling temperature.
            max_tokens: Answer length cap.

        Raises:
            InvalidInputError: malformed ``messages``.
            ConfigError: OpenAI is not configured.
            BackendError: the provider failed.
            UserLimitExceededError: ``user_id`` is over the operation's per-user limits (before any I/O).
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
        if user_id is not None and self._user_limits:  # no coroutine on the hit path without limits
            await self._admit(op, user_id)

        async def compute() -> tuple[dict[str, Any] | str, Outcome]:
            return await self._openai_chat(op, payload, policy=policy, user_id=user_id)

        return await self._serve(op, policy, None, compute)

    @traced(_describe_resume)
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
            UserLimitExceededError: ``user_id`` is over the operation's per-user limits (before any I/O).
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
