"""Helpers shared by the runtime tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dualcache import KVStore, Namespace, StackOutputs
from dualcache._records import expected_dimensions


class FakeClock:
    """A unix clock moved by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class KVCase:
    """A store under test, how to move its clock, and how many HTTP requests it has received."""

    store: KVStore
    advance: Callable[[float], None]
    requests: Callable[[], int]


class FakeCloud:
    """An ``httpx.MockTransport`` handler playing the gateway, Workers AI and OpenAI.

    ``faults[route]`` is a list of statuses answered (and consumed) before normal answers, where route
    is ``gateway``, ``direct``, ``openai-direct`` or ``kv``. ``cache_status`` is what the gateway reports.
    """

    DIMS = 768  # the dimension of @cf/baai/bge-base-en-v1.5: a stored vector of another length is a miss

    def __init__(self, *, delay: float = 0.0) -> None:
        self.requests: list[httpx.Request] = []
        self.faults: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.always_fail: dict[str, int] = {}
        self.cache_status = "MISS"
        self.delay = delay
        self.cancelled = 0  # requests whose handling was cancelled (the client gave up on them)

    @staticmethod
    def vector(text: str, dims: int = DIMS) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [b / 256 for b in (digest * (dims // 32 + 1))[:dims]]  # exact in float32, as stored

    def route_of(self, request: httpx.Request) -> str:
        host = request.url.host
        if host == "gw.test":
            return "gateway"
        if host == "openai.test":
            return "openai-direct"
        return "direct"

    def calls(self, route: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if route is None or self.route_of(r) == route]

    def fail(self, route: str, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.faults.setdefault(route, []).extend((s, headers or {}) for s in statuses)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        route = self.route_of(request)
        if route in self.always_fail:
            return httpx.Response(self.always_fail[route], json={"success": False, "errors": [{"code": 1}]})
        queued = self.faults.get(route)
        if queued:
            status, headers = queued.pop(0)
            return httpx.Response(status, json={"success": False, "errors": [{"code": 1}]}, headers=headers)
        body = json.loads(request.content)
        path = request.url.path
        headers = {"cf-aig-cache-status": self.cache_status, "cf-aig-log-id": "01LOG"} if route == "gateway" else {}
        if path.endswith("chat/completions"):
            # A score: the built-in job-analysis schema wants one (dualcache._answers).
            content = json.dumps({"model": body["model"], "echo": body["messages"][-1]["content"], "score": 80})
            if "response_format" not in body:
                content = "plain text letter"
            answer = {"choices": [{"message": {"role": "assistant", "content": content}}]}
            return httpx.Response(200, json=answer, headers=headers)
        model = path.split("/workers-ai/")[-1] if route == "gateway" else path.split("/ai/run/")[-1]
        if "bge" in model:
            texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
            dims = expected_dimensions(model) or self.DIMS  # the model's dimension: another is a bad answer
            result: Any = {"shape": [len(texts), dims], "data": [self.vector(t, dims) for t in texts]}
        else:
            echo = str(body["messages"][-1]["content"])[:50]
            result = {"response": {"model": model, "echo": echo, "score": 80}}  # a score: see above
        return httpx.Response(
            200, json={"result": result, "success": True, "errors": [], "messages": []}, headers=headers
        )


def fake_outputs(*, account_id: str = "a" * 32) -> StackOutputs:
    """Outputs of a stack on fake hosts (``api.test``, ``gw.test``), trusted explicitly: by default only
    Cloudflare's own hosts (or loopback) get a token."""
    return StackOutputs.from_data(
        dict(
            stack="test",
            account_id=account_id,
            gateway_id="gw",
            api_base_url="https://api.test/client/v4",
            gateway_base_url="https://gw.test/v1",
            namespaces={n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},
            worker_name="api",
        ),
        trusted_hosts=["api.test", "gw.test"],
    )
