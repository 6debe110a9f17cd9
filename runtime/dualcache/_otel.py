"""OpenTelemetry tracing of the cache's operations, with the ``otel`` extra (``pip install dualcache[otel]``).

Nothing here imports ``opentelemetry`` until tracing is turned on: without the extra, or with it but no tracer
provider, ``DualCache`` holds ``None`` for its telemetry, its operation methods are the plain ones (a traced
cache wraps them on its own instance), and every hook inside is one ``is None`` branch.

Turned on when ``DualCache(tracer_provider=...)`` is given one, or (``tracing=None``, the default) when the
application already imported ``opentelemetry`` and set a global tracer provider before building the cache
(checked once, in the constructor: no import is triggered by the check). ``tracing=False`` turns it off,
``tracing=True`` requires it (an :class:`ImportError` naming the extra when it is not installed).

The span tree of one operation call (names are constants below)::

    dualcache.<operation>                 INTERNAL  one per call of embed, embed_many, run, analyze_job, ...
    ├── dualcache.kv.read                 INTERNAL  the KV read (one per call; a bulk read for embed_many)
    ├── chat <model> | embeddings <model> CLIENT    one per route tried: the gateway, then direct
    └── dualcache.kv.write                INTERNAL  the record written (or queued, with write-behind)

Attributes follow the GenAI semantic conventions where one fits (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.provider.name`` and the older ``gen_ai.system``, ``gen_ai.usage.input_tokens``
/ ``output_tokens``), and the ``dualcache.*`` namespace for the rest: ``dualcache.operation``,
``dualcache.cache.layer`` (``kv``, ``gateway`` or ``none``: the layer that answered; ``none`` when the
provider computed it, or when the call joined another's computation, ``dualcache.coalesced``),
``dualcache.cache.hit``, ``dualcache.route`` (``gateway``/``direct``), ``dualcache.gateway.cache_status``,
``dualcache.gateway.log_id`` (``cf-aig-log-id``: the gateway's log entry of the request) and
``dualcache.usage.cached_tokens``. Never a key, a user id, a prompt or an answer.

Write-behind: the record is queued in the operation (the ``dualcache.kv.write`` span, parented to the
operation, covers the queueing, with ``dualcache.kv.write_behind`` true) and written later in a bulk write
shared by the records of many operations; that batch is not a child of any one of them, so it is not traced
as one (a synchronous write, ``write_behind=False``, is traced as it happens).

The gateway route carries the trace to the AI Gateway: ``cf-aig-otel-trace-id`` (32 lower-case hex digits) and
``cf-aig-otel-parent-span-id`` (16) from the route's span, as the gateway's OpenTelemetry integration documents,
so the gateway's own span of the request (exported by the gateway when an OTLP exporter is set on it) is a child
of ours. Without a valid span context (a non-recording provider) no header is sent.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from dualcache._gateway import Provider, Route, RouteSpan, UpstreamResult

if TYPE_CHECKING:
    from dualcache._engine import CacheEngine

__all__ = [
    "KV_READ_SPAN",
    "KV_WRITE_SPAN",
    "PARENT_SPAN_HEADER",
    "TRACE_ID_HEADER",
    "Telemetry",
    "resolve_telemetry",
    "traced",
]

TRACE_ID_HEADER = "cf-aig-otel-trace-id"
PARENT_SPAN_HEADER = "cf-aig-otel-parent-span-id"
KV_READ_SPAN = "dualcache.kv.read"
KV_WRITE_SPAN = "dualcache.kv.write"
_EXTRA = "otel"

P = ParamSpec("P")
R = TypeVar("R")


class _OpState:
    """What one operation call met, filled in by its layers' hooks (shared with its detached computation)."""

    __slots__ = (
        "cached_tokens",
        "coalesced",
        "gateway_hit",
        "gen_ai_operation",
        "input_tokens",
        "output_tokens",
        "provider",
        "tokens",
    )

    def __init__(self, gen_ai_operation: str) -> None:
        self.gen_ai_operation = gen_ai_operation
        self.gateway_hit = False
        self.provider = False
        self.coalesced = False
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.tokens = False  # an answer of this call reported its usage

    def layer(self, served: bool) -> str:
        # A call served without an upstream answer of its own, nor another caller's, was served by KV (the read,
        # or a record still queued for writing, which a KV read span does not see).
        if not served or self.provider or self.coalesced:
            return "none"
        return "gateway" if self.gateway_hit else "kv"


