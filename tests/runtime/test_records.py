from __future__ import annotations

import base64
import json
import math
import shutil
import struct
import subprocess
from array import array
from typing import Any

import httpx
import pytest
from runtime_support import FakeCloud, fake_outputs

import dualcache._records
from dualcache import (
    BadResponseError,
    ConfigError,
    DualCache,
    GatewayMode,
    MemoryKVBackend,
    Namespace,
    OperationPolicy,
    Policies,
)
from dualcache._keys import embed_key
from dualcache._records import (
    MODEL_DIMENSIONS,
    RECORD_MAX_BYTES,
    RECORD_MAX_DEPTH,
    RecordStatus,
    VectorDtype,
    build_embedding_record,
    build_seed_embedding_record,
    decode_vector,
    encode_json_record,
    encode_vector,
    expected_dimensions,
    judge_embedding_record,
    judge_json_record,
    should_coalesce,
    should_read_kv,
    should_write_kv,
    to_float32,
)

MODEL = "@cf/baai/bge-base-en-v1.5"
# Values that float64 holds but float32 rounds (0.1, 1/3), and values exact in both (0.5, -2.5).
VECTOR = [((i * 37) % 101 - 50) / 30 + (0.1 if i % 3 else 0.5) for i in range(768)]


def _record(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "v": 2,
        "model": MODEL,
        "dims": 768,
        "dtype": "f32",
        "embedding_b64": encode_vector(VECTOR),
        "text": "t",
        "createdAt": "2027-01-15T08:00:00.000Z",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


# -- the compact format -------------------------------------------------------------------------------


def test_build_embedding_record_is_compact_with_the_version_1_fields() -> None:
    record = build_embedding_record("t" * 300, [0.5, -1.0], "@cf/x/unknown", now=1_700_000_000.25)
    assert record == {
        "v": 2,
        "model": "@cf/x/unknown",
        "dims": 2,
        "dtype": "f32",
        "embedding_b64": base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode(),
        "text": "t" * 200,
        "createdAt": "2023-11-14T22:13:20.250Z",
    }


def test_build_seed_embedding_record_has_the_version_1_fields() -> None:
    record = build_seed_embedding_record("t" * 300, [0.5, -1.0], MODEL, now=1_700_000_000.25)
    assert record == {
        "text": "t" * 200,
        "embedding": [0.5, -1.0],
        "model": MODEL,
        "createdAt": "2023-11-14T22:13:20.250Z",
    }


def test_compact_record_decodes_with_struct_independently() -> None:
    # What the JS snippet of RECORDS.md does: base64 -> bytes -> little-endian float32, dims of them.
    record = json.loads(encode_json_record(build_embedding_record("hello", VECTOR, MODEL, now=0)))
    packed = base64.b64decode(record["embedding_b64"], validate=True)
    assert len(packed) == record["dims"] * 4 == 3072
    decoded = list(struct.unpack("<768f", packed))
    assert decoded == array("f", VECTOR).tolist()
    assert decoded == pytest.approx(VECTOR, rel=1e-7)
    assert judge_embedding_record(encode_json_record(record), MODEL) == (RecordStatus.HIT, decoded)


def test_compact_record_of_768_dims_is_within_one_and_a_half_raw_float32() -> None:
    raw = encode_json_record(build_embedding_record("x" * 2000, VECTOR, MODEL, now=0))
    old = encode_json_record(build_seed_embedding_record("x" * 2000, VECTOR, MODEL, now=0))
    assert len(raw) <= 1.5 * 768 * 4
    assert len(old) > 2.5 * len(raw)


def test_judge_embedding_record_reads_old_and_new_records_equal() -> None:
    old = encode_json_record(build_seed_embedding_record("hello", VECTOR, MODEL, now=0))
    new = encode_json_record(build_embedding_record("hello", VECTOR, MODEL, now=0))
    old_status, old_vector = judge_embedding_record(old, MODEL)
    new_status, new_vector = judge_embedding_record(new, MODEL)
    assert old_status is new_status is RecordStatus.HIT
    assert old_vector == new_vector  # both rounded to float32
    assert old_vector == pytest.approx(VECTOR, rel=6e-8)  # within float32 precision of the float64 input
    assert old_vector != VECTOR  # 0.1 is not a float32: the round trip is to float32, as documented


def test_to_float32_is_idempotent_and_matches_a_stored_record() -> None:
    once = to_float32(VECTOR)
    assert to_float32(once) == once
    raw = encode_json_record(build_embedding_record("t", VECTOR, MODEL, now=0))
    assert judge_embedding_record(raw, MODEL)[1] == once


@pytest.mark.parametrize(
    "vector",
    [
        pytest.param([], id="empty"),
        pytest.param([1.0, math.nan], id="nan"),
        pytest.param([math.inf], id="inf"),
        pytest.param([1e39], id="beyond-float32"),
        pytest.param([True, 1.0], id="bool"),
        pytest.param(["1.0"], id="string"),
    ],
)
def test_build_embedding_record_refuses_a_vector_it_could_not_read_back(vector: list[Any]) -> None:
    with pytest.raises(ValueError, match="vector"):
        build_embedding_record("t", vector, MODEL, now=0)


def test_f16_records_round_trip_at_half_the_size() -> None:
    record = build_embedding_record("t", VECTOR, MODEL, now=0, dtype=VectorDtype.F16)
    assert record["dtype"] == "f16"
    packed = base64.b64decode(record["embedding_b64"])
    assert len(packed) == 768 * 2
    status, vector = judge_embedding_record(encode_json_record(record), MODEL)
    assert status is RecordStatus.HIT and vector == list(struct.unpack("<768e", packed))
    assert vector == pytest.approx(VECTOR, rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError, match="f16"):
        encode_vector([70000.0], VectorDtype.F16)


def test_decode_vector_rejects_wrong_lengths_and_bad_base64() -> None:
    good = encode_vector([1.0, 2.0])
    assert decode_vector(good, 2) == [1.0, 2.0]
    assert decode_vector(good, 3) is None
    assert decode_vector(good, 1) is None
    assert decode_vector("not base64!", 2) is None
    assert decode_vector(good[:-1], 2) is None  # padding lost


# -- dimensions ---------------------------------------------------------------------------------------


def test_expected_dimensions_knows_bge_base_and_not_unknown_models() -> None:
    assert expected_dimensions(MODEL) == MODEL_DIMENSIONS[MODEL] == 768
    assert expected_dimensions("@cf/x/unknown") is None


@pytest.mark.parametrize("length", [3, 767, 769, 5000])
@pytest.mark.parametrize("build", [build_embedding_record, build_seed_embedding_record], ids=["new", "old"])
def test_judge_embedding_record_wrong_length_is_corrupt(length: int, build: Any) -> None:
    raw = encode_json_record(build("t", [0.25] * length, MODEL, now=0))
    assert judge_embedding_record(raw, MODEL) == (RecordStatus.CORRUPT, None)


def test_judge_embedding_record_unknown_model_accepts_any_consistent_dimension() -> None:
    model = "@cf/x/unknown"
    for length in (3, 5000):
        raw = encode_json_record(build_embedding_record("t", [0.25] * length, model, now=0))
        assert judge_embedding_record(raw, model) == (RecordStatus.HIT, [0.25] * length)
    inconsistent = _record(model=model, dims=5, embedding_b64=encode_vector([0.25] * 4))
    assert judge_embedding_record(inconsistent, model) == (RecordStatus.CORRUPT, None)


def test_judge_embedding_record_explicit_dims_overrides_the_table() -> None:
    raw = encode_json_record(build_embedding_record("t", [0.25] * 4, MODEL, now=0))
    assert judge_embedding_record(raw, MODEL, dims=4) == (RecordStatus.HIT, [0.25] * 4)
    assert judge_embedding_record(raw, MODEL) == (RecordStatus.CORRUPT, None)


# -- every unusable value is a miss -------------------------------------------------------------------

_SEED = {"text": "t", "model": MODEL, "createdAt": "2027-01-15T08:00:00.000Z"}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(None, RecordStatus.MISSING, id="missing"),
        pytest.param(b"", RecordStatus.CORRUPT, id="empty"),
        pytest.param(b"{not json", RecordStatus.CORRUPT, id="not-json"),
        pytest.param(b"\xff\xfe", RecordStatus.CORRUPT, id="not-utf8"),
        pytest.param(b'{"model": "\xff"}', RecordStatus.CORRUPT, id="not-utf8-inside"),
        pytest.param(b"[1, 2]", RecordStatus.CORRUPT, id="not-an-object"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, RecordStatus.CORRUPT, id="deeply-nested-array"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, RecordStatus.CORRUPT, id="deeply-nested-object"),
        pytest.param(b"[" * 200_000, RecordStatus.CORRUPT, id="deep-unbalanced"),
        pytest.param(b'{"x": "' + b"a" * RECORD_MAX_BYTES + b'"}', RecordStatus.CORRUPT, id="too-big"),
        pytest.param(b'{"n": ' + b"1" * 5000 + b"}", RecordStatus.CORRUPT, id="huge-int"),
        # version 1 format (no "v")
        pytest.param(json.dumps({"embedding": [1.0], "model": "@cf/other"}), RecordStatus.WRONG_MODEL, id="other"),
        pytest.param(json.dumps({"embedding": [1.0] * 768}), RecordStatus.CORRUPT, id="no-model"),
        pytest.param(json.dumps({**_SEED, "embedding": []}), RecordStatus.CORRUPT, id="empty-vector"),
        pytest.param(json.dumps({**_SEED, "embedding": ["1"] * 768}), RecordStatus.CORRUPT, id="string-items"),
        pytest.param(json.dumps({**_SEED, "embedding": [True] * 768}), RecordStatus.CORRUPT, id="bool-items"),
        pytest.param(json.dumps({**_SEED, "embedding": [0.5] * 767 + [None]}), RecordStatus.CORRUPT, id="null-item"),
        pytest.param(
            json.dumps({**_SEED, "embedding": [0.5] * 767}).replace("]", ",NaN]"), RecordStatus.CORRUPT, id="nan"
        ),
        pytest.param(
            json.dumps({**_SEED, "embedding": [0.5] * 767}).replace("]", ",-Infinity]"),
            RecordStatus.CORRUPT,
            id="infinity",
        ),
        pytest.param(
            json.dumps({**_SEED, "embedding": [0.5] * 767}).replace("]", ",1e400]"), RecordStatus.CORRUPT, id="1e400"
        ),
        pytest.param(json.dumps({**_SEED, "embedding": [0.5] * 767 + [1e39]}), RecordStatus.CORRUPT, id="f32-overflow"),
        pytest.param(json.dumps({**_SEED, "embedding": {"0": 1.0}}), RecordStatus.CORRUPT, id="dict-vector"),
        pytest.param(json.dumps({**_SEED, "vector": [1.0] * 768}), RecordStatus.CORRUPT, id="old-shape"),
        # compact format
        pytest.param(
            _record(model="@cf/other", dims=3, embedding_b64=encode_vector([1.0] * 3)),
            RecordStatus.WRONG_MODEL,
            id="v2-other",
        ),
        pytest.param(_record(v=1), RecordStatus.CORRUPT, id="v1-with-v"),
        pytest.param(_record(v=3), RecordStatus.CORRUPT, id="future-version"),
        pytest.param(_record(v="2"), RecordStatus.CORRUPT, id="string-version"),
        pytest.param(_record(v=True), RecordStatus.CORRUPT, id="bool-version"),
        pytest.param(_record(v=2.0), RecordStatus.CORRUPT, id="float-version"),
        pytest.param(_record(model=None), RecordStatus.CORRUPT, id="v2-null-model"),
        pytest.param(_record(dims=...), RecordStatus.CORRUPT, id="no-dims"),
        pytest.param(_record(dims=True), RecordStatus.CORRUPT, id="bool-dims"),
        pytest.param(_record(dims=0, embedding_b64=""), RecordStatus.CORRUPT, id="zero-dims"),
        pytest.param(_record(dims=768.0), RecordStatus.CORRUPT, id="float-dims"),
        pytest.param(_record(dtype="f64"), RecordStatus.CORRUPT, id="unknown-dtype"),
        pytest.param(_record(dtype=...), RecordStatus.CORRUPT, id="no-dtype"),
        pytest.param(_record(embedding_b64=...), RecordStatus.CORRUPT, id="no-b64"),
        pytest.param(_record(embedding_b64=[1.0] * 768), RecordStatus.CORRUPT, id="b64-is-a-list"),
        pytest.param(_record(embedding_b64="!!!" + encode_vector(VECTOR)[3:]), RecordStatus.CORRUPT, id="bad-b64"),
        pytest.param(_record(embedding_b64=encode_vector(VECTOR)[:-4]), RecordStatus.CORRUPT, id="short-bytes"),
        pytest.param(_record(embedding_b64=encode_vector(VECTOR + [1.0])), RecordStatus.CORRUPT, id="long-bytes"),
        pytest.param(_record(dtype="f16"), RecordStatus.CORRUPT, id="f32-bytes-as-f16"),
        pytest.param(
            _record(embedding_b64=base64.b64encode(struct.pack("<768f", *([0.5] * 767 + [math.nan]))).decode()),
            RecordStatus.CORRUPT,
            id="packed-nan",
        ),
        pytest.param(
            _record(embedding_b64=base64.b64encode(struct.pack("<768f", *([0.5] * 767 + [-math.inf]))).decode()),
            RecordStatus.CORRUPT,
            id="packed-inf",
        ),
    ],
)
def test_judge_embedding_record_rejects_unusable_values(raw: bytes | str | None, status: RecordStatus) -> None:
    assert judge_embedding_record(raw, MODEL) == (status, None)


