"""``POST /ratelimit/{B}``: a Workers Rate Limiting binding through the data plane, in workerd and the emulator."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.contract.conftest import RATE_LIMITS
from tests.contract.helpers import limit_error, ok_result
from tests.contract.workerd import DataPlane

LIMITER = "CONTRACT_LIMITER"
LIMIT = RATE_LIMITS[LIMITER][0]


def test_ratelimit_admits_up_to_the_limit_per_key_then_refuses(client: httpx.Client) -> None:
    key = f"op:{uuid.uuid4().hex}"
    answers = [ok_result(client.post(f"/ratelimit/{LIMITER}", json={"key": key})) for _ in range(LIMIT + 2)]
    # workerd's simulator is exact within its window, as is the emulator; Cloudflare's counters are per location
    # and eventually consistent (permissive), so a deployed Worker may admit a few more.
    assert answers == [{"success": True}] * LIMIT + [{"success": False}] * 2
    other = ok_result(client.post(f"/ratelimit/{LIMITER}", json={"key": key + "-other"}))
    assert other == {"success": True}  # counted per key


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param({"key": ""}, 400, "key", id="empty-key"),
        pytest.param({"key": "k" * 513}, 400, "key", id="long-key"),
        pytest.param({"key": 7}, 400, "key", id="number-key"),
        pytest.param({}, 400, "key", id="no-key"),
        pytest.param([1], 400, "body", id="array"),
    ],
)
def test_ratelimit_refuses_bad_bodies_naming_the_field(
    client: httpx.Client, body: object, status: int, field: str
) -> None:
    error = limit_error(client.post(f"/ratelimit/{LIMITER}", json=body), status)
    assert error["field"] == field


def test_ratelimit_refuses_invalid_json_and_oversized_bodies(client: httpx.Client) -> None:
    error = limit_error(client.post(f"/ratelimit/{LIMITER}", content=b"{not json"), 400)
    assert error["field"] == "body"
    error = limit_error(client.post(f"/ratelimit/{LIMITER}", content=b"x" * 5000), 413)
    assert (error["field"], error["limit"]) == ("body", 4096)


@pytest.mark.parametrize("name", ["NO_SUCH_LIMITER", "SESSIONS", "DUALCACHE_TOKEN", "lower"])
def test_ratelimit_unknown_binding_is_404(client: httpx.Client, name: str) -> None:
    error = limit_error(client.post(f"/ratelimit/{name}", json={"key": "k"}), 404)
    assert error["code"] == 10031 and "rate limiter not found" in error["message"]


def test_ratelimit_wrong_method_is_405_and_no_token_is_401(client: httpx.Client, dataplane: DataPlane) -> None:
    response = client.get(f"/ratelimit/{LIMITER}")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    anonymous = httpx.post(f"{dataplane.url}/ratelimit/{LIMITER}", json={"key": "k"})
    assert anonymous.status_code == 401
