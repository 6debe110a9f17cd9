"""The emulated AI Gateway: management API and the proxy's cache, rate limits and auth."""

from __future__ import annotations

import math
import re
import threading
import uuid
from typing import Any

import httpx
import pytest

from dualcache.local import Emulator
from tests.local.helpers import Gateways, error_codes

BGE = "workers-ai/@cf/baai/bge-base-en-v1.5"
LLAMA_8B = "@cf/meta/llama-3.1-8b-instruct"
LLAMA_70B = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def embed(client: httpx.Client, url: str, text: str = "hello", **headers: str) -> httpx.Response:
    return client.post(url, json={"text": text}, headers=headers)


def statuses(responses: list[httpx.Response]) -> list[str]:
    return [r.headers.get("cf-aig-cache-status", "") for r in responses]


# -- management ------------------------------------------------------------------------------------


def test_gateway_management_create_get_update_list_delete(client: httpx.Client, emu: Emulator) -> None:
    base = f"/client/v4/accounts/{emu.outputs.account_id}/ai-gateway/gateways"
    body = {
        "id": "crud-gw",
        "cache_invalidate_on_update": False,
        "cache_ttl": 300,
        "collect_logs": True,
        "rate_limiting_interval": 60,
        "rate_limiting_limit": 5,
        "rate_limiting_technique": "sliding",
        "authentication": True,
        "log_management": 10_000,
        "log_management_strategy": "DELETE_OLDEST",
    }
    created = client.post(base, json=body).json()["result"]
    assert {k: created[k] for k in body} == body
    assert created["created_at"] == created["modified_at"]
    assert created["is_default"] is False
    assert client.get(f"{base}/crud-gw").json()["result"]["cache_ttl"] == 300
    update = {**body, "cache_ttl": 600}
    del update["id"]
    updated = client.put(f"{base}/crud-gw", json=update).json()["result"]
    assert updated["cache_ttl"] == 600 and updated["id"] == "crud-gw"
    listed = client.get(base, params={"search": "crud"}).json()
    assert [g["id"] for g in listed["result"]] == ["crud-gw"]
    assert listed["result_info"]["total_count"] == 1
    assert client.delete(f"{base}/crud-gw").json()["result"]["id"] == "crud-gw"
    missing = client.get(f"{base}/crud-gw")
    assert missing.status_code == 404
    assert error_codes(missing)


def test_gateway_management_stack_gateway_has_stack_settings(client: httpx.Client, emu: Emulator) -> None:
    gw = client.get(f"/client/v4/accounts/{emu.outputs.account_id}/ai-gateway/gateways/{emu.outputs.gateway_id}")
    result = gw.json()["result"]
    settings = emu.config.gateway
    assert result["cache_ttl"] == settings.cache_ttl
    assert result["authentication"] == settings.authentication
    assert result["rate_limiting_limit"] == settings.rate_limiting.limit


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param({"id": "x" * 65}, "1..64", id="id-too-long"),
        pytest.param({"id": ""}, "1..64", id="id-empty"),
        pytest.param({"cache_ttl": -1}, "cache_ttl", id="negative-ttl"),
        pytest.param({"collect_logs": "yes"}, "collect_logs", id="collect-logs-not-bool"),
        pytest.param({"rate_limiting_technique": "leaky"}, "fixed' or 'sliding", id="technique"),
        pytest.param({"log_management": 5}, "10000..10000000", id="log-management"),
        pytest.param({"log_management_strategy": "KEEP"}, "STOP_INSERTING", id="strategy"),
        pytest.param({"retry_max_attempts": 6}, "1..5", id="retries"),
        pytest.param({"rate_limiting_limit": None, "drop": "collect_logs"}, "collect_logs", id="missing-required"),
    ],
)
def test_gateway_management_rejects_invalid_settings(
    client: httpx.Client, emu: Emulator, change: dict[str, Any], fragment: str
) -> None:
    body: dict[str, Any] = {
        "id": "invalid-gw",
        "cache_invalidate_on_update": True,
        "cache_ttl": 0,
        "collect_logs": True,
        "rate_limiting_interval": 0,
        "rate_limiting_limit": 0,
    }
    drop = change.pop("drop", None)
    body.update(change)
    if drop:
        del body[drop]
    r = client.post(f"/client/v4/accounts/{emu.outputs.account_id}/ai-gateway/gateways", json=body)
    assert r.status_code == 400
    assert fragment in r.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "gateway_id",
    [
        pytest.param("JobMatch-AI--Dev-", id="mixed-case-doubled-trailing-hyphens"),
        pytest.param("Upper", id="upper-case"),
        pytest.param("-lead", id="leading-hyphen"),
        pytest.param("trail-", id="trailing-hyphen"),
        pytest.param("a--b", id="double-hyphen"),
        pytest.param("a.b", id="dot"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
    ],
)
def test_gateway_management_refuses_ids_outside_cloudflare_s_schema(
    client: httpx.Client, gateways: Gateways, gateway_id: str
) -> None:
    r = client.post(f"/client/v4/accounts/{gateways.account_id}/ai-gateway/gateways", json=gateways.body(gateway_id))
    assert r.status_code == 400
    assert error_codes(r)
    message = r.json()["errors"][0]["message"]
    assert repr(gateway_id) in message and "^[a-z0-9_]+(?:-[a-z0-9_]+)*$" in message
    listed = client.get(f"/client/v4/accounts/{gateways.account_id}/ai-gateway/gateways", params={"per_page": 1000})
    assert gateway_id not in [g["id"] for g in listed.json()["result"]]