def _gen_ai_operation(operation: str) -> str:
    return "embeddings" if operation == "embeddings" else "chat"


def _provider_attributes(provider: str | None) -> dict[str, str]:
    # GenAI's well-known provider names include "openai"; Workers AI has none, so its name in the gateway's URLs is
    # used. gen_ai.system is the older name of the same attribute, still read by many backends.
    return {} if provider is None else {"gen_ai.provider.name": provider, "gen_ai.system": provider}


class _Route(RouteSpan):
    __slots__ = ("_span", "_state")

    def __init__(self, span: Any, state: _OpState | None) -> None:
        self._span = span
        self._state = state

    def answered(self, result: UpstreamResult) -> None:
        span, state = self._span, self._state
        hit = result.gateway_hit
        span.set_attribute("dualcache.cache.hit", hit)
        if result.cache_status is not None:
            span.set_attribute("dualcache.gateway.cache_status", result.cache_status)
        if result.log_id is not None:
            span.set_attribute("dualcache.gateway.log_id", result.log_id)
        usage = result.usage
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("dualcache.usage.cached_tokens", usage.cached_tokens)
        if state is not None:
            if hit:
                state.gateway_hit = True
            else:
                state.provider = True
                if usage is not None:
                    state.tokens = True
                    state.input_tokens += usage.input_tokens
                    state.output_tokens += usage.output_tokens
                    state.cached_tokens += usage.cached_tokens


class Telemetry:
    """The tracer of one cache and its hooks (see the module docstring). Built by :func:`resolve_telemetry`.

    Args:
        tracer_provider: An OpenTelemetry ``TracerProvider``.
    """

    def __init__(self, tracer_provider: Any) -> None:
        from opentelemetry import trace

        from dualcache import __version__

        self._trace = trace
        self._kind_client = trace.SpanKind.CLIENT
        self._tracer = tracer_provider.get_tracer("dualcache", __version__)
        self._state: ContextVar[_OpState | None] = ContextVar("dualcache_otel_op", default=None)

    async def operation(
        self, coro: Coroutine[Any, Any, R], operation: str, model: str | None, provider: str | None
    ) -> R:
        """Await ``coro`` (an operation's body) inside its operation span."""
        state = _OpState(_gen_ai_operation(operation))
        attributes: dict[str, Any] = {
            "dualcache.operation": operation,
            "gen_ai.operation.name": state.gen_ai_operation,
            **_provider_attributes(provider),
        }
        if model is not None:
            attributes["gen_ai.request.model"] = model
        token = self._state.set(state)
        try:
            with self._tracer.start_as_current_span(f"dualcache.{operation}", attributes=attributes) as span:
                served = False
                try:
                    value = await coro
                    served = True
                    return value
                finally:
                    layer = state.layer(served)
                    span.set_attribute("dualcache.cache.layer", layer)
                    span.set_attribute("dualcache.cache.hit", layer != "none")
                    if state.coalesced:
                        span.set_attribute("dualcache.coalesced", True)
                    if state.tokens:
                        span.set_attribute("gen_ai.usage.input_tokens", state.input_tokens)
                        span.set_attribute("gen_ai.usage.output_tokens", state.output_tokens)
                        span.set_attribute("dualcache.usage.cached_tokens", state.cached_tokens)
        finally:
            self._state.reset(token)
            coro.close()  # a no-op once awaited; frees a body that was never started (the span failed to open)

    @contextmanager
    def kv_read(self, binding: str | None, keys: int) -> Iterator[Callable[[int], None]]:
        """The KV read span; the caller reports how many keys were found."""
        with self._tracer.start_as_current_span(
            KV_READ_SPAN, attributes={"dualcache.kv.binding": binding or "", "dualcache.kv.keys": keys}
        ) as span:

            def hits(n: int) -> None:
                span.set_attribute("dualcache.kv.hits", n)
                span.set_attribute("dualcache.cache.hit", n > 0 and n == keys)

            yield hits

    @contextmanager
    def kv_write(self, binding: str | None, entries: int, *, write_behind: bool) -> Iterator[None]:
        """The KV write span (the queueing, with write-behind)."""
        with self._tracer.start_as_current_span(
            KV_WRITE_SPAN,
            attributes={
                "dualcache.kv.binding": binding or "",
                "dualcache.kv.entries": entries,
                "dualcache.kv.write_behind": write_behind,
            },
        ):
            yield

    def instrument(self, engine: CacheEngine) -> None:
        """Wrap the operation methods marked with :func:`traced` on ``engine`` (its instance only), so each
        call runs inside its operation span."""
        for name in dir(type(engine)):
            describe = getattr(getattr(type(engine), name, None), _DESCRIBE, None)
            if describe is not None:
                setattr(engine, name, _traced_method(self, getattr(engine, name), describe))

    def coalesced(self) -> None:
        """Note that the current operation call joined another's computation."""
        state = self._state.get()
        if state is not None:
            state.coalesced = True

    @contextmanager
    def route(
        self, route: Route, provider: Provider, model: str, headers: MutableMapping[str, str]
    ) -> Iterator[RouteSpan]:
        """The span of one route tried (an ``UpstreamClient.route_span``); on the gateway route, the trace
        context headers are added to ``headers``."""
        state = self._state.get()
        operation = state.gen_ai_operation if state is not None else "chat"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "dualcache.route": route.value,
            **_provider_attributes(provider.value),
        }
        with self._tracer.start_as_current_span(
            f"{operation} {model}", kind=self._kind_client, attributes=attributes
        ) as span:
            if route is Route.GATEWAY:
                context = span.get_span_context()
                if context.is_valid:
                    headers[TRACE_ID_HEADER] = format(context.trace_id, "032x")
                    headers[PARENT_SPAN_HEADER] = format(context.span_id, "016x")
            yield _Route(span, state)


