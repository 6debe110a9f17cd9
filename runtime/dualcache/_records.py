"""What the runtime stores in KV, and how a stored value is judged: pure functions, no I/O.

The same text is in ``RECORDS.md`` (Markdown), for the README.

## Stored records

What the runtime writes to KV, so that a Worker or a TypeScript service can read the same records.
Every record is one UTF-8 JSON object, readable by hand.

### Embedding records (`embed:{sha256(text)}`)

New records are written in the compact format, version 2:

```json
{"v": 2, "model": "@cf/baai/bge-base-en-v1.5", "dims": 768, "dtype": "f32",
 "embedding_b64": "AAAAPwAAgL8...", "text": "first 200 characters", "createdAt": "2027-01-15T08:00:00.000Z"}
```

| field           | meaning                                                                                     |
|-----------------|---------------------------------------------------------------------------------------------|
| `v`             | format version: the integer `2`. A record with another `v` is a miss, overwritten.          |
| `model`         | the embedding model that produced the vector. Another model is a miss, overwritten.         |
| `dims`          | number of components, a positive integer: the model's dimension (768 for bge-base-en-v1.5). |
| `dtype`         | `"f32"` (IEEE-754 binary32: `dims × 4` bytes) or `"f16"` (binary16: `dims × 2` bytes).       |
| `embedding_b64` | base64 (RFC 4648 §4, padded, one line) of the components, **little-endian**, no header. |
| `text`          | the first 200 characters of the embedded text (kept from version 1, for debugging).         |
| `createdAt`     | ISO-8601 UTC time of the write, with milliseconds and a `Z` suffix (kept from version 1).   |

Readers ignore fields they do not know. The library writes `f32`; `f16` is read, and written only by a
caller that asks for it (`build_embedding_record(..., dtype=VectorDtype.F16)`): no policy selects it yet.

**Vectors are stored as float32.** A float64 vector (what JSON numbers decode to) is rounded to the
nearest float32 when written, and `DualCache.embed` rounds a freshly computed vector the same way, so
a miss and the later hit return the same list. Workers AI computes in float32, so for its answers the
rounding changes nothing. A 768-d record is 4,432 bytes (1.44× the 3,072 raw bytes: base64 is 4/3, plus
the snippet and field names), against ~16.5 KB for a JSON list of floats (5.4×).

The original format (version 1: no `v`, a JSON list) is still read:
`{"text": ..., "embedding": [768 numbers], "model": ..., "createdAt": ...}`. Its numbers are rounded to
float32 too, so an old and a new record of the same vector read equal. A Worker written for version 1 that reads
`record.embedding` does not understand version 2 records: it finds no `embedding` field.

Reading a record in JavaScript (`value` is the KV string, `model` the model you expect):

```js
function decodeEmbedding(value, model) {
  const rec = JSON.parse(value);
  if (rec?.v !== 2 || rec.dtype !== "f32" || rec.model !== model) return null; // a miss
  const bytes = Uint8Array.from(atob(rec.embedding_b64), (c) => c.charCodeAt(0));
  if (bytes.length !== rec.dims * 4) return null; // wrong length: a corrupt record is a miss
  return Array.from(new Float32Array(bytes.buffer)); // little-endian, as every Workers and Node host is
}
```

`Float32Array` uses the host's byte order; on a big-endian host read with
`new DataView(bytes.buffer).getFloat32(i * 4, true)` instead. In Python:
`struct.unpack(f"<{dims}f", base64.b64decode(rec["embedding_b64"]))`.

### Which stored value is a hit

A value is a hit only when it parses and has the expected shape: an embedding record of the expected
model, with the model's dimension (`MODEL_DIMENSIONS` in `_records.py`; a model not in the table
accepts any positive dimension, consistent within the record), every component a finite number (not
a boolean). Anything else is a miss that the flows overwrite, whatever the decoder would raise:

- a value over 1 MiB (`RECORD_MAX_BYTES`), or JSON nested deeper than 32 (`RECORD_MAX_DEPTH`),
  rejected by a scan before `json.loads` could recurse;
- bytes that are not UTF-8, JSON that does not parse, a value that is not an object;
- invalid base64, a byte length other than `dims × 4`, a `dims` or `v` that is not an integer;
- NaN, Infinity, numbers that overflow (`1e400`), integers past Python's 4,300-digit limit;
- a record of another format version.

Job analyses (`analysis:{userId}:{jobId}`) and spam verdicts (`spam:{jobId}`) are stored as the JSON
object the model returned, as the existing Worker does, and judged with the same guards: an object, at most
1 MiB, nested at most 32 deep, every number finite.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, assert_never

from dualcache._policy import GatewayMode, OperationPolicy

__all__ = [
    "DEFAULT_DECODE_MEMO_BYTES",
    "EMBED_INPUT_MAX_CHARS",
    "EMBED_SNIPPET_CHARS",
    "MODEL_DIMENSIONS",
    "RECORD_FORMAT_VERSION",
    "RECORD_MAX_BYTES",
    "RECORD_MAX_DEPTH",
    "RecordStatus",
    "VectorDtype",
    "build_embedding_record",
    "build_seed_embedding_record",
    "decode_vector",
    "encode_json_record",
    "encode_vector",
    "expected_dimensions",
    "judge_embedding_record",
    "judge_json_record",
    "should_coalesce",
    "should_read_kv",
    "should_write_kv",
    "to_float32",
]

EMBED_INPUT_MAX_CHARS = 2000
"""Texts are truncated to this many characters before embedding (the existing Worker does the same)."""
EMBED_SNIPPET_CHARS = 200
"""How much of the text an embedding record keeps, for debugging (the version 1 ``text`` field)."""
RECORD_FORMAT_VERSION = 2
"""The ``v`` of the embedding records this library writes (version 1 records have no ``v``)."""
RECORD_MAX_BYTES = 1 << 20
"""A stored value larger than this (1 MiB) is a miss, not parsed. A 3,072-d version 1 record is ~70 KB."""
RECORD_MAX_DEPTH = 32
"""JSON nested deeper than this is a miss, rejected before ``json.loads`` recurses."""

DEFAULT_DECODE_MEMO_BYTES = 64 << 20
"""Default budget of ``DualCache``'s decode memo: 64 MiB, about 2,300 decoded 768-d records (~29 KB each)."""

