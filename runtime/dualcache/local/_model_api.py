"""Answers of the emulated model providers: Workers AI (``/ai/run``, and ``workers-ai`` behind the gateway)
and OpenAI, by the local models or forwarded to an OpenAI-compatible server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from dualcache.local import _models
from dualcache.local._common import (
    CODE_FAULT,
    WAI_INCOMPLETE,
    WAI_INVALID_DATA,
    WAI_NO_SUCH_MODEL,
    _json_body,
    _method_not_allowed,
)
from dualcache.local._state import EmulatorState

logger = logging.getLogger(__name__)

EMBED_BATCH_MAX = 100

_FORWARDED_HEADERS = ("authorization", "content-type", "accept", "openai-organization", "openai-project")


@dataclass
class ModelReply:
    """A provider's answer: status, JSON body (or raw bytes when forwarded) and whether a local model made it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    local: bool = True


def _json_reply(status: int, data: Any) -> ModelReply:
    return ModelReply(status, json.dumps(data).encode("utf-8"))


def _wai_error(status: int, code: int, message: str) -> ModelReply:
    return _json_reply(
        status, {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    )


def run_workers_ai(model: str, data: Any, prompt_cache: _models.PromptCache | None = None) -> ModelReply:
    """Run a local Workers AI model on ``data`` (the request JSON); in Workers AI's envelope.

    A chat answer's ``usage`` carries ``prompt_tokens_details.cached_tokens`` (the OpenAI-shaped field Workers AI's
    prefix caching reports) from ``prompt_cache``: 0 without one.
    """
    if model in _models.WORKERS_AI_EMBEDDING_MODELS:
        if not isinstance(data, Mapping) or "text" not in data:
            return _wai_error(400, WAI_INCOMPLETE, "Type: 'text' is required: a string or an array of 1..100 strings")
        text = data["text"]
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return _wai_error(
                400, WAI_INVALID_DATA, "'text' must be a non-empty string or an array of non-empty strings"
            )
        if len(texts) > EMBED_BATCH_MAX:
            return _wai_error(400, WAI_INVALID_DATA, f"'text' has {len(texts)} items; the maximum is {EMBED_BATCH_MAX}")
        pooling = data.get("pooling", "mean")
        if pooling not in ("mean", "cls"):
            return _wai_error(400, WAI_INVALID_DATA, f"pooling={pooling!r}: must be 'mean' or 'cls'")
        dims = _models.WORKERS_AI_EMBEDDING_MODELS[model]
        vectors = [_models.embed(f"{pooling}:{t}" if pooling == "cls" else t, dims) for t in texts]
        return _json_reply(
            200,
            {
                "result": {"shape": [len(vectors), dims], "data": vectors, "pooling": pooling},
                "success": True,
                "errors": [],
                "messages": [],
            },
        )
    if model in _models.TEXT_MODELS:
        if not isinstance(data, Mapping):
            return _wai_error(400, WAI_INCOMPLETE, "body must be an object with 'prompt' or 'messages'")
        if isinstance(data.get("messages"), list) and data["messages"]:
            prompt_text = _models.messages_text(data["messages"])
        elif isinstance(data.get("prompt"), str) and data["prompt"]:
            prompt_text = data["prompt"]
        else:
            return _wai_error(400, WAI_INCOMPLETE, "one of 'prompt' (string) or 'messages' (array) is required")
        if data.get("stream"):
            return _wai_error(400, WAI_INVALID_DATA, "streaming is not supported by the local emulator's models")
        response_format = data.get("response_format")
        answer, _ = _models.generate(
            model, prompt_text, response_format if isinstance(response_format, Mapping) else None
        )
        prompt_tokens = _models.token_count(prompt_text)
        completion_tokens = _models.token_count(answer if isinstance(answer, str) else json.dumps(answer))
        cached_tokens = _cached(prompt_cache, model, data, prompt_tokens)
        json_mode = isinstance(response_format, Mapping) and response_format.get("type") in (
            "json_object",
            "json_schema",
        )
        if isinstance(answer, str) or json_mode:
            response: Any = answer  # JSON mode: result.response is an object
        else:
            response = json.dumps(answer)  # JSON asked in the prompt only: a string holding JSON
        return _json_reply(
            200,
            {
                "result": {
                    "response": response,
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                        "prompt_tokens_details": {"cached_tokens": cached_tokens},
                    },
                },
                "success": True,
                "errors": [],
                "messages": [],
            },
        )
    return _wai_error(400, WAI_NO_SUCH_MODEL, f"No such model {model} or task")