@pytest.mark.parametrize("gateway_id", ["a", "a_b", "0-9", "snake_case-and-kebab", "x" * 64])
def test_gateway_management_accepts_ids_inside_the_schema(
    client: httpx.Client, gateways: Gateways, gateway_id: str
) -> None:
    gateway_id = gateway_id if len(gateway_id) == 64 else f"{gateway_id}-{uuid.uuid4().hex[:8]}"
    base = f"/client/v4/accounts/{gateways.account_id}/ai-gateway/gateways"
    assert client.post(base, json=gateways.body(gateway_id)).status_code == 200
    assert client.get(f"{base}/{gateway_id}").json()["result"]["id"] == gateway_id
    assert client.delete(f"{base}/{gateway_id}").status_code == 200


def test_gateway_management_item_routes_refuse_an_invalid_id(client: httpx.Client, gateways: Gateways) -> None:
    base = f"/client/v4/accounts/{gateways.account_id}/ai-gateway/gateways"
    for r in (
        client.get(f"{base}/Bad-Id"),
        client.put(f"{base}/bad--id", json=gateways.body("bad--id")),
        client.delete(f"{base}/bad-"),
    ):
        assert r.status_code == 400 and "not a valid gateway id" in r.json()["errors"][0]["message"]
    assert client.get(f"{base}/valid-but-absent").status_code == 404


def test_gateway_management_rejects_duplicate_id(client: httpx.Client, gateways: Gateways) -> None:
    gateway_id = gateways.create()
    body = gateways.body(gateway_id)
    assert client.post(f"/client/v4/accounts/{gateways.account_id}/ai-gateway/gateways", json=body).status_code == 400


# -- caching -----------------------------------------------------------------------------------------


def test_gateway_cache_miss_then_hit_with_ttl_header(client: httpx.Client, gateways: Gateways, emu: Emulator) -> None:
    url = gateways.url(gateways.create(), BGE)
    first = embed(client, url, **{"cf-aig-cache-ttl": "120"})
    second = embed(client, url, **{"cf-aig-cache-ttl": "120"})
    assert statuses([first, second]) == ["MISS", "HIT"]
    assert second.json() == first.json()
    for r in (first, second):
        assert ULID.match(r.headers["cf-aig-log-id"])
        assert r.headers["x-dualcache-local-model"] == "true"
    assert first.headers["cf-aig-log-id"] != second.headers["cf-aig-log-id"]
    stats = emu.control.stats()
    assert (stats["gateway"]["misses"], stats["gateway"]["hits"]) == (1, 1)
    assert stats["upstream"] == {"@cf/baai/bge-base-en-v1.5": 1}


def test_gateway_cache_key_covers_body_path_and_provider_auth(client: httpx.Client, gateways: Gateways) -> None:
    gateway_id = gateways.create(cache_ttl=600)
    url = gateways.url(gateway_id, BGE)
    base = embed(client, url, "a", authorization="Bearer one")
    other_body = embed(client, url, "b", authorization="Bearer one")
    other_auth = embed(client, url, "a", authorization="Bearer two")
    again = embed(client, url, "a", authorization="Bearer one")
    assert statuses([base, other_body, other_auth, again]) == ["MISS", "MISS", "MISS", "HIT"]
    # The same body to two model paths: two entries, each then a hit.
    prompt = {"prompt": "same prompt"}
    paths = [gateways.url(gateway_id, f"workers-ai/{m}") for m in (LLAMA_8B, LLAMA_70B, LLAMA_8B, LLAMA_70B)]
    answers = [client.post(u, json=prompt) for u in paths]
    assert statuses(answers) == ["MISS", "MISS", "HIT", "HIT"]
    assert answers[0].json() != answers[1].json()


