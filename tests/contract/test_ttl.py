"""TTL expiry, with the data plane's KV clock moved (never slept). The clock moves RATE_LIMITS (see workerd.py)."""

from __future__ import annotations

import httpx

from tests.contract.helpers import limit_error, ok_result, value_path
from tests.contract.workerd import DataPlane

NS = "RATE_LIMITS"


def _names(client: httpx.Client, prefix: str) -> list[str]:
    return [k["name"] for k in ok_result(client.get(f"/kv/{NS}/keys", params={"prefix": prefix}))]


def test_a_value_expires_after_its_ttl_and_not_before(dataplane: DataPlane, client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path(NS, prefix + "short"), params={"expiration_ttl": 60}, content=b"s"))
    ok_result(client.put(value_path(NS, prefix + "long"), params={"expiration_ttl": 3600}, content=b"l"))
    ok_result(client.put(value_path(NS, prefix + "forever"), content=b"f"))
    assert client.get(value_path(NS, prefix + "short")).content == b"s"

    # workerd's KV clock is the wall clock plus what advance() added, so real time runs too: 50 s of moved
    # time leaves a margin of 10 s for a loaded machine (the emulator's clock is frozen, so it needs none).
    dataplane.advance(50)
    assert client.get(value_path(NS, prefix + "short")).content == b"s"

    dataplane.advance(11)
    assert limit_error(client.get(value_path(NS, prefix + "short")), status=404)["code"] == 10009
    assert client.get(value_path(NS, prefix + "long")).content == b"l"
    assert _names(client, prefix) == [prefix + "forever", prefix + "long"]
    values = ok_result(client.post(f"/kv/{NS}/bulk/get", json={"keys": [prefix + "short", prefix + "long"]}))
    assert values == {"values": {prefix + "short": None, prefix + "long": "l"}}

    dataplane.advance(3600)
    assert _names(client, prefix) == [prefix + "forever"]


def test_bulk_put_ttls_expire(dataplane: DataPlane, client: httpx.Client, prefix: str) -> None:
    items = [
        {"key": prefix + "a", "value": "a", "expiration_ttl": 60},
        {"key": prefix + "b", "value": "b", "expiration_ttl": 120},
    ]
    assert ok_result(client.put(f"/kv/{NS}/bulk", json=items))["successful_key_count"] == 2
    dataplane.advance(90)
    assert _names(client, prefix) == [prefix + "b"]
    dataplane.advance(31)
    assert _names(client, prefix) == []


def test_the_reported_expiration_moves_with_the_clock(dataplane: DataPlane, client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path(NS, prefix + "1"), params={"expiration_ttl": 600}, content=b"1"))
    dataplane.advance(100)
    ok_result(client.put(value_path(NS, prefix + "2"), params={"expiration_ttl": 600}, content=b"2"))
    first, second = (
        int(client.get(value_path(NS, prefix + k), params={"expiration": "true"}).headers["expiration"]) for k in "12"
    )
    assert 99 <= second - first <= 101