def test_judge_embedding_record_accepts_nesting_up_to_the_limit() -> None:
    # Brackets inside strings do not count; real nesting up to RECORD_MAX_DEPTH parses, one more does not.
    record = json.dumps(json.loads(_record(text="[[[{{{" * 100)))

    def nested(depth: int) -> str:  # the record object is one level, the extra value the others
        return record[:-1] + ', "extra": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    assert judge_embedding_record(nested(RECORD_MAX_DEPTH), MODEL)[0] is RecordStatus.HIT
    assert judge_embedding_record(nested(RECORD_MAX_DEPTH + 1), MODEL) == (RecordStatus.CORRUPT, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, (RecordStatus.MISSING, None), id="missing"),
        pytest.param(b'{"score": 80}', (RecordStatus.HIT, {"score": 80}), id="object"),
        pytest.param(
            '{"score": 0.5, "tags": ["a", {"b": [1]}]}',
            (RecordStatus.HIT, {"score": 0.5, "tags": ["a", {"b": [1]}]}),
            id="nested-object",
        ),
        pytest.param(b'"text"', (RecordStatus.CORRUPT, None), id="string"),
        pytest.param(b"{", (RecordStatus.CORRUPT, None), id="broken"),
        pytest.param(b"\xc3\x28", (RecordStatus.CORRUPT, None), id="not-utf8"),
        pytest.param(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", (RecordStatus.CORRUPT, None), id="deep"),
        pytest.param(b'{"a": "' + b"x" * RECORD_MAX_BYTES + b'"}', (RecordStatus.CORRUPT, None), id="too-big"),
        pytest.param(b'{"score": NaN}', (RecordStatus.CORRUPT, None), id="nan"),
        pytest.param(b'{"score": Infinity}', (RecordStatus.CORRUPT, None), id="infinity"),
        pytest.param(b'{"score": 1e400}', (RecordStatus.CORRUPT, None), id="overflow"),
        pytest.param(b'{"score": ' + b"9" * 5000 + b"}", (RecordStatus.CORRUPT, None), id="huge-int"),
    ],
)
def test_judge_json_record(raw: bytes | str | None, expected: tuple[RecordStatus, object]) -> None:
    assert judge_json_record(raw) == expected