MODEL_DIMENSIONS: Mapping[str, int] = {
    "@cf/baai/bge-small-en-v1.5": 384,
    "@cf/baai/bge-base-en-v1.5": 768,  # Workers AI: result.shape [n, 768]
    "@cf/baai/bge-large-en-v1.5": 1024,
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
}
"""Known output dimension of each embedding model; a stored vector of another length is a miss."""


class VectorDtype(StrEnum):
    """How the components of a stored vector are packed (the record's ``dtype``)."""

    F32 = "f32"
    """IEEE-754 binary32, 4 bytes a component (the default: exact for models that compute in float32)."""
    F16 = "f16"
    """IEEE-754 binary16, 2 bytes a component: half the size, ~3 significant digits, |x| <= 65504."""


_PACK = {VectorDtype.F32: ("f", 4), VectorDtype.F16: ("e", 2)}
_DTYPE_NAMES = frozenset(d.value for d in VectorDtype)


class RecordStatus(Enum):
    """What a value read from KV is worth."""

    HIT = "hit"
    """A valid record: serve it."""
    MISSING = "missing"
    """No value under the key."""
    WRONG_MODEL = "wrong_model"
    """A valid record of another model: a miss, overwritten by the new answer."""
    CORRUPT = "corrupt"
    """A value that does not parse, lacks required fields or has the wrong shape: a miss, overwritten."""


def expected_dimensions(model: str) -> int | None:
    """Return the known output dimension of ``model``, or ``None`` when the model is not in the table."""
    return MODEL_DIMENSIONS.get(model)


def to_float32(vector: Sequence[float]) -> list[float]:
    """Return ``vector`` rounded to float32 precision (what a stored record gives back).

    Raises:
        ValueError: a component is not a finite number or is out of the float32 range.
    """
    _check_finite(vector)
    try:
        values = array("f", vector).tolist()
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"vector is not a list of numbers: {exc}") from None
    if not math.isfinite(sum(values)):
        raise ValueError("vector has a component out of the float32 range (|x| > 3.4e38)")
    return values


