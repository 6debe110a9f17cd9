"""Checks of what a call sends to a model, before any I/O: message content and sampling parameters.

Two things JSON cannot carry reach the wire otherwise and fail there with a foreign error: a lone UTF-16
surrogate (``"\\ud800"``: httpx's UTF-8 encoding raises ``UnicodeEncodeError``) and a non-finite float
(``NaN``/``Infinity``: not JSON, ``json.dumps(allow_nan=False)`` raises ``ValueError``; with the default
``allow_nan=True`` it is sent as a bare ``NaN`` the provider refuses). :func:`check_json_content` finds
them, by path, and raises :class:`~dualcache.InvalidInputError`.

Sampling parameters are checked against the documented ranges of each provider (:data:`SAMPLING_RANGES`):
OpenAI's chat completions (``temperature`` 0..2, ``top_p`` 0..1, penalties -2..2) and Workers AI's text
generation models (``temperature`` 0..5, ``top_k`` 1..50, ``seed`` 1..9999999999,
``repetition_penalty`` 0..2). :func:`check_sampling` is the one function every entry point calls
(``generate_application`` and a generic ``run(**params)``): it returns the checked parameters, unknown
ones untouched (a provider may add parameters; they are still checked for JSON by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dualcache._exceptions import InvalidInputError

__all__ = ["SAMPLING_RANGES", "JSON_MAX_DEPTH", "ParamRange", "check_json_content", "check_sampling", "is_json_safe"]

JSON_MAX_DEPTH = 64
"""Deepest nesting accepted in a request body (messages, parameters); far above any chat message's."""


@dataclass(frozen=True, slots=True)
class ParamRange:
    """The documented range of one sampling parameter.

    Attributes:
        low: Smallest value allowed (inclusive).
        high: Largest value allowed (inclusive).
        integer: Whether only integers are allowed.
    """

    low: float
    high: float
    integer: bool = False

    def describe(self) -> str:
        """``"an integer 1..50"`` or ``"a number 0..2"``."""
        kind = "an integer" if self.integer else "a number"
        high = "" if math.isinf(self.high) else f"{self.high:g}"
        return f"{kind} {self.low:g}..{high}" if high else f"{kind} >= {self.low:g}"


_INF = math.inf

SAMPLING_RANGES: Mapping[str, Mapping[str, ParamRange]] = {
    "openai": {
        "temperature": ParamRange(0, 2),
        "top_p": ParamRange(0, 1),
        "frequency_penalty": ParamRange(-2, 2),
        "presence_penalty": ParamRange(-2, 2),
        "max_tokens": ParamRange(1, _INF, integer=True),
        "max_completion_tokens": ParamRange(1, _INF, integer=True),
        "n": ParamRange(1, 128, integer=True),
        "seed": ParamRange(-(2**63), 2**63 - 1, integer=True),
        "top_logprobs": ParamRange(0, 20, integer=True),
    },
    "workers-ai": {
        "temperature": ParamRange(0, 5),
        "top_p": ParamRange(0, 2),
        "top_k": ParamRange(1, 50, integer=True),
        "seed": ParamRange(1, 9_999_999_999, integer=True),
        "repetition_penalty": ParamRange(0, 2),
        "frequency_penalty": ParamRange(-2, 2),
        "presence_penalty": ParamRange(-2, 2),
        "max_tokens": ParamRange(1, _INF, integer=True),
    },
}
"""Documented range of each sampling parameter, by provider (``"openai"``, ``"workers-ai"``)."""


