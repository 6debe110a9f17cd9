"""OpenTelemetry spans of the operations (the ``otel`` extra), read back with the SDK's ``InMemorySpanExporter``.

The span tree, its GenAI and cache attributes, the trace context sent to the gateway (seen by a MockTransport
and by the emulator), and the zero cost without a tracer provider (no import of ``opentelemetry`` at all).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from runtime_support import FakeClock, fake_outputs

from dualcache import ConfigError, DualCache, MemoryKVBackend, Policies, RetryPolicy

OUTPUTS = fake_outputs()
TOKEN = "runtime-test-token"  # the session emulator's token (conftest.py)
EMBED = "@cf/baai/bge-base-en-v1.5"


class Cloud:
    """A MockTransport handler: the gateway (``gw.test``), Workers AI direct and OpenAI, with ``usage``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.cache_status = "MISS"
        self.gateway_fails = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        gateway = request.url.host == "gw.test"
        if gateway and self.gateway_fails:
            self.gateway_fails -= 1
            return httpx.Response(503, json={"success": False, "errors": [{"code": 1}]})
        headers = {"cf-aig-cache-status": self.cache_status, "cf-aig-log-id": "01LOGID"} if gateway else {}
        usage = {"prompt_tokens": 40, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 16}}
        if request.url.path.endswith("chat/completions"):
            content = json.dumps({"answer": "ok", "score": 80})
            return httpx.Response(
                200, json={"choices": [{"message": {"content": content}}], "usage": usage}, headers=headers
            )
        body = json.loads(request.content)
        if "bge" in request.url.path:
            texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
            result: dict[str, Any] = {"shape": [len(texts), 768], "data": [[0.5] * 768 for _ in texts]}
        else:
            result = {"response": {"answer": "ok", "score": 80}, "usage": usage}
        return httpx.Response(200, json={"result": result, "success": True, "errors": []}, headers=headers)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


def make(clock: FakeClock, cloud: Cloud, provider: TracerProvider | None, **kwargs: Any) -> DualCache:
    kv = MemoryKVBackend(clock=clock)
    kwargs.setdefault("write_behind", False)
    return DualCache.from_outputs(
        OUTPUTS,
        api_token="cf-token",
        openai_api_key="sk-key",
        kv=lambda ns: kv,
        transport=httpx.MockTransport(cloud),
        clock=clock,
        retry=RetryPolicy(max_attempts=1),
        openai_base_url="https://openai.test/v1",
        tracer_provider=provider,
        **kwargs,
    )


@pytest.fixture
async def cache(clock: FakeClock, cloud: Cloud, provider: TracerProvider) -> AsyncIterator[DualCache]:
    async with make(clock, cloud, provider) as cache:
        yield cache