def test_judge_json_record_accepts_many_shallow_brackets() -> None:
    value = {"skills": [{"name": f"s{i}", "years": [i]} for i in range(200)]}
    assert judge_json_record(encode_json_record(value)) == (RecordStatus.HIT, value)


# -- the decode memo ----------------------------------------------------------------------------------

OUTPUTS = fake_outputs()


def _cache(backend: MemoryKVBackend, cloud: FakeCloud, **kwargs: Any) -> DualCache:
    return DualCache.from_outputs(
        OUTPUTS, api_token="t", kv=lambda ns: backend, transport=httpx.MockTransport(cloud), **kwargs
    )


async def test_decode_memo_stays_within_its_byte_budget() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    async with _cache(backend, cloud, decode_memo_bytes=150_000) as cache:
        texts = [f"text {i}" for i in range(20)]
        await cache.embed_many(texts)
        assert await cache.embed_many(texts) == [FakeCloud.vector(t) for t in texts]
        assert len(cloud.requests) == 1
        # A 768-d entry charges its ~4.3 KB of stored bytes and 24.6 KB of floats: 5 fit in 150,000 bytes.
        assert 0 < cache._memo_used <= 150_000
        assert len(cache._memo) == 5
        assert list(cache._memo) == [embed_key(t) for t in texts[-5:]]  # the most recently used


