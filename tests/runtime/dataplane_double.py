"""A TEST DOUBLE of the data-plane Worker's KV API (infra/worker/DATAPLANE.md), as an httpx.MockTransport handler.

Small on purpose: it implements the routes, envelopes, auth and limits the runtime's KV client relies on,
over an in-memory dict and a fake clock, so the behavioural KV suite can run over ``DataPlaneKVBackend``
while the real Worker and the emulator's data-plane API are built elsewhere. It is not the contract: the
contract suite (tests/contract/) runs against the real Worker in workerd and the emulator.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx

BINDINGS = ("SESSIONS", "RATE_LIMITS", "OAUTH_STATES", "JOB_ANALYSIS_CACHE", "EMBEDDINGS_CACHE", "API_CACHE")
BULK_MAX = 100
BULK_BODY_MAX = 32 * 1024 * 1024
VALUE_MAX = 25 * 1024 * 1024


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        error = {"code": code, "message": message, **extra}
        body = {"success": False, "errors": [error], "messages": [], "result": None}
        self.response = httpx.Response(status, json=body)


def _envelope(result: Any, **more: Any) -> httpx.Response:
    return httpx.Response(200, json={"success": True, "errors": [], "messages": [], "result": result, **more})


class FakeDataPlane:
    """The handler. ``binary_bulk`` is what a text bulk get does with a non-UTF-8 value: ``"replace"``
    (a Worker's TextDecoder: U+FFFD) or ``"reject"`` (a 400, as the emulator's REST API does today).

    Attributes:
        requests: Every request received, in order (authenticated or not).
    """

    def __init__(
        self, token: str, clock: Callable[[], float], *, binary_bulk: str = "replace", bulk_metadata: bool = True
    ) -> None:
        self.token = token
        self.clock = clock
        self.binary_bulk = binary_bulk
        self.bulk_metadata = bulk_metadata  # False: a bulk get that ignores withMetadata (plain values)
        self.requests: list[httpx.Request] = []
        self.data: dict[str, dict[str, tuple[bytes, Any, int | None]]] = {b: {} for b in BINDINGS}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        try:
            return self._route(request)
        except _Refused as refused:
            return refused.response

    # -- helpers

    def _live(self, binding: str, key: str) -> tuple[bytes, Any, int | None] | None:
        item = self.data[binding].get(key)
        if item is not None and item[2] is not None and item[2] <= self.clock():
            del self.data[binding][key]
            return None
        return item

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str) or not 1 <= len(key.encode()) <= 512 or key in (".", ".."):
            raise _Refused(400, 10020, "invalid key", field="key", limit=512)
        return key

    def _put(self, binding: str, key: str, value: bytes, metadata: Any, ttl: Any) -> None:
        self._check_key(key)
        if len(value) > VALUE_MAX:
            raise _Refused(400, 10021, "value too large", field="value", limit=VALUE_MAX)
        if metadata is not None and len(json.dumps(metadata, ensure_ascii=False).encode()) > 1024:
            raise _Refused(400, 10022, "metadata too large", field="metadata", limit=1024)
        expiration = None
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 60:
                raise _Refused(400, 10023, "expiration_ttl must be >= 60", field="expiration_ttl", limit=60)
            expiration = int(self.clock()) + ttl
        self.data[binding][key] = (value, metadata, expiration)

    # -- routes

    def _route(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise _Refused(401, 10000, "Authentication error")
        parts = request.url.raw_path.decode().split("?")[0].split("/")
        if len(parts) < 4 or parts[1] != "kv":
            raise _Refused(404, 10000, "no such route")
        binding, rest = parts[2], parts[3:]
        if binding not in BINDINGS:
            raise _Refused(404, 10013, f"unknown binding {binding!r}")
        method = request.method
        if rest[0] in ("values", "metadata") and len(rest) == 2:
            return self._one(request, binding, rest[0], unquote(rest[1]))
        if rest == ["bulk", "get"] and method == "POST":
            return self._bulk_get(binding, json.loads(request.content))
        if rest == ["bulk"] and method == "PUT":
            if len(request.content) > BULK_BODY_MAX:
                raise _Refused(413, 10024, "body too large", field="body", limit=BULK_BODY_MAX)
            return self._bulk_put(binding, json.loads(request.content))
        if rest == ["bulk", "delete"] and method == "POST":
            keys = json.loads(request.content)
            if len(keys) > BULK_MAX:
                raise _Refused(400, 10025, "too many keys", field="keys", limit=BULK_MAX)
            for key in keys:
                self.data[binding].pop(self._check_key(key), None)
            return _envelope({"successful_key_count": len(keys), "unsuccessful_keys": []})
        if rest == ["keys"] and method == "GET":
            return self._list(binding, request.url.params)
        raise _Refused(405, 10000, "method not allowed")

    def _one(self, request: httpx.Request, binding: str, kind: str, key: str) -> httpx.Response:
        self._check_key(key)
        if request.method == "GET":
            item = self._live(binding, key)
            if item is None:
                raise _Refused(404, 10009, "key not found")
            if kind == "metadata":
                return _envelope(item[1])
            headers = {"cf-kv-metadata": json.dumps(item[1])} if item[1] is not None else {}
            return httpx.Response(200, content=item[0], headers=headers)
        if request.method == "DELETE" and kind == "values":
            self.data[binding].pop(key, None)
            return _envelope({})
        if request.method == "PUT" and kind == "values":
            ttl_text = request.url.params.get("expiration_ttl")
            ttl = int(ttl_text) if ttl_text is not None else None
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"content-type: " + content_type.encode() + b"\r\n\r\n" + request.content
                )
                fields = {
                    part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                    for part in message.iter_parts()
                }
                self._put(binding, key, fields["value"], json.loads(fields["metadata"]), ttl)
            else:
                self._put(binding, key, request.content, None, ttl)
            return _envelope({})
        raise _Refused(405, 10000, "method not allowed")

    def _bulk_get(self, binding: str, body: dict[str, Any]) -> httpx.Response:
        keys = body["keys"]
        if len(keys) > BULK_MAX:
            raise _Refused(400, 10025, "too many keys", field="keys", limit=BULK_MAX)
        values: dict[str, Any] = {}
        for key in keys:
            item = self._live(binding, self._check_key(key))
            if item is None:
                values[key] = None
                continue
            try:
                text = item[0].decode("utf-8")
            except UnicodeDecodeError:
                if self.binary_bulk == "reject":
                    raise _Refused(400, 10026, f"value of key {key!r} is binary", field="value") from None
                text = item[0].decode("utf-8", errors="replace")
            with_metadata = body.get("withMetadata") is True and self.bulk_metadata
            values[key] = {"value": text, "metadata": item[1]} if with_metadata else text
        return _envelope({"values": values})

    def _bulk_put(self, binding: str, items: list[dict[str, Any]]) -> httpx.Response:
        if len(items) > BULK_MAX:
            raise _Refused(400, 10025, "too many keys", field="keys", limit=BULK_MAX)
        for item in items:
            raw = item["value"]
            value = base64.b64decode(raw) if item.get("base64") else raw.encode("utf-8")
            self._put(binding, item["key"], value, item.get("metadata"), item.get("expiration_ttl"))
        return _envelope({"successful_key_count": len(items), "unsuccessful_keys": []})

    def _list(self, binding: str, params: httpx.QueryParams) -> httpx.Response:
        limit = int(params.get("limit", "1000"))
        if not 10 <= limit <= 1000:
            raise _Refused(400, 10027, "limit must be 10..1000", field="limit", limit=1000)
        prefix = params.get("prefix", "")
        names = sorted((k for k in list(self.data[binding]) if k.startswith(prefix)), key=lambda k: k.encode())
        names = [k for k in names if self._live(binding, k) is not None]
        cursor = params.get("cursor")
        if cursor:
            after = base64.urlsafe_b64decode(cursor.encode()).decode()
            names = [k for k in names if k.encode() > after.encode()]
        page = names[:limit]
        result = []
        for name in page:
            _, metadata, expiration = self.data[binding][name]
            entry: dict[str, Any] = {"name": name}
            if expiration is not None:
                entry["expiration"] = expiration
            if metadata is not None:
                entry["metadata"] = metadata
            result.append(entry)
        more = len(names) > limit
        next_cursor = base64.urlsafe_b64encode(page[-1].encode()).decode() if more and page else ""
        return _envelope(result, result_info={"count": len(result), "cursor": next_cursor})
