"""What the runtime stores in KV, and how a stored value is judged: pure functions, no I/O.

Embedding records keep the seed's format so the seed's Worker and this library can share a
namespace: ``{"text": first 200 chars, "embedding": [...], "model": "...", "createdAt": ISO-8601}``.
Job analyses and spam verdicts are stored as the JSON object the model returned, as the seed does.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from enum import Enum
from typing import Any, assert_never

from dualcache._policy import GatewayMode, OperationPolicy

__all__ = [
    "EMBED_INPUT_MAX_CHARS",
    "EMBED_SNIPPET_CHARS",
    "RecordStatus",
    "build_embedding_record",
    "encode_json_record",
    "judge_embedding_record",
    "judge_json_record",
    "should_coalesce",
    "should_read_kv",
    "should_write_kv",
]

EMBED_INPUT_MAX_CHARS = 2000
"""Texts are truncated to this many characters before embedding (the seed does the same)."""
EMBED_SNIPPET_CHARS = 200
"""How much of the text an embedding record keeps, for debugging (the seed's ``text`` field)."""


class RecordStatus(Enum):
    """What a value read from KV is worth."""

    HIT = "hit"
    """A valid record: serve it."""
    MISSING = "missing"
    """No value under the key."""
    WRONG_MODEL = "wrong_model"
    """A valid record of another model: a miss, overwritten by the new answer."""
    CORRUPT = "corrupt"
    """A value that does not parse or lacks required fields: a miss, overwritten."""


def build_embedding_record(text: str, embedding: list[float], model: str, now: float) -> dict[str, Any]:
    """Return the record stored for ``text`` (seed format); ``now`` is a unix time in seconds."""
    created = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"text": text[:EMBED_SNIPPET_CHARS], "embedding": embedding, "model": model, "createdAt": created}


def encode_json_record(value: Any) -> bytes:
    """Serialize a record as compact UTF-8 JSON (what is written to KV)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def judge_embedding_record(raw: bytes | str | None, model: str) -> tuple[RecordStatus, list[float] | None]:
    """Decide whether ``raw`` (a KV value) is a usable embedding of ``model``.

    Returns:
        The status and, for :attr:`RecordStatus.HIT`, the vector.
    """
    if raw is None:
        return RecordStatus.MISSING, None
    data = _loads(raw)
    if not isinstance(data, dict):
        return RecordStatus.CORRUPT, None
    vector = data.get("embedding")
    if not isinstance(vector, list) or not vector or not _is_finite_vector(vector):
        return RecordStatus.CORRUPT, None
    record_model = data.get("model")
    if not isinstance(record_model, str):
        return RecordStatus.CORRUPT, None
    if record_model != model:
        return RecordStatus.WRONG_MODEL, None
    return RecordStatus.HIT, [float(x) for x in vector]


def _is_finite_vector(vector: list[Any]) -> bool:
    # Fast path: JSON floats decode to float; a finite sum means no NaN/inf among finite-size values.
    if all(type(x) is float for x in vector):
        return math.isfinite(sum(vector))
    return all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in vector)


def judge_json_record(raw: bytes | str | None) -> tuple[RecordStatus, dict[str, Any] | None]:
    """Decide whether ``raw`` is a usable stored result (a JSON object)."""
    if raw is None:
        return RecordStatus.MISSING, None
    data = _loads(raw)
    if not isinstance(data, dict):
        return RecordStatus.CORRUPT, None
    return RecordStatus.HIT, data


def should_read_kv(policy: OperationPolicy) -> bool:
    """Whether a request of an operation under ``policy`` looks in KV first."""
    return policy.kv


def should_write_kv(policy: OperationPolicy, read: RecordStatus | None) -> bool:
    """Whether a freshly computed answer is written to KV.

    ``read`` is what the KV read of the same request found, or ``None`` when that read failed (KV
    down or timed out): then the write is skipped, so a KV outage costs one timeout per request, not
    two. A wrong-model or corrupt record is overwritten.
    """
    if not policy.kv or read is None:
        return False
    match read:
        case RecordStatus.HIT:
            return False
        case RecordStatus.MISSING | RecordStatus.WRONG_MODEL | RecordStatus.CORRUPT:
            return True
        case _ as unreachable:
            assert_never(unreachable)


def should_coalesce(policy: OperationPolicy) -> bool:
    """Whether identical concurrent requests share one computation.

    Only for operations whose answers are cached somewhere (KV or gateway): the others (application
    generation, resume parsing by default) are meant to be computed fresh for every call.
    """
    return policy.kv or policy.gateway is GatewayMode.CACHE