def test_gateway_custom_cache_key_overrides_the_default_key(client: httpx.Client, gateways: Gateways) -> None:
    url = gateways.url(gateways.create(cache_ttl=600), BGE)
    first = embed(client, url, "first text", **{"cf-aig-cache-key": "my-key"})
    second = embed(client, url, "other text", **{"cf-aig-cache-key": "my-key"})
    assert statuses([first, second]) == ["MISS", "HIT"]
    assert second.json() == first.json()


def test_gateway_without_cache_ttl_does_not_cache(client: httpx.Client, gateways: Gateways, emu: Emulator) -> None:
    url = gateways.url(gateways.create(cache_ttl=0), BGE)
    assert statuses([embed(client, url), embed(client, url)]) == ["MISS", "MISS"]
    assert emu.control.stats()["upstream"]["@cf/baai/bge-base-en-v1.5"] == 2


def test_gateway_default_cache_ttl_applies_and_expires(client: httpx.Client, gateways: Gateways, emu: Emulator) -> None:
    url = gateways.url(gateways.create(cache_ttl=600), BGE)
    assert statuses([embed(client, url)]) == ["MISS"]
    emu.control.advance_clock(590)
    assert statuses([embed(client, url)]) == ["HIT"]
    emu.control.advance_clock(15)
    assert statuses([embed(client, url)]) == ["MISS"]


def test_gateway_custom_key_with_caching_off_caches_five_minutes(
    client: httpx.Client, gateways: Gateways, emu: Emulator
) -> None:
    url = gateways.url(gateways.create(cache_ttl=0), BGE)
    headers = {"cf-aig-cache-key": "five-minutes"}
    assert statuses([embed(client, url, **headers)]) == ["MISS"]
    emu.control.advance_clock(290)
    assert statuses([embed(client, url, **headers)]) == ["HIT"]
    emu.control.advance_clock(15)
    assert statuses([embed(client, url, **headers)]) == ["MISS"]


def test_gateway_ttl_header_expiry_follows_the_clock(client: httpx.Client, gateways: Gateways, emu: Emulator) -> None:
    url = gateways.url(gateways.create(), BGE)
    ttl = {"cf-aig-cache-ttl": "60"}
    embed(client, url, **ttl)
    emu.control.advance_clock(58)
    assert statuses([embed(client, url, **ttl)]) == ["HIT"]
    emu.control.advance_clock(3)
    assert statuses([embed(client, url, **ttl)]) == ["MISS"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param("59", False, id="59"),
        pytest.param("60", True, id="60"),
        pytest.param("2592000", True, id="one-month"),
        pytest.param("2592001", False, id="over-one-month"),
        pytest.param("soon", False, id="not-a-number"),
        pytest.param("-5", False, id="negative"),
    ],
)
def test_gateway_cache_ttl_header_bounds(client: httpx.Client, gateways: Gateways, value: str, ok: bool) -> None:
    r = embed(client, gateways.url(gateways.create(), BGE), **{"cf-aig-cache-ttl": value})
    assert r.status_code == (200 if ok else 400)
    if not ok:
        assert "60..2592000" in r.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "header", [pytest.param("cf-aig-skip-cache", id="current"), pytest.param("cf-skip-cache", id="deprecated")]
)
def test_gateway_skip_cache_bypasses_read_and_write(
    client: httpx.Client, gateways: Gateways, emu: Emulator, header: str
) -> None:
    url = gateways.url(gateways.create(cache_ttl=600), BGE)
    skipped = embed(client, url, **{header: "true"})
    cached = embed(client, url)
    skipped_again = embed(client, url, **{header: "true"})
    assert statuses([skipped, cached, skipped_again]) == ["MISS", "MISS", "MISS"]
    assert statuses([embed(client, url)]) == ["HIT"]
    stats = emu.control.stats()["gateway"]
    assert (stats["skips"], stats["misses"], stats["hits"]) == (2, 1, 1)


def test_gateway_concurrent_identical_misses_both_go_upstream(
    client: httpx.Client, gateways: Gateways, emu: Emulator
) -> None:
    url = gateways.url(gateways.create(cache_ttl=600), BGE)
    # 300 ms upstream latency and a barrier: both requests are in the gateway, past its cache lookup,
    # before either answer is stored. A gateway that coalesced (or served them one after the other) would
    # show one upstream call and a HIT.
    emu.control.set_faults({"upstream": {"latency_ms": 300}})
    results: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def call() -> None:
        with httpx.Client(base_url=emu.url, timeout=10) as own:
            own.get("/__emulator/clock")  # connect first, so the barrier releases two ready clients
            barrier.wait()
            results.append(embed(own, url, "same"))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emu.control.clear_faults()
    assert statuses(results) == ["MISS", "MISS"]
    assert emu.control.stats()["upstream"]["@cf/baai/bge-base-en-v1.5"] == 2
    times = [r["time"] for r in emu.control.requests() if r["path"].endswith("bge-base-en-v1.5")]
    assert len(times) == 2 and abs(times[0] - times[1]) < 0.3  # the second arrived while the first waited
    assert statuses([embed(client, url, "same")]) == ["HIT"]


