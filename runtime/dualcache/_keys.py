"""Cache keys: pure functions, no I/O.

Key schema: ``embed:{sha256(text)}``, ``analysis:{userId}:{jobId}``, ``spam:{jobId}``. In
general, a record of an operation lives at::

    {prefix}[:{user}][:%v{version}]:{key}

* ``prefix`` is ``analysis``, ``spam``, ``embed``, ``generation`` or ``resume`` for the built-in
  operations (:data:`BUILTIN_PREFIXES`) and the operation's own name for a custom one;
* ``user`` is the escaped user id, present exactly when the operation's scope is ``user``: so every
  record of one user in one operation starts with ``{prefix}:{user}:`` (:func:`user_prefix`), a prefix
  that KV can list and that no other user's records share;
* ``%v{version}`` is the policy's version, absent when it is ``None`` (so unversioned keys are the default ones);
* ``key`` is the escaped caller key (a job id, ...).

Embedding keys are ``embed:{sha256(text)}`` for the default embedding configuration and
``embed:%s{fingerprint}:{sha256(text)}`` for any other (:func:`embed_key`): the fingerprint hashes
everything that changes the vector (model, dimensions, pooling, input truncation) and the version.

User-supplied parts are escaped so the mapping from (user, job) to key is injective:

* ``%`` and ``:`` (the separator) and every character outside printable ASCII are percent-encoded
  (``%25``, ``%3A``, ``%C3%A9`` ...), so an escaped part never contains ``:`` and the parts of a key
  can be recovered. Ids made of letters, digits, ``-`` and ``_`` (UUIDs, database ids) are unchanged,
  so keys stay those the existing Worker writes.
* A part whose escaped form is longer than :data:`MAX_PART_BYTES` is replaced by ``%h`` followed by
  the SHA-256 of the raw part. An escaped part only ever has ``%`` followed by two upper-case hex
  digits, so ``%h`` cannot be produced by escaping: a hashed part never equals an escaped one.

A segment the library adds is ``%`` followed by a lower-case letter (``%h`` a hashed id, ``%v`` a
version, ``%s`` an embedding fingerprint), which escaping never produces (its ``%`` is always followed by
two upper-case hex digits): so no id, however hostile, can be mistaken for one, and the mapping from
(operation, user, version, key) to a KV key is injective. With every part capped, every key stays under
the KV limit of 512 bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from dualcache._exceptions import InvalidInputError

__all__ = [
    "BUILTIN_PREFIXES",
    "KV_MAX_KEY_BYTES",
    "MAX_PART_BYTES",
    "SEED_EMBEDDING",
    "analysis_key",
    "canonical_json",
    "check_key",
    "check_utf8",
    "embed_key",
    "embedding_fingerprint",
    "escape_part",
    "gateway_cache_key",
    "key_prefix",
    "record_key",
    "sha256_hex",
    "spam_key",
    "user_prefix",
]

KV_MAX_KEY_BYTES = 512
"""Largest KV key Cloudflare accepts, in UTF-8 bytes (a documented KV limit)."""
MAX_PART_BYTES = 200
"""An escaped id longer than this is replaced by its SHA-256 (``%h`` + 64 hex digits)."""

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~@+=,;!*'()[]{}$&/ ")
# The same set as one regular expression: a C-speed scan of an id that needs no escaping (every key built).
_ALL_SAFE = re.compile("[" + re.escape("".join(sorted(_SAFE))) + "]*")


def sha256_hex(text: str) -> str:
    """Return the lower-case hex SHA-256 of ``text`` encoded as UTF-8 (what the existing Worker computes)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def escape_part(value: str) -> str:
    """Escape one user-supplied key part (see the module docstring); injective over all strings."""
    if _ALL_SAFE.fullmatch(value) is not None:
        escaped = value
    else:
        escaped = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in value)
    if len(escaped) > MAX_PART_BYTES:
        return "%h" + sha256_hex(value)
    return escaped


