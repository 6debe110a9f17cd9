"""Local, deterministic stand-ins for the AI models the project calls. They are NOT the real models.

* Embeddings (``@cf/baai/bge-base-en-v1.5`` 768 dims, OpenAI ``text-embedding-3-small`` 1536 dims):
  feature hashing of lower-cased word unigrams and bigrams and character trigrams, L2-normalized, so
  texts sharing words are closer (higher cosine) than unrelated texts. Same text, same vector, always.
* Text generation (``@cf/meta/llama-3.1-8b-instruct``, ``@cf/meta/llama-3.3-70b-instruct-fp8-fast``,
  OpenAI ``gpt-4o-mini`` / ``gpt-4o``): an answer derived from a hash of the input. When JSON is asked
  (a JSON response format, or a prompt that mentions JSON) the answer is valid JSON; with a JSON Schema
  it is an instance of that schema.
* Prompt caching (:class:`PromptCache`): a chat request whose leading messages were already sent to the same
  model reports those messages' tokens in ``usage.prompt_tokens_details.cached_tokens``, as a provider's
  prefix cache would (without the real ones' minimum prefix length, so short test prompts show it).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "EMBEDDING_MODELS",
    "OPENAI_CHAT_MODELS",
    "OPENAI_EMBEDDING_MODELS",
    "PromptCache",
    "TEXT_MODELS",
    "WORKERS_AI_EMBEDDING_MODELS",
    "embed",
    "generate",
    "instance_of_schema",
    "messages_text",
    "token_count",
]

WORKERS_AI_EMBEDDING_MODELS: dict[str, int] = {"@cf/baai/bge-base-en-v1.5": 768}
OPENAI_EMBEDDING_MODELS: dict[str, int] = {"text-embedding-3-small": 1536}
EMBEDDING_MODELS: dict[str, int] = {**WORKERS_AI_EMBEDDING_MODELS, **OPENAI_EMBEDDING_MODELS}
TEXT_MODELS = frozenset({"@cf/meta/llama-3.1-8b-instruct", "@cf/meta/llama-3.3-70b-instruct-fp8-fast"})
OPENAI_CHAT_MODELS = frozenset({"gpt-4o-mini", "gpt-4o"})

_WORD = re.compile(r"\w+", re.UNICODE)
_WORDS = (
    "alpha amber brisk calm cedar coral delta ember fable fern glade harbor iris jade kite lumen maple "
    "nova onyx opal pearl quartz river sage slate spruce tidal umber vivid willow zephyr"
).split()


def _digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.digest()


def token_count(text: str) -> int:
    """A rough token count (words and punctuation runs), for ``usage`` fields."""
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


def embed(text: str, dims: int) -> list[float]:
    """Return the deterministic, L2-normalized ``dims``-dimensional vector of ``text``."""
    lowered = text.lower()
    words = _WORD.findall(lowered)
    features: list[tuple[str, float]] = [(f"w:{w}", 1.0) for w in words]
    features += [(f"b:{a} {b}", 0.5) for a, b in zip(words, words[1:], strict=False)]
    squeezed = " ".join(words) or lowered
    features += [(f"c:{squeezed[i : i + 3]}", 0.25) for i in range(max(0, len(squeezed) - 2))]
    if not features:
        features = [(f"t:{text}", 1.0)]
    vector = [0.0] * dims
    for feature, weight in features:
        d = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
        index = int.from_bytes(d[:4], "little") % dims
        sign = 1.0 if d[4] & 1 else -1.0
        vector[index] += sign * weight
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:  # every feature cancelled out: fall back to one hashed coordinate
        vector[int.from_bytes(_digest(text)[:4], "little") % dims] = 1.0
        return vector
    return [v / norm for v in vector]


def _phrase(seed: bytes, n: int) -> str:
    return " ".join(_WORDS[seed[i % len(seed)] % len(_WORDS)] for i in range(n))


def _schema_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


_MAX_SCHEMA_DEPTH = 12
"""Nesting depth after which recursive schemas (a ``$ref`` to an ancestor) stop growing."""


_MAX_ITEMS = 100
_MAX_STRING = 10_000
"""Caps on what a schema can make the generator build: a request must not be able to exhaust memory."""


def _number(schema: Mapping[str, Any], name: str) -> float | None:
    """``schema[name]`` if it is a finite number, else None (a malformed bound is ignored)."""
    value = schema.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(schema: Mapping[str, Any], name: str, default: int) -> int:
    """``schema[name]`` as a size (items or characters) within the caps, or ``default``."""
    value = _number(schema, name)
    limit = _MAX_STRING if name.endswith("Length") else _MAX_ITEMS
    return min(max(int(value), 0), limit) if value is not None else default


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    """The sub-schema a local ``$ref`` (``#/$defs/Name``, ``#/definitions/Name``, ``#``) points at."""
    if not ref.startswith("#"):
        return {}  # remote references are not fetched offline
    node: Any = root
    for part in ref[1:].lstrip("/").split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _formatted_string(fmt: str, h: bytes) -> str | None:
    """A deterministic value of the common string ``format`` keywords (pydantic emits them for dates etc.)."""
    day = 1 + h[5] % 28
    if fmt == "date-time":
        return f"2024-{1 + h[6] % 12:02d}-{day:02d}T{h[7] % 24:02d}:{h[8] % 60:02d}:00Z"
    if fmt == "date":
        return f"2024-{1 + h[6] % 12:02d}-{day:02d}"
    if fmt == "time":
        return f"{h[7] % 24:02d}:{h[8] % 60:02d}:00"
    if fmt == "email":
        return f"local-{h[:4].hex()}@example.com"
    if fmt in ("uri", "url", "iri"):
        return f"https://example.com/local/{h[:4].hex()}"
    if fmt == "uuid":
        return str(uuid.UUID(bytes=h[:16], version=4))
    return None


def instance_of_schema(
    schema: Mapping[str, Any], seed: bytes, path: str = "$", *, root: Mapping[str, Any] | None = None, depth: int = 0
) -> Any:
    """Return a deterministic value that satisfies the common JSON Schema keywords of ``schema``.

    Handles ``type`` (object, array, string, integer, number, boolean, null), ``properties``,
    ``required``, ``items``, ``enum``, ``const``, ``minimum``/``maximum``,
    ``exclusiveMinimum``/``exclusiveMaximum``, ``minItems``/``maxItems``, ``minLength``/``maxLength``,
    string ``format`` (date-time, date, time, email, uri, uuid), ``anyOf``/``oneOf``/``allOf`` (first
    branch) and local ``$ref`` into ``$defs`` / ``definitions`` (what the ``openai`` SDK's structured
    outputs and pydantic's ``model_json_schema`` produce).
    """
    root = schema if root is None else root
    if depth > _MAX_SCHEMA_DEPTH:
        return None
    h = _digest(seed.hex(), path)
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return instance_of_schema(_resolve_ref(ref, root), seed, path, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[h[0] % len(enum)]
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches and isinstance(branches[0], Mapping):
            return instance_of_schema(branches[0], seed, path, root=root, depth=depth + 1)
    kind = _schema_type(schema)
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        return {
            name: instance_of_schema(
                sub if isinstance(sub, Mapping) else {}, seed, f"{path}.{name}", root=root, depth=depth + 1
            )
            for name, sub in props.items()
        }
    if kind == "array":
        items = schema.get("items")
        items = items if isinstance(items, Mapping) else {"type": "string"}
        low = _count(schema, "minItems", 1)
        high = _count(schema, "maxItems", max(low, 3))
        count = low + h[1] % (high - low + 1) if high >= low else low
        if depth >= _MAX_SCHEMA_DEPTH // 2:
            count = _count(schema, "minItems", 0)  # a recursive schema: stop growing
        return [instance_of_schema(items, seed, f"{path}[{i}]", root=root, depth=depth + 1) for i in range(count)]
    if kind in ("integer", "number"):
        step = 1.0 if kind == "integer" else 1e-3
        low_n = _number(schema, "minimum")
        high_n = _number(schema, "maximum")
        exclusive_low, exclusive_high = _number(schema, "exclusiveMinimum"), _number(schema, "exclusiveMaximum")
        if exclusive_low is not None:
            low_n = max(low_n if low_n is not None else -math.inf, exclusive_low + step)
        if exclusive_high is not None:
            high_n = min(high_n if high_n is not None else math.inf, exclusive_high - step)
        if low_n is None:
            low_n = 0.0 if high_n is None or high_n >= 0 else high_n - 100
        if high_n is None:
            high_n = 100.0 if low_n <= 100 else low_n + 100
        fraction = int.from_bytes(h[:4], "little") / 0xFFFFFFFF
        value = low_n + (high_n - low_n) * fraction
        if kind == "integer":
            return min(max(int(math.floor(value)), math.ceil(low_n)), math.floor(high_n))
        return min(max(round(value, 4), low_n), high_n)
    if kind == "boolean":
        return bool(h[2] & 1)
    if kind == "null":
        return None
    fmt = schema.get("format")
    formatted = _formatted_string(fmt, h) if isinstance(fmt, str) else None
    if formatted is not None:
        return formatted
    text = f"local {_phrase(h, 3)}"
    min_len = _count(schema, "minLength", 0)
    max_len = _count(schema, "maxLength", _MAX_STRING)
    text = (text + " x" * min_len)[: max(min_len, len(text))]
    return text[:max_len]


def _wants_json(prompt_text: str) -> bool:
    return "json" in prompt_text.lower()


def generate(model: str, prompt_text: str, response_format: Mapping[str, Any] | None) -> tuple[Any, bool]:
    """Answer ``prompt_text`` deterministically.

    Args:
        model: The model id (part of the hash, so two models answer differently).
        prompt_text: Every message's role and content, joined.
        response_format: The request's ``response_format`` (``json_object`` or ``json_schema``), if any.

    Returns:
        ``(answer, is_json)``: a JSON-compatible object when JSON was asked, else a string.
    """
    seed = _digest(model, prompt_text)
    schema: Mapping[str, Any] | None = None
    kind = response_format.get("type") if response_format else None
    if kind == "json_schema":
        raw = response_format.get("json_schema") if response_format else None
        if isinstance(raw, Mapping):
            # OpenAI nests the schema under "schema"; Workers AI puts the schema itself there.
            inner = raw.get("schema")
            schema = inner if isinstance(inner, Mapping) else raw
    if schema is not None:
        return instance_of_schema(schema, seed), True
    last_line = prompt_text.strip().splitlines()[-1] if prompt_text.strip() else ""
    excerpt = last_line[:80]
    if kind == "json_object" or _wants_json(prompt_text):
        return {
            "answer": f"local answer {_phrase(seed, 4)}",
            "score": seed[0] % 101,
            "model": model,
            "local_model": True,
            "input_excerpt": excerpt,
        }, True
    return f"[local {model}] {_phrase(seed, 6)}. You wrote: {excerpt}", False


def messages_text(messages: Sequence[Any]) -> str:
    """Join chat messages as ``role: content`` lines (content parts of type text included)."""
    lines = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, Mapping) and "text" in part
            )
        lines.append(f"{message.get('role', 'user')}: {content if content is not None else ''}")
    return "\n".join(lines)


class PromptCache:
    """A deterministic stand-in for a provider's prompt (prefix) cache, per model.

    :meth:`cached_tokens` answers how many prompt tokens of a chat request were cached: the tokens of the longest
    run of leading messages (whole messages, up to all of them) that an earlier request to the same model began
    with; then it remembers every leading run of this request. The same request twice: the second has all its
    prompt tokens cached. The least recently seen prefixes are forgotten past ``max_entries``.

    Args:
        max_entries: How many prefixes are remembered (>= 1).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries!r}: must be >= 1")
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def cached_tokens(self, model: str, messages: Sequence[Any]) -> int:
        """The cached prompt tokens of ``messages`` sent to ``model`` (0 the first time), remembering them."""
        prefixes = [_digest(model, messages_text(messages[: i + 1])) for i in range(len(messages))]
        cached = 0
        with self._lock:
            for i in range(len(prefixes) - 1, -1, -1):
                if prefixes[i] in self._seen:
                    cached = token_count(messages_text(messages[: i + 1]))
                    break
            for digest in prefixes:
                self._seen[digest] = None
                self._seen.move_to_end(digest)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
        return cached

    def clear(self) -> None:
        """Forget every prefix."""
        with self._lock:
            self._seen.clear()
