"""The local stand-in models, directly and through the Workers AI / OpenAI endpoints."""

from __future__ import annotations

import base64
import json
import math
import struct
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import httpx
import pydantic
import pytest

from dualcache.local import Emulator
from dualcache.local._models import embed, generate, instance_of_schema
from tests.local.helpers import error_codes

BGE = "@cf/baai/bge-base-en-v1.5"
LLAMA_8B = "@cf/meta/llama-3.1-8b-instruct"
LLAMA_70B = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embed_is_deterministic_normalized_and_sized() -> None:
    v = embed("Senior Python engineer, remote", 768)
    assert v == embed("Senior Python engineer, remote", 768)
    assert len(v) == 768
    assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-9)
    assert len(embed("x", 1536)) == 1536


def test_embed_similar_texts_are_closer_than_unrelated() -> None:
    job = embed("Senior Python backend engineer with Django and PostgreSQL", 768)
    resume = embed("Python backend engineer, five years of Django and PostgreSQL", 768)
    unrelated = embed("Pastry chef for a French bakery, early shifts", 768)
    assert cosine(job, resume) > cosine(job, unrelated) + 0.2
    assert cosine(job, job) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "similar", "unrelated"),
    [
        pytest.param(
            "Senior Python developer", "python developer (senior)", "Registered nurse, night shifts", id="job"
        ),
        pytest.param(
            "Remote React frontend engineer",
            "Frontend engineer, React, remote",
            "Warehouse forklift operator",
            id="order",
        ),
        pytest.param(
            "machine learning engineer",
            "ML engineer working on machine learning models",
            "truck driver with a CDL license",
            id="extra-words",
        ),
        pytest.param("data scientist", "data science", "plumber", id="shared-stem"),
        pytest.param("The cat sat on the mat", "A cat was sitting on a mat", "Quarterly revenue grew", id="paraphrase"),
    ],
)
def test_bge_over_http_similar_texts_are_closer_than_unrelated(
    client: httpx.Client, emu: Emulator, text: str, similar: str, unrelated: str
) -> None:
    o = emu.outputs
    r = client.post(f"/v1/{o.account_id}/{o.gateway_id}/workers-ai/{BGE}", json={"text": [text, similar, unrelated]})
    base, near, far = r.json()["result"]["data"]
    for v in (base, near, far):
        assert len(v) == 768
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0)
    assert cosine(base, near) > cosine(base, far) + 0.2
    assert abs(cosine(base, far)) < 0.15


def test_embed_handles_text_without_word_characters() -> None:
    v = embed("!!!", 768)
    assert math.isclose(sum(x * x for x in v), 1.0)


def test_generate_is_deterministic_and_depends_on_input_and_model() -> None:
    a, is_json = generate(LLAMA_8B, "user: hello", None)
    assert isinstance(a, str) and not is_json
    assert generate(LLAMA_8B, "user: hello", None)[0] == a
    assert generate(LLAMA_8B, "user: goodbye", None)[0] != a
    assert generate(LLAMA_70B, "user: hello", None)[0] != a


def test_generate_answers_json_when_prompt_or_format_asks() -> None:
    answer, is_json = generate(LLAMA_8B, "user: reply in JSON please", None)
    assert is_json and isinstance(answer, dict) and answer["local_model"] is True
    answer, is_json = generate("gpt-4o-mini", "user: hi", {"type": "json_object"})
    assert is_json and isinstance(answer, dict)


def test_instance_of_schema_satisfies_types_bounds_enums_and_nesting() -> None:
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.75},
            "is_spam": {"type": "boolean"},
            "verdict": {"enum": ["apply", "skip"]},
            "skills": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
            "nested": {"type": "object", "properties": {"note": {"type": ["string", "null"], "maxLength": 5}}},
            "fixed": {"const": 7},
        },
    }
    value = instance_of_schema(schema, b"seed")
    assert set(value) == set(schema["properties"])
    assert isinstance(value["score"], int) and 0 <= value["score"] <= 100
    assert 0.5 <= value["ratio"] <= 0.75
    assert isinstance(value["is_spam"], bool)
    assert value["verdict"] in ("apply", "skip")
    assert len(value["skills"]) == 2 and all(isinstance(s, str) for s in value["skills"])
    assert isinstance(value["nested"]["note"], str) and len(value["nested"]["note"]) <= 5
    assert value["fixed"] == 7
    assert instance_of_schema(schema, b"seed") == value


class _Level(StrEnum):
    JUNIOR = "junior"
    SENIOR = "senior"


class _Skill(pydantic.BaseModel):
    name: str
    years: int = pydantic.Field(ge=0, le=40)


class _Node(pydantic.BaseModel):
    label: str
    children: list[_Node]


class _Analysis(pydantic.BaseModel):
    score: int = pydantic.Field(gt=0, le=100)
    ratio: float = pydantic.Field(gt=0, lt=1)
    level: _Level
    skills: list[_Skill]
    reviewed_at: datetime
    day: date
    id: UUID
    contact: str = pydantic.Field(json_schema_extra={"format": "email"})
    note: str | None
    tree: _Node