async def test_decode_memo_never_serves_bytes_kv_no_longer_holds() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    async with _cache(backend, cloud) as cache:
        await cache.embed("t")
        assert await cache.embed("t") == FakeCloud.vector("t")  # decoded, now memoized
        other = [0.125] * 768
        store = cache.kv(Namespace.EMBEDDINGS_CACHE)
        await store.put(embed_key("t"), encode_json_record(build_embedding_record("t", other, MODEL, now=0)))
        assert await cache.embed("t") == other
        await store.put(embed_key("t"), b"[" * 10_000)
        assert await cache.embed("t") == FakeCloud.vector("t")  # corrupt: a miss, recomputed and overwritten
        assert len(cloud.requests) == 2
        assert judge_embedding_record(await store.get(embed_key("t")), MODEL)[0] is RecordStatus.HIT


async def test_decode_memo_off_and_entry_cap() -> None:
    for kwargs, entries in (({"decode_memo_bytes": 0}, 0), ({"decode_memo_size": 0}, 0), ({"decode_memo_size": 2}, 2)):
        cloud, backend = FakeCloud(), MemoryKVBackend()
        async with _cache(backend, cloud, **kwargs) as cache:
            texts = ["a", "b", "c"]
            await cache.embed_many(texts)
            assert await cache.embed_many(texts) == [FakeCloud.vector(t) for t in texts]
            assert len(cache._memo) == entries, kwargs


