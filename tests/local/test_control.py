"""Control endpoints: stats, the request log, reset, the clock and fault injection."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from dualcache import ConfigError, Namespace
from dualcache.local import Emulator
from tests.local.helpers import Gateways, KVNamespace, error_codes

BGE = "workers-ai/@cf/baai/bge-base-en-v1.5"


def test_control_stats_have_the_documented_keys(emu: Emulator) -> None:
    stats = emu.control.stats()
    assert set(stats["kv"]) == {"get", "get_metadata", "put", "delete", "list", "bulk_get", "bulk_write", "bulk_delete"}
    assert set(stats["gateway"]) == {"hits", "misses", "skips", "rate_limited", "refused", "retries"}
    assert stats["upstream"] == {} and stats["direct"] == {}
    assert stats["requests"] == 0


def test_control_requests_are_listed_oldest_first_redacted_and_control_calls_excluded(
    client: httpx.Client, emu: Emulator
) -> None:
    o = emu.outputs
    client.get(f"/client/v4/accounts/{o.account_id}/storage/kv/namespaces", headers={"Authorization": "Bearer s3cret"})
    client.post(
        f"/v1/{o.account_id}/{o.gateway_id}/{BGE}",
        json={"text": "x"},
        headers={"cf-aig-authorization": "Bearer t0ken", "cf-aig-cache-ttl": "60"},
    )
    emu.control.stats()
    listed = emu.control.requests()
    assert [(r["method"], r["path"].split("/")[-1]) for r in listed] == [
        ("GET", "namespaces"),
        ("POST", "bge-base-en-v1.5"),
    ]
    assert listed[0]["headers"]["authorization"] == "Bearer <redacted>"
    assert listed[1]["headers"]["cf-aig-authorization"] == "Bearer <redacted>"
    assert listed[1]["headers"]["cf-aig-cache-ttl"] == "60"
    assert all(name == name.lower() for r in listed for name in r["headers"])
    assert "s3cret" not in str(listed) and "t0ken" not in str(listed)
    client.get(
        f"/client/v4/accounts/{o.account_id}/storage/kv/namespaces",
        headers={"Authorization": "tok-no-scheme", "Cookie": "session=c00kie; theme=dark", "x-api-key": "sk k3y"},
    )
    last = emu.control.requests()[-1]["headers"]
    assert (last["authorization"], last["cookie"], last["x-api-key"]) == ("<redacted>",) * 3
    assert emu.control.stats()["requests"] == 3
    kv = f"/client/v4/accounts/{o.account_id}/storage/kv/namespaces/{o.namespaces[Namespace.SESSIONS]}/values/a%3Ab%2Fc"
    emu.control.reset()
    client.get(kv, headers={"Authorization": "Bearer s3cret"})
    assert [r["path"] for r in emu.control.requests()] == [kv]  # as sent: percent-encoding kept


def test_control_reset_clears_counters_and_log_but_keeps_data(kv: KVNamespace, emu: Emulator) -> None:
    kv.put("k", b"v")
    emu.control.reset()
    assert emu.control.stats()["kv"]["put"] == 0
    assert emu.control.requests() == []
    assert kv.get("k").content == b"v"


def test_control_clock_advances_and_rejects_bad_input(client: httpx.Client, emu: Emulator) -> None:
    before = emu.control.now()
    after = emu.control.advance_clock(3600)
    assert after - before == pytest.approx(3600, abs=5)
    for bad in ({"advance": -1}, {"advance": "1"}, {}, {"advance": True}):
        assert client.post("/__emulator/clock", json=bad).status_code == 400
    with pytest.raises(ConfigError, match="advance"):
        emu.control.advance_clock(-5)


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"disk": {}}, id="unknown-target"),
        pytest.param({"kv": {"error_rate": 2}}, id="rate-over-1"),
        pytest.param({"kv": {"status": 200}}, id="status-not-error"),
        pytest.param({"kv": {"latency_ms": -1}}, id="negative-latency"),
        pytest.param({"kv": {"timeout": "yes"}}, id="timeout-not-bool"),
        pytest.param({"kv": {"flaky": True}}, id="unknown-key"),
        pytest.param({"kv": {"provider": "openai"}}, id="provider-on-kv"),
        pytest.param({"upstream": {"provider": "anthropic"}}, id="unknown-provider"),
    ],
)
def test_control_faults_reject_invalid_specs(emu: Emulator, faults: dict[str, dict[str, object]]) -> None:
    with pytest.raises(ConfigError):
        emu.control.set_faults(faults)
    assert emu.control.stats()["faults"] == {"kv": 0, "gateway": 0, "upstream": 0}


@pytest.mark.parametrize("status", [pytest.param(503, id="503"), pytest.param(429, id="429")])
def test_fault_kv_error_rate_one_fails_every_kv_request(kv: KVNamespace, emu: Emulator, status: int) -> None:
    kv.put("k", b"v")
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": status}})
    r = kv.get("k")
    assert r.status_code == status
    assert error_codes(r)
    emu.control.clear_faults()
    assert kv.get("k").content == b"v"
    assert emu.control.stats()["faults"]["kv"] == 1


def test_fault_error_rate_is_reproducible_with_a_seed(kv: KVNamespace, emu: Emulator) -> None:
    kv.put("k", b"v")

    def run() -> list[int]:
        emu.control.set_faults({"kv": {"error_rate": 0.5, "status": 500, "seed": 42}})
        return [kv.get("k").status_code for _ in range(20)]

    first, second = run(), run()
    assert first == second
    assert 0 < first.count(500) < 20


def test_fault_gateway_error_answers_before_the_cache(client: httpx.Client, gateways: Gateways, emu: Emulator) -> None:
    url = gateways.url(gateways.create(cache_ttl=600), BGE)
    client.post(url, json={"text": "x"})
    emu.control.set_faults({"gateway": {"error_rate": 1.0, "status": 502}})
    r = client.post(url, json={"text": "x"})
    assert r.status_code == 502
    assert "cf-aig-cache-status" not in r.headers
    assert emu.control.stats()["gateway"]["hits"] == 0


def test_fault_upstream_error_keeps_the_providers_shape(client: httpx.Client, emu: Emulator) -> None:
    o = emu.outputs
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 429}})
    wai = client.post(f"/client/v4/accounts/{o.account_id}/ai/run/@cf/baai/bge-base-en-v1.5", json={"text": "x"})
    assert wai.status_code == 429 and wai.json()["success"] is False
    oai = client.post(
        f"/v1/{o.account_id}/{o.gateway_id}/openai/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"authorization": "Bearer sk"},
    )
    assert oai.status_code == 429 and oai.json()["error"]["code"] == "rate_limit_exceeded"
    assert emu.control.stats()["faults"]["upstream"] == 2


def test_fault_upstream_provider_fails_only_that_provider(client: httpx.Client, emu: Emulator) -> None:
    o = emu.outputs
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 503, "provider": "workers-ai"}})
    assert emu.control.faults()["upstream"]["provider"] == "workers-ai"
    wai = client.post(f"/client/v4/accounts/{o.account_id}/ai/run/@cf/baai/bge-base-en-v1.5", json={"text": "x"})
    assert wai.status_code == 503
    oai = client.post(
        f"/v1/{o.account_id}/{o.gateway_id}/openai/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"authorization": "Bearer sk"},
    )
    assert oai.status_code == 200 and len(oai.json()["data"][0]["embedding"]) == 1536
    assert emu.control.stats()["faults"]["upstream"] == 1


@pytest.mark.parametrize("target", [pytest.param(t, id=t) for t in ("kv", "gateway", "upstream")])
def test_fault_latency_delays_the_answer_of_each_target(
    kv: KVNamespace, client: httpx.Client, emu: Emulator, target: str
) -> None:
    kv.put("k", b"v")
    o = emu.outputs
    gateway_url = f"/v1/{o.account_id}/{o.gateway_id}/{BGE}"
    emu.control.set_faults({target: {"latency_ms": 200}})
    timings = {}
    for name, send in (
        ("kv", lambda: kv.get("k")),
        ("gateway", lambda: client.post(gateway_url, json={"text": "latency"}, headers={"cf-aig-skip-cache": "true"})),
    ):
        start = time.perf_counter()
        assert send().status_code == 200
        timings[name] = time.perf_counter() - start
    delayed = {"kv": ["kv"], "gateway": ["gateway"], "upstream": ["gateway"]}[target]
    for name, seconds in timings.items():
        assert (seconds >= 0.2) is (name in delayed), (name, seconds)
    assert emu.control.stats()["faults"] == {"kv": 0, "gateway": 0, "upstream": 0}  # a delay is not an error


def test_faults_empty_object_clears_every_target(emu: Emulator) -> None:
    emu.control.set_faults({"kv": {"error_rate": 1.0}, "upstream": {"latency_ms": 5, "provider": "openai"}})
    assert set(emu.control.faults()) == {"kv", "upstream"}
    assert emu.control.set_faults({}) == {}
    assert emu.control.faults() == {}


def test_fault_timeout_makes_the_client_time_out(kv: KVNamespace, emu: Emulator) -> None:
    emu.control.set_faults({"kv": {"timeout": True}})
    start = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        kv.client.get(kv.value_url("k"), timeout=0.3)
    assert time.perf_counter() - start < 5
    assert emu.control.stats()["faults"]["kv"] == 1


def test_fault_timeout_returns_early_when_the_emulator_stops(tmp_path: Path, project_dir: Path) -> None:
    with Emulator(project_dir=project_dir, data_dir=tmp_path) as local:
        local.control.set_faults({"upstream": {"timeout": True}})
        o = local.outputs
        url = f"{local.url}/client/v4/accounts/{o.account_id}/ai/run/@cf/baai/bge-base-en-v1.5"
        outcome: list[object] = []

        def hang() -> None:
            try:
                outcome.append(httpx.post(url, json={"text": "x"}, timeout=20).status_code)
            except httpx.HTTPError as exc:
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=hang)
        thread.start()
        time.sleep(0.2)
        start = time.perf_counter()
    stop_seconds = time.perf_counter() - start
    thread.join(timeout=10)
    assert stop_seconds < 5
    assert not thread.is_alive()
    assert outcome and outcome[0] != 200
