"""Token prices, the token usage of an answer, and what a call cost by its tokens.

Three layers save money: a KV hit costs nothing, a gateway hit costs nothing, and a provider's prompt cache
bills the cached part of a prompt at a lower rate. The first two are counted per request
(:class:`~dualcache.Stats`); the third needs the answer's ``usage``:

* OpenAI chat completions: ``usage.prompt_tokens``, ``usage.completion_tokens`` and
  ``usage.prompt_tokens_details.cached_tokens`` (the cached tokens are part of ``prompt_tokens``);
* Workers AI text generation: ``result.usage`` with ``prompt_tokens``, ``completion_tokens`` (its documented
  response). Workers AI documents prefix caching with cached input billed at a discounted rate, but its model
  pages do not spell out the field; Cloudflare's own AI SDK provider reads it from the same OpenAI-shaped
  ``usage.prompt_tokens_details.cached_tokens``, so that is read here too, and an answer without it has no
  cached tokens (both cases handled: with the field, and without it);
* embeddings: ``usage.prompt_tokens`` when the provider sends it (OpenAI does; Workers AI's bge models may
  not), no output tokens.

A cost is ``(input - cached) * input + cached * cached_input + output * output`` in US dollars, from the
per-token prices of a :class:`TokenPrices`; a :class:`Prices` finds them per model, else per operation. With
no price for a call, or an answer without usage, the per-request :class:`~dualcache.PriceTable` applies.

The gateway is told the same prices in ``cf-aig-custom-cost`` (per-token form, as AI Gateway documents it; the
cache-read rate ``per_cache_read_token`` is documented since 2026-09, and a gateway that does not know it falls
back to ``per_token_in`` for cached tokens), so its analytics and ours agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dualcache._exceptions import ConfigError

__all__ = ["Prices", "TokenPrices", "Usage", "parse_usage"]


def _price(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{owner}.{name}={value!r}: must be a finite number of US dollars >= 0 (per token; "
            "use TokenPrices.per_million(...) for prices per million tokens)"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """US dollars per token: input, output, and cached input (a prompt-cache read).

    Attributes:
        input: Per input (prompt) token that was not served from the provider's prompt cache.
        output: Per output (completion) token.
        cached_input: Per input token served from the provider's prompt cache; ``None`` means the input
            price (no discount), as the gateway assumes for a missing cache-read rate.

    Raises:
        ConfigError: a price that is not a finite number >= 0.
    """

    input: float
    output: float = 0.0
    cached_input: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", _price("TokenPrices", "input", self.input))
        object.__setattr__(self, "output", _price("TokenPrices", "output", self.output))
        if self.cached_input is not None:
            object.__setattr__(self, "cached_input", _price("TokenPrices", "cached_input", self.cached_input))

    @classmethod
    def per_million(cls, input: float, output: float = 0.0, cached_input: float | None = None) -> TokenPrices:
        """Build from prices per million tokens (as providers list them): ``per_million(0.15, 0.6, 0.075)``.

        Raises:
            ConfigError: a price that is not a finite number >= 0.
        """
        for name, value in (("input", input), ("output", output), ("cached_input", cached_input)):
            if value is not None:
                _price("TokenPrices.per_million", name, value)
        return cls(input / 1e6, output / 1e6, None if cached_input is None else cached_input / 1e6)

    @property
    def cached_rate(self) -> float:
        """The price of a cached input token (the input price when no cached price is set)."""
        return self.input if self.cached_input is None else self.cached_input

    def cost(self, usage: Usage) -> float:
        """What ``usage`` costs at these prices, in US dollars."""
        fresh = usage.input_tokens - usage.cached_tokens
        return fresh * self.input + usage.cached_tokens * self.cached_rate + usage.output_tokens * self.output

    def prompt_cache_saving(self, usage: Usage) -> float:
        """What the provider's prompt cache saved on ``usage``: its cached tokens at the input price, less
        what they cost at the cached price."""
        return usage.cached_tokens * (self.input - self.cached_rate)

    def custom_cost_header(self) -> str:
        """The ``cf-aig-custom-cost`` value: ``{"per_token_in", "per_token_out"}``, plus ``per_cache_read_token``
        when a cached price is set. Numbers as JSON writes them (``repr`` of a float: exact, no rounding)."""
        value: dict[str, float] = {"per_token_in": self.input, "per_token_out": self.output}
        if self.cached_input is not None:
            value["per_cache_read_token"] = self.cached_input
        return json.dumps(value, separators=(",", ":"))


class Prices:
    """Token prices per model and per operation (the model's win when both are given).

    Args:
        models: ``{model id: TokenPrices}``, e.g. ``{"gpt-4o-mini": TokenPrices.per_million(0.15, 0.6, 0.075)}``.
        operations: ``{operation name: TokenPrices}``, for every call of the operation whose model has none.

    Raises:
        ConfigError: a key that is not a non-empty string, or a value that is not a :class:`TokenPrices`.
    """

    __slots__ = ("_models", "_operations")

    def __init__(
        self,
        models: Mapping[str, TokenPrices] | None = None,
        *,
        operations: Mapping[str, TokenPrices] | None = None,
    ) -> None:
        self._models = self._checked("models", models)
        self._operations = self._checked("operations", operations)

    @staticmethod
    def _checked(name: str, table: Mapping[str, TokenPrices] | None) -> dict[str, TokenPrices]:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"Prices({name}=...) must be a mapping of names to TokenPrices, got {type(table).__name__}"
            )
        out: dict[str, TokenPrices] = {}
        for key, value in table.items():
            key = str(key)  # an Operation is a str enum: its name
            if not key.strip():
                raise ConfigError(f"Prices({name}=...): an empty name; name a model or an operation")
            if not isinstance(value, TokenPrices):
                raise ConfigError(
                    f"Prices({name}=...)[{key!r}] must be a TokenPrices, got {type(value).__name__} {value!r:.80}"
                )
            out[key] = value
        return out

    def __bool__(self) -> bool:
        return bool(self._models or self._operations)

    def __repr__(self) -> str:
        return f"Prices(models={sorted(self._models)}, operations={sorted(self._operations)})"

    def for_call(self, operation: str, model: str | None) -> TokenPrices | None:
        """The prices of one call of ``operation`` to ``model``: the model's, else the operation's, else ``None``."""
        if model is not None:
            found = self._models.get(model)
            if found is not None:
                return found
        return self._operations.get(str(operation))


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens of one answer, as the provider reported them.

    Attributes:
        input_tokens: Prompt tokens, cached ones included.
        output_tokens: Completion tokens (0 for embeddings).
        cached_tokens: Prompt tokens served from the provider's prompt cache (<= ``input_tokens``).
    """

    input_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def parse_usage(data: Any) -> Usage | None:
    """Read the ``usage`` of an answer (OpenAI's body, or Workers AI's ``result``); ``None`` without one.

    A malformed field counts as absent, never as an error: usage only feeds figures, never the answer. Cached
    tokens are capped at the prompt tokens (a provider that counted them apart would otherwise make a negative
    fresh-token count).
    """
    usage = data.get("usage") if isinstance(data, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = _count(usage.get("input_tokens"))  # the Responses-style name, for providers answering with it
    if prompt is None:
        return None
    completion = _count(usage.get("completion_tokens"))
    if completion is None:
        completion = _count(usage.get("output_tokens")) or 0
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, Mapping):
        details = usage.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return Usage(prompt, completion, min(cached or 0, prompt))
