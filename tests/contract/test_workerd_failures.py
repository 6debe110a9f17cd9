"""KV failing behind the Worker: partial bulk writes and refused puts. workerd only, because the failure is
miniflare's: a KV namespace whose simulator received a control op (RATE_LIMITS, once its clock has moved)
caps values at 1 KiB and refuses larger ones, as real KV refuses a value it cannot take."""

from __future__ import annotations

import httpx
import pytest

from tests.contract.helpers import limit_error, ok_result, value_path
from tests.contract.workerd import DataPlane

NS = "RATE_LIMITS"


@pytest.fixture
def capped(dataplane: DataPlane) -> DataPlane:
    if dataplane.name != "workerd":
        pytest.skip("the KV failure is injected through miniflare's KV simulator")
    dataplane.advance(0)  # a control op: from now on RATE_LIMITS refuses values over 1 KiB
    return dataplane


def test_bulk_put_reports_the_keys_kv_refused(capped: DataPlane, client: httpx.Client, prefix: str) -> None:
    items = [{"key": f"{prefix}{i}", "value": "x" * (2048 if i % 2 else 10)} for i in range(6)]
    result = ok_result(client.put(f"/kv/{NS}/bulk", json=items))
    assert result == {"successful_key_count": 3, "unsuccessful_keys": [f"{prefix}{i}" for i in (1, 3, 5)]}
    listed = [k["name"] for k in ok_result(client.get(f"/kv/{NS}/keys", params={"prefix": prefix}))]
    assert listed == [f"{prefix}{i}" for i in (0, 2, 4)]


def test_a_put_kv_refuses_is_a_400_without_the_value(capped: DataPlane, client: httpx.Client, prefix: str) -> None:
    secret_value = b"do-not-echo-" * 200
    response = client.put(value_path(NS, prefix + "big"), content=secret_value)
    error = limit_error(response)
    assert error["code"] == 10002 and "KV refused" in error["message"]
    assert b"do-not-echo" not in response.content
    assert client.get(value_path(NS, prefix + "big")).status_code == 404