def tree(spans: Any) -> dict[str, list[str]]:
    """``{root name: [child names in start order]}`` of the finished spans."""
    spans = list(spans)
    by_id = {s.context.span_id: s for s in spans}
    out: dict[str, list[str]] = {}
    for root in (s for s in spans if s.parent is None or s.parent.span_id not in by_id):
        children = sorted(
            (s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
            key=lambda s: s.start_time or 0,
        )
        out[root.name] = [c.name for c in children]
    return out


def named(spans: Any, name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span  # type: ignore[no-any-return]


# -- the span tree ------------------------------------------------------------------------------------------------


async def test_otel_miss_through_the_gateway_is_one_operation_with_its_layers(
    cache: DualCache, cloud: Cloud, exporter: InMemorySpanExporter
) -> None:
    await cache.embed("a text")
    spans = exporter.get_finished_spans()
    assert tree(spans) == {"dualcache.embeddings": ["dualcache.kv.read", f"embeddings {EMBED}", "dualcache.kv.write"]}
    op = named(spans, "dualcache.embeddings")
    assert {k: op.attributes[k] for k in op.attributes if not k.startswith("gen_ai.usage")} == {  # type: ignore[union-attr]
        "dualcache.operation": "embeddings",
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": EMBED,
        "gen_ai.provider.name": "workers-ai",
        "gen_ai.system": "workers-ai",
        "dualcache.cache.layer": "none",
        "dualcache.cache.hit": False,
    }
    route = named(spans, f"embeddings {EMBED}")
    assert route.kind is SpanKind.CLIENT
    assert dict(route.attributes or {}) == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": EMBED,
        "gen_ai.provider.name": "workers-ai",
        "gen_ai.system": "workers-ai",
        "dualcache.route": "gateway",
        "dualcache.cache.hit": False,
        "dualcache.gateway.cache_status": "MISS",
        "dualcache.gateway.log_id": "01LOGID",
    }
    read = named(spans, "dualcache.kv.read")
    assert dict(read.attributes or {}) == {
        "dualcache.kv.binding": "EMBEDDINGS_CACHE",
        "dualcache.kv.keys": 1,
        "dualcache.kv.hits": 0,
        "dualcache.cache.hit": False,
    }
    write = named(spans, "dualcache.kv.write")
    assert dict(write.attributes or {}) == {
        "dualcache.kv.binding": "EMBEDDINGS_CACHE",
        "dualcache.kv.entries": 1,
        "dualcache.kv.write_behind": False,
    }
    # The gateway request carries the trace: the route span is the gateway's parent.
    (request,) = cloud.requests
    assert request.headers["cf-aig-otel-trace-id"] == format(route.context.trace_id, "032x")
    assert request.headers["cf-aig-otel-parent-span-id"] == format(route.context.span_id, "016x")
    assert (
        len(request.headers["cf-aig-otel-trace-id"]) == 32 and len(request.headers["cf-aig-otel-parent-span-id"]) == 16
    )


async def test_otel_kv_hit_is_the_operation_and_its_read_only(cache: DualCache, exporter: InMemorySpanExporter) -> None:
    await cache.embed("a text")
    exporter.clear()
    await cache.embed("a text")
    spans = exporter.get_finished_spans()
    assert tree(spans) == {"dualcache.embeddings": ["dualcache.kv.read"]}
    op = named(spans, "dualcache.embeddings")
    assert (op.attributes or {})["dualcache.cache.layer"] == "kv"
    assert (op.attributes or {})["dualcache.cache.hit"] is True
    assert (named(spans, "dualcache.kv.read").attributes or {})["dualcache.kv.hits"] == 1


async def test_otel_gateway_hit_is_layer_gateway(
    cache: DualCache, cloud: Cloud, exporter: InMemorySpanExporter
) -> None:
    cloud.cache_status = "HIT"
    await cache.detect_spam(job_id="job-1", messages=[{"role": "user", "content": "Is this spam? JSON please"}])
    spans = exporter.get_finished_spans()
    op = named(spans, "dualcache.spam_detection")
    assert ((op.attributes or {})["dualcache.cache.layer"], (op.attributes or {})["dualcache.cache.hit"]) == (
        "gateway",
        True,
    )
    assert "gen_ai.usage.input_tokens" not in (op.attributes or {})  # nothing was computed for this call
    route = named(spans, "chat @cf/meta/llama-3.1-8b-instruct")
    assert (route.attributes or {})["dualcache.gateway.cache_status"] == "HIT"


async def test_otel_chat_usage_on_the_route_and_the_operation(cache: DualCache, exporter: InMemorySpanExporter) -> None:
    await cache.generate_application(messages=[{"role": "user", "content": "Write a JSON letter"}])
    spans = exporter.get_finished_spans()
    assert tree(spans) == {"dualcache.application_generation": ["chat gpt-4o-mini"]}  # KV off by default
    for span in spans:
        attributes = span.attributes or {}
        assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (40, 9)
        assert attributes["dualcache.usage.cached_tokens"] == 16
        assert attributes["gen_ai.provider.name"] == "openai"
    assert (named(spans, "dualcache.application_generation").attributes or {})["gen_ai.operation.name"] == "chat"


async def test_otel_gateway_failure_then_direct_is_two_route_spans(
    cache: DualCache, cloud: Cloud, exporter: InMemorySpanExporter
) -> None:
    cloud.gateway_fails = 1
    await cache.embed("fallback text")
    spans = exporter.get_finished_spans()
    routes = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert [(s.attributes or {})["dualcache.route"] for s in routes] == ["gateway", "direct"]
    assert [s.status.status_code for s in routes] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(
        s.parent is not None and s.parent.span_id == named(spans, "dualcache.embeddings").context.span_id
        for s in routes
    )
    gateway, direct = cloud.requests
    assert "cf-aig-otel-trace-id" in gateway.headers
    assert "cf-aig-otel-trace-id" not in direct.headers  # the trace headers are the gateway's


async def test_otel_coalesced_caller_says_so(cache: DualCache, cloud: Cloud, exporter: InMemorySpanExporter) -> None:
    cloud.gate = asyncio.Event()
    first = asyncio.create_task(cache.embed("shared text"))
    second = asyncio.create_task(cache.embed("shared text"))
    while not cloud.requests:
        await asyncio.sleep(0)
    cloud.gate.set()
    await asyncio.gather(first, second)
    ops = [s for s in exporter.get_finished_spans() if s.name == "dualcache.embeddings"]
    assert sorted(bool((s.attributes or {}).get("dualcache.coalesced")) for s in ops) == [False, True]
    assert {(s.attributes or {})["dualcache.cache.layer"] for s in ops} == {"none"}
    assert len(cloud.requests) == 1


async def test_otel_write_behind_span_is_the_queueing_under_the_operation(
    clock: FakeClock, cloud: Cloud, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with make(clock, cloud, provider, write_behind=True) as cache:
        await cache.embed_many(["one", "two"])
        await cache.flush()
    spans = exporter.get_finished_spans()
    assert tree(spans)["dualcache.embeddings"] == ["dualcache.kv.read", f"embeddings {EMBED}", "dualcache.kv.write"]
    write = named(spans, "dualcache.kv.write")
    assert (
        (write.attributes or {})["dualcache.kv.write_behind"],
        (write.attributes or {})["dualcache.kv.entries"],
    ) == (True, 2)
    assert (named(spans, "dualcache.kv.read").attributes or {})["dualcache.kv.keys"] == 2


async def test_otel_spans_never_carry_user_ids_keys_or_prompts(
    cache: DualCache, exporter: InMemorySpanExporter
) -> None:
    secret_user, secret_prompt = "user-" + uuid.uuid4().hex, "PROMPT-" + uuid.uuid4().hex
    await cache.analyze_job(user_id=secret_user, job_id="job-42", messages=[{"role": "user", "content": secret_prompt}])
    await cache.run(
        "job_analysis",
        key="job-43",
        user_id=secret_user,
        model="gpt-4o-mini",
        provider="openai",
        messages=[{"role": "user", "content": secret_prompt + " as JSON"}],
    )
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} >= {"dualcache.job_analysis", "chat gpt-4o-mini"}
    values = [str(v) for s in spans for v in (s.attributes or {}).values()]
    assert values and not [v for v in values if secret_user in v or secret_prompt in v or "job-4" in v]


async def test_otel_failed_call_marks_the_operation_span(
    cache: DualCache, cloud: Cloud, exporter: InMemorySpanExporter
) -> None:
    cloud.gateway_fails = 5
    cache.policies = Policies.with_overrides({"embeddings": {"direct_fallback": False}})
    with pytest.raises(Exception, match="503"):
        await cache.embed("doomed text")
    op = named(exporter.get_finished_spans(), "dualcache.embeddings")
    assert op.status.status_code is StatusCode.ERROR
    assert (op.attributes or {})["dualcache.cache.layer"] == "none"


# -- the emulator sees the trace ------------------------------------------------------------------------------------


async def test_otel_emulator_gateway_receives_the_trace_headers(
    kv_emulator: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    cache = DualCache.from_outputs(kv_emulator.outputs, api_token=TOKEN, tracer_provider=provider, write_behind=False)
    async with cache:
        await cache.embed("emulated " + uuid.uuid4().hex)
    route = named(exporter.get_finished_spans(), f"embeddings {EMBED}")
    sent = [r for r in kv_emulator.control.requests() if r["surface"] == "gateway"][-1]
    assert sent["headers"]["cf-aig-otel-trace-id"] == format(route.context.trace_id, "032x")
    assert sent["headers"]["cf-aig-otel-parent-span-id"] == format(route.context.span_id, "016x")
    assert (route.attributes or {})["dualcache.gateway.log_id"]  # the emulator's cf-aig-log-id


# -- off by default: zero cost ----------------------------------------------------------------------------------------


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


_HIT = """
import asyncio, sys, httpx
import dualcache
from dualcache import DualCache, MemoryKVBackend

def answer(request):
    return httpx.Response(200, json={"result": {"shape": [1, 768], "data": [[0.5] * 768]}, "success": True})

async def main():
    kv = MemoryKVBackend()
    cache = DualCache(account_id="a" * 32, api_token="t", kv=lambda ns: kv, transport=httpx.MockTransport(answer),
                      write_behind=False{extra})
    async with cache:
        await cache.embed("x")
        await cache.embed("x")
        print(cache.stats.snapshot()["embeddings"]["kv_hits"], cache._telemetry is None,
              sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))

{setup}
asyncio.run(main())
"""


def hit_script(extra: str = "", setup: str = "") -> str:
    return _HIT.replace("{extra}", extra).replace("{setup}", setup)


def test_otel_off_without_a_tracer_provider_imports_nothing() -> None:
    # The extra is installed here: the point is that a cache nobody asked to trace never imports it.
    assert run_python(hit_script()) == "1 True []"


def test_otel_on_with_the_global_tracer_provider_set_before_the_cache() -> None:
    setup = (
        "from opentelemetry import trace\nfrom opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())"
    )
    assert run_python(hit_script(setup=setup)).startswith("1 False ['opentelemetry")
    assert run_python(hit_script(", tracing=False", setup)).startswith("1 True")
    # Imported but no provider set: off (spans would be dropped anyway).
    assert run_python(hit_script(setup="import opentelemetry.trace")).startswith("1 True")


def test_otel_tracing_true_without_the_extra_names_it() -> None:
    code = (
        "import sys\nsys.modules['opentelemetry'] = None\nfrom dualcache import DualCache\n"
        "try:\n    DualCache(tracing=True)\nexcept ImportError as exc:\n    print(exc)"
    )
    assert "pip install 'dualcache[otel]'" in run_python(code)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"tracing": "yes"}, r"tracing='yes': must be True, False or None", id="not-a-bool"),
        pytest.param(
            {"tracer_provider": object()}, r"tracer_provider must be an OpenTelemetry TracerProvider", id="bad-provider"
        ),
        pytest.param({"tracing": False, "tracer_provider": TracerProvider()}, r"drop one of them", id="both"),
    ],
)
def test_otel_bad_tracing_arguments_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DualCache(**kwargs)


def test_otel_readme_example_runs_as_written(tmp_path: Path) -> None:
    from tests.docs_support import PROJECT_DIR, doc_block

    script = tmp_path / "tracing.py"
    script.write_text(doc_block(PROJECT_DIR / "docs" / "observability.md", "OpenTelemetry tracing"), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = [line.split(" ", 1)[0] for line in done.stdout.splitlines()]
    assert names == [
        "dualcache.kv.read",
        "embeddings",
        "dualcache.kv.write",
        "dualcache.embeddings",
        "dualcache.kv.read",
        "dualcache.embeddings",
    ]
    assert "'dualcache.cache.layer': 'kv'" in done.stdout.splitlines()[-1]
