from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualcache import InvalidInputError
from dualcache._keys import (
    KV_MAX_KEY_BYTES,
    MAX_PART_BYTES,
    analysis_key,
    check_key,
    embed_key,
    escape_part,
    gateway_cache_key,
    spam_key,
)

ids = st.text(min_size=1, max_size=400) | st.text(alphabet=":%h~", min_size=1, max_size=12)


def test_embed_key_hashes_the_full_text_like_the_seed() -> None:
    text = "x" * 5000
    assert embed_key(text) == "embed:" + hashlib.sha256(text.encode()).hexdigest()
    assert embed_key(text) != embed_key(text[:2000])  # truncation for the model never reaches the key


def test_analysis_key_keeps_plain_ids_as_the_seed_writes_them() -> None:
    assert analysis_key("3f2c-uuid_1", "job-42") == "analysis:3f2c-uuid_1:job-42"
    assert spam_key("job-42") == "spam:job-42"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(("a:b", "c"), ("a", "b:c"), id="separator-moved"),
        pytest.param(("a%3Ab", "c"), ("a:b", "c"), id="escape-lookalike"),
        pytest.param(("é", "c"), ("%C3%A9", "c"), id="utf8-vs-literal-escape"),
        pytest.param(("%h" + "0" * 64, "j"), ("x" * 300, "j"), id="hash-marker-lookalike"),
    ],
)
def test_analysis_key_distinguishes_tricky_pairs(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert analysis_key(*a) != analysis_key(*b)


@settings(max_examples=200, deadline=None)
@given(u1=ids, j1=ids, u2=ids, j2=ids)
def test_analysis_key_is_injective_and_bounded(u1: str, j1: str, u2: str, j2: str) -> None:
    k1, k2 = analysis_key(u1, j1), analysis_key(u2, j2)
    assert len(k1.encode("utf-8")) <= KV_MAX_KEY_BYTES
    assert len(k2.encode("utf-8")) <= KV_MAX_KEY_BYTES
    assert (k1 == k2) == ((u1, j1) == (u2, j2))


@settings(max_examples=200, deadline=None)
@given(a=ids, b=ids)
def test_spam_key_is_injective_and_bounded(a: str, b: str) -> None:
    assert len(spam_key(a).encode("utf-8")) <= KV_MAX_KEY_BYTES
    assert (spam_key(a) == spam_key(b)) == (a == b)


def test_escape_part_hashes_long_ids_deterministically() -> None:
    long_id = "u" * (MAX_PART_BYTES + 1)
    assert escape_part(long_id) == "%h" + hashlib.sha256(long_id.encode()).hexdigest()
    assert escape_part(long_id) == escape_part(long_id)
    assert escape_part("u" * MAX_PART_BYTES) == "u" * MAX_PART_BYTES
    assert ":" not in escape_part("a:b:c")


@pytest.mark.parametrize(
    ("user", "job", "message"),
    [
        pytest.param("", "j", "user_id is empty", id="empty-user"),
        pytest.param("u", "", "job_id is empty", id="empty-job"),
        pytest.param(7, "j", "user_id must be a non-empty string, got int", id="not-a-string"),
    ],
)
def test_analysis_key_rejects_bad_ids(user: object, job: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        analysis_key(user, job)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        pytest.param("", "cannot be empty", id="empty"),
        pytest.param(".", "cannot be empty, '.' or '..'", id="dot"),
        pytest.param("..", "'..'", id="dotdot"),
        pytest.param("k" * 513, "513 bytes.*at most 512", id="513-bytes"),
        pytest.param("é" * 257, "514 bytes", id="multibyte-over"),
        pytest.param(b"bytes", "must be a string", id="bytes"),
    ],
)
def test_check_key_rejects_what_kv_rejects(key: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_key(key)


def test_check_key_accepts_512_bytes() -> None:
    assert check_key("k" * 512) == "k" * 512


def test_gateway_cache_key_ignores_json_key_order() -> None:
    a = gateway_cache_key("embeddings", "workers-ai", "m", {"text": "t", "x": {"b": 1, "a": 2}})
    b = gateway_cache_key("embeddings", "workers-ai", "m", {"x": {"a": 2, "b": 1}, "text": "t"})
    assert a == b
    assert a != gateway_cache_key("embeddings", "workers-ai", "other-model", {"text": "t", "x": {"b": 1, "a": 2}})
    assert a.startswith("dualcache:embeddings:")


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
@settings(max_examples=200, deadline=None)
def test_gateway_cache_key_separates_users_and_unscoped_calls(u1: str, u2: str) -> None:
    body = {"messages": [{"role": "user", "content": "same job, same resume"}]}
    k1 = gateway_cache_key("job_analysis", "workers-ai", "m", body, user_id=u1)
    k2 = gateway_cache_key("job_analysis", "workers-ai", "m", body, user_id=u2)
    assert (k1 == k2) == (u1 == u2)
    assert k1 != gateway_cache_key("job_analysis", "workers-ai", "m", body)
    assert len(k1.encode()) <= KV_MAX_KEY_BYTES