def _require_id(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a non-empty string, got {type(value).__name__} {value!r}")
    if not value:
        raise InvalidInputError(f"{name} is empty; pass the non-empty id of the {name.removesuffix('_id')}")
    check_utf8(name, value)
    return value


def check_utf8(name: str, value: str) -> None:
    """Raise when ``value`` cannot be encoded as UTF-8 (a lone surrogate), as keys and hashes need.

    Raises:
        InvalidInputError: names the argument and the offending position.
    """
    if value.isascii():  # a flag of the string, no scan: every id and most texts
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name} is not valid Unicode text: lone surrogate {value[exc.start]!r} at index {exc.start}"
        ) from None


BUILTIN_PREFIXES: dict[str, str] = {
    "application_generation": "generation",
    "job_analysis": "analysis",
    "resume_parsing": "resume",
    "embeddings": "embed",
    "spam_detection": "spam",
}
"""Key prefix of each built-in operation (the existing Worker's, where it has one); a custom operation's is its name."""

SEED_EMBEDDING: dict[str, Any] = {
    "model": "@cf/baai/bge-base-en-v1.5",
    "dimensions": 768,
    "pooling": "mean",
    "max_input_chars": 2000,
    "version": None,
}
"""The embedding configuration whose records the existing Worker writes, at ``embed:{sha256(text)}``."""


def key_prefix(operation: str) -> str:
    """Return the key prefix of ``operation`` (its name, or the fixed prefix of a built-in one)."""
    return BUILTIN_PREFIXES.get(str(operation), str(operation))


def record_key(operation: str, key: str, *, user_id: str | None = None, version: str | None = None) -> str:
    """Return the KV key of ``operation``'s record of ``key``: ``{prefix}[:{user}][:%v{version}]:{key}``.

    Pass ``user_id`` exactly when the operation's scope is ``user``. This is the key :class:`DualCache`
    reads and writes, e.g. for ``wrangler kv key get``.

    Raises:
        InvalidInputError: ``key`` or ``user_id`` is empty or not a string.
    """
    parts = [key_prefix(operation)]
    if user_id is not None:
        parts.append(escape_part(_require_id("user_id", user_id)))
    if version is not None:
        parts.append("%v" + version)
    parts.append(escape_part(_require_id("key", key)))
    return ":".join(parts)


def user_prefix(operation: str, user_id: str) -> str:
    """Return ``{prefix}:{user}:``, the start of every record of ``user_id`` in a user-scoped ``operation``
    (every version). No other user's key starts with it: escaped ids contain no ``:``.

    Raises:
        InvalidInputError: ``user_id`` is empty or not a string.
    """
    return f"{key_prefix(operation)}:{escape_part(_require_id('user_id', user_id))}:"


def embedding_fingerprint(
    model: str, *, dimensions: int | None, pooling: str, max_input_chars: int, version: str | None = None
) -> str | None:
    """Return the fingerprint of an embedding configuration, or ``None`` for the default (:data:`SEED_EMBEDDING`).

    It is the first 16 hex digits of the SHA-256 of the configuration's canonical JSON: two configurations
    that could produce different vectors for one text never share a fingerprint (bar a 64-bit collision).
    """
    spec = {
        "model": model,
        "dimensions": dimensions,
        "pooling": pooling,
        "max_input_chars": max_input_chars,
        "version": version,
    }
    if spec == SEED_EMBEDDING:
        return None
    return sha256_hex(canonical_json(spec))[:16]


TEXT_HASH_MEMO_CHARS = 4_000_000
"""Characters of text (texts of at most 8,192 characters each, oldest out first) whose SHA-256 :func:`embed_key`
remembers: the texts a cache is asked for again and again are the ones it serves from KV, and a dict lookup of a
text costs a fraction of hashing it. At most 16 MB of text (4 bytes a character at worst)."""
_TEXT_HASH_MEMO_MAX_TEXT = 8_192
_text_hashes: dict[str, str] = {}
_text_hash_chars = 0


