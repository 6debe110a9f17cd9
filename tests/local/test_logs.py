"""The emulator's AI Gateway logs API: one entry per gateway request, listed in pages, filtered and ordered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import cloudflare
import httpx
import pytest

from dualcache.local import Emulator
from dualcache.local._logs_api import GatewayLogs
from tests.local.helpers import Gateways, error_codes

BGE = "workers-ai/@cf/baai/bge-base-en-v1.5"
LLAMA = "workers-ai/@cf/meta/llama-3.1-8b-instruct"


@pytest.fixture
def cf(emu: Emulator) -> Iterator[cloudflare.Cloudflare]:
    with cloudflare.Cloudflare(api_token="local-token", base_url=emu.outputs.api_base_url, max_retries=0) as client:
        yield client


def _logs(client: httpx.Client, account: str, gateway: str, **params: object) -> dict[str, object]:
    r = client.get(f"/client/v4/accounts/{account}/ai-gateway/gateways/{gateway}/logs", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_logs_one_entry_per_gateway_request_with_the_documented_fields(
    client: httpx.Client, emu: Emulator, gateways: Gateways
) -> None:
    gw = gateways.create()
    account = emu.outputs.account_id
    metadata = '{"operation":"embeddings","request":"0123456789abcdef"}'
    headers = {"cf-aig-cache-ttl": "3600", "cf-aig-metadata": metadata}
    first = client.post(gateways.url(gw, BGE), json={"text": "hello"}, headers=headers)
    emu.control.advance_clock(90)
    second = client.post(gateways.url(gw, BGE), json={"text": "hello"}, headers=headers)
    assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
    body = _logs(client, account, gw, order_by="created_at", order_by_direction="asc")
    items = body["result"]
    assert isinstance(items, list) and len(items) == 2
    miss, hit = items
    assert [miss["id"], hit["id"]] == [first.headers["cf-aig-log-id"], second.headers["cf-aig-log-id"]]
    assert set(miss) == {
        "id",
        "created_at",
        "provider",
        "model",
        "model_type",
        "path",
        "success",
        "cached",
        "status_code",
        "duration",
        "tokens_in",
        "tokens_out",
        "cost",
        "custom_cost",
        "metadata",
        "request_type",
        "request_content_type",
        "response_content_type",
        "step",
    }
    assert (miss["provider"], miss["model"], miss["path"]) == (
        "workers-ai",
        "@cf/baai/bge-base-en-v1.5",
        "@cf/baai/bge-base-en-v1.5",
    )
    assert (miss["cached"], hit["cached"]) == (False, True)
    assert (miss["success"], miss["status_code"]) == (True, 200)
    assert miss["metadata"] == metadata and json.loads(str(hit["metadata"]))["request"] == "0123456789abcdef"
    assert isinstance(miss["duration"], int) and miss["duration"] >= 0
    assert isinstance(miss["tokens_in"], int) and miss["tokens_in"] > 0
    assert isinstance(miss["cost"], float) and miss["cost"] > 0 and hit["cost"] == 0.0  # a cached answer is free
    created = [datetime.fromisoformat(str(i["created_at"]).replace("Z", "+00:00")) for i in items]
    assert (created[1] - created[0]).total_seconds() == pytest.approx(90, abs=1)  # the emulator clock
    assert created[1].timestamp() == pytest.approx(emu.control.now(), abs=1)
    assert body["result_info"] == {
        "page": 1,
        "per_page": 20,
        "count": 2,
        "total_count": 2,
        "total_pages": 1,
        "min_duration": min(int(miss["duration"]), int(hit["duration"])),
        "max_duration": max(int(miss["duration"]), int(hit["duration"])),
        "min_cost": 0.0,
        "max_cost": miss["cost"],
    }


def test_logs_pages_filters_and_order(client: httpx.Client, emu: Emulator, gateways: Gateways) -> None:
    gw = gateways.create()
    account = emu.outputs.account_id
    for i in range(5):
        client.post(gateways.url(gw, BGE), json={"text": f"t{i}"}, headers={"cf-aig-cache-ttl": "3600"})
        emu.control.advance_clock(60)
    client.post(gateways.url(gw, BGE), json={"text": "t0"}, headers={"cf-aig-cache-ttl": "3600"})  # a hit
    client.post(gateways.url(gw, LLAMA), json={"messages": [{"role": "user", "content": "hi"}]})
    newest_first = _logs(client, account, gw, per_page=3)
    assert newest_first["result_info"]["total_count"] == 7  # type: ignore[index]
    assert [i["model"] for i in newest_first["result"]][:1] == ["@cf/meta/llama-3.1-8b-instruct"]  # type: ignore[union-attr]
    pages = [_logs(client, account, gw, per_page=3, page=p, direction="asc")["result"] for p in (1, 2, 3, 4)]
    assert [len(p) for p in pages] == [3, 3, 1, 0]  # type: ignore[arg-type]
    ids = [i["id"] for p in pages for i in p]  # type: ignore[union-attr]
    assert len(set(ids)) == 7
    assert [i["id"] for i in newest_first["result"]] == list(reversed(ids))[:3]  # type: ignore[union-attr]
    assert _logs(client, account, gw, cached="true")["result_info"]["total_count"] == 1  # type: ignore[index]
    assert _logs(client, account, gw, cached="false")["result_info"]["total_count"] == 6  # type: ignore[index]
    llama = _logs(client, account, gw, model="@cf/meta/llama-3.1-8b-instruct")["result"]
    assert len(llama) == 1 and llama[0]["cost"] is None  # type: ignore[arg-type,index]  # no price: not invented
    start = datetime.fromtimestamp(emu.control.now() - 150, UTC).isoformat()
    recent = _logs(client, account, gw, start_date=start, order_by="created_at", order_by_direction="asc")
    assert recent["result_info"]["total_count"] == 4  # type: ignore[index]  # t3, t4, the hit and llama
    end = datetime.fromtimestamp(emu.control.now() - 150, UTC).isoformat()
    assert _logs(client, account, gw, end_date=end)["result_info"]["total_count"] == 3  # type: ignore[index]
    by_cached = _logs(client, account, gw, order_by="cached", order_by_direction="desc")["result"]
    assert by_cached[0]["cached"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        pytest.param({"cached": "maybe"}, "cached", id="cached"),
        pytest.param({"order_by": "cost"}, "order_by", id="order-by"),
        pytest.param({"direction": "up"}, "order_by_direction", id="direction"),
        pytest.param({"start_date": "yesterday"}, "start_date", id="date"),
        pytest.param({"per_page": "1001"}, "per_page", id="per-page"),
        pytest.param({"min_cost": "1"}, "min_cost", id="unsupported-filter"),
    ],
)
def test_logs_bad_query_is_a_400_naming_it(
    client: httpx.Client, emu: Emulator, gateways: Gateways, params: dict[str, str], named: str
) -> None:
    gw = gateways.create()
    r = client.get(f"/client/v4/accounts/{emu.outputs.account_id}/ai-gateway/gateways/{gw}/logs", params=params)
    assert r.status_code == 400 and named in r.text


def test_logs_of_an_unknown_gateway_is_a_404(client: httpx.Client, emu: Emulator) -> None:
    r = client.get(f"/client/v4/accounts/{emu.outputs.account_id}/ai-gateway/gateways/nope/logs")
    assert r.status_code == 404 and error_codes(r) == [7002]


def test_logs_store_keeps_the_newest_entries_up_to_its_capacity() -> None:
    logs = GatewayLogs(capacity=3)
    for i in range(5):
        logs.add("acct", "gw", float(i), {"id": str(i)})
    assert [e.item["id"] for e in logs.entries("acct", "gw")] == ["2", "3", "4"]
    assert logs.entries("acct", "other") == []
    with pytest.raises(ValueError, match="capacity"):
        GatewayLogs(capacity=0)


def test_logs_listed_by_the_official_sdk(cf: cloudflare.Cloudflare, client: httpx.Client, emu: Emulator) -> None:
    gateways = Gateways(client, emu.outputs.account_id)
    gw = gateways.create()
    for i in range(7):
        client.post(gateways.url(gw, BGE), json={"text": f"sdk {i}"}, headers={"cf-aig-metadata": '{"operation":"x"}'})
    listed = list(cf.ai_gateway.logs.list(gw, account_id=emu.outputs.account_id, per_page=3, order_by="created_at"))
    assert len(listed) == 7  # the SDK walked three pages (3 + 3 + 1) and stopped at the empty fourth
    assert all(
        log.provider == "workers-ai" and log.cached is False and log.metadata == '{"operation":"x"}' for log in listed
    )
    assert listed[0].created_at >= listed[-1].created_at  # newest first by default
    cached = cf.ai_gateway.logs.list(gw, account_id=emu.outputs.account_id, cached=True)
    assert list(cached) == []
