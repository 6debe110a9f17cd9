"""Every operation of the data-plane API, over HTTP, with the shapes of DATAPLANE.md."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.contract.helpers import limit_error, metadata_path, ok_result, value_path

FAR_FUTURE = 2_000_000_000  # 2033: beyond any test clock, inside the binding's 32-bit range


def test_get_returns_the_raw_bytes_and_no_metadata_header_without_metadata(client: httpx.Client, prefix: str) -> None:
    value = bytes(range(256)) * 3
    assert ok_result(client.put(value_path("EMBEDDINGS_CACHE", prefix + "raw"), content=value)) == {}
    response = client.get(value_path("EMBEDDINGS_CACHE", prefix + "raw"))
    assert response.status_code == 200
    assert response.content == value
    assert response.headers["content-type"] == "application/octet-stream"
    assert "cf-kv-metadata" not in response.headers and "expiration" not in response.headers


def test_get_of_a_missing_key_is_404_with_code_10009(client: httpx.Client, prefix: str) -> None:
    error = limit_error(client.get(value_path("SESSIONS", prefix + "absent")), status=404)
    assert error["code"] == 10009


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a/b/c", id="slashes"),
        pytest.param("sp ace?&=#%", id="reserved-characters"),
        pytest.param("clé-ключ-鍵-🙂", id="non-ascii"),
    ],
)
def test_put_and_get_keep_a_key_with_special_characters(client: httpx.Client, prefix: str, key: str) -> None:
    ok_result(client.put(value_path("SESSIONS", prefix + key), content=b"v"))
    assert client.get(value_path("SESSIONS", prefix + key)).content == b"v"
    names = [k["name"] for k in ok_result(client.get("/kv/SESSIONS/keys", params={"prefix": prefix}))]
    assert names == [prefix + key]


def test_put_multipart_keeps_metadata_and_the_header_carries_non_ascii_as_ascii_json(
    client: httpx.Client, prefix: str
) -> None:
    metadata = {"model": "bge", "note": "héllo ✓ 鍵", "n": 3, "nested": {"ok": True}}
    files: dict[str, tuple[None, bytes | str]] = {
        "value": (None, b"\x00\x01payload"),
        "metadata": (None, json.dumps(metadata)),
    }
    ok_result(client.put(value_path("API_CACHE", prefix + "m"), files=files))
    response = client.get(value_path("API_CACHE", prefix + "m"))
    assert response.content == b"\x00\x01payload"
    header = response.headers["cf-kv-metadata"]
    assert header.isascii() and json.loads(header) == metadata
    assert ok_result(client.get(metadata_path("API_CACHE", prefix + "m"))) == metadata


def test_metadata_of_a_key_without_metadata_is_null_and_of_a_missing_key_404(client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path("API_CACHE", prefix + "plain"), content=b"v"))
    assert ok_result(client.get(metadata_path("API_CACHE", prefix + "plain"))) is None
    assert limit_error(client.get(metadata_path("API_CACHE", prefix + "absent")), status=404)["code"] == 10009


def test_put_overwrites_value_and_metadata(client: httpx.Client, prefix: str) -> None:
    path = value_path("SESSIONS", prefix + "k")
    ok_result(client.put(path, files={"value": (None, b"one"), "metadata": (None, '{"v": 1}')}))
    ok_result(client.put(path, content=b"two"))
    response = client.get(path)
    assert response.content == b"two" and "cf-kv-metadata" not in response.headers


def test_expiration_header_reports_an_absolute_expiration_and_a_ttl(client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path("SESSIONS", prefix + "abs"), params={"expiration": FAR_FUTURE}, content=b"a"))
    response = client.get(value_path("SESSIONS", prefix + "abs"), params={"expiration": "true"})
    assert response.content == b"a" and response.headers["expiration"] == str(FAR_FUTURE)
    assert "expiration" not in client.get(value_path("SESSIONS", prefix + "abs")).headers

    ok_result(client.put(value_path("SESSIONS", prefix + "t1"), params={"expiration_ttl": 600}, content=b"1"))
    ok_result(client.put(value_path("SESSIONS", prefix + "t2"), params={"expiration_ttl": 4200}, content=b"2"))
    first = int(client.get(value_path("SESSIONS", prefix + "t1"), params={"expiration": "true"}).headers["expiration"])
    second = int(client.get(value_path("SESSIONS", prefix + "t2"), params={"expiration": "true"}).headers["expiration"])
    assert 3600 - 2 <= second - first <= 3600 + 2

    listed = {k["name"]: k for k in ok_result(client.get("/kv/SESSIONS/keys", params={"prefix": prefix}))}
    assert listed[prefix + "abs"]["expiration"] == FAR_FUTURE and listed[prefix + "t1"]["expiration"] == first


def test_expiration_ttl_wins_over_expiration_when_both_are_given(client: httpx.Client, prefix: str) -> None:
    path = value_path("SESSIONS", prefix + "both")
    ok_result(client.put(path, params={"expiration": FAR_FUTURE, "expiration_ttl": 600}, content=b"v"))
    assert int(client.get(path, params={"expiration": "true"}).headers["expiration"]) < FAR_FUTURE - 86_400


def test_a_key_without_expiration_has_no_expiration_header(client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path("SESSIONS", prefix + "k"), content=b"v"))
    # A longer key with the same prefix expires; the header must be the key's own.
    ok_result(client.put(value_path("SESSIONS", prefix + "k2"), params={"expiration_ttl": 600}, content=b"v"))
    assert "expiration" not in client.get(value_path("SESSIONS", prefix + "k"), params={"expiration": "true"}).headers


def test_delete_removes_a_key_and_deleting_a_missing_key_is_not_an_error(client: httpx.Client, prefix: str) -> None:
    path = value_path("OAUTH_STATES", prefix + "k")
    ok_result(client.put(path, content=b"v"))
    ok_result(client.delete(path))
    assert client.get(path).status_code == 404
    ok_result(client.delete(path))


def test_bulk_get_returns_text_values_and_null_for_missing_keys(client: httpx.Client, prefix: str) -> None:
    for i in range(3):
        ok_result(client.put(value_path("EMBEDDINGS_CACHE", f"{prefix}{i}"), content=f"value {i} é".encode()))
    keys = [f"{prefix}{i}" for i in range(4)]
    result = ok_result(client.post("/kv/EMBEDDINGS_CACHE/bulk/get", json={"keys": keys}))
    assert result == {"values": {f"{prefix}{i}": f"value {i} é" for i in range(3)} | {f"{prefix}3": None}}


def test_bulk_get_with_metadata_and_json_type(client: httpx.Client, prefix: str) -> None:
    files: dict[str, tuple[None, bytes | str]] = {
        "value": (None, b'{"vector": [0.5, 1]}'),
        "metadata": (None, '{"dims": 2}'),
    }
    ok_result(client.put(value_path("EMBEDDINGS_CACHE", prefix + "j"), files=files))
    ok_result(client.put(value_path("EMBEDDINGS_CACHE", prefix + "n"), content=b'"plain"'))
    body = {"keys": [prefix + "j", prefix + "n", prefix + "x"], "type": "json", "withMetadata": True}
    values = ok_result(client.post("/kv/EMBEDDINGS_CACHE/bulk/get", json=body))["values"]
    assert values == {
        prefix + "j": {"value": {"vector": [0.5, 1]}, "metadata": {"dims": 2}},
        prefix + "n": {"value": "plain", "metadata": None},
        prefix + "x": None,
    }


def test_bulk_get_of_no_keys_is_an_empty_result(client: httpx.Client) -> None:
    assert ok_result(client.post("/kv/EMBEDDINGS_CACHE/bulk/get", json={"keys": []})) == {"values": {}}


def test_bulk_get_rejects_an_unknown_type(client: httpx.Client, prefix: str) -> None:
    error = limit_error(client.post("/kv/EMBEDDINGS_CACHE/bulk/get", json={"keys": [prefix], "type": "arrayBuffer"}))
    assert error["field"] == "type"


def test_bulk_put_writes_text_base64_metadata_and_ttl(client: httpx.Client, prefix: str) -> None:
    items = [
        {"key": prefix + "text", "value": "héllo"},
        {"key": prefix + "b64", "value": base64.b64encode(b"\x00\xffbin").decode(), "base64": True},
        {"key": prefix + "meta", "value": "m", "metadata": {"tag": "ü"}, "expiration_ttl": 600},
        {"key": prefix + "abs", "value": "a", "expiration": FAR_FUTURE},
    ]
    result = ok_result(client.put("/kv/JOB_ANALYSIS_CACHE/bulk", json=items))
    assert result == {"successful_key_count": 4, "unsuccessful_keys": []}
    assert client.get(value_path("JOB_ANALYSIS_CACHE", prefix + "text")).content == "héllo".encode()
    assert client.get(value_path("JOB_ANALYSIS_CACHE", prefix + "b64")).content == b"\x00\xffbin"
    meta = client.get(value_path("JOB_ANALYSIS_CACHE", prefix + "meta"), params={"expiration": "true"})
    assert json.loads(meta.headers["cf-kv-metadata"]) == {"tag": "ü"} and "expiration" in meta.headers
    abs_ = client.get(value_path("JOB_ANALYSIS_CACHE", prefix + "abs"), params={"expiration": "true"})
    assert abs_.headers["expiration"] == str(FAR_FUTURE)


def test_bulk_put_rejects_a_bad_item_before_writing_any(client: httpx.Client, prefix: str) -> None:
    items = [{"key": prefix + "good", "value": "v"}, {"key": prefix + "bad", "value": 5}]
    error = limit_error(client.put("/kv/JOB_ANALYSIS_CACHE/bulk", json=items))
    assert (error["field"], error["index"]) == ("value", 1)
    assert client.get(value_path("JOB_ANALYSIS_CACHE", prefix + "good")).status_code == 404


def test_bulk_delete_removes_keys_and_counts_them(client: httpx.Client, prefix: str) -> None:
    keys = [f"{prefix}{i}" for i in range(5)]
    ok_result(client.put("/kv/OAUTH_STATES/bulk", json=[{"key": k, "value": "v"} for k in keys]))
    result = ok_result(client.post("/kv/OAUTH_STATES/bulk/delete", json=[*keys[:3], prefix + "never-written"]))
    assert result == {"successful_key_count": 4, "unsuccessful_keys": []}
    names = [k["name"] for k in ok_result(client.get("/kv/OAUTH_STATES/keys", params={"prefix": prefix}))]
    assert names == keys[3:]


def test_list_pages_with_a_cursor_in_key_order(client: httpx.Client, prefix: str) -> None:
    keys = sorted(f"{prefix}{i:03d}" for i in range(25))
    ok_result(client.put("/kv/API_CACHE/bulk", json=[{"key": k, "value": "v", "metadata": {"i": k}} for k in keys]))
    ok_result(client.put(value_path("API_CACHE", "other-" + prefix), content=b"v"))
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        params: dict[str, str | int] = {"prefix": prefix, "limit": 10}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/kv/API_CACHE/keys", params=params).json()
        assert body["success"] is True
        page = body["result"]
        assert body["result_info"]["count"] == len(page) and len(page) <= 10
        assert all(item["metadata"] == {"i": item["name"]} for item in page)
        seen += [item["name"] for item in page]
        pages += 1
        cursor = body["result_info"]["cursor"]
        if not cursor:
            break
        assert pages < 10, "the listing never ended"
    assert seen == keys and pages == 3


def test_list_without_prefix_or_limit_lists_up_to_1000(client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path("API_CACHE", prefix + "k"), content=b"v"))
    body = client.get("/kv/API_CACHE/keys").json()
    assert prefix + "k" in [item["name"] for item in body["result"]]
    assert len(body["result"]) <= 1000 and body["result_info"]["count"] == len(body["result"])


@pytest.mark.parametrize(
    ("method", "path", "binding"),
    [
        pytest.param("GET", "/kv/NOPE/values/k", "NOPE", id="get"),
        pytest.param("GET", "/kv/sessions/keys", "sessions", id="list-lowercase"),
        pytest.param("PUT", "/kv/NOPE/bulk", "NOPE", id="bulk-put"),
    ],
)
def test_an_unknown_binding_is_404_with_code_10013(client: httpx.Client, method: str, path: str, binding: str) -> None:
    error = limit_error(client.request(method, path, content=b"[]"), status=404)
    assert error["code"] == 10013 and binding in error["message"]


def test_an_unknown_route_is_404_and_a_wrong_method_405(client: httpx.Client) -> None:
    assert client.get("/kv/SESSIONS/nothing-here").status_code == 404
    response = client.post("/kv/SESSIONS/keys")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