def _text_hash(text: str) -> str:
    global _text_hash_chars
    if type(text) is not str:  # a subclass may compare (or hash) unlike its text: never remembered
        return sha256_hex(text)
    digest = _text_hashes.get(text)
    if digest is not None:
        return digest
    digest = sha256_hex(text)
    if len(text) <= _TEXT_HASH_MEMO_MAX_TEXT:
        # Oldest first out (dicts keep insertion order). pop(..., None): under threads another caller may have
        # evicted the same entry first; the character count then drifts a little, which only bounds it lower.
        while _text_hash_chars + len(text) > TEXT_HASH_MEMO_CHARS and _text_hashes:
            oldest = next(iter(_text_hashes), None)
            if oldest is not None and _text_hashes.pop(oldest, None) is not None:
                _text_hash_chars -= len(oldest)
        _text_hashes[text] = digest
        _text_hash_chars += len(text)
    return digest


def embed_key(text: str, fingerprint: str | None = None) -> str:
    """Return ``embed:{sha256(text)}``, or ``embed:%s{fingerprint}:{sha256(text)}`` for a non-default
    configuration (see :func:`embedding_fingerprint`); the key hashes the full text, before any truncation.

    The text's hash is remembered for the texts asked again (see :data:`TEXT_HASH_MEMO_CHARS`)."""
    if fingerprint is None:
        return "embed:" + _text_hash(text)
    return f"embed:%s{fingerprint}:{_text_hash(text)}"


def analysis_key(user_id: str, job_id: str, *, version: str | None = None) -> str:
    """Return ``analysis:{userId}:{jobId}`` with both parts escaped (``analysis:{userId}:%v{version}:{jobId}``
    with a version).

    Raises:
        InvalidInputError: an id is empty or not a string.
    """
    _require_id("user_id", user_id)
    _require_id("job_id", job_id)
    return record_key("job_analysis", job_id, user_id=user_id, version=version)


def spam_key(job_id: str, *, version: str | None = None) -> str:
    """Return ``spam:{jobId}`` with the id escaped (``spam:%v{version}:{jobId}`` with a version).

    Raises:
        InvalidInputError: the id is empty or not a string.
    """
    _require_id("job_id", job_id)
    return record_key("spam_detection", job_id, version=version)


def check_key(key: object) -> str:
    """Return ``key`` if Cloudflare KV accepts it as a key name.

    Raises:
        InvalidInputError: not a string, empty, ``.`` or ``..``, or longer than 512 UTF-8 bytes.
    """
    if not isinstance(key, str):
        raise InvalidInputError(f"KV key must be a string, got {type(key).__name__} {key!r}")
    if key in ("", ".", ".."):
        raise InvalidInputError(f"KV key {key!r} is not allowed; a key cannot be empty, '.' or '..'")
    if key.isascii():  # one byte a character: no encoding needed to know the size (every key the cache builds)
        size = len(key)
    else:
        check_utf8("KV key", key)
        size = len(key.encode("utf-8"))
    if size > KV_MAX_KEY_BYTES:
        raise InvalidInputError(
            f"KV key {key[:40]!r}... is {size} bytes; Cloudflare KV keys are at most {KV_MAX_KEY_BYTES} bytes"
        )
    return key


def canonical_json(value: Any) -> str:
    """Serialize ``value`` with sorted keys and no spaces: equal data gives equal text, whatever the order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def gateway_cache_key(
    operation: str, provider: str, model: str, body: Any, *, user_id: str | None = None, version: str | None = None
) -> str:
    """Return the ``cf-aig-cache-key`` for a cacheable request.

    It hashes the operation, provider, model and the canonical JSON of the body, so two requests
    that differ only in the order of their JSON keys share a gateway entry (the gateway's default key
    hashes the raw body). The provider credential is not part of it: only content-addressed,
    non-user-scoped operations are gateway-cached by the default policies.

    For a user-scoped call (``user_id`` given) the user id is hashed in too, so when a stack turns the
    gateway cache on for such an operation, two users never share a gateway entry, even with identical
    bodies (no cross-tenant reuse or cache-probing, as reported against LiteLLM, #29955). ``cf-aig-metadata``
    cannot do this: it is not part of the gateway's cache key.

    The policy's ``version`` is hashed in too, so a version bump misses in the gateway as well as in KV.
    Without one, the key is what it was before versions existed.
    """
    parts: list[Any] = [provider, model, body] if user_id is None else [provider, model, body, user_id]
    if version is not None:
        parts.append({"version": version})
    return f"dualcache:{operation}:{sha256_hex(canonical_json(parts))}"
