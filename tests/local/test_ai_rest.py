"""The emulated AI REST API (``/client/v4/accounts/{id}/ai/...`` with ``cf-aig-gateway-id``) and the gateway's
own retries (``cf-aig-max-attempts`` and friends), on both URL shapes."""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from dualcache.local import Emulator
from tests.local.helpers import Gateways

BGE = "@cf/baai/bge-base-en-v1.5"


def ai(emu: Emulator, path: str) -> str:
    return f"/client/v4/accounts/{emu.outputs.account_id}/ai/{path}"


def legacy(emu: Emulator, path: str, gateway_id: str | None = None) -> str:
    return f"/v1/{emu.outputs.account_id}/{gateway_id or emu.outputs.gateway_id}/{path}"


def rest_headers(emu: Emulator, **extra: str) -> dict[str, str]:
    return {"cf-aig-gateway-id": emu.outputs.gateway_id, "authorization": "Bearer cf-token", **extra}


def unique(text: str = "text") -> str:
    return f"{text} {uuid.uuid4().hex}"


# -- routes ----------------------------------------------------------------------------------------


def test_ai_rest_run_model_through_the_gateway_shares_the_legacy_cache(client: httpx.Client, emu: Emulator) -> None:
    text = unique()
    ttl = {"cf-aig-cache-ttl": "600"}
    first = client.post(ai(emu, f"run/{BGE}"), json={"text": text}, headers=rest_headers(emu, **ttl))
    second = client.post(
        legacy(emu, f"workers-ai/{BGE}"), json={"text": text}, headers={"authorization": "Bearer cf-token", **ttl}
    )
    assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
    assert first.json()["result"]["shape"] == [1, 768] and second.json() == first.json()
    assert first.headers["cf-aig-log-id"] != second.headers["cf-aig-log-id"]
    stats = emu.control.stats()
    assert (stats["gateway"]["misses"], stats["gateway"]["hits"], stats["upstream"]) == (1, 1, {BGE: 1})


def test_ai_rest_run_model_without_the_header_is_the_direct_route(client: httpx.Client, emu: Emulator) -> None:
    r = client.post(ai(emu, f"run/{BGE}"), json={"text": "x"})
    assert r.status_code == 200 and "cf-aig-cache-status" not in r.headers
    stats = emu.control.stats()
    assert (stats["direct"], stats["upstream"], stats["gateway"]["misses"]) == ({BGE: 1}, {BGE: 1}, 0)


def test_ai_rest_run_envelope_takes_model_and_input(client: httpx.Client, emu: Emulator) -> None:
    body = {"model": BGE, "input": {"text": ["a", "b"]}}
    r = client.post(ai(emu, "run"), json=body, headers=rest_headers(emu, **{"cf-aig-skip-cache": "true"}))
    assert r.status_code == 200 and r.json()["result"]["shape"] == [2, 768]
    missing = client.post(ai(emu, "run"), json=body)
    assert missing.status_code == 400 and "cf-aig-gateway-id" in missing.text


def test_ai_rest_chat_completions_openai_model_miss_then_hit(client: httpx.Client, emu: Emulator) -> None:
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": unique("hi")}]}
    headers = rest_headers(emu, **{"cf-aig-cache-ttl": "600"})
    first = client.post(ai(emu, "v1/chat/completions"), json=body, headers=headers)
    second = client.post(ai(emu, "v1/chat/completions"), json=body, headers=headers)
    assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
    assert first.json()["object"] == "chat.completion" and first.json()["model"] == "gpt-4o-mini"
    assert emu.control.stats()["upstream"] == {"gpt-4o-mini": 1}


def test_ai_rest_chat_completions_without_a_header_use_the_auto_created_default_gateway(
    client: httpx.Client, emu: Emulator
) -> None:
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post(ai(emu, "v1/chat/completions"), json=body, headers={"authorization": "Bearer cf-token"})
    assert r.status_code == 200 and r.headers["cf-aig-cache-status"] == "MISS"
    gw = client.get(f"/client/v4/accounts/{emu.outputs.account_id}/ai-gateway/gateways/default").json()["result"]
    # The documented settings of an auto-created default gateway.
    assert (gw["authentication"], gw["collect_logs"], gw["cache_ttl"], gw["rate_limiting_limit"]) == (True, True, 0, 0)


