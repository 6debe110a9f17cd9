"""Checks of what models answer, before an answer is returned or cached.

* Vectors: :func:`check_vectors` wants one vector per input, each of the model's dimension
  (:func:`~dualcache._records.expected_dimensions`, when the model is in the table) and only finite numbers
  (no bools, NaN, Infinity: Python's JSON parser reads ``NaN`` and ``Infinity`` and they must never reach a
  record); it returns them rounded to float32, as a stored record gives them back.
* JSON answers: an operation may declare what its answer looks like, as a pydantic model (a
  ``BaseModel`` subclass) or a JSON schema (a dict; the subset :data:`JSON_SCHEMA_KEYWORDS` is supported,
  anything else is refused when the schema is registered, never silently ignored). :class:`AnswerSchemas`
  is the registry, one per :class:`~dualcache.DualCache` (``cache.answer_schemas``); the built-in
  operations have one each (:data:`BUILTIN_ANSWER_SCHEMAS`), a custom operation registers its own. Every
  answer must also be JSON-safe (finite numbers, string keys, valid Unicode) whether a schema is
  registered or not.

A bad answer raises :class:`~dualcache.BadResponseError`. What follows is the policy's: an answer from the
gateway route is tried once more on the direct route when the policy allows it (the gateway may have cached
the bad answer, so asking it again would give the same), job analysis falls back to OpenAI as the existing
hybrid does, and otherwise the call fails; the bad answer is counted in ``errors`` and never cached. A stored
record that fails the same checks is a miss, overwritten by the fresh answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dualcache._exceptions import BadResponseError, ConfigError, InvalidInputError
from dualcache._params import check_json_content
from dualcache._records import to_float32

__all__ = [
    "BUILTIN_ANSWER_SCHEMAS",
    "JSON_SCHEMA_KEYWORDS",
    "AnswerSchema",
    "AnswerSchemas",
    "JobAnalysisAnswer",
    "SpamVerdictAnswer",
    "check_vectors",
]

AnswerSchema = type[BaseModel] | Mapping[str, Any]
"""What an operation's answer must look like: a pydantic model class or a JSON schema (a dict)."""


# -- vectors ----------------------------------------------------------------------------------------------

_NUMBER_TYPES = frozenset({int, float})


def check_vectors(data: Any, *, count: int, dims: int | None, backend: str = "workers-ai") -> list[list[float]]:
    """Return ``data`` as ``count`` float32 vectors of ``dims`` components each, or raise.

    Args:
        data: The ``result.data`` of an embeddings answer.
        count: How many vectors were asked for (one per input text).
        dims: The model's dimension, or ``None`` when it is not known (then only the vectors' shape is checked).
        backend: For messages.

    Raises:
        BadResponseError: not a list of ``count`` non-empty lists of finite numbers (a bool is not a number),
            or a vector of another length than ``dims``.
    """
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise BadResponseError(
            f"{backend} embeddings: expected {count} vectors in result.data, got {got}", backend=backend
        )
    out: list[list[float]] = []
    for i, vector in enumerate(data):
        if not isinstance(vector, list) or not vector:
            raise BadResponseError(f"{backend} embeddings: vector {i} is not a non-empty list", backend=backend)
        if dims is not None and len(vector) != dims:
            raise BadResponseError(
                f"{backend} embeddings: vector {i} has {len(vector)} dimensions, the model's are {dims}",
                backend=backend,
            )
        # Exact types (bool is an int subclass, and True is no embedding component), counted in C; finiteness
        # is to_float32's check. The per-component loop only runs to name the culprit.
        if not set(map(type, vector)) <= _NUMBER_TYPES or not math.isfinite(sum(vector)):
            for j, x in enumerate(vector):
                if type(x) not in _NUMBER_TYPES or not math.isfinite(x):
                    raise BadResponseError(
                        f"{backend} embeddings: vector {i}[{j}] = {x!r:.30} is not a finite number", backend=backend
                    )
        try:
            out.append(to_float32(vector))
        except ValueError as exc:
            raise BadResponseError(f"{backend} embeddings: vector {i}: {exc}", backend=backend) from None
    return out


# -- built-in answer models -------------------------------------------------------------------------------

_Score = Field(default=None, ge=0, le=100, strict=True)