def test_gateway_does_not_cache_error_responses(client: httpx.Client, gateways: Gateways, emu: Emulator) -> None:
    url = gateways.url(gateways.create(cache_ttl=600), BGE)
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 500}})
    assert embed(client, url).status_code == 500
    emu.control.clear_faults()
    ok = embed(client, url)
    assert (ok.status_code, ok.headers["cf-aig-cache-status"]) == (200, "MISS")


def test_gateway_update_with_invalidate_on_update_clears_the_cache(client: httpx.Client, gateways: Gateways) -> None:
    gateway_id = gateways.create(cache_ttl=600)
    url = gateways.url(gateway_id, BGE)
    embed(client, url)
    assert statuses([embed(client, url)]) == ["HIT"]
    body = {
        "cache_invalidate_on_update": True,
        "cache_ttl": 900,
        "collect_logs": True,
        "rate_limiting_interval": 0,
        "rate_limiting_limit": 0,
    }
    client.put(f"/client/v4/accounts/{gateways.account_id}/ai-gateway/gateways/{gateway_id}", json=body)
    assert statuses([embed(client, url)]) == ["MISS"]


def test_gateway_proxy_unknown_gateway_provider_and_method(client: httpx.Client, gateways: Gateways) -> None:
    assert embed(client, gateways.url("no-such-gateway", BGE)).status_code == 404
    gateway_id = gateways.create()
    assert client.post(gateways.url(gateway_id, "anthropic/v1/messages"), json={}).status_code == 400
    assert client.get(gateways.url(gateway_id, BGE)).status_code == 405


# -- rate limiting -------------------------------------------------------------------------------------


def _to_minute_9_of_a_window(emu: Emulator, interval: int) -> None:
    """Move the clock to 9 minutes into a fresh 10-minute calendar window (the docs' 12:09)."""
    now = emu.control.now()
    start_of_next = math.floor(now / interval) * interval + interval
    emu.control.advance_clock(start_of_next + 540 - now)


@pytest.mark.parametrize(
    ("technique", "second_burst_passes"),
    [pytest.param("fixed", True, id="fixed"), pytest.param("sliding", False, id="sliding")],
)
def test_gateway_rate_limit_techniques_follow_the_docs_example(
    client: httpx.Client, gateways: Gateways, emu: Emulator, technique: str, second_burst_passes: bool
) -> None:
    # 10 requests / 10 minutes; 10 at 12:09 and 10 at 12:11 all pass with fixed
    # windows, and the second 10 fail with a sliding window.
    gateway_id = gateways.create(rate_limiting_limit=10, rate_limiting_interval=600, rate_limiting_technique=technique)
    url = gateways.url(gateway_id, BGE)
    _to_minute_9_of_a_window(emu, 600)
    assert [embed(client, url).status_code for _ in range(10)] == [200] * 10
    over = embed(client, url)
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) >= 1
    emu.control.advance_clock(120)
    second = [embed(client, url).status_code for _ in range(10)]
    assert second == ([200] * 10 if second_burst_passes else [429] * 10)
    stats = emu.control.stats()["gateway"]
    assert stats["rate_limited"] == (1 if second_burst_passes else 11)
    emu.control.advance_clock(600)
    assert embed(client, url).status_code == 200


# -- authentication --------------------------------------------------------------------------------------


def test_gateway_authentication_requires_cf_aig_authorization(
    client: httpx.Client, gateways: Gateways, emu: Emulator
) -> None:
    url = gateways.url(gateways.create(authentication=True), BGE)
    missing = embed(client, url)
    assert missing.status_code == 401
    assert error_codes(missing)
    assert embed(client, url, **{"cf-aig-authorization": "Basic abc"}).status_code == 401
    # Without an emulator token, any non-empty bearer token is accepted.
    assert embed(client, url, **{"cf-aig-authorization": "Bearer any-token"}).status_code == 200
    assert emu.control.stats()["gateway"]["refused"] == 2


def test_gateway_without_authentication_ignores_cf_aig_authorization(client: httpx.Client, gateways: Gateways) -> None:
    url = gateways.url(gateways.create(authentication=False), BGE)
    assert embed(client, url).status_code == 200
    assert embed(client, url, **{"cf-aig-authorization": "Bearer whatever"}).status_code == 200
