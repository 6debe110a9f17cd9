"""The emulated data plane (infra/worker/DATAPLANE.md) over loopback HTTP: auth, operations, limits, faults, stats."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from dualcache import ConfigError, Namespace, StackConfig
from dualcache.local import DataPlane, Emulator, EmulatorState, Store, create_app, data_plane_for, provision
from tests.local.helpers import DataPlaneClient, error_codes, violation

AUTH_ERROR = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}


@pytest.fixture
def dp(emu: Emulator, shared_client: httpx.Client) -> DataPlaneClient:
    """The shared emulator's data plane, binding SESSIONS, with the right token."""
    assert emu.outputs.data_plane_url is not None
    return DataPlaneClient(shared_client, emu.outputs.data_plane_url, emu.data_plane_token)


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses (the six bindings are shared by the tests)."""
    return f"t{uuid.uuid4().hex[:12]}:"


def _rest_base(emu: Emulator, binding: Namespace = Namespace.SESSIONS) -> str:
    o = emu.outputs
    return f"{o.api_base_url}/accounts/{o.account_id}/storage/kv/namespaces/{o.namespace_id(binding)}"


# -- auth ----------------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, object]]] = [
    ("GET", "values/guarded", {}),
    ("PUT", "values/guarded", {"content": b"v"}),
    ("DELETE", "values/guarded", {}),
    ("GET", "metadata/guarded", {}),
    ("POST", "bulk/get", {"json": {"keys": ["guarded"]}}),
    ("PUT", "bulk", {"json": [{"key": "guarded", "value": "v"}]}),
    ("POST", "bulk/delete", {"json": ["guarded"]}),
    ("GET", "keys", {}),
]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer wrong-token", id="wrong"),
        pytest.param("{token}", id="not-bearer"),
        pytest.param("Basic {token}", id="other-scheme"),
        pytest.param("Bearer {token}x", id="token-plus-one"),
    ],
)
def test_data_plane_refuses_a_missing_or_wrong_token_with_one_401(
    dp: DataPlaneClient, emu: Emulator, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization.format(token=emu.data_plane_token)}
    anonymous = DataPlaneClient(dp.client, dp.url, None)
    for method, path, kwargs in ROUTES:
        r = anonymous.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 401, (method, path, r.text)
        assert r.json() == AUTH_ERROR  # the same body whatever was wrong: it never says why
    # An unknown binding or route is no different: nothing is told before the token is right.
    assert anonymous.client.get(f"{dp.url}/kv/NOPE/keys", headers=headers).json() == AUTH_ERROR
    assert anonymous.client.get(f"{dp.url}/elsewhere", headers=headers).status_code == 401
    stats = emu.control.stats()
    assert stats["data_plane"]["unauthorized"] == len(ROUTES) + 2
    assert {op: n for op, n in stats["data_plane"].items() if op != "unauthorized" and n} == {}
    assert dp.get("guarded").status_code == 404  # nothing was written


def test_data_plane_right_token_reaches_every_route(dp: DataPlaneClient, emu: Emulator) -> None:
    for method, path, kwargs in ROUTES:
        r = dp.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert r.status_code in (200, 404), (method, path, r.text)
        if method != "GET" or path == "keys":
            assert r.status_code == 200 and r.json()["success"] is True
    assert emu.control.stats()["data_plane"]["unauthorized"] == 0


def test_data_plane_token_is_redacted_from_the_request_log(dp: DataPlaneClient, emu: Emulator) -> None:
    dp.get("anything")
    (logged,) = emu.control.requests()
    assert logged["headers"]["authorization"] == "Bearer <redacted>"
    assert emu.data_plane_token not in json.dumps(logged)


# -- operations ----------------------------------------------------------------------------------------


def test_data_plane_put_get_delete_raw_bytes(dp: DataPlaneClient, prefix: str) -> None:
    key = quote(f"{prefix}bin/é %", safe="")
    value = bytes(range(256))
    assert dp.put(key, value).json() == {"success": True, "errors": [], "messages": [], "result": {}}
    r = dp.get(key)
    assert (r.status_code, r.content, r.headers["content-type"]) == (200, value, "application/octet-stream")
    assert "cf-kv-metadata" not in r.headers and "expiration" not in r.headers
    assert dp.request("DELETE", f"values/{key}").json()["success"] is True
    missing = dp.get(key)
    assert missing.status_code == 404 and error_codes(missing) == [10009]
    assert dp.request("DELETE", f"values/{key}").status_code == 200  # deleting a missing key is not an error


def test_data_plane_expiration_header_only_when_asked(dp: DataPlaneClient, emu: Emulator, prefix: str) -> None:
    assert dp.put(f"{prefix}ttl", b"v", expiration_ttl=600).status_code == 200
    assert "expiration" not in dp.get(f"{prefix}ttl").headers
    expiration = int(dp.get(f"{prefix}ttl", expiration="true").headers["expiration"])
    assert expiration == pytest.approx(emu.control.now() + 600, abs=5)
    at = int(emu.control.now()) + 3600
    dp.put(f"{prefix}at", b"v", expiration=at)
    assert dp.get(f"{prefix}at", expiration="true").headers["expiration"] == str(at)


def test_data_plane_value_expires_when_the_clock_moves(dp: DataPlaneClient, emu: Emulator, prefix: str) -> None:
    dp.put(f"{prefix}short", b"v", expiration_ttl=60)
    emu.control.advance_clock(59)
    assert dp.get(f"{prefix}short").status_code == 200
    emu.control.advance_clock(2)
    assert dp.get(f"{prefix}short").status_code == 404


def test_data_plane_multipart_put_returns_metadata_as_ascii_json(dp: DataPlaneClient, prefix: str) -> None:
    metadata = {"model": "bge", "n": 2, "note": "é日本"}
    files = {"value": (None, b"vector"), "metadata": (None, json.dumps(metadata, ensure_ascii=False).encode())}
    assert dp.request("PUT", f"values/{prefix}m", files=files).status_code == 200
    r = dp.get(f"{prefix}m")
    assert r.content == b"vector"
    header = r.headers["cf-kv-metadata"]
    assert header.isascii() and json.loads(header) == metadata
    assert dp.request("GET", f"metadata/{prefix}m").json()["result"] == metadata
    dp.put(f"{prefix}plain", b"x")
    assert dp.request("GET", f"metadata/{prefix}plain").json()["result"] is None
    missing = dp.request("GET", f"metadata/{prefix}absent")
    assert missing.status_code == 404 and error_codes(missing) == [10009]


def test_data_plane_bulk_write_get_and_delete(dp: DataPlaneClient, prefix: str) -> None:
    items = [
        {"key": f"{prefix}a", "value": '{"x": 1}', "metadata": {"m": True}, "expiration_ttl": 300},
        {"key": f"{prefix}b", "value": base64.b64encode(b"[1, 2]").decode(), "base64": True},
    ]
    written = dp.request("PUT", "bulk", json=items).json()
    assert written["result"] == {"successful_key_count": 2, "unsuccessful_keys": []}
    keys = [f"{prefix}a", f"{prefix}b", f"{prefix}missing"]
    text = dp.request("POST", "bulk/get", json={"keys": keys}).json()["result"]
    assert text == {"values": {f"{prefix}a": '{"x": 1}', f"{prefix}b": "[1, 2]", f"{prefix}missing": None}}
    full = dp.request("POST", "bulk/get", json={"keys": keys[:2], "type": "json", "withMetadata": True}).json()
    a, b = full["result"]["values"][f"{prefix}a"], full["result"]["values"][f"{prefix}b"]
    assert (a["value"], a["metadata"], isinstance(a["expiration"], int)) == ({"x": 1}, {"m": True}, True)
    assert b == {"value": [1, 2], "metadata": None}
    deleted = dp.request("POST", "bulk/delete", json=keys).json()
    assert deleted["result"] == {"successful_key_count": 3, "unsuccessful_keys": []}
    assert dp.get(f"{prefix}a").status_code == 404


def test_data_plane_lists_keys_by_prefix_with_cursor(dp: DataPlaneClient, prefix: str) -> None:
    names = [f"{prefix}{i:02d}" for i in range(25)]
    dp.request("PUT", "bulk", json=[{"key": n, "value": "v", "metadata": {"i": i}} for i, n in enumerate(names)])
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        body = dp.request("GET", "keys", params={"prefix": prefix, "limit": 10, "cursor": cursor}).json()
        seen += [k["name"] for k in body["result"]]
        assert body["result_info"]["count"] == len(body["result"])
        pages += 1
        cursor = body["result_info"]["cursor"]
        if not cursor:
            break
    assert (seen, pages) == (names, 3)
    first = dp.request("GET", "keys", params={"prefix": names[3]}).json()["result"]
    assert first == [{"name": names[3], "metadata": {"i": 3}}]


def test_data_plane_unknown_binding_is_404_with_code_10013(dp: DataPlaneClient) -> None:
    for binding in ("NOPE", "sessions", "SESSIONS2"):
        other = DataPlaneClient(dp.client, dp.url, dp.headers["authorization"].removeprefix("Bearer "), binding)
        for r in (other.get("k"), other.request("GET", "keys"), other.request("PUT", "bulk", json=[])):
            assert r.status_code == 404 and error_codes(r) == [10013], (binding, r.text)
            assert "SESSIONS" in r.json()["errors"][0]["message"]  # names the valid bindings


def test_data_plane_serves_every_binding_of_the_stack(dp: DataPlaneClient, emu: Emulator, prefix: str) -> None:
    token = emu.data_plane_token
    for binding in Namespace:
        one = DataPlaneClient(dp.client, dp.url, token, binding.value)
        assert one.put(f"{prefix}{binding.value}", binding.value.encode()).status_code == 200
        rest = httpx.get(f"{_rest_base(emu, binding)}/values/{prefix}{binding.value}")
        assert rest.content == binding.value.encode()


def test_data_plane_refuses_routes_it_does_not_have(dp: DataPlaneClient) -> None:
    legacy = dp.request("DELETE", "bulk", json=["k"])  # REST's legacy bulk delete is not served
    assert (legacy.status_code, legacy.headers["allow"]) == (405, "PUT")
    assert dp.request("POST", "values/k").headers["allow"] == "GET, PUT, DELETE"
    assert dp.request("POST", "keys").headers["allow"] == "GET"
    assert dp.request("GET", "bulk/get").headers["allow"] == "POST"
    assert dp.request("GET", "nothing").status_code == 404
    assert dp.client.get(f"{dp.url}/kv", headers=dp.headers).status_code == 404


# -- limits at the edge -----------------------------------------------------------------------------------


def test_data_plane_key_of_512_bytes_passes_and_513_is_refused(dp: DataPlaneClient) -> None:
    assert dp.put("k" * 512, b"x").status_code == 200
    assert dp.get("k" * 512).content == b"x"
    assert violation(dp.put("k" * 513, b"x")) == (400, "key", 512)
    two_byte = quote("é" * 257, safe="")  # 514 bytes in UTF-8, 257 characters
    assert violation(dp.put(two_byte, b"x")) == (400, "key", 512)
    for name in (".", ".."):
        assert violation(dp.request("PUT", "bulk", json=[{"key": name, "value": "v"}])) == (400, "key", 512)
    assert violation(dp.request("POST", "bulk/get", json={"keys": ["k" * 513]})) == (400, "key", 512)
    assert violation(dp.request("POST", "bulk/delete", json=["k" * 513])) == (400, "key", 512)


def test_data_plane_metadata_of_1024_bytes_passes_and_1025_is_refused(dp: DataPlaneClient, prefix: str) -> None:
    fits = {"p": "x" * 1016}  # {"p":"..."} is 8 + n bytes serialized compactly
    too_big = {"p": "x" * 1017}
    ok = dp.request("PUT", "bulk", json=[{"key": f"{prefix}m", "value": "v", "metadata": fits}])
    assert ok.status_code == 200
    refused = dp.request("PUT", "bulk", json=[{"key": f"{prefix}m", "value": "v", "metadata": too_big}])
    assert violation(refused) == (400, "metadata", 1024)
    files = {"value": (None, b"v"), "metadata": (None, json.dumps(too_big))}
    assert violation(dp.request("PUT", f"values/{prefix}m2", files=files)) == (400, "metadata", 1024)
    assert dp.request("GET", f"metadata/{prefix}m").json()["result"] == fits


def test_data_plane_ttl_of_60_passes_and_59_is_refused(dp: DataPlaneClient, prefix: str) -> None:
    assert dp.put(f"{prefix}t", b"v", expiration_ttl=60).status_code == 200
    assert violation(dp.put(f"{prefix}t", b"v", expiration_ttl=59)) == (400, "expiration_ttl", 60)
    assert violation(dp.put(f"{prefix}t", b"v", expiration_ttl="soon")) == (400, "expiration_ttl", 60)
    bulk = [{"key": f"{prefix}b", "value": "v", "expiration_ttl": 59}]
    assert violation(dp.request("PUT", "bulk", json=bulk)) == (400, "expiration_ttl", 60)
    bulk[0]["expiration_ttl"] = 60
    assert dp.request("PUT", "bulk", json=bulk).status_code == 200


@pytest.mark.parametrize(
    ("route", "body"),
    [
        pytest.param("PUT bulk", lambda keys: [{"key": k, "value": "v"} for k in keys], id="bulk-write"),
        pytest.param("POST bulk/get", lambda keys: {"keys": keys}, id="bulk-get"),
        pytest.param("POST bulk/delete", lambda keys: keys, id="bulk-delete"),
    ],
)
def test_data_plane_batches_of_100_pass_and_101_are_refused(
    dp: DataPlaneClient, prefix: str, route: str, body: Callable[[list[str]], object]
) -> None:
    method, path = route.split(" ")
    hundred = [f"{prefix}{i:03d}" for i in range(100)]
    ok = dp.request(method, path, json=body(hundred))
    assert ok.status_code == 200, ok.text
    refused = dp.request(method, path, json=body([*hundred, f"{prefix}extra"]))
    assert violation(refused) == (400, "keys", 100)
    assert dp.get(f"{prefix}extra").status_code == 404


@pytest.mark.parametrize(
    ("limit", "accepted"),
    [
        pytest.param("9", False, id="9"),
        pytest.param("10", True, id="10"),
        pytest.param("1000", True, id="1000"),
        pytest.param("1001", False, id="1001"),
        pytest.param("0", False, id="0"),
        pytest.param("ten", False, id="not-a-number"),
    ],
)
def test_data_plane_list_limit_is_10_to_1000(dp: DataPlaneClient, limit: str, accepted: bool) -> None:
    r = dp.request("GET", "keys", params={"limit": limit, "prefix": "no-such-prefix:"})
    if accepted:
        assert r.status_code == 200 and r.json()["result"] == []
    else:
        # As the Worker reports it: the limit is the maximum, the minimum rides along as "min".
        assert violation(r) == (400, "limit", 1000)
        error = r.json()["errors"][0]
        assert error["min"] == 10 and "10..1000" in error["message"] and error["code"] == 10027


def test_data_plane_value_over_25_mib_is_400_and_body_limits_are_413(dp: DataPlaneClient, prefix: str) -> None:
    mib = 1024 * 1024
    assert dp.put(f"{prefix}big", b"\0" * (25 * mib)).status_code == 200
    assert violation(dp.put(f"{prefix}big", b"\0" * (25 * mib + 1))) == (400, "value", 25 * mib)
    assert violation(dp.put(f"{prefix}big", b"\0" * (25 * mib + 1025))) == (413, "body", 25 * mib + 1024)
    # A bulk write body over 32 MiB (two 17 MiB values): 413 before any key is written.
    items = [{"key": f"{prefix}b{i}", "value": "x" * (17 * mib)} for i in range(2)]
    assert violation(dp.request("PUT", "bulk", json=items)) == (413, "body", 32 * mib)
    assert dp.get(f"{prefix}b0").status_code == 404


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        pytest.param("PUT bulk", b"[not json", "body", id="not-json"),
        pytest.param("PUT bulk", b'{"key": "k"}', "body", id="write-not-array"),
        pytest.param("PUT bulk", b"[7]", "body", id="item-not-object"),
        pytest.param("POST bulk/get", b'["k"]', "keys", id="get-not-object"),
        pytest.param("POST bulk/get", b'{"keys": ["k"], "type": "arrayBuffer"}', "type", id="get-type"),
        pytest.param("POST bulk/get", b'{"keys": ["k"], "withMetadata": 1}', "withMetadata", id="with-metadata"),
        pytest.param("POST bulk/delete", b'{"k": 1}', "body", id="delete-not-array"),
    ],
)
def test_data_plane_malformed_bodies_are_400_naming_the_field(
    dp: DataPlaneClient, route: str, body: bytes, field: str
) -> None:
    method, path = route.split(" ")
    r = dp.request(method, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_codes(r)
    assert r.json()["errors"][0]["field"] == field


def test_data_plane_batch_errors_name_the_item(dp: DataPlaneClient, prefix: str) -> None:
    items = [{"key": f"{prefix}good", "value": "v"}, {"key": f"{prefix}bad", "value": 5}]
    error = dp.request("PUT", "bulk", json=items).json()["errors"][0]
    assert (error["field"], error["index"]) == ("value", 1)
    assert dp.get(f"{prefix}good").status_code == 404  # a bad item fails the batch before any write
    for key in ("", ".", "..", 7):
        error = dp.request("PUT", "bulk", json=[{"key": key, "value": "v"}]).json()["errors"][0]
        assert (error["field"], error["index"], error["code"]) == ("key", 0, 10020)
    error = dp.request("POST", "bulk/delete", json=[f"{prefix}ok", "k" * 513]).json()["errors"][0]
    assert (error["field"], error["index"], error["limit"]) == ("key", 1, 512)


def test_data_plane_bulk_get_of_no_keys_is_an_empty_result(dp: DataPlaneClient) -> None:
    assert dp.request("POST", "bulk/get", json={"keys": []}).json()["result"] == {"values": {}}


@pytest.mark.parametrize("params", [{"expiration_ttl": 2**31}, {"expiration": 2**31}])
def test_data_plane_refuses_expirations_beyond_32_bits(dp: DataPlaneClient, params: dict[str, int]) -> None:
    # The Worker's binding takes 32-bit expirations; REST goes on to year 9999.
    (field,) = params
    assert violation(dp.put("k32", b"v", **params)) == (400, field, 60)


def test_rest_limits_stay_rest_s_own(emu: Emulator, prefix: str) -> None:
    base = _rest_base(emu)
    ok = httpx.put(f"{base}/bulk", json=[{"key": f"{prefix}{i}", "value": "v"} for i in range(101)])
    assert ok.json()["result"]["successful_key_count"] == 101  # REST writes up to 10,000 pairs at once
    refused = httpx.put(f"{base}/values/{'k' * 513}", content=b"x")
    assert refused.status_code == 400 and "field" not in refused.json()["errors"][0]


# -- one store, two surfaces --------------------------------------------------------------------------


def test_data_plane_and_rest_see_the_same_values(dp: DataPlaneClient, emu: Emulator, prefix: str) -> None:
    rest = _rest_base(emu)
    key = quote(f"{prefix}shared/1", safe="")
    assert httpx.put(f"{rest}/values/{key}", content=b"from rest", params={"expiration_ttl": 600}).status_code == 200
    got = dp.get(key, expiration="true")
    assert got.content == b"from rest" and "expiration" in got.headers
    files = {"value": (None, b"from the data plane"), "metadata": (None, '{"via": "dp"}')}
    assert dp.request("PUT", f"values/{prefix}dp", files=files).status_code == 200
    assert httpx.get(f"{rest}/values/{prefix}dp").content == b"from the data plane"
    assert httpx.get(f"{rest}/metadata/{prefix}dp").json()["result"] == {"via": "dp"}
    listed = httpx.get(f"{rest}/keys", params={"prefix": prefix}).json()["result"]
    assert [k["name"] for k in listed] == [f"{prefix}dp", f"{prefix}shared/1"]
    httpx.post(f"{rest}/bulk/delete", json=[f"{prefix}dp"])
    assert dp.get(f"{prefix}dp").status_code == 404


def test_stats_tell_data_plane_from_api_and_gateway_requests(dp: DataPlaneClient, emu: Emulator, prefix: str) -> None:
    o = emu.outputs
    rest = _rest_base(emu)
    httpx.put(f"{rest}/values/{prefix}r", content=b"v")
    httpx.get(f"{rest}/values/{prefix}r")
    dp.put(f"{prefix}d", b"v")
    dp.get(f"{prefix}d")
    dp.request("POST", "bulk/get", json={"keys": [f"{prefix}d"]})
    DataPlaneClient(dp.client, dp.url, "wrong").get(f"{prefix}d")
    gateway = f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}"
    httpx.post(f"{gateway}/workers-ai/@cf/baai/bge-base-en-v1.5", json={"text": "s"})
    httpx.get(f"{emu.url}/nowhere")
    stats = emu.control.stats()
    assert stats["surfaces"] == {"api": 2, "data_plane": 4, "gateway": 1, "other": 1}
    assert stats["requests"] == 8
    assert (stats["kv"]["put"], stats["kv"]["get"], stats["kv"]["bulk_get"]) == (1, 1, 0)
    dp_ops = stats["data_plane"]
    assert (dp_ops["put"], dp_ops["get"], dp_ops["bulk_get"], dp_ops["unauthorized"]) == (1, 1, 1, 1)
    surfaces = [r["surface"] for r in emu.control.requests()]
    assert surfaces == ["api", "api", "data_plane", "data_plane", "data_plane", "data_plane", "gateway", "other"]
    emu.control.reset()
    assert emu.control.stats()["surfaces"] == {"api": 0, "data_plane": 0, "gateway": 0, "other": 0}


# -- faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "retry_after"),
    [pytest.param({}, "60", id="default-60"), pytest.param({"retry_after": 7}, "7", id="configured")],
)
def test_fault_kv_429_carries_retry_after_on_both_surfaces(
    dp: DataPlaneClient, emu: Emulator, prefix: str, spec: dict[str, int], retry_after: str
) -> None:
    dp.put(f"{prefix}k", b"v")
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 429, **spec}})
    assert emu.control.faults()["kv"]["retry_after"] == int(retry_after)
    for r in (dp.get(f"{prefix}k"), httpx.get(f"{_rest_base(emu)}/values/{prefix}k")):
        assert r.status_code == 429
        assert r.headers["retry-after"] == retry_after
        assert error_codes(r)
    assert emu.control.stats()["faults"]["kv"] == 2
    emu.control.clear_faults()
    assert dp.get(f"{prefix}k").content == b"v"


def test_fault_kv_other_statuses_carry_no_retry_after(dp: DataPlaneClient, emu: Emulator) -> None:
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 503}})
    r = dp.request("POST", "bulk/get", json={"keys": ["k"]})
    assert r.status_code == 503 and "retry-after" not in r.headers


def test_fault_kv_is_applied_after_the_token_check(dp: DataPlaneClient, emu: Emulator) -> None:
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 500}})
    assert DataPlaneClient(dp.client, dp.url, None).get("k").status_code == 401
    assert emu.control.stats()["faults"]["kv"] == 0


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"kv": {"retry_after": 5}}, id="retry-after-without-429"),
        pytest.param({"kv": {"status": 429, "retry_after": -1}}, id="negative"),
        pytest.param({"kv": {"status": 429, "retry_after": 1.5}}, id="fraction"),
        pytest.param({"upstream": {"status": 429, "retry_after": 5}}, id="upstream"),
    ],
)
def test_fault_retry_after_is_validated(emu: Emulator, faults: dict[str, dict[str, object]]) -> None:
    with pytest.raises(ConfigError, match="retry_after"):
        emu.control.set_faults(faults)


def test_fault_gateway_429_carries_retry_after(emu: Emulator) -> None:
    o = emu.outputs
    emu.control.set_faults({"gateway": {"error_rate": 1.0, "status": 429, "retry_after": 3}})
    url = f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/workers-ai/@cf/baai/bge-base-en-v1.5"
    r = httpx.post(url, json={"text": "x"})
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")


# -- health -------------------------------------------------------------------------------------------


def test_data_plane_health_needs_no_token_and_probes_kv_and_gateway(dp: DataPlaneClient, emu: Emulator) -> None:
    r = httpx.get(f"{dp.url}/health")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["ok"] is True
    assert {b.value for b in Namespace} <= {name for name, present in report["bindings"].items() if present}
    assert report["secrets"] == {"OPENAI_API_KEY": False, "CF_AIG_TOKEN": False}  # health.js's shape
    assert report["checks"]["kv"]["ok"] and report["checks"]["gateway"]["ok"]
    assert report["checks"]["gateway"]["dimensions"] == 768
    assert emu.control.stats()["data_plane"]["health"] == 1
    assert httpx.get(f"{dp.url}/health", params={"probes": "0"}).json()["checks"] == {}
    assert httpx.post(f"{dp.url}/health").status_code == 405


def test_data_plane_health_reports_kv_down_as_503(dp: DataPlaneClient, emu: Emulator) -> None:
    emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 503}})
    r = httpx.get(f"{dp.url}/health")
    assert r.status_code == 503
    assert r.json()["checks"]["kv"] == {"ok": False, "ms": r.json()["checks"]["kv"]["ms"], "error": "KV answered 503"}
    assert r.json()["checks"]["gateway"]["ok"] is True


# -- outputs, token, app ------------------------------------------------------------------------------------


def test_emulator_outputs_carry_the_data_plane_and_never_its_token(
    shared_emulator: Emulator, dev_config: StackConfig
) -> None:
    o = shared_emulator.outputs
    assert o.data_plane_url == f"{shared_emulator.url}/dataplane"
    assert o.data_plane_worker_name == f"{dev_config.project}-dualcache-dev" == "jobmatch-ai-dualcache-dev"
    assert len(shared_emulator.data_plane_token) >= 32
    assert shared_emulator.data_plane_token not in o.to_json()


def test_emulator_takes_a_given_data_plane_token(tmp_path: Path, dev_config: StackConfig) -> None:
    with Emulator(config=dev_config, data_dir=tmp_path, data_plane_token="given-token") as emu:
        assert emu.data_plane_token == "given-token"
        assert emu.outputs.data_plane_url is not None
        plane = DataPlaneClient(httpx.Client(), emu.outputs.data_plane_url, "given-token")
        with plane.client:
            assert plane.put("k", b"v").status_code == 200
            assert DataPlaneClient(plane.client, plane.url, emu.data_plane_token + "!").get("k").status_code == 401


@pytest.mark.parametrize("token", ["", "has space", "tab\there", "é-non-ascii", "x" * 4097])
def test_emulator_refuses_a_data_plane_token_that_cannot_travel_in_a_header(
    tmp_path: Path, dev_config: StackConfig, token: str
) -> None:
    with pytest.raises(ConfigError, match="visible ASCII") as info:
        Emulator(config=dev_config, data_dir=tmp_path, data_plane_token=token)
    assert not token or token not in str(info.value)  # the message never repeats the token


async def test_create_app_serves_the_data_plane_only_when_given_one(tmp_path: Path, dev_config: StackConfig) -> None:
    store = Store(tmp_path)
    try:
        provision(store, dev_config, 0.0)
        without = httpx.ASGITransport(app=create_app(EmulatorState(store)))
        async with httpx.AsyncClient(transport=without, base_url="http://127.0.0.1") as client:
            assert (await client.get("/dataplane/health")).status_code == 404
        plane = data_plane_for(dev_config, "asgi-token")
        assert isinstance(plane, DataPlane) and plane.namespaces["API_CACHE"] == dev_config.offline_namespace_id(
            Namespace.API_CACHE
        )
        assert "asgi-token" not in repr(plane)
        state = EmulatorState(store, data_plane=plane)
        transport = httpx.ASGITransport(app=create_app(state))
        headers = {"authorization": "Bearer asgi-token"}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as client:
            assert (await client.put("/dataplane/kv/API_CACHE/values/k", content=b"v")).status_code == 200
            assert (await client.get("/dataplane/kv/API_CACHE/values/k")).content == b"v"
        assert state.snapshot()["data_plane"]["put"] == 1 and state.snapshot()["kv"]["put"] == 0
    finally:
        store.close()