@pytest.mark.parametrize("seed", [pytest.param(bytes([i]), id=f"seed-{i}") for i in range(0, 250, 25)])
def test_instance_of_schema_follows_refs_formats_and_exclusive_bounds(seed: bytes) -> None:
    # The schemas the openai SDK (strict) and pydantic produce: $defs/$ref, enums, dates, recursion.
    from openai.lib._pydantic import to_strict_json_schema

    for schema in (to_strict_json_schema(_Analysis), _Analysis.model_json_schema()):
        value = _Analysis.model_validate(instance_of_schema(schema, seed))
        assert 0 < value.score <= 100 and 0 < value.ratio < 1
        assert value.contact.endswith("@example.com")
        assert all(child.children == [] for child in value.tree.children)


@pytest.mark.parametrize(
    ("schema", "check"),
    [
        pytest.param({"type": "string", "minLength": 10**9}, lambda v: len(v) == 10_000, id="huge-min-length"),
        pytest.param({"type": "array", "minItems": 10**9}, lambda v: len(v) == 100, id="huge-min-items"),
        pytest.param({"type": "integer", "minimum": "ten"}, lambda v: 0 <= v <= 100, id="non-numeric-bound"),
        pytest.param({"type": "number", "maximum": float("nan")}, lambda v: 0 <= v <= 100, id="nan-bound"),
        pytest.param({"$ref": "#/$defs/Missing"}, lambda v: isinstance(v, str), id="dangling-ref"),
    ],
)
def test_instance_of_schema_caps_sizes_and_ignores_malformed_keywords(schema: dict[str, Any], check: Any) -> None:
    # A request's schema must not make the emulator build a gigabyte string or crash on a bad bound.
    assert check(instance_of_schema(schema, b"seed"))


# -- Workers AI over HTTP -------------------------------------------------------------------------------


def direct(client: httpx.Client, emu: Emulator, model: str, body: Any) -> httpx.Response:
    return client.post(f"/client/v4/accounts/{emu.outputs.account_id}/ai/run/{model}", json=body)


def test_workers_ai_direct_bge_single_and_batch(client: httpx.Client, emu: Emulator) -> None:
    one = direct(client, emu, BGE, {"text": "hello"})
    assert one.status_code == 200
    body = one.json()
    assert (body["success"], body["errors"], body["messages"]) == (True, [], [])
    assert body["result"]["shape"] == [1, 768]
    assert body["result"]["pooling"] == "mean"
    assert body["result"]["data"][0] == pytest.approx(embed("hello", 768))
    assert one.headers["x-dualcache-local-model"] == "true"
    batch = direct(client, emu, BGE, {"text": ["a", "b", "c"]}).json()["result"]
    assert batch["shape"] == [3, 768] and len(batch["data"]) == 3
    cls = direct(client, emu, BGE, {"text": "hello", "pooling": "cls"}).json()["result"]
    assert cls["pooling"] == "cls" and cls["data"][0] != body["result"]["data"][0]
    stats = emu.control.stats()
    assert stats["direct"] == {BGE: 3} and stats["upstream"] == {BGE: 3}


@pytest.mark.parametrize(
    ("model", "body", "code"),
    [
        pytest.param(BGE, {}, 3003, id="bge-missing-text"),
        pytest.param(BGE, {"text": ""}, 5004, id="bge-empty-text"),
        pytest.param(BGE, {"text": ["x"] * 101}, 5004, id="bge-101-texts"),
        pytest.param(BGE, {"text": [1]}, 5004, id="bge-non-string"),
        pytest.param(BGE, {"text": "x", "pooling": "max"}, 5004, id="bge-bad-pooling"),
        pytest.param(LLAMA_8B, {}, 3003, id="llama-no-prompt"),
        pytest.param("@cf/nobody/no-such-model", {"text": "x"}, 5007, id="unknown-model"),
    ],
)
def test_workers_ai_errors_have_the_real_codes(
    client: httpx.Client, emu: Emulator, model: str, body: Any, code: int
) -> None:
    r = direct(client, emu, model, body)
    assert r.status_code == 400
    assert error_codes(r) == [code]


def test_workers_ai_bge_accepts_exactly_100_texts(client: httpx.Client, emu: Emulator) -> None:
    assert direct(client, emu, BGE, {"text": [f"t{i}" for i in range(100)]}).json()["result"]["shape"] == [100, 768]


@pytest.mark.parametrize("model", [pytest.param(LLAMA_8B, id="llama-8b"), pytest.param(LLAMA_70B, id="llama-70b")])
def test_workers_ai_text_models_prompt_and_messages(client: httpx.Client, emu: Emulator, model: str) -> None:
    by_prompt = direct(client, emu, model, {"prompt": "Summarize this job"}).json()["result"]
    assert isinstance(by_prompt["response"], str) and model in by_prompt["response"]
    assert (
        by_prompt["usage"]["total_tokens"]
        == by_prompt["usage"]["prompt_tokens"] + by_prompt["usage"]["completion_tokens"]
    )
    messages = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    assert (
        direct(client, emu, model, messages).json()["result"]["response"]
        == (direct(client, emu, model, messages).json()["result"]["response"])
    )