class JobAnalysisAnswer(BaseModel):
    """A job compatibility analysis: a score, and what the prompt asked for besides.

    The existing Worker's analyses are ``{analysis: {...}, overallScore: 85}``; the README's prompt asks for ``score``,
    ``strengths`` and ``gaps``. So an answer must carry a score (``score`` or ``overallScore``, a number
    0..100); the fields named here must have their types; other fields are kept (the caller's prompt
    chooses them). ``{}`` or an answer without a score is not an analysis.
    """

    model_config = ConfigDict(extra="allow")

    score: float | None = _Score
    overallScore: float | None = _Score  # noqa: N815 - the existing Worker's field name
    analysis: dict[str, Any] | str | None = None
    summary: str | None = None
    strengths: list[Any] | None = None
    gaps: list[Any] | None = None
    recommendations: list[Any] | str | None = None

    @model_validator(mode="after")
    def _has_score(self) -> JobAnalysisAnswer:
        if self.score is None and self.overallScore is None:
            raise ValueError("a job analysis needs a score: 'score' or 'overallScore', a number 0..100")
        return self


class SpamVerdictAnswer(BaseModel):
    """A spam verdict: at least one of a boolean verdict or a score.

    Accepted verdict fields: ``isSpam``/``is_spam``/``spam`` (booleans), ``confidence`` (0..1), ``score``
    or ``spamScore``/``spam_score`` (0..100); ``reasons`` is a list or a string. Other fields are kept.
    """

    model_config = ConfigDict(extra="allow")

    isSpam: bool | None = Field(default=None, strict=True)  # noqa: N815 - the usual JSON spelling
    is_spam: bool | None = Field(default=None, strict=True)
    spam: bool | None = Field(default=None, strict=True)
    confidence: float | None = Field(default=None, ge=0, le=1, strict=True)
    score: float | None = _Score
    spamScore: float | None = _Score  # noqa: N815
    spam_score: float | None = _Score
    reasons: list[Any] | str | None = None

    @model_validator(mode="after")
    def _has_verdict(self) -> SpamVerdictAnswer:
        fields = (self.isSpam, self.is_spam, self.spam, self.confidence, self.score, self.spamScore, self.spam_score)
        if all(f is None for f in fields):
            raise ValueError(
                "a spam verdict needs one of isSpam/is_spam/spam (bool), confidence (0..1) or "
                "score/spamScore/spam_score (0..100)"
            )
        return self


BUILTIN_ANSWER_SCHEMAS: Mapping[str, AnswerSchema] = {
    "job_analysis": JobAnalysisAnswer,
    "spam_detection": SpamVerdictAnswer,
}
"""The answer schema of each built-in JSON operation that is cached in KV."""


# -- JSON schema (a subset) -------------------------------------------------------------------------------

JSON_SCHEMA_KEYWORDS = frozenset(
    {
        "$schema",
        "title",
        "description",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "anyOf",
    }
)
"""The JSON-schema keywords :class:`AnswerSchemas` validates; a schema with any other is refused."""