async def test_embed_hit_and_miss_return_the_same_float32_vector() -> None:
    backend = MemoryKVBackend()
    float64 = [0.1 * (i + 1) for i in range(768)]

    async def handler(request: httpx.Request) -> httpx.Response:
        result = {"shape": [1, 768], "data": [float64]}
        return httpx.Response(200, json={"result": result, "success": True, "errors": [], "messages": []})

    cache = DualCache.from_outputs(
        OUTPUTS, api_token="t", kv=lambda ns: backend, transport=httpx.MockTransport(handler)
    )
    async with cache:
        miss = await cache.embed("t")
        hit = await cache.embed("t")
        assert miss == hit == to_float32(float64)
        assert cache.stats.snapshot()["embeddings"]["kv_hits"] == 1


async def test_embed_reads_a_version_1_record_and_keeps_it() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    async with _cache(backend, cloud) as cache:
        store = cache.kv(Namespace.EMBEDDINGS_CACHE)
        v1 = encode_json_record(build_seed_embedding_record("t", VECTOR, MODEL, now=0))
        await store.put(embed_key("t"), v1)
        assert await cache.embed("t") == to_float32(VECTOR)
        assert await cache.embed_many(["t"]) == [to_float32(VECTOR)]
        assert cloud.requests == []
        assert await store.get(embed_key("t")) == v1  # a hit is not rewritten


@pytest.mark.parametrize(
    ("stored", "stored_analysis"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, None, id="deeply-nested"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, None, id="deeply-nested-object"),
        pytest.param(b"\xff\xfe{}", None, id="not-utf8"),
        pytest.param(_record(embedding_b64="%%%"), b'{"score": NaN}', id="bad-b64-and-nan"),
        pytest.param(_record(dims=5000), b'"not an object"', id="wrong-dims-and-string"),
    ],
)
async def test_corrupt_records_are_misses_in_every_flow_and_overwritten(
    stored: bytes, stored_analysis: bytes | None
) -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    messages = [{"role": "user", "content": "Analyze this job"}]
    async with _cache(backend, cloud) as cache:
        embeddings, analyses = cache.kv(Namespace.EMBEDDINGS_CACHE), cache.kv(Namespace.JOB_ANALYSIS_CACHE)
        for key in (embed_key("t"), embed_key("u")):
            await embeddings.put(key, stored)
        await analyses.put("analysis:user:job", stored_analysis or stored)
        assert await cache.embed("t") == FakeCloud.vector("t")
        assert await cache.embed_many(["u", "t"]) == [FakeCloud.vector("u"), FakeCloud.vector("t")]
        analysis = await cache.analyze_job(user_id="user", job_id="job", messages=messages)
        assert len(cloud.requests) == 3  # embed "t", embed_many's one miss "u", the analysis
        assert judge_embedding_record(await embeddings.get(embed_key("u")), MODEL)[0] is RecordStatus.HIT
        assert judge_embedding_record(await embeddings.get(embed_key("t")), MODEL)[0] is RecordStatus.HIT
        assert judge_json_record(await analyses.get("analysis:user:job")) == (RecordStatus.HIT, analysis)
        assert await cache.analyze_job(user_id="user", job_id="job", messages=messages) == analysis
        assert len(cloud.requests) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"decode_memo_bytes": -1}, id="negative-bytes"),
        pytest.param({"decode_memo_bytes": True}, id="bool-bytes"),
        pytest.param({"decode_memo_bytes": 1.5}, id="float-bytes"),
        pytest.param({"decode_memo_size": -1}, id="negative-size"),
    ],
)
def test_dualcache_rejects_a_bad_memo_budget(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=name):
        DualCache(**kwargs)