def resolve_telemetry(tracing: bool | None, tracer_provider: Any) -> Telemetry | None:
    """The telemetry of a new cache, or ``None`` (off: zero cost). See the module docstring.

    Raises:
        ImportError: tracing asked for (``tracing=True`` or a ``tracer_provider``) without the ``otel`` extra.
        ConfigError: ``tracing`` is not a bool or ``None``, or ``tracer_provider`` given with ``tracing=False``.
    """
    from dualcache._exceptions import ConfigError

    if tracing is not None and not isinstance(tracing, bool):
        raise ConfigError(f"tracing={tracing!r}: must be True, False or None (on when a tracer provider is set)")
    if tracing is False:
        if tracer_provider is not None:
            raise ConfigError("tracer_provider given with tracing=False; drop one of them")
        return None
    if tracer_provider is None:
        module = sys.modules.get("opentelemetry.trace")
        if module is None and tracing:
            module = _import_trace()
        if module is None:
            return None  # the application never imported OpenTelemetry: nothing can be configured
        provider = module.get_tracer_provider()
        if isinstance(provider, module.ProxyTracerProvider | module.NoOpTracerProvider) and not tracing:
            return None  # imported, but no provider set: spans would be dropped
        tracer_provider = provider
    else:
        _import_trace()
    if not callable(getattr(tracer_provider, "get_tracer", None)):
        raise ConfigError(
            f"tracer_provider must be an OpenTelemetry TracerProvider, got {type(tracer_provider).__name__}"
        )
    return Telemetry(tracer_provider)


def _import_trace() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(
            f"tracing needs the {_EXTRA!r} extra: pip install 'dualcache[{_EXTRA}]' (opentelemetry-api)"
        ) from exc
    return trace


_DESCRIBE = "__dualcache_describe__"


def traced(
    describe: Callable[..., tuple[str, str | None, str | None]],
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Mark an operation method as traced: ``describe(self, *args, **kwargs)`` gives ``(operation, model,
    provider)`` of a call.

    The method itself is left as it is (no wrapper, so nothing is added to a call without telemetry):
    :meth:`Telemetry.instrument` wraps the marked methods of one cache, on that instance, when it traces.
    """

    def decorate(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        setattr(method, _DESCRIBE, describe)
        return method

    return decorate


def _traced_method(
    telemetry: Telemetry, bound: Callable[..., Coroutine[Any, Any, Any]], describe: Callable[..., Any]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    owner = bound.__self__  # type: ignore[attr-defined]

    @functools.wraps(bound)
    def wrapper(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        try:
            operation, model, provider = describe(owner, *args, **kwargs)
        except Exception:  # a bad argument: the method's own checks raise the clear error, untraced
            return bound(*args, **kwargs)
        return telemetry.operation(bound(*args, **kwargs), operation, model, provider)

    return wrapper
