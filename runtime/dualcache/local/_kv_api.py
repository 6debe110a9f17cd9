"""The Workers KV REST API (``/client/v4/accounts/{id}/storage/kv/...``) and the KV semantics of the data
plane: one :class:`_KV` per surface over the one store, its :class:`KVProfile` giving the limits and error
shapes.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from dualcache._policy import KV_MIN_TTL
from dualcache.local._common import (
    CODE_BAD_REQUEST,
    CODE_KEY_NOT_FOUND,
    CODE_NAMESPACE_NOT_FOUND,
    HTTPError,
    _json_body,
    _method_not_allowed,
    _page_params,
    _truthy,
    cf_error,
    envelope,
)
from dualcache.local._state import EmulatorState
from dualcache.local._store import KVEntry

# Limits, as Cloudflare documents them for KV, AI Gateway and Workers AI.
KEY_MAX_BYTES = 512
VALUE_MAX_BYTES = 25 * 1024 * 1024
METADATA_MAX_BYTES = 1024
BULK_WRITE_MAX = 10_000
BULK_GET_MAX = 100
BULK_BODY_MAX_BYTES = 100 * 1000 * 1000
LIST_LIMIT_MIN = 10
"""The smallest ``limit`` a key listing takes. Cloudflare's REST minimum is not documented;
DATAPLANE.md takes 10, so both surfaces refuse 1..9 rather than accept what production may not."""
LIST_LIMIT_MAX = 1000
DATA_PLANE_BATCH_MAX = 100
"""Keys per bulk read, write or delete on the data plane (DATAPLANE.md)."""
DATA_PLANE_BULK_BODY_MAX_BYTES = 32 * 1024 * 1024
DATA_PLANE_PUT_BODY_MAX_BYTES = 25 * 1024 * 1024 + 1024

MAX_EXPIRATION = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest expiration the emulator stores."""