def test_ai_rest_unknown_gateway_and_models_are_refused(client: httpx.Client, emu: Emulator) -> None:
    chat = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    unknown = client.post(ai(emu, "v1/chat/completions"), json=chat, headers={"cf-aig-gateway-id": "no-such-gw"})
    assert unknown.status_code == 404
    other = client.post(ai(emu, "v1/chat/completions"), json={**chat, "model": "anthropic/claude"})
    assert other.status_code == 400 and "openai/<model>" in other.text
    third_party_embed = client.post(
        ai(emu, "v1/embeddings"), json={"model": "openai/text-embedding-3-small", "input": "x"}
    )
    assert third_party_embed.status_code == 400 and "@cf/" in third_party_embed.text
    assert client.post(ai(emu, "v1/messages"), json=chat).status_code == 404
    assert client.get(ai(emu, "v1/chat/completions")).status_code == 405


def test_ai_rest_embeddings_answer_base64_when_asked(client: httpx.Client, emu: Emulator) -> None:
    text = unique()
    headers = rest_headers(emu, **{"cf-aig-cache-ttl": "600"})
    floats = client.post(ai(emu, "v1/embeddings"), json={"model": BGE, "input": text}, headers=headers).json()
    packed = client.post(
        ai(emu, "v1/embeddings"), json={"model": BGE, "input": text, "encoding_format": "base64"}, headers=headers
    )
    # A different body is a different gateway entry: both were misses.
    assert packed.headers["cf-aig-cache-status"] == "MISS"
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    vector = floats["data"][0]["embedding"]
    assert len(decoded) == len(vector) == 768
    assert decoded == list(struct.unpack("<768f", struct.pack("<768f", *vector)))
    assert emu.control.stats()["upstream"] == {BGE: 2}


# -- the gateway's retries -------------------------------------------------------------------------


def _send(client: httpx.Client, emu: Emulator, shape: str, **headers: str) -> httpx.Response:
    body = {"text": unique()}
    if shape == "rest":
        return client.post(ai(emu, f"run/{BGE}"), json=body, headers=rest_headers(emu, **headers))
    return client.post(legacy(emu, f"workers-ai/{BGE}"), json=body, headers={"authorization": "Bearer t", **headers})


@pytest.mark.parametrize("shape", ["legacy", "rest"])
def test_gateway_retries_honour_max_attempts_on_upstream_faults(
    client: httpx.Client, emu: Emulator, shape: str
) -> None:
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 503}})
    r = _send(
        client, emu, shape, **{"cf-aig-skip-cache": "true", "cf-aig-max-attempts": "3", "cf-aig-retry-delay": "0"}
    )
    assert r.status_code == 503
    stats = emu.control.stats()
    assert (stats["upstream"], stats["gateway"]["retries"], stats["faults"]["upstream"]) == ({BGE: 3}, 2, 3)


@pytest.mark.parametrize("shape", ["legacy", "rest"])
def test_gateway_retries_default_to_the_gateways_setting(client: httpx.Client, emu: Emulator, shape: str) -> None:
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 502}})
    assert _send(client, emu, shape, **{"cf-aig-skip-cache": "true"}).status_code == 502
    # The dev stack declares one attempt (gateway.retry.maxAttempts defaults to 1).
    assert emu.config.gateway.retry.max_attempts == 1
    assert emu.control.stats()["upstream"] == {BGE: 1}


def test_gateway_retries_follow_a_created_gateways_settings(
    client: httpx.Client, emu: Emulator, gateways: Gateways
) -> None:
    gw = gateways.create(retry_max_attempts=2, retry_delay=0, retry_backoff="constant")
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 500}})
    r = client.post(legacy(emu, f"workers-ai/{BGE}", gw), json={"text": "x"}, headers={"authorization": "Bearer t"})
    assert r.status_code == 500
    assert emu.control.stats()["upstream"] == {BGE: 2}


def test_gateway_retries_do_not_repeat_a_client_error(client: httpx.Client, emu: Emulator) -> None:
    emu.control.set_faults({"upstream": {"error_rate": 1.0, "status": 400}})
    assert _send(client, emu, "legacy", **{"cf-aig-max-attempts": "5", "cf-aig-retry-delay": "0"}).status_code == 400
    assert emu.control.stats()["gateway"]["retries"] == 0


