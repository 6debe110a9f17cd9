"""Cache keys: pure functions, no I/O.

Key schema (SPEC.md): ``embed:{sha256(text)}``, ``analysis:{userId}:{jobId}``, ``spam:{jobId}``.

User-supplied parts are escaped so the mapping from (user, job) to key is injective:

* ``%`` and ``:`` (the separator) and every character outside printable ASCII are percent-encoded
  (``%25``, ``%3A``, ``%C3%A9`` ...), so an escaped part never contains ``:`` and the parts of a key
  can be recovered. Ids made of letters, digits, ``-`` and ``_`` (UUIDs, database ids) are unchanged,
  so keys stay those the seed's Worker writes.
* A part whose escaped form is longer than :data:`MAX_PART_BYTES` is replaced by ``%h`` followed by
  the SHA-256 of the raw part. An escaped part only ever has ``%`` followed by two upper-case hex
  digits, so ``%h`` cannot be produced by escaping: a hashed part never equals an escaped one.

With both parts capped, every key stays under the KV limit of 512 bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dualcache._exceptions import InvalidInputError

__all__ = [
    "KV_MAX_KEY_BYTES",
    "MAX_PART_BYTES",
    "analysis_key",
    "canonical_json",
    "check_key",
    "check_utf8",
    "embed_key",
    "escape_part",
    "gateway_cache_key",
    "sha256_hex",
    "spam_key",
]

KV_MAX_KEY_BYTES = 512
"""Largest KV key Cloudflare accepts, in UTF-8 bytes (cloudflare-facts §1.3)."""
MAX_PART_BYTES = 200
"""An escaped id longer than this is replaced by its SHA-256 (``%h`` + 64 hex digits)."""

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~@+=,;!*'()[]{}$&/ ")


def sha256_hex(text: str) -> str:
    """Return the lower-case hex SHA-256 of ``text`` encoded as UTF-8 (what the seed's Worker computes)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def escape_part(value: str) -> str:
    """Escape one user-supplied key part (see the module docstring); injective over all strings."""
    if all(c in _SAFE for c in value):
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
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name} is not valid Unicode text: lone surrogate {value[exc.start]!r} at index {exc.start}"
        ) from None


def embed_key(text: str) -> str:
    """Return ``embed:{sha256(text)}``: the key hashes the full text, before any truncation."""
    return "embed:" + sha256_hex(text)


def analysis_key(user_id: str, job_id: str) -> str:
    """Return ``analysis:{userId}:{jobId}`` with both parts escaped.

    Raises:
        InvalidInputError: an id is empty or not a string.
    """
    user = escape_part(_require_id("user_id", user_id))
    job = escape_part(_require_id("job_id", job_id))
    return f"analysis:{user}:{job}"


def spam_key(job_id: str) -> str:
    """Return ``spam:{jobId}`` with the id escaped.

    Raises:
        InvalidInputError: the id is empty or not a string.
    """
    return "spam:" + escape_part(_require_id("job_id", job_id))


def check_key(key: object) -> str:
    """Return ``key`` if Cloudflare KV accepts it as a key name.

    Raises:
        InvalidInputError: not a string, empty, ``.`` or ``..``, or longer than 512 UTF-8 bytes.
    """
    if not isinstance(key, str):
        raise InvalidInputError(f"KV key must be a string, got {type(key).__name__} {key!r}")
    if key in ("", ".", ".."):
        raise InvalidInputError(f"KV key {key!r} is not allowed; a key cannot be empty, '.' or '..'")
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


def gateway_cache_key(operation: str, provider: str, model: str, body: Any, *, user_id: str | None = None) -> str:
    """Return the ``cf-aig-cache-key`` for a cacheable request.

    It hashes the operation, provider, model and the canonical JSON of the body, so two requests
    that differ only in the order of their JSON keys share a gateway entry (the gateway's default key
    hashes the raw body). The provider credential is not part of it: only content-addressed,
    non-user-scoped operations are gateway-cached by the default policies.

    For a user-scoped call (``user_id`` given) the user id is hashed in too, so when a stack turns the
    gateway cache on for such an operation, two users never share a gateway entry, even with identical
    bodies (no cross-tenant reuse or cache-probing, peers §1 LiteLLM #29955). ``cf-aig-metadata``
    cannot do this: it is not part of the gateway's cache key.
    """
    parts: list[Any] = [provider, model, body] if user_id is None else [provider, model, body, user_id]
    return f"dualcache:{operation}:{sha256_hex(canonical_json(parts))}"
