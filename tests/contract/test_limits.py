"""Every limit of DATAPLANE.md at its edge: the last valid value passes, the first invalid one is refused
before KV is touched, with a 400 (413 for a body) that names the field and the limit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.contract.helpers import MIB, limit_error, ok_result, value_path

VALUE_LIMIT = 25 * MIB
SINGLE_BODY_LIMIT = 25 * MIB + 1024
BULK_BODY_LIMIT = 32 * MIB


def key_of(prefix: str, size: int) -> str:
    """A key of exactly ``size`` UTF-8 bytes: the prefix, two-byte characters, and one ASCII pad if odd."""
    rest = size - len(prefix.encode())
    return prefix + "é" * (rest // 2) + "a" * (rest % 2)


def metadata_of(size: int) -> str:
    """Metadata JSON text of exactly ``size`` bytes serialized compactly."""
    text = json.dumps({"a": "x" * (size - len('{"a":""}'))}, separators=(",", ":"))
    assert len(text.encode()) == size
    return text


def assert_names(error: dict[str, object], field: str, limit: int) -> None:
    assert (error["field"], error["limit"]) == (field, limit), error
    assert field in str(error["message"]) and str(limit) in str(error["message"]), error


# --- key -------------------------------------------------------------------------------------------------


def test_key_of_512_bytes_is_accepted_and_513_refused(client: httpx.Client, prefix: str) -> None:
    longest, too_long = key_of(prefix, 512), key_of(prefix, 513)
    assert len(longest.encode()) == 512 and len(too_long.encode()) == 513
    ok_result(client.put(value_path("SESSIONS", longest), content=b"v"))
    assert client.get(value_path("SESSIONS", longest)).content == b"v"
    for response in (
        client.put(value_path("SESSIONS", too_long), content=b"v"),
        client.get(value_path("SESSIONS", too_long)),
        client.delete(value_path("SESSIONS", too_long)),
        client.post("/kv/SESSIONS/bulk/get", json={"keys": [longest, too_long]}),
        client.put("/kv/SESSIONS/bulk", json=[{"key": too_long, "value": "v"}]),
        client.post("/kv/SESSIONS/bulk/delete", json=[too_long]),
    ):
        assert_names(limit_error(response), "key", 512)
    names = [k["name"] for k in ok_result(client.get("/kv/SESSIONS/keys", params={"prefix": prefix}))]
    assert names == [longest]


@pytest.mark.parametrize("key", [pytest.param("", id="empty"), ".", "..", pytest.param(7, id="not-a-string")])
def test_an_empty_dot_or_non_string_key_is_refused(client: httpx.Client, key: object) -> None:
    error = limit_error(client.put("/kv/SESSIONS/bulk", json=[{"key": key, "value": "v"}]))
    assert (error["field"], error["index"]) == ("key", 0)


# --- metadata --------------------------------------------------------------------------------------------


def test_metadata_of_1024_bytes_is_accepted_and_1025_refused(client: httpx.Client, prefix: str) -> None:
    path = value_path("API_CACHE", prefix + "m")
    ok_result(client.put(path, files={"value": (None, b"v"), "metadata": (None, metadata_of(1024))}))
    assert json.loads(client.get(path).headers["cf-kv-metadata"]) == json.loads(metadata_of(1024))
    error = limit_error(client.put(path + "2", files={"value": (None, b"v"), "metadata": (None, metadata_of(1025))}))
    assert_names(error, "metadata", 1024)

    items = [{"key": prefix + "b", "value": "v", "metadata": json.loads(metadata_of(1024))}]
    assert ok_result(client.put("/kv/API_CACHE/bulk", json=items))["successful_key_count"] == 1
    items = [{"key": prefix + "c", "value": "v", "metadata": json.loads(metadata_of(1025))}]
    assert_names(limit_error(client.put("/kv/API_CACHE/bulk", json=items)), "metadata", 1024)
    assert client.get(value_path("API_CACHE", prefix + "c")).status_code == 404


def test_metadata_that_is_not_json_is_refused(client: httpx.Client, prefix: str) -> None:
    error = limit_error(
        client.put(value_path("API_CACHE", prefix + "m"), files={"value": (None, b"v"), "metadata": (None, "{")})
    )
    assert error["field"] == "metadata"


# --- value and body --------------------------------------------------------------------------------------


def test_value_of_exactly_25_mib_is_accepted_and_one_byte_more_refused(client: httpx.Client, prefix: str) -> None:
    value = bytes(range(256)) * (VALUE_LIMIT // 256)
    ok_result(client.put(value_path("API_CACHE", prefix + "big"), content=value))
    assert client.get(value_path("API_CACHE", prefix + "big")).content == value
    error = limit_error(client.put(value_path("API_CACHE", prefix + "bigger"), content=value + b"x"))
    assert_names(error, "value", VALUE_LIMIT)
    assert client.get(value_path("API_CACHE", prefix + "bigger")).status_code == 404


def test_a_multipart_value_over_25_mib_is_refused(client: httpx.Client, prefix: str) -> None:
    files: dict[str, tuple[None, bytes | str]] = {"value": (None, b"x" * (VALUE_LIMIT + 1)), "metadata": (None, "{}")}
    assert_names(limit_error(client.put(value_path("API_CACHE", prefix + "mp"), files=files)), "value", VALUE_LIMIT)


def _chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


@pytest.mark.parametrize("declared", [pytest.param(True, id="content-length"), pytest.param(False, id="chunked")])
def test_a_single_put_body_over_its_bound_is_413(client: httpx.Client, prefix: str, declared: bool) -> None:
    size = SINGLE_BODY_LIMIT + 1
    body: bytes | Iterator[bytes] = b"x" * size if declared else _chunks(size)
    response = client.put(value_path("API_CACHE", prefix + "huge"), content=body)
    assert_names(limit_error(response, status=413), "body", SINGLE_BODY_LIMIT)
    assert client.get(value_path("API_CACHE", prefix + "huge")).status_code == 404


@pytest.mark.parametrize("declared", [pytest.param(True, id="content-length"), pytest.param(False, id="chunked")])
def test_a_bulk_body_over_32_mib_is_413(client: httpx.Client, declared: bool) -> None:
    size = BULK_BODY_LIMIT + 1
    body: bytes | Iterator[bytes] = b" " * size if declared else _chunks(size)
    assert_names(limit_error(client.put("/kv/API_CACHE/bulk", content=body), status=413), "body", BULK_BODY_LIMIT)


def test_a_bulk_value_over_25_mib_is_refused(client: httpx.Client, prefix: str) -> None:
    items = [{"key": prefix + "v", "value": "x" * (VALUE_LIMIT + 1)}]
    error = limit_error(client.put("/kv/API_CACHE/bulk", json=items))
    assert_names(error, "value", VALUE_LIMIT)


def test_a_body_that_is_not_json_is_refused(client: httpx.Client) -> None:
    assert limit_error(client.put("/kv/API_CACHE/bulk", content=b"[{"))["field"] == "body"
    assert limit_error(client.post("/kv/API_CACHE/bulk/get", json=["k"]))["field"] == "keys"


# --- expiration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["59", "0", "-60", "60.5", "abc", "2147483648"])
def test_expiration_ttl_below_60_or_not_an_int32_is_refused(client: httpx.Client, prefix: str, ttl: str) -> None:
    error = limit_error(client.put(value_path("SESSIONS", prefix + "k"), params={"expiration_ttl": ttl}, content=b"v"))
    assert (error["field"], error["limit"]) == ("expiration_ttl", 60)
    assert client.get(value_path("SESSIONS", prefix + "k")).status_code == 404


def test_expiration_ttl_of_60_is_accepted_in_single_and_bulk_puts(client: httpx.Client, prefix: str) -> None:
    ok_result(client.put(value_path("SESSIONS", prefix + "a"), params={"expiration_ttl": 60}, content=b"v"))
    bulk = [{"key": prefix + "b", "value": "v", "expiration_ttl": 60}]
    assert ok_result(client.put("/kv/SESSIONS/bulk", json=bulk))["successful_key_count"] == 1
    bulk = [{"key": prefix + "c", "value": "v", "expiration_ttl": 59}]
    assert_names(limit_error(client.put("/kv/SESSIONS/bulk", json=bulk)), "expiration_ttl", 60)
    assert client.get(value_path("SESSIONS", prefix + "c")).status_code == 404


@pytest.mark.parametrize("expiration", ["1", "1700000000", "soon", "2147483648"])
def test_an_expiration_in_the_past_or_too_soon_is_refused(client: httpx.Client, prefix: str, expiration: str) -> None:
    response = client.put(value_path("SESSIONS", prefix + "k"), params={"expiration": expiration}, content=b"v")
    assert limit_error(response)["field"] == "expiration"


# --- batches ---------------------------------------------------------------------------------------------


def test_bulk_get_takes_100_keys_and_refuses_101(client: httpx.Client, prefix: str) -> None:
    keys = [f"{prefix}{i:03d}" for i in range(101)]
    ok_result(client.put("/kv/EMBEDDINGS_CACHE/bulk", json=[{"key": k, "value": k} for k in keys[:100]]))
    values = ok_result(client.post("/kv/EMBEDDINGS_CACHE/bulk/get", json={"keys": keys[:100]}))["values"]
    assert values == {k: k for k in keys[:100]}
    assert_names(limit_error(client.post("/kv/EMBEDDINGS_CACHE/bulk/get", json={"keys": keys})), "keys", 100)


def test_bulk_put_takes_100_items_and_refuses_101(client: httpx.Client, prefix: str) -> None:
    items = [{"key": f"{prefix}{i:03d}", "value": str(i)} for i in range(101)]
    assert_names(limit_error(client.put("/kv/OAUTH_STATES/bulk", json=items)), "keys", 100)
    assert ok_result(client.get("/kv/OAUTH_STATES/keys", params={"prefix": prefix})) == []
    result = ok_result(client.put("/kv/OAUTH_STATES/bulk", json=items[:100]))
    assert result == {"successful_key_count": 100, "unsuccessful_keys": []}
    listed = ok_result(client.get("/kv/OAUTH_STATES/keys", params={"prefix": prefix}))
    assert [k["name"] for k in listed] == [item["key"] for item in items[:100]]


def test_bulk_delete_takes_100_keys_and_refuses_101(client: httpx.Client, prefix: str) -> None:
    keys = [f"{prefix}{i:03d}" for i in range(101)]
    ok_result(client.put("/kv/OAUTH_STATES/bulk", json=[{"key": k, "value": "v"} for k in keys[:100]]))
    assert_names(limit_error(client.post("/kv/OAUTH_STATES/bulk/delete", json=keys)), "keys", 100)
    assert len(ok_result(client.get("/kv/OAUTH_STATES/keys", params={"prefix": prefix}))) == 100
    assert ok_result(client.post("/kv/OAUTH_STATES/bulk/delete", json=keys[:100]))["successful_key_count"] == 100
    assert ok_result(client.get("/kv/OAUTH_STATES/keys", params={"prefix": prefix})) == []


# --- list ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "accepted"),
    [
        pytest.param("9", False, id="9"),
        pytest.param("10", True, id="10"),
        pytest.param("1000", True, id="1000"),
        pytest.param("1001", False, id="1001"),
        pytest.param("ten", False, id="not-a-number"),
    ],
)
def test_list_limit_is_10_to_1000(client: httpx.Client, prefix: str, limit: str, accepted: bool) -> None:
    ok_result(client.put("/kv/API_CACHE/bulk", json=[{"key": f"{prefix}{i:02d}", "value": "v"} for i in range(12)]))
    response = client.get("/kv/API_CACHE/keys", params={"prefix": prefix, "limit": limit})
    if accepted:
        assert len(ok_result(response)) == min(int(limit), 12)
    else:
        error = limit_error(response)
        assert error["field"] == "limit" and error["limit"] == 1000 and "10..1000" in error["message"]