def _openai_model_error(model: Any) -> ModelReply:
    return _json_reply(
        404,
        {
            "error": {
                "message": f"The model `{model}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
    )


def _openai_bad_request(message: str, param: str | None = None) -> ModelReply:
    return _json_reply(
        400, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    )


def _known(model: Any, names: frozenset[str] | dict[str, int]) -> str | None:
    """The known model ``model`` names, allowing dated snapshots (``gpt-4o-mini-2024-07-18``)."""
    if not isinstance(model, str):
        return None
    for name in sorted(names, key=len, reverse=True):
        if model == name or (model.startswith(name + "-") and model[len(name) + 1 : len(name) + 2].isdigit()):
            return name
    return None


def _cached(prompt_cache: _models.PromptCache | None, model: str, data: Mapping[str, Any], prompt_tokens: int) -> int:
    """The prompt-cache tokens of a chat request (its ``messages``; a ``prompt`` is one user message), at most
    its prompt tokens."""
    if prompt_cache is None:
        return 0
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        messages = [{"role": "user", "content": data.get("prompt", "")}]
    return min(prompt_cache.cached_tokens(model, messages), prompt_tokens)


def run_openai(path: str, data: Any, now: float, prompt_cache: _models.PromptCache | None = None) -> ModelReply:
    """Answer an OpenAI ``chat/completions`` or ``embeddings`` request with a local model (a chat answer's
    ``usage.prompt_tokens_details.cached_tokens`` from ``prompt_cache``, 0 without one)."""
    if not isinstance(data, Mapping):
        return _openai_bad_request("the request body must be a JSON object")
    model = data.get("model")
    if path == "chat/completions":
        if _known(model, _models.OPENAI_CHAT_MODELS) is None:
            return _openai_model_error(model)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_bad_request("'messages' must be a non-empty array", "messages")
        if data.get("stream"):
            return _openai_bad_request("streaming is not supported by the local emulator's models", "stream")
        response_format = data.get("response_format")
        prompt_text = _models.messages_text(messages)
        if (
            isinstance(response_format, Mapping)
            and response_format.get("type") == "json_object"
            and "json" not in prompt_text.lower()
        ):
            # OpenAI's JSON mode refuses a conversation that never asks for JSON; a client that relied on a
            # lenient emulator would fail in production.
            return _openai_bad_request(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                "messages",
            )
        answer, is_json = _models.generate(
            str(model), prompt_text, response_format if isinstance(response_format, Mapping) else None
        )
        content = json.dumps(answer) if is_json else str(answer)
        prompt_tokens = _models.token_count(prompt_text)
        completion_tokens = _models.token_count(content)
        cached_tokens = _cached(prompt_cache, str(model), data, prompt_tokens)
        digest = hashlib.sha256(f"{model}\x00{prompt_text}".encode()).hexdigest()[:24]
        return _json_reply(
            200,
            {
                "id": f"chatcmpl-local{digest}",
                "object": "chat.completion",
                "created": int(now),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": cached_tokens},
                },
                "system_fingerprint": "fp_dualcache_local",
            },
        )
    if path == "embeddings":
        name = _known(model, _models.OPENAI_EMBEDDING_MODELS)
        if name is None:
            return _openai_model_error(model)
        raw = data.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return _openai_bad_request("'input' must be a non-empty string or an array of non-empty strings", "input")
        if len(texts) > 2048:
            return _openai_bad_request(f"'input' has {len(texts)} items; the maximum is 2048", "input")
        dims = data.get("dimensions", _models.OPENAI_EMBEDDING_MODELS[name])
        if (
            isinstance(dims, bool)
            or not isinstance(dims, int)
            or not 1 <= dims <= _models.OPENAI_EMBEDDING_MODELS[name]
        ):
            return _openai_bad_request(f"dimensions={dims!r} is out of range for {model}", "dimensions")
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _openai_bad_request(f"encoding_format={encoding!r}: must be 'float' or 'base64'", "encoding_format")
        items = []
        for index, text in enumerate(texts):
            vector = _models.embed(text, dims)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii") if encoding == "base64" else vector
            )
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_models.token_count(t) for t in texts)
        return _json_reply(
            200,
            {
                "object": "list",
                "data": items,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )
    return _json_reply(
        404,
        {
            "error": {
                "message": f"the local emulator serves chat/completions and embeddings, not {path!r}",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        },
    )


def _fault_reply(provider: str, status: int) -> ModelReply:
    message = f"injected fault (dualcache emulator): upstream answered {status}"
    if provider == "openai":
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return _json_reply(status, {"error": {"message": message, "type": kind, "param": None, "code": kind}})
    return _wai_error(status, CODE_FAULT, message)


class _Models:
    """Calls of the models (upstream of the gateway, or direct through ``/ai/run``), local or forwarded."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.prompt_cache = _models.PromptCache()

    async def invoke(self, provider: str, model: str, data: Any, request: Request, *, path: str) -> ModelReply:
        """Call the model (upstream): count it, apply upstream faults, answer locally or forward."""
        self.state.count("upstream", model or "(none)")
        fault = await self.state.apply_fault("upstream", provider)
        if fault is not None:
            return _fault_reply(provider, fault)
        if provider == "workers-ai":
            return run_workers_ai(model, data, self.prompt_cache)
        if self.state.openai_upstream is not None:
            return await self.forward(path, request)
        return run_openai(path, data, self.state.clock.now(), self.prompt_cache)

    async def forward(self, path: str, request: Request) -> ModelReply:
        assert self.state.openai_upstream is not None
        url = f"{self.state.openai_upstream}/{path}"
        headers = {h: request.headers[h] for h in _FORWARDED_HEADERS if h in request.headers}
        client = await self.state.http()
        try:
            upstream = await client.request(request.method, url, content=await request.body(), headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("forwarding to the OpenAI upstream failed: %s", type(exc).__name__)
            return _json_reply(
                502,
                {
                    "error": {
                        "message": f"the OpenAI upstream could not be reached: {type(exc).__name__}",
                        "type": "server_error",
                        "param": None,
                        "code": "upstream_unreachable",
                    }
                },
            )
        return ModelReply(
            upstream.status_code,
            upstream.content,
            upstream.headers.get("content-type", "application/json"),
            local=False,
        )

    @staticmethod
    def reply_response(reply: ModelReply, headers: dict[str, str]) -> Response:
        if reply.local:
            headers["x-dualcache-local-model"] = "true"
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers)

    async def route(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response | None:
        """``/client/v4/accounts/{id}/ai/run/{model}``: Workers AI called directly; None: no such route."""
        n = len(seg)
        if n >= 3 and seg[:2] == ["ai", "run"]:
            if request.method != "POST":
                raise _method_not_allowed(request)
            model = "/".join(seg[2:])
            data = await _json_body(request)
            self.state.count("direct", model)
            reply = await self.invoke("workers-ai", model, data, request, path=model)
            return self.reply_response(reply, {})
        return None
