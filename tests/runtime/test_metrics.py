"""Prometheus metrics of a DualCache, after real calls against the emulator, read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dualcache import DualCache, PrometheusCollector, Stats, register_metrics

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token"
MSGS = [{"role": "user", "content": "Rate this job for me. JSON please."}]


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Any]:
    from dualcache.local import Emulator

    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path / "emulator", token=TOKEN) as emulator:
        yield emulator


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition, parsed by prometheus_client."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _traffic(emu: Any) -> DualCache:
    cache = DualCache.from_outputs(emu.outputs, api_token=TOKEN, openai_api_key="sk-local")
    await cache.embed("metrics one")  # KV miss, the provider through the gateway
    await cache.flush()
    await cache.embed("metrics one")  # KV hit
    await cache.analyze_job(user_id="user-secret-42", job_id="job-7", messages=MSGS)
    await cache.flush()
    await cache.analyze_job(user_id="user-secret-42", job_id="job-7", messages=MSGS)
    return cache


async def test_metrics_expose_the_snapshot_per_operation_and_layer(emu: Any) -> None:
    cache = await _traffic(emu)
    try:
        registry = CollectorRegistry()
        collector = register_metrics(cache, registry=registry)
        assert isinstance(collector, PrometheusCollector)
        text = generate_latest(registry).decode()
        snap = cache.stats.snapshot()
    finally:
        await cache.aclose()
    got = _samples(text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    for op in ("embeddings", "job_analysis"):
        c = snap[op]
        assert value("dualcache_requests_total", operation=op) == c["requests"] == 2
        assert value("dualcache_hits_total", operation=op, layer="kv") == c["kv_hits"] == 1
        assert value("dualcache_hits_total", operation=op, layer="gateway") == c["gateway_hits"] == 0
        assert value("dualcache_provider_calls_total", operation=op) == c["provider_calls"] == 1
        assert value("dualcache_errors_total", operation=op) == c["errors"] == 0
        assert value("dualcache_upstream_requests_total", operation=op) == c["upstream_requests"] == 1
        for layer in ("kv", "gateway", "provider"):
            assert value("dualcache_skips_total", operation=op, layer=layer) == 0
        assert value("dualcache_cost_dollars_total", operation=op) == pytest.approx(c["cost"])
        assert value("dualcache_saved_dollars_total", operation=op) == pytest.approx(c["saved"])
        for layer in ("kv_read", "provider", "kv_write"):
            count = c["latency"][layer]["count"]
            assert value("dualcache_latency_seconds_count", operation=op, layer=layer) == count
            assert value("dualcache_latency_seconds_bucket", operation=op, layer=layer, le="+Inf") == count
            assert value("dualcache_latency_seconds_sum", operation=op, layer=layer) == pytest.approx(
                c["latency"][layer]["sum_ms"] / 1000, abs=1e-6
            )
    assert snap["embeddings"]["cost"] == pytest.approx(0.001) and snap["job_analysis"]["saved"] == pytest.approx(0.03)
    # The buckets are cumulative and never decrease.
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in got.items()
        if name == "dualcache_latency_seconds_bucket" and dict(labels)["operation"] == "embeddings"
        and dict(labels)["layer"] == "kv_read"
    )  # fmt: skip
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (float("inf"), 2)
    # Labels are operation and layer (and the histogram's le) only: no user id, key or model anywhere.
    assert {k for (_, labels) in got for k, _ in labels} == {"operation", "layer", "le"}
    assert "user-secret-42" not in text and "job-7" not in text and "@cf/" not in text


def test_metrics_follow_the_stats_at_each_scrape_and_leave_unpriced_costs_out() -> None:
    from dualcache import Outcome, Policies, PriceTable

    policies = Policies().override(
        {"summarize": {"kv": True, "kv_ttl": 3600, "kv_namespace": "API_CACHE", "gateway": "skip", "scope": "global"}}
    )
    stats = Stats(prices=PriceTable(), policies=policies)
    registry = CollectorRegistry()
    register_metrics(stats, registry=registry, namespace="svc")
    stats.record("summarize", Outcome.PROVIDER)
    first = _samples(generate_latest(registry).decode())
    assert first[("svc_requests_total", (("operation", "summarize"),))] == 1
    assert ("svc_cost_dollars_total", (("operation", "summarize"),)) not in first  # no price: unknown, not $0
    stats.record("summarize", Outcome.KV_HIT)
    stats.skip("summarize", "gateway")
    second = _samples(generate_latest(registry).decode())
    assert second[("svc_requests_total", (("operation", "summarize"),))] == 2
    assert second[("svc_skips_total", (("layer", "gateway"), ("operation", "summarize")))] == 1
    assert not any(name.startswith("svc_latency") for name, _ in second)  # nothing timed yet


def test_metrics_without_prometheus_client_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an interpreter without it raises on import
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'dualcache[prometheus]'")):
        PrometheusCollector(Stats())


def _readme_service() -> str:
    from tests.docs_support import doc_block

    return doc_block(PROJECT_DIR / "docs" / "observability.md", "Metrics: Prometheus")


def test_metrics_readme_service_serves_metrics_and_stats(
    emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from dualcache._report import load_snapshot

    outputs = tmp_path / "outputs.json"
    emu.outputs.dump(outputs)
    monkeypatch.setenv("DUALCACHE_OUTPUTS", str(outputs))
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    monkeypatch.delenv("CF_AIG_TOKEN", raising=False)
    service = types.ModuleType("service")
    exec(compile(_readme_service(), "docs/observability.md:service", "exec"), service.__dict__)
    with TestClient(service.app) as client:  # runs the lifespan: the DualCache lives on the app's loop
        for text in ("readme one", "readme one", "readme two"):
            assert client.post("/embed", json={"text": text}).json() == {"dimensions": 768}
        scraped = client.get("/metrics")
        stats = client.get("/stats")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    got = _samples(scraped.text)
    assert got[("dualcache_requests_total", (("operation", "embeddings"),))] == 3
    assert got[("dualcache_provider_calls_total", (("operation", "embeddings"),))] == 2
    assert (
        got[("dualcache_hits_total", (("layer", "kv"), ("operation", "embeddings")))]
        + got[("dualcache_coalesced_total", (("operation", "embeddings"),))]
        == 1
    )  # the repeat: a KV hit, or served from the queued record
    (tmp_path / "stats.json").write_text(stats.text)
    assert load_snapshot(str(tmp_path / "stats.json"))["embeddings"]["requests"] == 3


def test_metrics_collect_is_safe_from_another_thread(emu: Any) -> None:
    # prometheus_client.start_http_server scrapes on its own thread while the event loop counts.
    async def run() -> tuple[int, int]:
        cache = DualCache.from_outputs(emu.outputs, api_token=TOKEN)
        registry = CollectorRegistry()
        register_metrics(cache, registry=registry)
        scrapes = 0

        def scrape() -> None:
            nonlocal scrapes
            for _ in range(20):
                _samples(generate_latest(registry).decode())
                scrapes += 1

        thread = asyncio.to_thread(scrape)
        await asyncio.gather(thread, *(cache.embed(f"thread {i}") for i in range(20)))
        requests = cache.stats.snapshot()["embeddings"]["requests"]
        await cache.aclose()
        return scrapes, requests

    assert asyncio.run(run()) == (20, 20)