def check_sampling(params: Mapping[str, Any], *, provider: str, where: str = "") -> dict[str, Any]:
    """Check the sampling parameters of one call against ``provider``'s documented ranges.

    A parameter set to ``None`` is dropped (not sent). Parameters without a known range are kept as they
    are (check them with :func:`check_json_content`).

    Args:
        params: The parameters, e.g. ``{"temperature": 0.7, "max_tokens": 3000}``.
        provider: ``"openai"`` or ``"workers-ai"`` (a :class:`~dualcache._gateway.Provider` value).
        where: Prefix of the names in messages (e.g. ``"generate_application: "``).

    Returns:
        The parameters to send.

    Raises:
        InvalidInputError: a parameter of the wrong type (``temperature='hot'``, ``max_tokens=1.5``, a bool)
            or outside its range (``max_tokens=-1``, ``temperature=nan``); the message names it and the range.
    """
    try:
        ranges = SAMPLING_RANGES[str(provider)]
    except KeyError:
        raise InvalidInputError(
            f"unknown provider {provider!r}; valid providers: {', '.join(SAMPLING_RANGES)}"
        ) from None
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        bound = ranges.get(name)
        if bound is not None:
            ok_type = not isinstance(value, bool) and (
                isinstance(value, int) if bound.integer else isinstance(value, int | float)
            )
            # isfinite of a huge int overflows: an int is finite, its range check is enough.
            if not ok_type or not (
                (isinstance(value, int) or math.isfinite(value)) and bound.low <= value <= bound.high
            ):
                raise InvalidInputError(
                    f"{where}{name}={value!r:.60}: must be {bound.describe()} ({provider}'s documented range)"
                )
        out[name] = value
    return out


def check_json_content(value: Any, name: str) -> None:
    """Check that ``value`` can be sent as JSON: strings encodable as UTF-8, numbers finite, keys strings.

    Walks ``value`` (dicts, lists, tuples, str, int, float, bool, None), at most :data:`JSON_MAX_DEPTH` deep.

    Args:
        value: What will be serialized into the request body.
        name: The path shown in messages, e.g. ``"messages"``; items add ``[i]`` and ``.key``.

    Raises:
        InvalidInputError: a lone surrogate, NaN or Infinity, a non-string key, a value of another type,
            or nesting deeper than the limit; the message names the path.
    """
    if is_json_safe(value):
        return  # the common case, on every call and every cache hit: no path strings built
    stack: list[tuple[Any, str, int]] = [(value, name, 0)]  # something is wrong: find it, with its path
    while stack:
        item, path, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise InvalidInputError(f"{path}: nested deeper than {JSON_MAX_DEPTH} levels")
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, str):
            _check_str(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInputError(f"{path}={item!r}: NaN and Infinity are not JSON; send a finite number")
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidInputError(f"{path}: key {key!r:.40} is not a string (JSON keys are strings)")
                _check_str(key, f"{path} key")
                stack.append((sub, f"{path}.{key[:40]}", depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        else:
            raise InvalidInputError(f"{path}: a {type(item).__name__} is not JSON (send str, number, list or dict)")


def is_json_safe(value: Any) -> bool:
    """Whether ``value`` is made of exact JSON types only (dict with str keys, list, tuple, str, int, float, bool,
    None), every string UTF-8, every float finite, at most :data:`JSON_MAX_DEPTH` deep: then
    :func:`check_json_content` accepts it and ``json.dumps`` cannot fail on it (no cycle: the depth is bounded).
    ``False`` says nothing: ask :func:`check_json_content` (subclasses and other mappings may still do)."""
    return _json_safe(value, 0)


def _json_safe(value: Any, depth: int) -> bool:
    """Whether :func:`check_json_content` accepts ``value``, for exact JSON types (recursion bounded by the depth
    limit). ``False`` means: walk again with paths, to raise the error or to accept what only the general walk
    knows (subclasses, other mappings)."""
    if depth > JSON_MAX_DEPTH:
        return False
    kind = type(value)
    if kind is str:
        return value.isascii() or _encodes(value)
    if value is None or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        for key, sub in value.items():
            if type(key) is not str or not (key.isascii() or _encodes(key)) or not _json_safe(sub, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for sub in value:
            if not _json_safe(sub, depth + 1):
                return False
        return True
    return False


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_str(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{path}: character {exc.start} is a lone surrogate ({text[exc.start]!r}), not UTF-8; "
            "pass valid Unicode text"
        ) from None