def test_workers_ai_json_mode_response_is_an_object(client: httpx.Client, emu: Emulator) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}}}
    body = {"prompt": "rate this", "response_format": {"type": "json_schema", "json_schema": schema}}
    result = direct(client, emu, LLAMA_70B, body).json()["result"]
    assert isinstance(result["response"], dict)
    assert 0 <= result["response"]["score"] <= 100
    obj = direct(client, emu, LLAMA_8B, {"prompt": "x", "response_format": {"type": "json_object"}}).json()
    assert isinstance(obj["result"]["response"], dict)


@pytest.mark.parametrize(
    "extra",
    [pytest.param({}, id="no-format"), pytest.param({"response_format": {"type": "text"}}, id="text-format")],
)
def test_workers_ai_json_asked_in_prompt_is_a_json_string(
    client: httpx.Client, emu: Emulator, extra: dict[str, Any]
) -> None:
    result = direct(client, emu, LLAMA_8B, {"prompt": "Answer as JSON with a score", **extra}).json()["result"]
    assert isinstance(result["response"], str)
    assert isinstance(json.loads(result["response"]), dict)


def test_workers_ai_through_gateway_matches_direct(client: httpx.Client, emu: Emulator) -> None:
    o = emu.outputs
    via = client.post(f"/v1/{o.account_id}/{o.gateway_id}/workers-ai/{BGE}", json={"text": "same"})
    assert via.json() == direct(client, emu, BGE, {"text": "same"}).json()


# -- OpenAI over HTTP -------------------------------------------------------------------------------------


def openai_post(
    client: httpx.Client, emu: Emulator, path: str, body: Any, key: str | None = "sk-local"
) -> httpx.Response:
    o = emu.outputs
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return client.post(f"/v1/{o.account_id}/{o.gateway_id}/openai/{path}", json=body, headers=headers)


def test_openai_chat_completion_shape(client: httpx.Client, emu: Emulator) -> None:
    r = openai_post(
        client, emu, "chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert (choice["index"], choice["finish_reason"], choice["message"]["role"]) == (0, "stop", "assistant")
    assert isinstance(choice["message"]["content"], str)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    "response_format",
    [
        pytest.param({"type": "json_object"}, id="json-object"),
        pytest.param(
            {
                "type": "json_schema",
                "json_schema": {"name": "v", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
            },
            id="json-schema",
        ),
    ],
)
def test_openai_json_response_format_gives_json_string_content(
    client: httpx.Client, emu: Emulator, response_format: dict[str, Any]
) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "answer in JSON"}],
        "response_format": response_format,
    }
    content = openai_post(client, emu, "chat/completions", body).json()["choices"][0]["message"]["content"]
    parsed = json.loads(content)
    assert isinstance(parsed, dict)
    if response_format["type"] == "json_schema":
        assert isinstance(parsed["ok"], bool)


def test_openai_embeddings_float_and_base64(client: httpx.Client, emu: Emulator) -> None:
    body: dict[str, Any] = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    floats = openai_post(client, emu, "embeddings", body).json()
    assert floats["object"] == "list" and [d["index"] for d in floats["data"]] == [0, 1]
    assert len(floats["data"][0]["embedding"]) == 1536
    packed = openai_post(client, emu, "embeddings", {**body, "encoding_format": "base64"}).json()
    decoded = struct.unpack("<1536f", base64.b64decode(packed["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    short = openai_post(client, emu, "embeddings", {**body, "dimensions": 256}).json()
    assert len(short["data"][0]["embedding"]) == 256


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        pytest.param(
            "chat/completions",
            {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
            id="unknown-chat-model",
        ),
        pytest.param(
            "embeddings",
            {"model": "text-embedding-9", "input": "x"},
            404,
            "model_not_found",
            id="unknown-embedding-model",
        ),
        pytest.param("chat/completions", {"model": "gpt-4o", "messages": []}, 400, None, id="no-messages"),
        pytest.param("embeddings", {"model": "text-embedding-3-small", "input": ""}, 400, None, id="empty-input"),
        pytest.param(
            "embeddings",
            {"model": "text-embedding-3-small", "input": "x", "dimensions": 5000},
            400,
            None,
            id="too-many-dimensions",
        ),
        pytest.param("audio/speech", {"model": "tts-1"}, 404, "unknown_url", id="unserved-path"),
        pytest.param(
            "chat/completions",
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            400,
            None,
            id="json-object-without-the-word-json",
        ),
    ],
)
def test_openai_errors_have_openais_shape(
    client: httpx.Client, emu: Emulator, path: str, body: Any, status: int, code: str | None
) -> None:
    r = openai_post(client, emu, path, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["type"]


def test_openai_requires_an_api_key(client: httpx.Client, emu: Emulator) -> None:
    r = openai_post(client, emu, "chat/completions", {"model": "gpt-4o"}, key=None)
    assert r.status_code == 401
    assert "API key" in r.json()["error"]["message"]


def test_openai_dated_model_snapshot_is_served(client: httpx.Client, emu: Emulator) -> None:
    body = {"model": "gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": "x"}]}
    assert openai_post(client, emu, "chat/completions", body).status_code == 200