def test_gateway_request_timeout_retries_a_slow_attempt_and_the_last_one_waits(
    client: httpx.Client, emu: Emulator
) -> None:
    emu.control.set_faults({"upstream": {"latency_ms": 400}})
    headers = {"cf-aig-max-attempts": "2", "cf-aig-retry-delay": "0", "cf-aig-request-timeout": "50"}
    r = _send(client, emu, "rest", **{"cf-aig-skip-cache": "true", **headers})
    assert r.status_code == 200  # the first attempt timed out; the final one waited for the answer
    stats = emu.control.stats()
    assert (stats["upstream"], stats["gateway"]["retries"]) == ({BGE: 2}, 1)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("cf-aig-max-attempts", "0"),
        ("cf-aig-max-attempts", "6"),
        ("cf-aig-retry-delay", "5001"),
        ("cf-aig-retry-delay", "soon"),
        ("cf-aig-backoff", "random"),
        ("cf-aig-request-timeout", "0"),
    ],
)
def test_gateway_retry_headers_out_of_range_are_refused(
    client: httpx.Client, emu: Emulator, header: str, value: str
) -> None:
    r = _send(client, emu, "legacy", **{header: value})
    assert r.status_code == 400 and header in r.text
    assert emu.control.stats()["upstream"] == {}


# -- the official openai SDK on the REST shape -----------------------------------------------------


@pytest.fixture
def rest_sdk(emu: Emulator) -> Iterator[openai.OpenAI]:
    o = emu.outputs
    base_url = f"{o.api_base_url}/accounts/{o.account_id}/ai/v1"
    headers = {"cf-aig-gateway-id": o.gateway_id, "cf-aig-cache-ttl": "600"}
    with openai.OpenAI(api_key="cf-token", base_url=base_url, default_headers=headers, max_retries=0) as sdk:
        yield sdk


def test_ai_rest_openai_sdk_chat_completion_through_the_gateway(rest_sdk: openai.OpenAI, emu: Emulator) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": unique("hello")}]
    first = rest_sdk.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=messages)
    second = rest_sdk.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=messages)
    assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert emu.control.stats()["upstream"] == {"gpt-4o-mini": 1}


def test_ai_rest_openai_sdk_embeddings_default_to_base64_and_decode(rest_sdk: openai.OpenAI, emu: Emulator) -> None:
    text = unique()
    packed = rest_sdk.embeddings.create(model=BGE, input=[text])  # the SDK asks for base64 and decodes it
    floats = rest_sdk.embeddings.create(model=BGE, input=[text], encoding_format="float")
    assert len(packed.data[0].embedding) == 768
    assert packed.data[0].embedding == list(struct.unpack("<768f", struct.pack("<768f", *floats.data[0].embedding)))
    assert emu.control.stats()["upstream"] == {BGE: 2}  # two bodies, two gateway entries


def test_ai_rest_authorization_is_enough_for_an_authenticated_gateway(
    client: httpx.Client, emu: Emulator, gateways: Gateways
) -> None:
    gw = gateways.create(authentication=True)
    body = {"text": "x"}
    rest = client.post(ai(emu, f"run/{BGE}"), json=body, headers={"cf-aig-gateway-id": gw, "authorization": "Bearer t"})
    assert rest.status_code == 200 and rest.headers["cf-aig-cache-status"] == "MISS"
    bare = client.post(legacy(emu, f"workers-ai/{BGE}", gw), json=body, headers={"authorization": "Bearer t"})
    assert bare.status_code == 401  # the legacy URL still needs cf-aig-authorization
    assert emu.control.stats()["gateway"]["refused"] == 1


def test_ai_rest_legacy_workers_ai_openai_compatible_embeddings(client: httpx.Client, emu: Emulator) -> None:
    r = client.post(
        legacy(emu, "workers-ai/v1/embeddings"),
        json={"model": BGE, "input": ["a", "b"], "encoding_format": "base64"},
        headers={"authorization": "Bearer t", "cf-aig-skip-cache": "true"},
    )
    assert r.status_code == 200
    assert [len(base64.b64decode(item["embedding"])) for item in r.json()["data"]] == [768 * 4, 768 * 4]
    assert emu.control.stats()["upstream"] == {BGE: 1}


def test_ai_rest_openai_sdk_openai_embeddings_base64_default_matches_float(emu: Emulator) -> None:
    o = emu.outputs
    base_url = f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/openai"
    text = unique()
    with openai.OpenAI(api_key="sk-local", base_url=base_url, max_retries=0) as sdk:
        packed = sdk.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[text])
        floats = sdk.embeddings.create(model="text-embedding-3-small", input=[text], encoding_format="float")
    vector = packed.parse().data[0].embedding
    assert len(vector) == 1536
    assert vector == list(struct.unpack("<1536f", struct.pack("<1536f", *floats.data[0].embedding)))
    assert packed.headers["cf-aig-log-id"]
    assert emu.control.stats()["upstream"] == {"text-embedding-3-small": 2}
