"""Conformance: the official ``cloudflare`` and ``openai`` SDKs, pointed at the emulator over loopback HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Literal

import cloudflare
import openai
import pydantic
import pytest

from dualcache import Namespace
from dualcache.local import Emulator


@pytest.fixture
def cf(emu: Emulator) -> Iterator[cloudflare.Cloudflare]:
    with cloudflare.Cloudflare(api_token="local-token", base_url=emu.outputs.api_base_url, max_retries=0) as client:
        yield client


@pytest.fixture
def oai(emu: Emulator) -> Iterator[openai.OpenAI]:
    o = emu.outputs
    base_url = f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/openai"
    with openai.OpenAI(api_key="sk-local", base_url=base_url, max_retries=0) as client:
        yield client


def test_sdk_cloudflare_kv_values_metadata_keys_and_delete(cf: cloudflare.Cloudflare, emu: Emulator) -> None:
    account = emu.outputs.account_id
    ns = emu.outputs.namespace_id(Namespace.SESSIONS)
    key = f"session:{uuid.uuid4().hex}/a b%"
    cf.kv.namespaces.values.update(
        key, account_id=account, namespace_id=ns, value=b"payload", metadata={"user": 7}, expiration_ttl=600
    )
    got = cf.kv.namespaces.values.get(key, account_id=account, namespace_id=ns)
    assert got.read() == b"payload"
    assert int(got.headers["expiration"]) > emu.control.now()
    assert cf.kv.namespaces.metadata.get(key, account_id=account, namespace_id=ns) == {"user": 7}
    listed = list(cf.kv.namespaces.keys.list(ns, account_id=account, prefix=key))
    assert [(k.name, k.metadata) for k in listed] == [(key, {"user": 7})]
    cf.kv.namespaces.values.delete(key, account_id=account, namespace_id=ns)
    with pytest.raises(cloudflare.NotFoundError) as info:
        cf.kv.namespaces.values.get(key, account_id=account, namespace_id=ns).read()
    assert info.value.status_code == 404


def test_sdk_cloudflare_kv_bulk_and_cursor_pagination(cf: cloudflare.Cloudflare, emu: Emulator) -> None:
    account = emu.outputs.account_id
    ns = cf.kv.namespaces.create(account_id=account, title=f"sdk-{uuid.uuid4().hex}")
    assert ns is not None
    written = cf.kv.namespaces.bulk_update(
        ns.id, account_id=account, body=[{"key": f"k{i:02d}", "value": json.dumps({"i": i})} for i in range(12)]
    )
    assert written is not None and written.successful_key_count == 12
    # 12 keys at 10 a page: the SDK follows the cursor to the second page.
    assert [k.name for k in cf.kv.namespaces.keys.list(ns.id, account_id=account, limit=10)] == [
        f"k{i:02d}" for i in range(12)
    ]
    got = cf.kv.namespaces.bulk_get(ns.id, account_id=account, keys=["k01", "k02", "absent"], type="json")
    assert got is not None
    assert got.to_dict()["values"] == {"k01": {"i": 1}, "k02": {"i": 2}, "absent": None}
    deleted = cf.kv.namespaces.bulk_delete(ns.id, account_id=account, body=[f"k{i:02d}" for i in range(10)])
    assert deleted is not None and deleted.successful_key_count == 10
    assert [k.name for k in cf.kv.namespaces.keys.list(ns.id, account_id=account)] == ["k10", "k11"]
    titles = [n.title for n in cf.kv.namespaces.list(account_id=account, per_page=5)]
    assert ns.title in titles and emu.config.namespace_title(Namespace.API_CACHE) in titles


def test_sdk_cloudflare_ai_gateway_create_and_get(cf: cloudflare.Cloudflare, emu: Emulator) -> None:
    account = emu.outputs.account_id
    gateway_id = f"sdk-{uuid.uuid4().hex[:8]}"
    created = cf.ai_gateway.create(
        account_id=account,
        id=gateway_id,
        cache_invalidate_on_update=True,
        cache_ttl=3600,
        collect_logs=False,
        rate_limiting_interval=60,
        rate_limiting_limit=100,
        rate_limiting_technique="sliding",
        authentication=True,
    )
    assert created.id == gateway_id and created.cache_ttl == 3600
    fetched = cf.ai_gateway.get(gateway_id, account_id=account)
    assert (fetched.rate_limiting_technique, fetched.authentication, fetched.collect_logs) == ("sliding", True, False)
    assert fetched.created_at == created.created_at
    assert gateway_id in [g.id for g in cf.ai_gateway.list(account_id=account)]


def test_sdk_openai_chat_completion_miss_then_hit_with_ttl(oai: openai.OpenAI, emu: Emulator) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": f"Is this job spam? {uuid.uuid4().hex}"}
    ]
    headers = {"cf-aig-cache-ttl": "3600"}
    first = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, extra_headers=headers)
    second = oai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, extra_headers=headers
    )
    assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert emu.control.stats()["upstream"] == {"gpt-4o-mini": 1}


def test_sdk_openai_json_response_format(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Analyse the match"}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "analysis",
                "schema": {
                    "type": "object",
                    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
                    "required": ["score"],
                },
            },
        },
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert 0 <= json.loads(content)["score"] <= 100


class _Skill(pydantic.BaseModel):
    name: str
    years: int


class _Match(pydantic.BaseModel):
    score: int = pydantic.Field(ge=0, le=100)
    verdict: Literal["apply", "skip"]
    skills: list[_Skill]


def test_sdk_openai_structured_output_parses_into_a_pydantic_model(oai: openai.OpenAI) -> None:
    # The SDK sends a strict json_schema with $defs/$ref and validates the answer against the model.
    completion = oai.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Match this resume"}], response_format=_Match
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, _Match)
    assert 0 <= parsed.score <= 100 and parsed.verdict in ("apply", "skip")
    assert parsed.skills and all(isinstance(s, _Skill) for s in parsed.skills)


def test_sdk_openai_embeddings_miss_then_hit(oai: openai.OpenAI, emu: Emulator) -> None:
    text = f"resume {uuid.uuid4().hex}"
    headers = {"cf-aig-cache-ttl": "600"}
    first = oai.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[text], extra_headers=headers)
    second = oai.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=[text], extra_headers=headers
    )
    assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
    vector = first.parse().data[0].embedding
    assert len(vector) == 1536
    assert second.parse().data[0].embedding == vector


def test_sdk_openai_unknown_model_raises_not_found(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


def test_sdk_cloudflare_workers_ai_run_direct(cf: cloudflare.Cloudflare, emu: Emulator) -> None:
    account = emu.outputs.account_id
    vectors = cf.ai.run("@cf/baai/bge-base-en-v1.5", account_id=account, text=["a job", "a resume"])
    assert isinstance(vectors, dict) and vectors["shape"] == [2, 768]
    answer = cf.ai.run("@cf/meta/llama-3.1-8b-instruct", account_id=account, prompt="hello")
    assert isinstance(answer, dict) and isinstance(answer["response"], str)
    assert emu.control.stats()["direct"] == {
        "@cf/baai/bge-base-en-v1.5": 1,
        "@cf/meta/llama-3.1-8b-instruct": 1,
    }