_TYPES: Mapping[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _subschemas(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from (schema.get("properties") or {}).values()
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield schema[key]
    yield from schema.get("anyOf") or ()


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, Mapping):
        raise ConfigError(f"{where}: a JSON schema must be an object, got {type(schema).__name__}")
    unknown = sorted(set(schema) - JSON_SCHEMA_KEYWORDS)
    if unknown:
        raise ConfigError(
            f"{where}: unsupported JSON-schema keyword(s) {', '.join(unknown)}; supported: "
            f"{', '.join(sorted(JSON_SCHEMA_KEYWORDS))} (or pass a pydantic model)"
        )
    types = schema.get("type")
    for name in [types] if isinstance(types, str) else types or []:
        if name not in _TYPES:
            raise ConfigError(f"{where}: unknown type {name!r}; valid types: {', '.join(_TYPES)}")
    for sub in _subschemas(schema):
        _check_schema(sub, where)


def _is_type(value: Any, name: str) -> bool:
    if name in ("number", "integer") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def _schema_errors(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    """The first way ``value`` breaks ``schema``, or ``None``."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, n) for n in names):
            return f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: must be {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r:.40} is not one of {schema['enum']!r:.80}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: {value!r} < minimum {schema['minimum']!r}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path}: {value!r} > maximum {schema['maximum']!r}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
            return f"{path}: length {len(value)} outside {schema.get('minLength', 0)}..{schema.get('maxLength', '')}"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            return f"{path}: {len(value)} items, outside {schema.get('minItems', 0)}..{schema.get('maxItems', '')}"
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                if (error := _schema_errors(item, items, f"{path}[{i}]")) is not None:
                    return error
    if isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0) or len(value) > schema.get("maxProperties", math.inf):
            low, high = schema.get("minProperties", 0), schema.get("maxProperties", "")
            return f"{path}: {len(value)} fields, outside {low}..{high}"
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            return f"{path}: missing required field(s) {', '.join(missing)}"
        properties: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        for key, sub in value.items():
            if key in properties:
                error = _schema_errors(sub, properties[key], f"{path}.{key}")
            elif extra is False:
                error = f"{path}: unexpected field {key!r:.40}"
            elif isinstance(extra, Mapping):
                error = _schema_errors(sub, extra, f"{path}.{key}")
            else:
                error = None
            if error is not None:
                return error
    alternatives: Sequence[Mapping[str, Any]] = schema.get("anyOf") or ()
    if alternatives and all(_schema_errors(value, alt, path) is not None for alt in alternatives):
        return f"{path}: matches none of the anyOf alternatives"
    return None


# -- the registry -----------------------------------------------------------------------------------------


class AnswerSchemas:
    """The answer schema of each JSON operation, by operation name (``cache.answer_schemas``).

    Args:
        schemas: Operation name (or :class:`~dualcache.Operation`) -> schema; :meth:`builtin` gives the
            built-in operations' ones.

    Raises:
        ConfigError: a schema is neither a pydantic model nor a supported JSON schema.
    """

    def __init__(self, schemas: Mapping[str, AnswerSchema] | None = None) -> None:
        self._schemas: dict[str, AnswerSchema] = {}
        for name, schema in (schemas or {}).items():
            self.register(name, schema)

    @classmethod
    def builtin(cls) -> AnswerSchemas:
        """A registry holding :data:`BUILTIN_ANSWER_SCHEMAS`."""
        return cls(BUILTIN_ANSWER_SCHEMAS)

    def __repr__(self) -> str:
        return f"AnswerSchemas({sorted(self._schemas)!r})"

    def register(self, operation: str, schema: AnswerSchema | None) -> None:
        """Declare the answer schema of ``operation`` (``None`` removes it: then only JSON safety is checked).

        Raises:
            ConfigError: ``schema`` is neither a pydantic model class nor a supported JSON schema.
        """
        name = str(getattr(operation, "value", operation))
        if schema is None:
            self._schemas.pop(name, None)
            return
        if isinstance(schema, type):
            if not issubclass(schema, BaseModel):
                raise ConfigError(f"answer schema of {name!r}: {schema.__name__} is not a pydantic BaseModel")
        else:
            _check_schema(schema, f"answer schema of {name!r}")
        self._schemas[name] = schema

    def get(self, operation: str) -> AnswerSchema | None:
        """The schema of ``operation``, or ``None``."""
        if type(operation) is str:  # a plain name (every cached JSON hit asks): no attribute lookup
            return self._schemas.get(operation)
        return self._schemas.get(str(getattr(operation, "value", operation)))

    def check(self, operation: str, answer: Any, *, backend: str) -> dict[str, Any]:
        """Return ``answer`` when it is a JSON-safe object that fits the operation's schema.

        The answer is returned as it is (a pydantic model validates it; its dump is not substituted).

        Raises:
            BadResponseError: not an object, not JSON-safe (NaN, Infinity, lone surrogates), empty, or not
                what the schema says; the message says why.
        """
        name = str(getattr(operation, "value", operation))
        if not isinstance(answer, dict):
            raise BadResponseError(
                f"{backend}: the {name} answer is not a JSON object: {type(answer).__name__}", backend=backend
            )
        try:
            check_json_content(answer, "answer")
        except InvalidInputError as exc:
            raise BadResponseError(f"{backend}: the {name} answer is not JSON-safe: {exc}", backend=backend) from None
        schema = self._schemas.get(name)
        error: str | None = None
        if schema is None:
            return answer
        if isinstance(schema, type):
            try:
                schema.model_validate(answer)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "answer"
                error = f"{where}: {str(first['msg']).removeprefix('Value error, ')}"
        else:
            error = _schema_errors(answer, schema, "answer")
        if error is not None:
            raise BadResponseError(
                f"{backend}: the {name} answer does not fit its schema ({error}): {str(answer)[:120]!r}",
                backend=backend,
            )
        return answer

    def is_valid(self, operation: str, answer: Any) -> bool:
        """Whether :meth:`check` accepts ``answer`` (for stored records: a record that is not is a miss)."""
        try:
            self.check(operation, answer, backend="kv")
        except BadResponseError:
            return False
        return True