# -- decisions ----------------------------------------------------------------------------------------

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


# -- the JavaScript reader of the documentation --------------------------------------------------------


def _js_snippet() -> str:
    doc = dualcache._records.__doc__ or ""
    start = doc.index("```js\n") + len("```js\n")
    return doc[start : doc.index("```", start)]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(encode_json_record(build_embedding_record("t", VECTOR, MODEL, now=0)), "vector", id="record"),
        pytest.param(_record(model="@cf/other"), None, id="other-model"),
        pytest.param(_record(v=3), None, id="other-version"),
        pytest.param(_record(embedding_b64=encode_vector(VECTOR)[:-8]), None, id="short-bytes"),
    ],
)
def test_records_doc_js_snippet_reads_what_python_writes(raw: bytes, expected: str | None) -> None:
    script = _js_snippet() + (
        "let input = '';\n"
        "process.stdin.on('data', (d) => (input += d));\n"
        f"process.stdin.on('end', () => process.stdout.write(JSON.stringify(decodeEmbedding(input, {MODEL!r}))));\n"
    )
    proc = subprocess.run(["node", "-e", script], input=raw, capture_output=True, timeout=30, check=True)
    decoded = json.loads(proc.stdout)
    if expected is None:
        assert decoded is None
    else:
        # JSON prints the shortest float64 of each float32: exact in Python, equal to struct's reading.
        assert decoded == list(struct.unpack("<768f", base64.b64decode(json.loads(raw)["embedding_b64"])))
        assert decoded == to_float32(VECTOR)


# -- the JSON memo: stored answers that passed their schema -----------------------------------------------

MSGS = [{"role": "user", "content": "Analyze this job"}]


def _analysis_calls(cloud: FakeCloud) -> int:
    return sum(1 for r in cloud.requests if "/ai/run/" in r.url.path or "/workers-ai/" in r.url.path)


async def test_json_memo_stays_within_its_byte_budget() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    async with _cache(backend, cloud, decode_memo_bytes=2_000, write_behind=False) as cache:
        jobs = [f"job-{i}" for i in range(20)]
        first = [await cache.analyze_job(user_id="u", job_id=j, messages=MSGS) for j in jobs]
        assert [await cache.analyze_job(user_id="u", job_id=j, messages=MSGS) for j in jobs] == first
        assert _analysis_calls(cloud) == 20  # every second call a hit
        assert cache.stats.snapshot()["job_analysis"]["kv_hits"] == 20
        entries = list(cache._json_memo.values())
        assert 0 < cache._json_memo_used == sum(e[3] for e in entries) <= 2_000
        assert 1 < len(entries) < 20
        expected = [cache.record_key("job_analysis", key=j, user_id="u") for j in jobs[-len(entries) :]]
        assert list(cache._json_memo) == expected  # the most recently used


async def test_json_memo_off_and_entry_cap() -> None:
    for kwargs, entries in (({"decode_memo_bytes": 0}, 0), ({"decode_memo_size": 0}, 0), ({"decode_memo_size": 2}, 2)):
        cloud, backend = FakeCloud(), MemoryKVBackend()
        async with _cache(backend, cloud, write_behind=False, **kwargs) as cache:
            for _ in range(2):
                for j in ("a", "b", "c"):
                    assert (await cache.detect_spam(job_id=j, messages=MSGS))["score"] == 80
            assert len(cache._json_memo) == entries, kwargs
            assert cache.stats.snapshot()["spam_detection"]["kv_hits"] == 3, kwargs