def encode_vector(vector: Sequence[float], dtype: VectorDtype = VectorDtype.F32) -> str:
    """Return the base64 of ``vector`` packed little-endian as ``dtype`` (the ``embedding_b64`` field).

    Raises:
        ValueError: the vector is empty, has a non-finite or non-number component, or one outside
            the range of ``dtype``.
    """
    if not vector:
        raise ValueError("vector is empty; an embedding has at least one component")
    _check_finite(vector)
    code, _ = _PACK[dtype]
    try:
        if dtype is VectorDtype.F32:
            packed = array("f", vector)
            if not math.isfinite(sum(packed)):  # array("f") turns 1e39 into inf silently
                raise OverflowError("a component is beyond float32's range (|x| > 3.4e38)")
            if sys.byteorder == "big":
                packed.byteswap()
            raw = packed.tobytes()
        else:
            raw = struct.pack(f"<{len(vector)}{code}", *vector)
    except (TypeError, OverflowError, struct.error) as exc:
        raise ValueError(f"vector does not fit {dtype.value}: {exc}") from None
    return base64.b64encode(raw).decode("ascii")


def decode_vector(b64: str, dims: int, dtype: VectorDtype = VectorDtype.F32) -> list[float] | None:
    """Return the ``dims`` components packed in ``b64``, or ``None`` when they are not exactly that.

    ``None`` for invalid base64, a byte length other than ``dims`` times the component size, or a
    non-finite component.
    """
    code, size = _PACK[dtype]
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != dims * size:
        return None
    if dtype is VectorDtype.F32:
        values = array("f")
        values.frombytes(raw)
        if sys.byteorder == "big":
            values.byteswap()
        decoded = values.tolist()
        # float32 components cannot overflow a float64 sum: a finite sum <=> every component finite.
        return decoded if math.isfinite(sum(decoded)) else None
    unpacked = list(struct.unpack(f"<{dims}{code}", raw))
    return unpacked if math.isfinite(sum(unpacked)) else None


def _check_finite(vector: Sequence[Any]) -> None:
    if not _is_finite_vector(vector):
        raise ValueError("vector has a component that is not a finite number (NaN, Infinity, a bool or a string)")


def _created_at(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_embedding_record(
    text: str,
    embedding: Sequence[float],
    model: str,
    now: float,
    *,
    dtype: VectorDtype = VectorDtype.F32,
) -> dict[str, Any]:
    """Return the compact (version 2) record stored for ``text``; ``now`` is a unix time in seconds.

    Raises:
        ValueError: the vector is empty, or has a component that is not a finite number of ``dtype``'s range.
    """
    return {
        "v": RECORD_FORMAT_VERSION,
        "model": model,
        "dims": len(embedding),
        "dtype": dtype.value,
        "embedding_b64": encode_vector(embedding, dtype),
        "text": text[:EMBED_SNIPPET_CHARS],
        "createdAt": _created_at(now),
    }


def build_seed_embedding_record(text: str, embedding: Sequence[float], model: str, now: float) -> dict[str, Any]:
    """Return a version 1 record (a JSON list of floats), as the existing Worker writes: for a shared namespace."""
    return {
        "text": text[:EMBED_SNIPPET_CHARS],
        "embedding": list(embedding),
        "model": model,
        "createdAt": _created_at(now),
    }


def encode_json_record(value: Any) -> bytes:
    """Serialize a record as compact UTF-8 JSON (what is written to KV)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Rejected(Exception):
    """A stored value that cannot be a record (raised inside the decoder hooks, caught in :func:`_loads`)."""


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"non-finite constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise _Rejected(f"number {text[:20]} overflows a float")
    return value


# Built once, as json.loads builds its own default decoder once: with hooks, json.loads would build a decoder
# (and its scanner) per call, a third of a small record's decode.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ONE_KIND = str.maketrans("{}", "[]")


def _nesting_within(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests at most ``limit`` arrays/objects deep (strings ignored).

    Cheap in the common case: when the text has at most ``limit`` opening brackets at all, it cannot
    nest deeper. Otherwise strings and everything but brackets are removed, and innermost empty pairs
    are peeled off, one level a pass, at most ``limit`` passes (each a C-speed ``str.replace``).
    """
    if text.count("[") + text.count("{") <= limit:
        return True
    # Only the nesting matters, not the bracket kinds (a mismatch is json.loads' to reject).
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_ONE_KIND)
    if "[" * (limit + 1) in brackets:
        return False
    for _ in range(limit):
        if not brackets:
            return True
        peeled = brackets.replace("[]", "")  # one level a pass: replace does not rescan what it joins
        if peeled == brackets:
            return False  # unbalanced: not JSON (a balanced sequence always peels), and json.loads may recurse
        brackets = peeled
    return not brackets


