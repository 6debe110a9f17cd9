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
    embedding_fingerprint,
    escape_part,
    gateway_cache_key,
    record_key,
    spam_key,
    user_prefix,
)

ids = st.text(min_size=1, max_size=400) | st.text(alphabet=":%h~", min_size=1, max_size=12)


def test_embed_key_hashes_the_full_text_like_the_existing_worker() -> None:
    text = "x" * 5000
    assert embed_key(text) == "embed:" + hashlib.sha256(text.encode()).hexdigest()
    assert embed_key(text) != embed_key(text[:2000])  # truncation for the model never reaches the key


def test_analysis_key_keeps_plain_ids_as_the_existing_worker_writes_them() -> None:
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


# -- operation keys: scope, version, user prefixes ----------------------------------------------------

versions = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True)
users = st.none() | ids
LONGEST_OP = "o" * 48


def test_record_key_keeps_the_unversioned_keys_of_the_built_in_operations() -> None:
    assert (
        record_key("job_analysis", "job-42", user_id="3f2c") == "analysis:3f2c:job-42" == analysis_key("3f2c", "job-42")
    )
    assert record_key("spam_detection", "job-42") == "spam:job-42" == spam_key("job-42")
    assert record_key("summarize_job", "job-42", user_id="u:1", version="2") == "summarize_job:u%3A1:%v2:job-42"
    assert record_key("summarize_job", "job-42", version="2") == "summarize_job:%v2:job-42"


@settings(max_examples=300, deadline=None)
@given(u1=users, v1=versions, k1=ids, u2=users, v2=versions, k2=ids)
def test_record_key_is_injective_over_user_version_and_key(
    u1: str | None, v1: str | None, k1: str, u2: str | None, v2: str | None, k2: str
) -> None:
    a = record_key(LONGEST_OP, k1, user_id=u1, version=v1)
    b = record_key(LONGEST_OP, k2, user_id=u2, version=v2)
    assert len(a.encode("utf-8")) <= KV_MAX_KEY_BYTES
    assert (a == b) == ((u1, v1, k1) == (u2, v2, k2))


@settings(max_examples=300, deadline=None)
@given(u1=ids, u2=users, v=versions, k=ids)
def test_user_prefix_lists_that_user_only(u1: str, u2: str | None, v: str | None, k: str) -> None:
    # Whatever the ids (':', '/', '%', unicode, escape and marker lookalikes), a user's prefix starts that
    # user's records, in every version, and no other user's record nor any global record.
    key = record_key("job_analysis", k, user_id=u2, version=v)
    assert key.startswith(user_prefix("job_analysis", u1)) == (u1 == u2)


@pytest.mark.parametrize(
    ("mine", "other"),
    [
        pytest.param("u", "u:1", id="prefix-of-the-raw-id"),
        pytest.param("u:1", "u%3A1", id="literal-escape"),
        pytest.param("u/1", "u/1/2", id="slash"),
        pytest.param("é", "%C3%A9", id="unicode-vs-its-escape"),
        pytest.param("%v2", "v2", id="version-marker-lookalike"),
    ],
)
def test_user_prefix_separates_hostile_lookalikes(mine: str, other: str) -> None:
    prefix = user_prefix("summarize_job", mine)
    assert record_key("summarize_job", "k", user_id=mine).startswith(prefix)
    assert not record_key("summarize_job", "k", user_id=other).startswith(prefix)
    assert not record_key("summarize_job", mine, version="2").startswith(prefix)  # a global record


def test_embedding_fingerprint_is_none_for_the_default_and_differs_for_each_parameter() -> None:
    default = {"dimensions": 768, "pooling": "mean", "max_input_chars": 2000, "version": None}
    assert embedding_fingerprint("@cf/baai/bge-base-en-v1.5", **default) is None
    assert embed_key("t", None) == embed_key("t")
    changed = [
        embedding_fingerprint("@cf/baai/bge-large-en-v1.5", **{**default, "dimensions": 1024}),
        embedding_fingerprint("@cf/baai/bge-base-en-v1.5", **{**default, "pooling": "cls"}),
        embedding_fingerprint("@cf/baai/bge-base-en-v1.5", **{**default, "max_input_chars": 512}),
        embedding_fingerprint("@cf/baai/bge-base-en-v1.5", **{**default, "version": "2"}),
        embedding_fingerprint("@cf/baai/bge-base-en-v1.5", **{**default, "dimensions": 384}),
    ]
    assert None not in changed and len(set(changed)) == len(changed)
    keys = {embed_key("t", fp) for fp in changed} | {embed_key("t")}
    assert len(keys) == len(changed) + 1


def test_gateway_cache_key_includes_the_version_only_when_set() -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    plain = gateway_cache_key("spam_detection", "workers-ai", "m", body)
    assert gateway_cache_key("spam_detection", "workers-ai", "m", body, version=None) == plain
    assert gateway_cache_key("spam_detection", "workers-ai", "m", body, version="2") != plain


def test_embed_key_remembers_hashes_within_its_character_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import dualcache._keys as keys

    monkeypatch.setattr(keys, "TEXT_HASH_MEMO_CHARS", 100)  # a small bound, to see the oldest leave
    monkeypatch.setattr(keys, "_text_hashes", {})
    monkeypatch.setattr(keys, "_text_hash_chars", 0)
    texts = [f"text {i:05d}" for i in range(30)]  # 10 characters each
    for text in texts:
        assert embed_key(text) == "embed:" + hashlib.sha256(text.encode()).hexdigest()
    assert list(keys._text_hashes) == texts[-10:] and keys._text_hash_chars == 100
    long = "y" * (keys._TEXT_HASH_MEMO_MAX_TEXT + 1)  # too long to remember: hashed every time
    assert embed_key(long, "f" * 16) == f"embed:%s{'f' * 16}:" + hashlib.sha256(long.encode()).hexdigest()
    assert long not in keys._text_hashes

    class Odd(str):
        def __eq__(self, other: object) -> bool:  # equal to everything: must never be served another's hash
            return True

        __hash__ = str.__hash__

    assert embed_key(Odd("other")) == "embed:" + hashlib.sha256(b"other").hexdigest()


@given(st.text(max_size=40))
def test_escape_part_leaves_exactly_the_safe_characters(value: str) -> None:
    from dualcache._keys import _SAFE

    if all(c in _SAFE for c in value) and len(value) <= MAX_PART_BYTES:
        assert escape_part(value) == value
    elif len(value) <= MAX_PART_BYTES // 12:  # short enough that even fully escaped it is not hashed
        assert escape_part(value) != value