async def test_json_memo_hands_every_caller_its_own_copy() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    stored = {"score": 70, "strengths": ["sql"], "analysis": {"fit": {"level": "good"}}}
    key = "analysis:u:j"
    backend._data[key] = (encode_json_record(stored), None, None)
    async with _cache(backend, cloud) as cache:
        one = await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)  # checked, memoized
        two = await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)  # from the memo
        assert one == two == stored and one is not two
        assert key in cache._json_memo
        one["strengths"].append("mutated")
        one["analysis"]["fit"]["level"] = "mutated"
        two["score"] = -1
        del two["analysis"]
        three = await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert three == stored
        assert three["strengths"] is not one["strengths"]
        assert cloud.requests == []
        assert cache.stats.snapshot()["job_analysis"]["kv_hits"] == 3


async def test_json_memo_checks_again_under_another_schema() -> None:
    from pydantic import BaseModel, ConfigDict

    from dualcache import AnswerSchemas

    class Verdict(BaseModel):
        model_config = ConfigDict(extra="allow")
        verdict: str

    cloud, backend = FakeCloud(), MemoryKVBackend()
    key = "analysis:u:j"
    backend._data[key] = (encode_json_record({"score": 70}), None, None)
    async with _cache(backend, cloud, write_behind=False) as cache:
        assert await cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == {"score": 70}
        assert key in cache._json_memo
        cache.answer_schemas = AnswerSchemas({"job_analysis": Verdict})  # a new registry: the record is checked
        with pytest.raises(BadResponseError, match="verdict"):  # the model's answer has no verdict either
            await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert _analysis_calls(cloud) >= 1  # the stored record was refused: a miss, the provider was asked
        assert json.loads(backend._data[key][0]) == {"score": 70}  # the failed answer was not stored

        cache.answer_schemas = AnswerSchemas.builtin()
        assert await cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == {"score": 70}
        before = len(cloud.requests)
        cache.answer_schemas.register("job_analysis", Verdict)  # the same registry, a schema registered since
        with pytest.raises(BadResponseError, match="verdict"):
            await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert len(cloud.requests) > before


@pytest.mark.parametrize(
    "tampered",
    [
        pytest.param(b'{"score":"high"}', id="schema"),
        pytest.param(b'{"score":NaN}', id="nan"),
        pytest.param(b'{"score":70', id="truncated"),
        pytest.param(b'{"score":70,"strengths":"\\ud800"}', id="lone-surrogate"),
        pytest.param(b'{"score":700}', id="out-of-range"),
    ],
)
async def test_json_memo_refuses_a_tampered_record_after_a_valid_one(tampered: bytes) -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    key = "analysis:u:j"
    backend._data[key] = (encode_json_record({"score": 70}), None, None)
    async with _cache(backend, cloud, write_behind=False) as cache:
        for _ in range(2):
            assert await cache.analyze_job(user_id="u", job_id="j", messages=MSGS) == {"score": 70}
        assert key in cache._json_memo
        backend._data[key] = (tampered, None, None)  # same key, other bytes
        fresh = await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        assert fresh["score"] == 80  # the provider's answer, not the tampered record
        assert _analysis_calls(cloud) == 1
        assert json.loads(backend._data[key][0]) == fresh  # overwritten
        assert key not in cache._json_memo or cache._json_memo[key][0] != tampered
        assert cache.stats.snapshot()["job_analysis"]["kv_hits"] == 2


async def test_json_memo_serves_a_record_with_whitespace_around_it() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    backend._data["spam:j"] = (b' \n{"isSpam": false, "reasons": ["ok"]}\r\n\t', None, None)  # a hand-written one
    async with _cache(backend, cloud) as cache:
        for _ in range(3):
            assert await cache.detect_spam(job_id="j", messages=MSGS) == {"isSpam": False, "reasons": ["ok"]}
        assert "spam:j" in cache._json_memo
        assert cloud.requests == []


async def test_json_memo_entry_dropped_on_forget() -> None:
    cloud, backend = FakeCloud(), MemoryKVBackend()
    async with _cache(backend, cloud, write_behind=False) as cache:
        await cache.detect_spam(job_id="j", messages=MSGS)
        await cache.detect_spam(job_id="j", messages=MSGS)
        assert "spam:j" in cache._json_memo
        assert await cache.forget("spam_detection", key="j") == 1
        assert "spam:j" not in cache._json_memo and cache._json_memo_used == 0