def _loads(raw: bytes | str, *, strict_numbers: bool) -> Any:
    """Parse a stored value, or return ``None`` for anything that is not bounded, UTF-8, valid JSON."""
    if len(raw) > RECORD_MAX_BYTES:
        return None
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not _nesting_within(text, RECORD_MAX_DEPTH):
            return None
        return (_STRICT_DECODER if strict_numbers else _DECODER).decode(text)
    except (ValueError, UnicodeError, RecursionError, _Rejected):
        # ValueError covers JSONDecodeError and ints past sys.get_int_max_str_digits; RecursionError is
        # a belt over the depth scan above.
        return None


def judge_embedding_record(
    raw: bytes | str | None, model: str, dims: int | None = None
) -> tuple[RecordStatus, list[float] | None]:
    """Decide whether ``raw`` (a KV value) is a usable embedding of ``model``.

    Reads the compact format (version 2) and version 1 (no version field, a JSON list of numbers).

    Args:
        raw: The stored value, or ``None`` when the key has none.
        model: The embedding model the caller expects.
        dims: The expected dimension; default: the model's entry in :data:`MODEL_DIMENSIONS`, and
            for a model not in the table any positive dimension (consistent within the record).

    Returns:
        The status and, for :attr:`RecordStatus.HIT`, the vector (float32 precision, as Python floats).
    """
    if raw is None:
        return RecordStatus.MISSING, None
    data = _loads(raw, strict_numbers=False)
    if not isinstance(data, dict):
        return RecordStatus.CORRUPT, None
    record_model = data.get("model")
    if not isinstance(record_model, str):
        return RecordStatus.CORRUPT, None
    # A record is checked against its own model's dimension: a sound record of another model is
    # WRONG_MODEL, a broken one CORRUPT (both are misses, overwritten).
    if record_model == model:
        expected = dims if dims is not None else expected_dimensions(model)
    else:
        expected = expected_dimensions(record_model)
    if "v" in data:
        vector = _compact_vector(data, expected)
    else:
        vector = _seed_vector(data.get("embedding"), expected)
    if vector is None:
        return RecordStatus.CORRUPT, None
    if record_model != model:
        return RecordStatus.WRONG_MODEL, None
    return RecordStatus.HIT, vector


def _compact_vector(data: dict[str, Any], expected: int | None) -> list[float] | None:
    if data.get("v") != RECORD_FORMAT_VERSION or type(data.get("v")) is not int:
        return None
    count, b64, dtype_name = data.get("dims"), data.get("embedding_b64"), data.get("dtype")
    if type(count) is not int or count <= 0 or not isinstance(b64, str):
        return None
    if expected is not None and count != expected:
        return None
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPE_NAMES:
        return None
    return decode_vector(b64, count, VectorDtype(dtype_name))


def _seed_vector(vector: Any, expected: int | None) -> list[float] | None:
    if not isinstance(vector, list) or not vector or not _is_finite_vector(vector):
        return None
    if expected is not None and len(vector) != expected:
        return None
    values = array("f", vector).tolist()
    return values if math.isfinite(sum(values)) else None  # a float64 beyond float32's range


def _is_finite_vector(vector: Sequence[Any]) -> bool:
    # Fast path: JSON floats decode to float; a finite sum means no NaN/inf among them (a non-finite
    # sum may still be an overflow of huge finite values: then look at each).
    if all(type(x) is float for x in vector):
        return math.isfinite(sum(vector)) or all(math.isfinite(x) for x in vector)
    return all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in vector)


def judge_json_record(raw: bytes | str | None) -> tuple[RecordStatus, dict[str, Any] | None]:
    """Decide whether ``raw`` is a usable stored result: a JSON object, bounded, every number finite."""
    if raw is None:
        return RecordStatus.MISSING, None
    data = _loads(raw, strict_numbers=True)
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
