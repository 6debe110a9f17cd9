"""The emulated Workers KV REST API, over loopback HTTP."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
import pytest

from dualcache.local import Emulator
from tests.local.helpers import KVNamespace, error_codes


def test_kv_put_get_returns_raw_bytes_without_expiration_header(kv: KVNamespace) -> None:
    value = bytes(range(256))
    assert kv.put("bin", value).json() == {"success": True, "errors": [], "messages": [], "result": {}}
    r = kv.get("bin")
    assert r.status_code == 200
    assert r.content == value
    assert r.headers["content-type"] == "application/octet-stream"
    assert "expiration" not in r.headers


def test_kv_get_missing_key_is_404_with_code_10009(kv: KVNamespace) -> None:
    r = kv.get("nope")
    assert r.status_code == 404
    assert error_codes(r) == [10009]
    assert r.json()["errors"][0]["message"] == "get: 'key not found'"


def test_kv_unknown_namespace_is_404_with_code_10013(client: httpx.Client, emu: Emulator) -> None:
    base = f"/client/v4/accounts/{emu.outputs.account_id}/storage/kv/namespaces/{'0' * 32}"
    for r in (client.get(f"{base}/values/k"), client.get(f"{base}/keys"), client.put(f"{base}/bulk", json=[])):
        assert r.status_code == 404
        assert error_codes(r) == [10013]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("analysis:user/1:job?2", id="colon-slash-question"),
        pytest.param("100% sure #1", id="percent-space-hash"),
        pytest.param("embed:é日本", id="unicode"),
        pytest.param("a%2Fb", id="literal-percent-2F"),
        pytest.param("trailing/", id="trailing-slash"),
    ],
)
def test_kv_percent_encoded_keys_round_trip(kv: KVNamespace, key: str) -> None:
    encoded = quote(key, safe="")
    assert kv.put(encoded, b"v").status_code == 200
    assert kv.get(encoded).content == b"v"
    names = [k["name"] for k in kv.client.get(f"{kv.base}/keys").json()["result"]]
    assert names == [key]


def test_kv_put_multipart_stores_value_and_metadata(kv: KVNamespace) -> None:
    r = kv.client.put(
        kv.value_url("m"),
        files={"value": (None, b"hello\r\nworld\r\n"), "metadata": (None, json.dumps({"model": "bge", "n": 2}))},
    )
    assert r.status_code == 200, r.text
    assert kv.get("m").content == b"hello\r\nworld\r\n"
    meta = kv.client.get(f"{kv.base}/metadata/m")
    assert meta.json()["result"] == {"model": "bge", "n": 2}


def test_kv_metadata_of_key_without_metadata_is_null_and_missing_key_404(kv: KVNamespace) -> None:
    kv.put("plain", b"x")
    assert kv.client.get(f"{kv.base}/metadata/plain").json()["result"] is None
    missing = kv.client.get(f"{kv.base}/metadata/absent")
    assert missing.status_code == 404
    assert error_codes(missing) == [10009]


def test_kv_put_overwrites_value_metadata_and_expiration(kv: KVNamespace) -> None:
    kv.client.put(kv.value_url("k"), files={"value": (None, b"1"), "metadata": (None, '{"a": 1}')})
    kv.put("k", b"2", expiration_ttl=3600)
    assert kv.get("k").content == b"2"
    assert kv.client.get(f"{kv.base}/metadata/k").json()["result"] is None
    assert "expiration" in kv.get("k").headers


def test_kv_delete_removes_key_and_missing_delete_succeeds(kv: KVNamespace) -> None:
    kv.put("d", b"x")
    assert kv.client.delete(kv.value_url("d")).json()["success"] is True
    assert kv.get("d").status_code == 404
    assert kv.client.delete(kv.value_url("d")).status_code == 200


def test_kv_expiration_ttl_expires_by_the_emulator_clock(kv: KVNamespace, emu: Emulator) -> None:
    now = emu.control.now()
    kv.put("t", b"x", expiration_ttl=60)
    r = kv.get("t")
    assert int(r.headers["expiration"]) == pytest.approx(now + 60, abs=2)
    emu.control.advance_clock(55)
    assert kv.get("t").status_code == 200
    emu.control.advance_clock(10)
    assert kv.get("t").status_code == 404
    assert kv.client.get(f"{kv.base}/keys").json()["result"] == []


def test_kv_absolute_expiration_and_ttl_precedence(kv: KVNamespace, emu: Emulator) -> None:
    now = int(emu.control.now())
    kv.put("abs", b"x", expiration=now + 120)
    assert kv.get("abs").headers["expiration"] == str(now + 120)
    kv.put("both", b"x", expiration=now + 100_000, expiration_ttl=60)
    assert int(kv.get("both").headers["expiration"]) <= now + 62
    emu.control.advance_clock(121)
    assert kv.get("abs").status_code == 404
    assert kv.get("both").status_code == 404


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        pytest.param({"expiration_ttl": 59}, "expiration_ttl of 59", id="ttl-below-60"),
        pytest.param({"expiration_ttl": 0}, "expiration_ttl of 0", id="ttl-zero"),
        pytest.param({"expiration_ttl": "soon"}, "not a number", id="ttl-not-number"),
        pytest.param({"expiration_ttl": 60.5}, "not an integer", id="ttl-fraction"),
        pytest.param({"expiration": 1}, "Invalid expiration of 1", id="expiration-in-past"),
        pytest.param({"expiration_ttl": 10**22}, "before 253402300799", id="ttl-beyond-year-9999"),
        pytest.param({"expiration": 10**15}, "before 253402300799", id="expiration-beyond-year-9999"),
    ],
)
def test_kv_put_rejects_bad_expirations_with_400(kv: KVNamespace, params: dict[str, object], fragment: str) -> None:
    r = kv.put("k", b"x", **params)
    assert r.status_code == 400
    assert error_codes(r)
    assert fragment in r.json()["errors"][0]["message"]
    assert kv.get("k").status_code == 404


def test_kv_expiration_less_than_60s_ahead_is_rejected(kv: KVNamespace, emu: Emulator) -> None:
    r = kv.put("k", b"x", expiration=int(emu.control.now()) + 30)
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("encoded_key", "fragment"),
    [
        pytest.param("k" * 513, "513 bytes", id="513-bytes"),
        pytest.param(quote("é" * 257), "514 bytes", id="multibyte-over-512"),
        pytest.param("%2E", "cannot be empty, '.' or '..'", id="dot"),
        pytest.param("%2E%2E", "cannot be empty, '.' or '..'", id="dot-dot"),
        pytest.param("", "cannot be empty", id="empty"),
    ],
)
def test_kv_rejects_invalid_key_names(kv: KVNamespace, encoded_key: str, fragment: str) -> None:
    r = kv.put(encoded_key, b"x")
    assert r.status_code == 400
    assert fragment in r.json()["errors"][0]["message"]


def test_kv_accepts_key_of_exactly_512_bytes(kv: KVNamespace) -> None:
    assert kv.put("k" * 512, b"x").status_code == 200
    assert kv.get("k" * 512).content == b"x"


def test_kv_rejects_value_over_25_mib_and_accepts_exactly_25_mib(kv: KVNamespace) -> None:
    limit = 25 * 1024 * 1024
    r = kv.put("big", b"\0" * (limit + 1))
    assert r.status_code == 413
    assert "26214401 bytes" in r.json()["errors"][0]["message"]
    assert kv.put("big", b"\0" * limit).status_code == 200
    assert len(kv.get("big").content) == limit


def test_kv_rejects_metadata_over_1024_bytes(kv: KVNamespace) -> None:
    too_big = json.dumps({"p": "x" * 1017})  # {"p":"..."} is 1025 bytes serialized compactly
    r = kv.client.put(kv.value_url("m"), files={"value": (None, b"v"), "metadata": (None, too_big)})
    assert r.status_code == 400
    assert "1025 bytes" in r.json()["errors"][0]["message"]
    ok = json.dumps({"p": "x" * 1016})
    assert kv.client.put(kv.value_url("m"), files={"value": (None, b"v"), "metadata": (None, ok)}).status_code == 200


def test_kv_metadata_limit_counts_utf8_bytes_not_ascii_escapes(kv: KVNamespace) -> None:
    # {"p":"é…"} is 8 + 2n bytes as JSON.stringify writes it (é is 2 UTF-8 bytes; as \u00e9 it would be 6).
    fits = json.dumps({"p": "é" * 508}, ensure_ascii=False)
    r = kv.client.put(kv.value_url("m"), files={"value": (None, b"v"), "metadata": (None, fits.encode())})
    assert r.status_code == 200, r.text
    assert kv.client.get(f"{kv.base}/metadata/m").json()["result"] == {"p": "é" * 508}
    too_big = json.dumps({"p": "é" * 509})
    r = kv.client.put(kv.value_url("m"), files={"value": (None, b"v"), "metadata": (None, too_big)})
    assert r.status_code == 400
    assert "1026 bytes" in r.json()["errors"][0]["message"]


def test_kv_rejects_metadata_that_is_not_json(kv: KVNamespace) -> None:
    r = kv.client.put(kv.value_url("m"), files={"value": (None, b"v"), "metadata": (None, "{nope")})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["errors"][0]["message"]


def test_kv_list_filters_by_prefix_in_byte_order_with_expiration_and_metadata(kv: KVNamespace) -> None:
    for key in ("b", "a:2", "a:10", "a:é", "a:Z", "c"):
        kv.put(quote(key, safe=""), b"x")
    kv.client.put(kv.value_url("a:meta"), files={"value": (None, b"x"), "metadata": (None, '{"m": 1}')})
    kv.put("a:exp", b"x", expiration_ttl=600)
    r = kv.client.get(f"{kv.base}/keys", params={"prefix": "a:"})
    result = r.json()["result"]
    assert [k["name"] for k in result] == ["a:10", "a:2", "a:Z", "a:exp", "a:meta", "a:é"]
    assert next(k for k in result if k["name"] == "a:meta")["metadata"] == {"m": 1}
    assert "expiration" in next(k for k in result if k["name"] == "a:exp")
    assert "expiration" not in result[0] and "metadata" not in result[0]
    assert r.json()["result_info"] == {"count": 6, "cursor": ""}


def test_kv_list_pages_with_cursor_until_cursor_is_empty(kv: KVNamespace) -> None:
    names = [f"k{i:02d}" for i in range(25)]
    kv.client.put(f"{kv.base}/bulk", json=[{"key": n, "value": "v"} for n in names])
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        body = kv.client.get(f"{kv.base}/keys", params={"limit": 10, "cursor": cursor}).json()
        seen += [k["name"] for k in body["result"]]
        pages += 1
        cursor = body["result_info"]["cursor"]
        assert body["result_info"]["count"] == len(body["result"])
        if not cursor:
            break
    assert seen == names
    assert pages == 3


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-0"),
        pytest.param({"limit": 9}, id="limit-9"),
        pytest.param({"limit": 1001}, id="limit-1001"),
        pytest.param({"cursor": "!!!not-a-cursor"}, id="bad-cursor"),
    ],
)
def test_kv_list_rejects_bad_parameters(kv: KVNamespace, params: dict[str, object]) -> None:
    r = kv.client.get(f"{kv.base}/keys", params=params)
    assert r.status_code == 400
    assert error_codes(r)


@pytest.mark.parametrize("limit", [10, 1000])
def test_kv_list_accepts_limits_at_the_edges(kv: KVNamespace, limit: int) -> None:
    # The REST minimum is not documented; 10 is the one the emulator and DATAPLANE.md take.
    kv.client.put(f"{kv.base}/bulk", json=[{"key": f"k{i:02d}", "value": "v"} for i in range(11)])
    r = kv.client.get(f"{kv.base}/keys", params={"limit": limit})
    assert r.status_code == 200
    assert len(r.json()["result"]) == min(limit, 11)
    assert bool(r.json()["result_info"]["cursor"]) is (limit < 11)


def test_kv_list_limit_below_10_names_the_range(kv: KVNamespace) -> None:
    r = kv.client.get(f"{kv.base}/keys", params={"limit": 9})
    assert r.json()["errors"][0]["message"] == "limit=9 must be an integer 10..1000"
    assert set(r.json()["errors"][0]) == {"code", "message"}  # REST's error objects carry no field/limit


def test_kv_bulk_write_with_base64_metadata_and_ttl(kv: KVNamespace) -> None:
    body = [
        {"key": "text", "value": "hello"},
        {"key": "b64", "value": base64.b64encode(b"\x00\xff").decode(), "base64": True},
        {"key": "meta", "value": "{}", "metadata": {"v": 1}, "expiration_ttl": 120},
    ]
    r = kv.client.put(f"{kv.base}/bulk", json=body)
    assert r.json()["result"] == {"successful_key_count": 3, "unsuccessful_keys": []}
    assert kv.get("text").content == b"hello"
    assert kv.get("b64").content == b"\x00\xff"
    assert "expiration" in kv.get("meta").headers


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param([{"key": "k", "value": "v"}] * 10_001, "maximum is 10000", id="10001-items"),
        pytest.param({"key": "k"}, "JSON array", id="not-array"),
        pytest.param([{"key": "k", "value": 1}], "'value' must be a string", id="value-not-string"),
        pytest.param([{"key": "k" * 513, "value": "v"}], "513 bytes", id="long-key"),
        pytest.param([{"key": "k", "value": "v", "expiration_ttl": 30}], "expiration_ttl of 30", id="ttl-30"),
        pytest.param([{"key": "k", "value": "v", "metadata": {"p": "x" * 1100}}], "metadata", id="metadata"),
        pytest.param([{"key": "k", "value": "!!", "base64": True}], "not base64", id="bad-base64"),
    ],
)
def test_kv_bulk_write_rejects_invalid_requests_without_writing(kv: KVNamespace, body: object, fragment: str) -> None:
    r = kv.client.put(f"{kv.base}/bulk", json=body)
    assert r.status_code == 400
    assert fragment in r.json()["errors"][0]["message"]
    assert kv.get("k").status_code == 404


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param(b'[{"key": "k", "value": "v", "expiration_ttl": 1e400}]', "expiration_ttl inf", id="ttl-infinite"),
        pytest.param(b'[{"key": "k", "value": "v", "expiration": NaN}]', "expiration nan", id="expiration-nan"),
        pytest.param(b'[{"key": "k", "value": "v", "expiration_ttl": 90.5}]', "must be an integer", id="ttl-fraction"),
        pytest.param(b'[{"key": "k", "value": "v", "metadata": NaN}]', "NaN or Infinity", id="metadata-nan"),
    ],
)
def test_kv_bulk_write_rejects_non_finite_numbers_with_400(kv: KVNamespace, raw: bytes, fragment: str) -> None:
    # Python's json (and so the emulator) reads NaN / 1e400; they must be a 400 naming the value, never a 500.
    r = kv.client.put(f"{kv.base}/bulk", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["errors"][0]["message"]
    assert kv.get("k").status_code == 404


def test_kv_bulk_write_accepts_exactly_10000_items(kv: KVNamespace) -> None:
    r = kv.client.put(f"{kv.base}/bulk", json=[{"key": f"k{i}", "value": "v"} for i in range(10_000)])
    assert r.json()["result"]["successful_key_count"] == 10_000


def test_kv_bulk_get_text_json_and_metadata(kv: KVNamespace) -> None:
    kv.client.put(
        f"{kv.base}/bulk",
        json=[
            {"key": "a", "value": '{"x": 1}', "metadata": {"m": True}, "expiration_ttl": 300},
            {"key": "b", "value": "[1, 2]"},
        ],
    )
    url = f"{kv.base}/bulk/get"
    text = kv.client.post(url, json={"keys": ["a", "b", "missing"]}).json()["result"]
    assert text == {"values": {"a": '{"x": 1}', "b": "[1, 2]", "missing": None}}
    as_json = kv.client.post(url, json={"keys": ["a", "b"], "type": "json"}).json()["result"]
    assert as_json == {"values": {"a": {"x": 1}, "b": [1, 2]}}
    with_meta = kv.client.post(url, json={"keys": ["a", "b"], "type": "json", "withMetadata": True}).json()["result"]
    assert with_meta["values"]["a"]["value"] == {"x": 1}
    assert with_meta["values"]["a"]["metadata"] == {"m": True}
    assert isinstance(with_meta["values"]["a"]["expiration"], int)
    assert with_meta["values"]["b"] == {"value": [1, 2], "metadata": None}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"keys": [f"k{i}" for i in range(101)]}, "maximum is 100", id="101-keys"),
        pytest.param({"keys": []}, "1..100", id="no-keys"),
        pytest.param({"keys": ["a"], "type": "arrayBuffer"}, "'text' or 'json'", id="bad-type"),
        pytest.param({"keys": ["a"], "withMetadata": "yes"}, "withMetadata", id="bad-with-metadata"),
    ],
)
def test_kv_bulk_get_rejects_invalid_requests(kv: KVNamespace, body: object, fragment: str) -> None:
    r = kv.client.post(f"{kv.base}/bulk/get", json=body)
    assert r.status_code == 400
    assert fragment in r.json()["errors"][0]["message"]


def test_kv_bulk_get_rejects_non_json_and_binary_values(kv: KVNamespace) -> None:
    kv.put("text", b"not json")
    kv.put("bin", b"\xff\xfe")
    url = f"{kv.base}/bulk/get"
    assert kv.client.post(url, json={"keys": ["text"], "type": "json"}).status_code == 400
    assert kv.client.post(url, json={"keys": ["bin"]}).status_code == 400


@pytest.mark.parametrize(
    ("method", "suffix"),
    [pytest.param("POST", "/bulk/delete", id="post-bulk-delete"), pytest.param("DELETE", "/bulk", id="delete-bulk")],
)
def test_kv_bulk_delete_both_paths(kv: KVNamespace, method: str, suffix: str) -> None:
    kv.client.put(f"{kv.base}/bulk", json=[{"key": k, "value": "v"} for k in ("a", "b", "c")])
    r = kv.client.request(method, f"{kv.base}{suffix}", json=["a", "b", "never-existed"])
    assert r.json()["result"] == {"successful_key_count": 3, "unsuccessful_keys": []}
    assert [k["name"] for k in kv.client.get(f"{kv.base}/keys").json()["result"]] == ["c"]


def test_kv_bulk_delete_rejects_more_than_10000_keys(kv: KVNamespace) -> None:
    r = kv.client.post(f"{kv.base}/bulk/delete", json=[f"k{i}" for i in range(10_001)])
    assert r.status_code == 400


def test_kv_namespaces_create_list_and_duplicate_title(client: httpx.Client, emu: Emulator) -> None:
    base = f"/client/v4/accounts/{emu.outputs.account_id}/storage/kv/namespaces"
    created = client.post(base, json={"title": "zz-unique-title"}).json()["result"]
    assert len(created["id"]) == 32 and created["title"] == "zz-unique-title"
    duplicate = client.post(base, json={"title": "zz-unique-title"})
    assert duplicate.status_code == 400
    assert client.post(base, json={}).status_code == 400
    titles: list[str] = []
    page = 1
    while True:
        body = client.get(base, params={"page": page, "per_page": 5}).json()
        if not body["result"]:
            break
        titles += [n["title"] for n in body["result"]]
        page += 1
    assert "zz-unique-title" in titles
    assert {emu.config.namespace_title(b) for b in emu.outputs.namespaces} <= set(titles)


def test_kv_stack_namespaces_have_the_plans_ids(client: httpx.Client, emu: Emulator) -> None:
    base = f"/client/v4/accounts/{emu.outputs.account_id}/storage/kv/namespaces"
    for binding, namespace_id in emu.outputs.namespaces.items():
        assert namespace_id == emu.config.offline_namespace_id(binding)
        assert client.get(f"{base}/{namespace_id}").json()["result"]["title"] == emu.config.namespace_title(binding)


def test_kv_operations_are_counted_by_kind(kv: KVNamespace, emu: Emulator) -> None:
    kv.put("a", b"1")
    kv.get("a")
    kv.get("missing")
    kv.client.get(f"{kv.base}/metadata/a")
    kv.client.get(f"{kv.base}/keys")
    kv.client.put(f"{kv.base}/bulk", json=[{"key": "b", "value": "2"}])
    kv.client.post(f"{kv.base}/bulk/get", json={"keys": ["a", "b"]})
    kv.client.post(f"{kv.base}/bulk/delete", json=["a"])
    kv.client.delete(kv.value_url("b"))
    stats = emu.control.stats()["kv"]
    assert stats == {
        "get": 2,
        "get_metadata": 1,
        "put": 1,
        "delete": 1,
        "list": 1,
        "bulk_get": 1,
        "bulk_write": 1,
        "bulk_delete": 1,
    }


def test_kv_unroutable_path_and_wrong_method(kv: KVNamespace) -> None:
    r = kv.client.get(f"{kv.base}/nothing-here")
    assert r.status_code == 404
    assert error_codes(r) == [7003]
    assert kv.client.post(kv.value_url("k"), content=b"x").status_code == 405