class LimitViolation(Exception):
    """A request broke one of KV's limits: the field, the limit, and a message naming the value.

    Raised by the checks below; the surface's :class:`KVProfile` turns it into the answer, the one place
    where the REST API and the data plane differ in how a violation is reported.
    """

    def __init__(
        self,
        field: str,
        limit: int | None,
        message: str,
        *,
        oversize: bool = False,
        extra: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit
        self.message = message
        self.oversize = oversize
        self.index: int | None = None
        self.extra = dict(extra or {})

    def at(self, index: int) -> LimitViolation:
        """This violation, as one of item ``index`` of a batch."""
        self.index = index
        return self


@dataclass(frozen=True)
class KVProfile:
    """How one surface (the REST API or the data plane) serves the one KV store: limits and error shapes.

    Attributes:
        name: ``rest`` or ``data_plane``.
        stats_group: The stats group its KV operations are counted in.
        bulk_write_max: Pairs per bulk write.
        bulk_delete_max: Keys per bulk delete.
        bulk_get_max: Keys per bulk read.
        bulk_body_max: Largest body (bytes) of a bulk request.
        put_body_max: Largest body (bytes) of a single put, or ``None`` (only the value limit applies).
        oversize_status: Fields whose size violations are 413 (every other violation is 400).
        error_fields: A violation's error object also carries ``field``, ``limit`` and a batch item's
            ``index``, with a code per field.
        max_expiration: The latest expiration (unix seconds) accepted.
        empty_bulk_get: A bulk read of no keys is an empty result (else a 400).
        expiration_on_request: A value GET returns the ``expiration`` header only with ``?expiration=true``.
        metadata_header: A value GET returns the metadata as ASCII JSON in ``cf-kv-metadata``.
        legacy_bulk_delete: ``DELETE /bulk`` deletes too, besides ``POST /bulk/delete``.
    """

    name: str
    stats_group: str
    bulk_write_max: int
    bulk_delete_max: int
    bulk_get_max: int
    bulk_body_max: int
    put_body_max: int | None
    oversize_status: tuple[str, ...]
    error_fields: bool
    max_expiration: int
    empty_bulk_get: bool
    expiration_on_request: bool
    metadata_header: bool
    legacy_bulk_delete: bool

    def violation(self, violation: LimitViolation) -> HTTPError:
        """The answer to ``violation`` on this surface."""
        error: dict[str, Any] = {"code": CODE_BAD_REQUEST, "message": violation.message}
        if self.error_fields:
            error.update(code=DATA_PLANE_FIELD_CODES.get(violation.field, CODE_BAD_REQUEST), field=violation.field)
            if violation.limit is not None:
                error["limit"] = violation.limit
            if violation.index is not None:
                error["index"] = violation.index
            error.update(violation.extra)
        status = 413 if violation.oversize and violation.field in self.oversize_status else 400
        return HTTPError(envelope(None, status=status, errors=[error]))


DATA_PLANE_FIELD_CODES = {
    "key": 10020,
    "metadata": 10021,
    "value": 10022,
    "expiration_ttl": 10023,
    "expiration": 10024,
    "body": 10025,
    "keys": 10026,
    "limit": 10027,
    "type": 10028,
    "cursor": 10029,
    "prefix": 10030,
}
"""The data-plane Worker's error code per violated field (its own numbering, infra/worker/dataplane.js)."""
DATA_PLANE_MAX_SECONDS = 2**31 - 1
"""The binding takes ``expiration`` / ``expirationTtl`` as 32-bit integers, so the Worker refuses larger ones."""


REST_KV = KVProfile(
    name="rest",
    stats_group="kv",
    bulk_write_max=BULK_WRITE_MAX,
    bulk_delete_max=BULK_WRITE_MAX,
    bulk_get_max=BULK_GET_MAX,
    bulk_body_max=BULK_BODY_MAX_BYTES,
    put_body_max=None,
    # The REST status of an oversized value is not documented; 413 Payload Too Large is what an
    # HTTP server says. Every other violation is 400.
    oversize_status=("value", "body"),
    error_fields=False,
    max_expiration=MAX_EXPIRATION,
    # Whether REST takes a bulk read of no keys is not documented; it is refused here.
    empty_bulk_get=False,
    expiration_on_request=False,
    metadata_header=False,
    legacy_bulk_delete=True,
)
"""The Workers KV REST API."""

DATA_PLANE_KV = KVProfile(
    name="data_plane",
    stats_group="data_plane",
    bulk_write_max=DATA_PLANE_BATCH_MAX,
    bulk_delete_max=DATA_PLANE_BATCH_MAX,
    bulk_get_max=DATA_PLANE_BATCH_MAX,
    bulk_body_max=DATA_PLANE_BULK_BODY_MAX_BYTES,
    put_body_max=DATA_PLANE_PUT_BODY_MAX_BYTES,
    oversize_status=("body",),
    error_fields=True,
    max_expiration=DATA_PLANE_MAX_SECONDS,
    empty_bulk_get=True,
    expiration_on_request=True,
    metadata_header=True,
    legacy_bulk_delete=False,
)
"""The data-plane Worker's API (infra/worker/DATAPLANE.md): 100 keys a batch, 32 MiB bodies, ``field``/``limit``."""


def _check_key(key: str) -> None:
    if key in ("", ".", ".."):
        raise LimitViolation("key", KEY_MAX_BYTES, f"Invalid key name {key!r}: a key cannot be empty, '.' or '..'")
    size = len(key.encode("utf-8"))
    if size > KEY_MAX_BYTES:
        # Status for an over-long key is not documented; 400 like the other validation errors.
        raise LimitViolation("key", KEY_MAX_BYTES, f"key name is {size} bytes; the maximum is {KEY_MAX_BYTES} bytes")


def _check_metadata(metadata: Any, *, key: str) -> str | None:
    if metadata is None:
        return None
    # Measured as JavaScript's JSON.stringify writes it (compact, non-ASCII kept as UTF-8, not \uXXXX
    # escapes), which is how a Worker's metadata is serialized; Cloudflare says "1024 bytes (serialized JSON)".
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise LimitViolation(
            "metadata", METADATA_MAX_BYTES, f"metadata of key {key!r} is not valid JSON (NaN or Infinity)"
        ) from None
    size = len(text.encode("utf-8"))
    if size > METADATA_MAX_BYTES:
        raise LimitViolation(
            "metadata",
            METADATA_MAX_BYTES,
            f"metadata of key {key!r} is {size} bytes serialized; the maximum is {METADATA_MAX_BYTES} bytes",
        )
    return text


def _check_value_size(value: bytes, *, key: str) -> None:
    if len(value) > VALUE_MAX_BYTES:
        raise LimitViolation(
            "value",
            VALUE_MAX_BYTES,
            f"value of key {key!r} is {len(value)} bytes; the maximum is {VALUE_MAX_BYTES} (25 MiB)",
            oversize=True,
        )


async def _read_body(request: Request, limit: int | None) -> bytes:
    """The request body; a :class:`LimitViolation` of ``body`` when it is over ``limit`` bytes."""
    if limit is not None:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise LimitViolation(
                "body", limit, f"request body is {declared} bytes; the maximum is {limit} bytes", oversize=True
            )
    body = await request.body()
    if limit is not None and len(body) > limit:
        raise LimitViolation(
            "body", limit, f"request body is {len(body)} bytes; the maximum is {limit} bytes", oversize=True
        )
    return body


def _int_query(request: Request, name: str, limit: int) -> int | None:
    """An integer query parameter; a :class:`LimitViolation` of ``name`` when it is not one."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        number = float(raw)
    except ValueError:
        raise LimitViolation(name, limit, f"{name}={raw!r} is not a number") from None
    if not math.isfinite(number) or number != int(number):
        raise LimitViolation(name, limit, f"{name}={raw!r} is not an integer")
    return int(number)


def _expiration(
    now: float, expiration: Any, expiration_ttl: Any, *, key: str, latest: int = MAX_EXPIRATION
) -> int | None:
    """Resolve ``expiration`` / ``expiration_ttl`` (ttl wins) to unix seconds, at most ``latest``."""
    for name, value in (("expiration", expiration), ("expiration_ttl", expiration_ttl)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value != int(value)
        ):
            raise LimitViolation(name, KV_MIN_TTL, f"Invalid {name} {value!r} for key {key!r}: must be an integer")
    resolved = now + expiration_ttl if expiration_ttl is not None else expiration
    if resolved is not None and resolved > latest:
        # Cloudflare's REST upper bound is not documented; year 9999 keeps the value storable (SQLite
        # INTEGER). The data plane's is the binding's 32-bit range.
        name = "expiration_ttl" if expiration_ttl is not None else "expiration"
        raise LimitViolation(
            name,
            KV_MIN_TTL,  # the field's limit as the Worker reports it; the upper bound is in the message
            f"Invalid {name} {expiration_ttl if expiration_ttl is not None else expiration} for key {key!r}: "
            f"the expiration must be before {latest}" + (" (year 9999)" if latest == MAX_EXPIRATION else ""),
        )
    if expiration_ttl is not None:
        if expiration_ttl < KV_MIN_TTL:
            raise LimitViolation(
                "expiration_ttl",
                KV_MIN_TTL,
                f"Invalid expiration_ttl of {expiration_ttl}. Please specify integer greater than or equal to "
                f"{KV_MIN_TTL}.",
            )
        return int(now + expiration_ttl)
    if expiration is not None:
        if expiration < now + KV_MIN_TTL:
            raise LimitViolation(
                "expiration",
                KV_MIN_TTL,
                f"Invalid expiration of {expiration}. Expiration times must be at least {KV_MIN_TTL} seconds in "
                "the future.",
            )
        return int(expiration)
    return None


def _parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise cf_error(400, CODE_BAD_REQUEST, "multipart body could not be parsed (missing boundary?)")
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = payload
    return parts


class _KV:
    """The KV routes of one surface, over the one store: ``profile`` says which limits and shapes apply."""

    def __init__(self, state: EmulatorState, profile: KVProfile) -> None:
        self.state = state
        self.profile = profile

    def count(self, operation: str) -> None:
        self.state.count(self.profile.stats_group, operation)

    async def item(
        self, request: Request, account_id: str, namespace_id: str, raw: list[str], seg: list[str]
    ) -> Response | None:
        """Serve a route under one namespace (``values/{key}``, ``metadata/{key}``, ``keys``, ``bulk[/...]``).

        ``raw`` holds the path segments after the namespace as sent, ``seg`` the same decoded. Returns None
        when no route matches.
        """
        n = len(seg)
        try:
            if n >= 2 and seg[0] in ("values", "metadata"):
                key = unquote("/".join(raw[1:]))
                if seg[0] == "values":
                    return await self.value(request, account_id, namespace_id, key)
                return await self.metadata(request, account_id, namespace_id, key)
            if n == 1 and seg[0] == "keys":
                return await self.keys(request, account_id, namespace_id)
            if n in (1, 2) and seg[0] == "bulk":
                return await self.bulk(request, account_id, namespace_id, seg[1] if n == 2 else None)
        except LimitViolation as violation:
            raise self.profile.violation(violation) from None
        return None

    def namespace(self, account_id: str, namespace_id: str) -> None:
        if self.state.store.namespace(account_id, namespace_id) is None:
            raise cf_error(404, CODE_NAMESPACE_NOT_FOUND, "namespace not found")

    async def namespaces(self, request: Request, account_id: str) -> Response:
        store = self.state.store
        if request.method == "POST":
            data = await _json_body(request)
            title = data.get("title") if isinstance(data, Mapping) else None
            if not isinstance(title, str) or not title.strip():
                raise cf_error(400, CODE_BAD_REQUEST, "title is required: a non-empty string")
            if store.namespace_by_title(account_id, title) is not None:
                # Cloudflare does not document the real code; this one is the emulator's.
                raise cf_error(400, 10014, f"a namespace with title {title!r} already exists in this account")
            namespace_id = uuid.uuid4().hex
            store.create_namespace(account_id, namespace_id, title)
            return envelope(self._ns(namespace_id, title))
        if request.method != "GET":
            raise _method_not_allowed(request)
        page, per_page = _page_params(request)
        items = store.namespaces(account_id)
        chunk = items[(page - 1) * per_page : page * per_page]
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(items),
            "total_pages": max(1, math.ceil(len(items) / per_page)),
        }
        return envelope([self._ns(i, t) for i, t in chunk], result_info=info)

    @staticmethod
    def _ns(namespace_id: str, title: str) -> dict[str, Any]:
        return {"id": namespace_id, "title": title, "supports_url_encoding": True}

    async def one_namespace(self, request: Request, account_id: str, namespace_id: str) -> Response:
        store = self.state.store
        found = store.namespace(account_id, namespace_id)
        if found is None:
            raise cf_error(404, CODE_NAMESPACE_NOT_FOUND, "namespace not found")
        if request.method == "GET":
            return envelope(self._ns(*found))
        if request.method == "PUT":
            data = await _json_body(request)
            title = data.get("title") if isinstance(data, Mapping) else None
            if not isinstance(title, str) or not title.strip():
                raise cf_error(400, CODE_BAD_REQUEST, "title is required: a non-empty string")
            store.create_namespace(account_id, namespace_id, title)
            return envelope(self._ns(namespace_id, title))
        if request.method == "DELETE":
            store.delete_namespace(account_id, namespace_id)
            return envelope({})
        raise _method_not_allowed(request)

    async def value(self, request: Request, account_id: str, namespace_id: str, key: str) -> Response:
        state = self.state
        self.namespace(account_id, namespace_id)
        _check_key(key)
        now = state.clock.now()
        profile = self.profile
        if request.method == "GET":
            self.count("get")
            entry = state.store.kv_get(namespace_id, key, now)
            if entry is None:
                raise cf_error(404, CODE_KEY_NOT_FOUND, "get: 'key not found'")
            headers: dict[str, str] = {}
            if entry.expiration is not None and (
                not profile.expiration_on_request or _truthy(request.query_params.get("expiration"))
            ):
                headers["expiration"] = str(entry.expiration)
            if profile.metadata_header and entry.metadata is not None:
                # ASCII JSON: a header holds Latin-1 only, so non-ASCII metadata travels as \uXXXX escapes.
                headers["cf-kv-metadata"] = json.dumps(json.loads(entry.metadata), separators=(",", ":"))
            return Response(entry.value, media_type="application/octet-stream", headers=headers)
        if request.method == "PUT":
            self.count("put")
            expiration = _int_query(request, "expiration", KV_MIN_TTL)
            ttl = _int_query(request, "expiration_ttl", KV_MIN_TTL)
            body = await _read_body(request, profile.put_body_max)
            content_type = request.headers.get("content-type", "")
            metadata_text: str | None = None
            if content_type.lower().startswith("multipart/form-data"):
                parts = _parse_multipart(body, content_type)
                if "value" not in parts:
                    raise cf_error(400, CODE_BAD_REQUEST, "multipart body has no 'value' part")
                value = parts["value"]
                if "metadata" in parts and parts["metadata"].strip():
                    try:
                        metadata = json.loads(parts["metadata"])
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise LimitViolation(
                            "metadata", METADATA_MAX_BYTES, "the 'metadata' part is not valid JSON"
                        ) from None
                    metadata_text = _check_metadata(metadata, key=key)
            else:
                value = body
            _check_value_size(value, key=key)
            exp = _expiration(now, expiration, ttl, key=key, latest=profile.max_expiration)
            state.store.kv_put_many(namespace_id, [KVEntry(key, value, metadata_text, exp)])
            return envelope({})
        if request.method == "DELETE":
            self.count("delete")
            state.store.kv_delete_many(namespace_id, [key])
            return envelope({})
        raise _method_not_allowed(request)

    async def metadata(self, request: Request, account_id: str, namespace_id: str, key: str) -> Response:
        if request.method != "GET":
            raise _method_not_allowed(request)
        self.namespace(account_id, namespace_id)
        _check_key(key)
        self.count("get_metadata")
        entry = self.state.store.kv_get(namespace_id, key, self.state.clock.now())
        if entry is None:
            raise cf_error(404, CODE_KEY_NOT_FOUND, "get: 'key not found'")
        return envelope(json.loads(entry.metadata) if entry.metadata is not None else None)

    async def keys(self, request: Request, account_id: str, namespace_id: str) -> Response:
        if request.method != "GET":
            raise _method_not_allowed(request)
        self.namespace(account_id, namespace_id)
        self.count("list")
        params = request.query_params
        raw_limit = params.get("limit")
        limit = LIST_LIMIT_MAX
        if raw_limit is not None and raw_limit != "":
            limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 7 else -1
            if not LIST_LIMIT_MIN <= limit <= LIST_LIMIT_MAX:
                # The REST minimum is not documented: 10 is taken, as in
                # DATAPLANE.md, so a client that works here never sends a limit production might refuse.
                shown = str(limit) if limit >= 0 else repr(raw_limit)
                raise LimitViolation(
                    "limit",
                    LIST_LIMIT_MAX,
                    f"limit={shown} must be an integer {LIST_LIMIT_MIN}..{LIST_LIMIT_MAX}",
                    extra={"min": LIST_LIMIT_MIN},
                )
        cursor = params.get("cursor") or None
        after: str | None = None
        if cursor:
            try:
                after = base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("utf-8")
            except (ValueError, UnicodeError):
                raise cf_error(400, CODE_BAD_REQUEST, f"cursor={cursor!r} is not a cursor this API returned") from None
        entries, more = self.state.store.kv_list(
            namespace_id, prefix=params.get("prefix", ""), after=after, limit=limit, now=self.state.clock.now()
        )
        result = []
        for e in entries:
            item: dict[str, Any] = {"name": e.key}
            if e.expiration is not None:
                item["expiration"] = e.expiration
            if e.metadata is not None:
                item["metadata"] = json.loads(e.metadata)
            result.append(item)
        next_cursor = (
            base64.urlsafe_b64encode(entries[-1].key.encode("utf-8")).decode("ascii").rstrip("=")
            if more and entries
            else ""
        )
        return envelope(result, result_info={"count": len(result), "cursor": next_cursor})

    async def bulk(self, request: Request, account_id: str, namespace_id: str, action: str | None) -> Response:
        self.namespace(account_id, namespace_id)
        method = request.method
        if action is None and method == "PUT":
            return await self._bulk_write(request, namespace_id)
        if (action is None and method == "DELETE" and self.profile.legacy_bulk_delete) or (
            action == "delete" and method == "POST"
        ):
            return await self._bulk_delete(request, namespace_id)
        if action == "get" and method == "POST":
            return await self._bulk_get(request, namespace_id)
        raise _method_not_allowed(request)

    async def _bulk_write(self, request: Request, namespace_id: str) -> Response:
        state = self.state
        self.count("bulk_write")
        data = await self._bulk_json(request)
        if not isinstance(data, list):
            raise LimitViolation("body", None, "bulk write body must be a JSON array of {key, value, ...}")
        most = self.profile.bulk_write_max
        if len(data) > most:
            raise LimitViolation("keys", most, f"bulk write of {len(data)} keys; the maximum is {most} keys")
        now = state.clock.now()
        entries = []
        for index, item in enumerate(data):
            try:
                entries.append(self._bulk_item(index, item, now))
            except LimitViolation as violation:
                raise violation.at(index) from None
        state.store.kv_put_many(namespace_id, entries)
        return envelope({"successful_key_count": len(entries), "unsuccessful_keys": []})

    async def _bulk_json(self, request: Request) -> Any:
        await _read_body(request, self.profile.bulk_body_max)
        try:
            return await _json_body(request)
        except HTTPError:
            raise LimitViolation("body", None, "the request body is not valid JSON") from None

    def _bulk_item(self, index: int, item: Any, now: float) -> KVEntry:
        if not isinstance(item, Mapping):
            raise LimitViolation("body", None, f"item {index} must be an object with a string 'key'")
        key = item.get("key")
        if not isinstance(key, str):
            raise LimitViolation("key", KEY_MAX_BYTES, f"item {index} must be an object with a string 'key'")
        _check_key(key)
        raw = item.get("value")
        if not isinstance(raw, str):
            raise LimitViolation("value", None, f"item {index} (key {key!r}): 'value' must be a string")
        if item.get("base64"):
            try:
                value = base64.b64decode(raw, validate=True)
            except ValueError:
                raise LimitViolation("value", None, f"item {index} (key {key!r}): value is not base64") from None
        else:
            value = raw.encode("utf-8")
        _check_value_size(value, key=key)
        metadata = _check_metadata(item.get("metadata"), key=key)
        exp = _expiration(
            now, item.get("expiration"), item.get("expiration_ttl"), key=key, latest=self.profile.max_expiration
        )
        return KVEntry(key, value, metadata, exp)

    @staticmethod
    def _check_keys(keys: list[str]) -> None:
        for index, key in enumerate(keys):
            try:
                _check_key(key)
            except LimitViolation as violation:
                raise violation.at(index) from None

    async def _bulk_delete(self, request: Request, namespace_id: str) -> Response:
        self.count("bulk_delete")
        data = await self._bulk_json(request)
        if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
            raise LimitViolation("body", None, "bulk delete body must be a JSON array of key names")
        most = self.profile.bulk_delete_max
        if len(data) > most:
            raise LimitViolation("keys", most, f"bulk delete of {len(data)} keys; the maximum is {most} keys")
        self._check_keys(data)
        self.state.store.kv_delete_many(namespace_id, data)
        return envelope({"successful_key_count": len(data), "unsuccessful_keys": []})

    async def _bulk_get(self, request: Request, namespace_id: str) -> Response:
        self.count("bulk_get")
        data = await self._bulk_json(request)
        most = self.profile.bulk_get_max
        keys = data.get("keys") if isinstance(data, Mapping) else None
        if (
            not isinstance(keys, list)
            or not (keys or self.profile.empty_bulk_get)
            or not all(isinstance(k, str) for k in keys)
        ):
            least = 0 if self.profile.empty_bulk_get else 1
            raise LimitViolation("keys", most, f'bulk get body must be {{"keys": [{least}..{most} key names], ...}}')
        if len(keys) > most:
            raise LimitViolation("keys", most, f"bulk get of {len(keys)} keys; the maximum is {most} keys")
        assert isinstance(data, Mapping)
        kind = data.get("type", "text")
        if kind not in ("text", "json"):
            raise LimitViolation("type", None, f"type={kind!r}: must be 'text' or 'json'")
        with_metadata = data.get("withMetadata", False)
        if not isinstance(with_metadata, bool):
            raise LimitViolation("withMetadata", None, f"withMetadata={with_metadata!r}: must be true or false")
        self._check_keys(keys)
        found = self.state.store.kv_get_many(namespace_id, keys, self.state.clock.now())
        values: dict[str, Any] = {}
        for key in keys:
            entry = found.get(key)
            if entry is None:
                values[key] = None
                continue
            try:
                text = entry.value.decode("utf-8")
            except UnicodeDecodeError:
                raise cf_error(
                    400, CODE_BAD_REQUEST, f"value of key {key!r} is binary; bulk get returns text values only"
                ) from None
            value: Any = text
            if kind == "json":
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise cf_error(400, CODE_BAD_REQUEST, f"value of key {key!r} is not valid JSON") from None
            if with_metadata:
                item: dict[str, Any] = {
                    "value": value,
                    "metadata": json.loads(entry.metadata) if entry.metadata is not None else None,
                }
                if entry.expiration is not None:
                    item["expiration"] = entry.expiration
                values[key] = item
            else:
                values[key] = value
        return envelope({"values": values})

    async def route(self, request: Request, account_id: str, raw: list[str], seg: list[str]) -> Response | None:
        """``/client/v4/accounts/{id}/storage/kv/namespaces[/...]`` (the REST surface); None: no such route.

        ``raw`` and ``seg`` are the path segments after the account id, as sent and decoded.
        """
        n = len(seg)
        if n >= 3 and seg[:3] == ["storage", "kv", "namespaces"]:
            fault = await self.state.apply_fault("kv")
            if fault is not None:
                raise self.state.fault_error("kv", fault)
            if n == 3:
                return await self.namespaces(request, account_id)
            namespace_id = seg[3]
            if n == 4:
                return await self.one_namespace(request, account_id, namespace_id)
            return await self.item(request, account_id, namespace_id, raw[4:], seg[4:])
        return None
