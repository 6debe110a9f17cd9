from __future__ import annotations

import json

import pytest

from dualcache import GatewayMode, Namespace, OperationPolicy, Policies
from dualcache._records import (
    RecordStatus,
    build_embedding_record,
    encode_json_record,
    judge_embedding_record,
    judge_json_record,
    should_coalesce,
    should_read_kv,
    should_write_kv,
)

MODEL = "@cf/baai/bge-base-en-v1.5"


def test_build_embedding_record_has_the_seed_fields() -> None:
    record = build_embedding_record("t" * 300, [0.5, -1.0], MODEL, now=1_700_000_000.25)
    assert record == {
        "text": "t" * 200,
        "embedding": [0.5, -1.0],
        "model": MODEL,
        "createdAt": "2023-11-14T22:13:20.250Z",
    }


def test_judge_embedding_record_accepts_a_seed_record() -> None:
    raw = encode_json_record(build_embedding_record("hello", [0.25, 1, -2.5], MODEL, now=0))
    assert judge_embedding_record(raw, MODEL) == (RecordStatus.HIT, [0.25, 1.0, -2.5])


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(None, RecordStatus.MISSING, id="missing"),
        pytest.param(b"{not json", RecordStatus.CORRUPT, id="not-json"),
        pytest.param(b"\xff\xfe", RecordStatus.CORRUPT, id="not-utf8"),
        pytest.param(b"[1, 2]", RecordStatus.CORRUPT, id="not-an-object"),
        pytest.param(json.dumps({"embedding": [1.0], "model": "@cf/other"}), RecordStatus.WRONG_MODEL, id="other"),
        pytest.param(json.dumps({"embedding": [1.0]}), RecordStatus.CORRUPT, id="no-model"),
        pytest.param(json.dumps({"embedding": [], "model": MODEL}), RecordStatus.CORRUPT, id="empty-vector"),
        pytest.param(json.dumps({"embedding": ["1"], "model": MODEL}), RecordStatus.CORRUPT, id="string-item"),
        pytest.param(json.dumps({"embedding": [True], "model": MODEL}), RecordStatus.CORRUPT, id="bool-item"),
        pytest.param('{"embedding": [NaN], "model": "' + MODEL + '"}', RecordStatus.CORRUPT, id="nan"),
        pytest.param(json.dumps({"embedding": {"0": 1.0}, "model": MODEL}), RecordStatus.CORRUPT, id="dict-vector"),
        pytest.param(json.dumps({"vector": [1.0], "model": MODEL}), RecordStatus.CORRUPT, id="old-shape"),
    ],
)
def test_judge_embedding_record_rejects_unusable_values(raw: bytes | str | None, status: RecordStatus) -> None:
    assert judge_embedding_record(raw, MODEL) == (status, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, (RecordStatus.MISSING, None), id="missing"),
        pytest.param(b'{"score": 80}', (RecordStatus.HIT, {"score": 80}), id="object"),
        pytest.param(b'"text"', (RecordStatus.CORRUPT, None), id="string"),
        pytest.param(b"{", (RecordStatus.CORRUPT, None), id="broken"),
    ],
)
def test_judge_json_record(raw: bytes | None, expected: tuple[RecordStatus, object]) -> None:
    assert judge_json_record(raw) == expected


KV_ON = Policies().embeddings
KV_OFF = Policies().application_generation


@pytest.mark.parametrize(
    ("policy", "read", "expected"),
    [
        pytest.param(KV_ON, RecordStatus.MISSING, True, id="miss-written"),
        pytest.param(KV_ON, RecordStatus.WRONG_MODEL, True, id="wrong-model-overwritten"),
        pytest.param(KV_ON, RecordStatus.CORRUPT, True, id="corrupt-overwritten"),
        pytest.param(KV_ON, RecordStatus.HIT, False, id="hit-not-rewritten"),
        pytest.param(KV_ON, None, False, id="read-failed-no-write"),
        pytest.param(KV_OFF, RecordStatus.MISSING, False, id="kv-off"),
    ],
)
def test_should_write_kv(policy: OperationPolicy, read: RecordStatus | None, expected: bool) -> None:
    assert should_write_kv(policy, read) is expected


def test_should_read_kv_follows_the_policy() -> None:
    p = Policies()
    assert [should_read_kv(x) for x in (p.embeddings, p.job_analysis, p.spam_detection)] == [True, True, True]
    assert [should_read_kv(x) for x in (p.application_generation, p.resume_parsing)] == [False, False]


def test_should_coalesce_only_cached_operations() -> None:
    p = Policies()
    assert should_coalesce(p.embeddings) and should_coalesce(p.job_analysis) and should_coalesce(p.spam_detection)
    assert not should_coalesce(p.application_generation)
    assert not should_coalesce(p.resume_parsing)
    gw_only = OperationPolicy(kv=False, gateway=GatewayMode.CACHE, gateway_ttl=60)
    assert should_coalesce(gw_only)
    kv_only = OperationPolicy(kv=True, kv_ttl=60, kv_namespace=Namespace.API_CACHE, gateway=GatewayMode.SKIP)
    assert should_coalesce(kv_only)
