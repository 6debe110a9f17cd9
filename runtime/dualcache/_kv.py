"""Key-value stores: narrow async backends (memory, SQLite, HTTP) and one front class.

A backend implements a few primitives and nothing else. :class:`KVStore` in front of it checks
Cloudflare's limits before any I/O (key <= 512 bytes, value <= 25 MiB, metadata <= 1024 bytes, TTL
>= 60 s, list limit 10..1000), serializes values, splits bulk calls into the backend's batch sizes
(reads <= 100 keys; writes by count and by body bytes), applies time budgets (reads: the timeout;
writes: sized for their body), counts round trips and maps foreign exceptions to the
:mod:`dualcache._exceptions` tree. A missing key is ``None``.

One HTTP implementation speaks the KV REST API's shapes in two configurations:
:class:`CloudflareKVBackend` (the Cloudflare REST API, behind a per-token request budget: for
administration, warm-up and local use) and :class:`DataPlaneKVBackend` (dualcache's own Worker, the
production data path: no Cloudflare API call, no budget).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from dualcache._breaker import CircuitBreaker
from dualcache._budget import RequestBudget
from dualcache._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    ConfigError,
    InvalidInputError,
    RateLimitedError,
    SkippedError,
    UsageError,
)
from dualcache._keys import check_key
from dualcache._policy import KV_MIN_TTL, Namespace
from dualcache._redact import auth_headers, redact_url, scrubbed
from dualcache._transport import (
    Abandoner,
    AdmissionTimeout,
    BudgetExceeded,
    HeldPlace,
    admission_of,
    current_ticket,
    held_place,
    is_admission_timeout,
    run_bounded,
)

__all__ = [
    "DATA_PLANE_BULK_BODY_MAX",
    "DATA_PLANE_BULK_WRITE_MAX",
    "KV_BULK_BODY_MAX",
    "KV_BULK_GET_MAX",
    "KV_BULK_WRITE_MAX",
    "KV_LIST_MAX",
    "KV_LIST_MIN",
    "KV_MAX_METADATA_BYTES",
    "KV_MAX_VALUE_BYTES",
    "KV_WRITE_THROUGHPUT",
    "Clock",
    "CloudflareKVBackend",
    "DataPlaneKVBackend",
    "KVBackend",
    "KVBatchRead",
    "KVEntry",
    "KVKey",
    "KVPage",
    "KVStore",
    "MemoryKVBackend",
    "SQLiteKVBackend",
    "check_metadata",
    "check_ttl",
    "check_value",
    "parse_retry_after",
    "write_timeout",
]

logger = logging.getLogger(__name__)

KV_MAX_VALUE_BYTES = 25 * 1024 * 1024
"""Largest KV value, in bytes (25 MiB)."""
KV_MAX_METADATA_BYTES = 1024
"""Largest KV metadata, serialized as JSON, in bytes."""
KV_BULK_GET_MAX = 100
"""Most keys one bulk read may name."""
KV_BULK_WRITE_MAX = 10_000
"""Most entries one REST bulk write or bulk delete may carry."""
KV_BULK_BODY_MAX = 100_000_000
"""Largest REST bulk-write request body, in bytes (100 MB)."""
DATA_PLANE_BULK_WRITE_MAX = 100
"""Most entries one data-plane bulk write or bulk delete may carry (infra/worker/DATAPLANE.md)."""
DATA_PLANE_BULK_BODY_MAX = 32 * 1024 * 1024
"""Largest data-plane bulk request body, in bytes (32 MiB)."""
KV_LIST_MIN = 10
"""Smallest ``limit`` of a listing Cloudflare accepts."""
KV_LIST_MAX = 1000
"""Largest ``limit`` of a listing (and the default)."""
KV_WRITE_THROUGHPUT = 1024 * 1024
"""Bytes per second a KV write is assumed to move at least, to size its time budget.

Deliberately conservative (8 Mbit/s, a slow uplink or a busy Worker): the budget is an upper bound
after which a write is abandoned, so too generous costs nothing but a late error, while too tight
reports a write failed that landed (10,000 embeddings, 40.8 MB, get 1 s + 39 s).
"""

_BINDINGS = tuple(n.value for n in Namespace)
_KV_READS = frozenset({"get", "get_with_metadata", "get_many", "list"})

Clock = Callable[[], float]
"""A function returning the current unix time in seconds (``time.time`` by default)."""


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One value to write.

    Attributes:
        key: The key name.
        value: The value, as bytes.
        ttl: ``expiration_ttl`` in seconds (>= 60), or ``None`` for no expiry.
        metadata: JSON-serializable metadata (<= 1024 bytes serialized), or ``None``.
    """

    key: str
    value: bytes
    ttl: int | None = None
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class KVKey:
    """One key of a listing.

    Attributes:
        name: The key name.
        expiration: Unix time (seconds) at which it expires, or ``None``.
        metadata: Its metadata, or ``None``.
    """

    name: str
    expiration: int | None = None
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class KVPage:
    """One page of a listing.

    Attributes:
        keys: The keys of this page, sorted by their UTF-8 bytes.
        cursor: Pass it back to get the next page; ``None`` when this was the last page.
    """

    keys: list[KVKey]
    cursor: str | None


@runtime_checkable
class KVBackend(Protocol):
    """The primitives a KV backend implements. Inputs are already validated by :class:`KVStore`.

    A backend may also declare its limits as attributes, which :class:`KVStore` reads when present:
    ``bulk_get_max`` (keys per bulk read, default 100), ``bulk_write_max`` (entries per bulk write or
    delete, default 10,000), ``bulk_body_max`` (bytes of a bulk-write body, default none) and
    ``bulk_item_size(entry) -> int`` (bytes an entry takes in that body).
    """

    name: str
    """Short name used in errors and counters (``memory``, ``sqlite``, ``cloudflare``)."""

    async def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or ``None`` when it is missing or expired."""
        ...

    async def get_with_metadata(self, key: str) -> tuple[bytes, Any] | None:
        """Return ``(value, metadata)`` of ``key``, or ``None`` when it is missing or expired."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Return the values of at most 100 distinct ``keys``; missing keys are left out."""
        ...

    async def put(self, entry: KVEntry) -> None:
        """Write one value."""
        ...

    async def put_many(self, entries: Sequence[KVEntry]) -> None:
        """Write at most 10,000 values in one round trip."""
        ...

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete at most 10,000 keys in one round trip."""
        ...

    async def list(self, *, prefix: str | None, cursor: str | None, limit: int) -> KVPage:
        """Return one page of keys starting with ``prefix``, after ``cursor``."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds."""
        ...


# ---------------------------------------------------------------------------------------------------
# Pure checks


def check_ttl(ttl: object) -> int | None:
    """Return ``ttl`` if KV accepts it as ``expiration_ttl``.

    Raises:
        InvalidInputError: not ``None`` and not an integer >= 60.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < KV_MIN_TTL:
        raise InvalidInputError(f"ttl={ttl!r}: a KV expiration_ttl must be an integer >= {KV_MIN_TTL} seconds, or None")
    return ttl


def check_value(key: str, value: object) -> bytes:
    """Return ``value`` as bytes (``str`` is UTF-8 encoded) if it fits in a KV value.

    Raises:
        InvalidInputError: not ``bytes``/``str``, or larger than 25 MiB.
    """
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise InvalidInputError(
            f"value for KV key {key!r} must be bytes or str, got {type(value).__name__}; use put_json for objects"
        )
    if len(data) > KV_MAX_VALUE_BYTES:
        raise InvalidInputError(
            f"value for KV key {key!r} is {len(data)} bytes; Cloudflare KV values are at most {KV_MAX_VALUE_BYTES}"
        )
    return data


def check_metadata(key: str, metadata: object) -> Any:
    """Return ``metadata`` if it is JSON-serializable and at most 1024 bytes serialized.

    Raises:
        InvalidInputError: not serializable, or too large.
    """
    if metadata is None:
        return None
    try:
        # Measured as JSON.stringify writes it (UTF-8, not \u escapes), as the emulator and Workers do.
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata for KV key {key!r} is not JSON-serializable: {exc}") from None
    if size > KV_MAX_METADATA_BYTES:
        raise InvalidInputError(
            f"metadata for KV key {key!r} is {size} bytes as JSON; Cloudflare KV metadata is at most "
            f"{KV_MAX_METADATA_BYTES} bytes"
        )
    return metadata


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not delta-seconds: an HTTP date is the other form RFC 9110 allows
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ---------------------------------------------------------------------------------------------------
# Memory


class MemoryKVBackend:
    """A KV namespace in a dict, with expiry by an injected clock. For tests and single-process use.

    Args:
        clock: Returns the current unix time; ``time.time`` when ``None``.
    """

    name = "memory"

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or time.time
        self._data: dict[str, tuple[bytes, Any, float | None]] = {}

    def _live(self, key: str) -> tuple[bytes, Any, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[2] is not None and item[2] <= self._clock():
            del self._data[key]
            return None
        return item

    async def get(self, key: str) -> bytes | None:
        """See :class:`KVBackend`."""
        item = self._live(key)
        return None if item is None else item[0]

    def _get_now(self, key: str) -> bytes | None:
        # get() without a coroutine, for KVStore's in-process hit path (the memory backend itself only, never a
        # subclass, whose get() may do anything): one dict lookup and the expiry check, inlined.
        item = self._data.get(key)
        if item is None:
            return None
        if item[2] is not None and item[2] <= self._clock():
            del self._data[key]
            return None
        return item[0]

    async def get_with_metadata(self, key: str) -> tuple[bytes, Any] | None:
        """See :class:`KVBackend`."""
        item = self._live(key)
        return None if item is None else (item[0], item[1])

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """See :class:`KVBackend`."""
        out: dict[str, bytes] = {}
        for key in keys:
            item = self._live(key)
            if item is not None:
                out[key] = item[0]
        return out

    def _expiry(self, ttl: int | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    async def put(self, entry: KVEntry) -> None:
        """See :class:`KVBackend`."""
        self._data[entry.key] = (entry.value, entry.metadata, self._expiry(entry.ttl))

    async def put_many(self, entries: Sequence[KVEntry]) -> None:
        """See :class:`KVBackend`."""
        for entry in entries:
            self._data[entry.key] = (entry.value, entry.metadata, self._expiry(entry.ttl))

    async def delete(self, key: str) -> None:
        """See :class:`KVBackend`."""
        self._data.pop(key, None)

    async def delete_many(self, keys: Sequence[str]) -> None:
        """See :class:`KVBackend`."""
        for key in keys:
            self._data.pop(key, None)

    async def list(self, *, prefix: str | None, cursor: str | None, limit: int) -> KVPage:
        """See :class:`KVBackend`. The cursor is the last key name returned."""
        names = sorted(
            (k for k in list(self._data) if (prefix is None or k.startswith(prefix)) and self._live(k) is not None),
            key=lambda k: k.encode("utf-8"),
        )
        if cursor is not None:
            after = cursor.encode("utf-8")
            names = [k for k in names if k.encode("utf-8") > after]
        page = names[:limit]
        keys = []
        for name in page:
            _, meta, exp = self._data[name]
            keys.append(KVKey(name=name, expiration=None if exp is None else int(exp), metadata=meta))
        return KVPage(keys=keys, cursor=page[-1] if len(names) > limit else None)

    async def aclose(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------------------
# SQLite


class SQLiteKVBackend:
    """A KV namespace in a SQLite file: the embedded default when no Cloudflare outputs are given.

    Several namespaces (and several processes) can share one file; each backend sees only rows of its
    ``namespace``. Calls run in a worker thread so the event loop is not blocked.

    Args:
        path: The database file (created with its parent folder if missing), or ``":memory:"``.
        namespace: Which namespace of the file this backend reads and writes.
        clock: Returns the current unix time; ``time.time`` when ``None``.
    """

    name = "sqlite"

    def __init__(self, path: str | Path, namespace: str = "default", *, clock: Clock | None = None) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._clock: Clock = clock or time.time
        self._ns = namespace
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(str(path), check_same_thread=False, timeout=5.0)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
                "metadata TEXT, expires REAL, PRIMARY KEY (ns, key))"
            )
            self._conn.commit()

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            if self._conn is None:
                raise UsageError("SQLiteKVBackend used after aclose()")
            try:
                result = fn(self._conn)
                self._conn.commit()
            except sqlite3.Error as exc:
                self._conn.rollback()
                raise BackendUnavailableError(f"sqlite KV failed: {exc}", backend="kv") from exc
            return result

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._run, fn)

    async def get(self, key: str) -> bytes | None:
        """See :class:`KVBackend`."""
        found = await self.get_with_metadata(key)
        return None if found is None else found[0]

    async def get_with_metadata(self, key: str) -> tuple[bytes, Any] | None:
        """See :class:`KVBackend`."""
        now = self._clock()

        def fn(conn: sqlite3.Connection) -> tuple[bytes, Any] | None:
            row = conn.execute(
                "SELECT value, metadata FROM kv WHERE ns = ? AND key = ? AND (expires IS NULL OR expires > ?)",
                (self._ns, key, now),
            ).fetchone()
            return None if row is None else (bytes(row[0]), None if row[1] is None else json.loads(row[1]))

        result: tuple[bytes, Any] | None = await self._call(fn)
        return result

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """See :class:`KVBackend`."""
        now = self._clock()

        def fn(conn: sqlite3.Connection) -> dict[str, bytes]:
            marks = ",".join("?" * len(keys))
            rows = conn.execute(
                f"SELECT key, value FROM kv WHERE ns = ? AND key IN ({marks}) AND (expires IS NULL OR expires > ?)",
                (self._ns, *keys, now),
            ).fetchall()
            return {str(k): bytes(v) for k, v in rows}

        if not keys:
            return {}
        result: dict[str, bytes] = await self._call(fn)
        return result

    def _rows(self, entries: Sequence[KVEntry]) -> list[tuple[Any, ...]]:
        now = self._clock()
        return [
            (
                self._ns,
                e.key,
                e.value,
                None if e.metadata is None else json.dumps(e.metadata),
                None if e.ttl is None else now + e.ttl,
            )
            for e in entries
        ]

    async def put(self, entry: KVEntry) -> None:
        """See :class:`KVBackend`."""
        await self.put_many([entry])

    async def put_many(self, entries: Sequence[KVEntry]) -> None:
        """See :class:`KVBackend`."""
        rows = self._rows(entries)
        await self._call(lambda conn: conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", rows))

    async def delete(self, key: str) -> None:
        """See :class:`KVBackend`."""
        await self.delete_many([key])

    async def delete_many(self, keys: Sequence[str]) -> None:
        """See :class:`KVBackend`."""
        rows = [(self._ns, k) for k in keys]
        await self._call(lambda conn: conn.executemany("DELETE FROM kv WHERE ns = ? AND key = ?", rows))

    async def list(self, *, prefix: str | None, cursor: str | None, limit: int) -> KVPage:
        """See :class:`KVBackend`. The cursor is the last key name returned."""
        now = self._clock()

        def fn(conn: sqlite3.Connection) -> list[tuple[str, str | None, float | None]]:
            rows = conn.execute(
                "SELECT key, metadata, expires FROM kv WHERE ns = ? AND (expires IS NULL OR expires > ?)",
                (self._ns, now),
            ).fetchall()
            return [(str(k), m, e) for k, m, e in rows]

        rows: list[tuple[str, str | None, float | None]] = await self._call(fn)
        # Sorted by UTF-8 bytes like Cloudflare (SQLite's default collation compares UTF-8 too, but keep it explicit).
        selected = sorted(
            (r for r in rows if prefix is None or r[0].startswith(prefix)), key=lambda r: r[0].encode("utf-8")
        )
        if cursor is not None:
            after = cursor.encode("utf-8")
            selected = [r for r in selected if r[0].encode("utf-8") > after]
        page = selected[:limit]
        keys = [
            KVKey(name=k, expiration=None if e is None else int(e), metadata=None if m is None else json.loads(m))
            for k, m, e in page
        ]
        return KVPage(keys=keys, cursor=page[-1][0] if len(selected) > limit else None)

    async def aclose(self) -> None:
        """Close the database connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# ---------------------------------------------------------------------------------------------------
# Cloudflare REST


def _envelope_errors(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        return "; ".join(
            f"{e.get('code')}: {e.get('message')}" if isinstance(e, dict) else str(e) for e in body["errors"]
        )
    return response.text[:200]


def raise_for_status(response: httpx.Response, *, backend: str, what: str) -> None:
    """Map an error response to the exception tree (nothing for 2xx)."""
    status = response.status_code
    if status < 400:
        return
    detail = _envelope_errors(response)
    message = f"{backend} {what}: HTTP {status}: {detail}"
    if status in (401, 403):
        raise AuthenticationError(message, backend=backend, status_code=status)
    if status == 429:
        raise RateLimitedError(
            message, backend=backend, retry_after=parse_retry_after(response.headers.get("retry-after"))
        )
    if status >= 500:
        raise BackendUnavailableError(message, backend=backend, status_code=status)
    raise BackendError(message, backend=backend, status_code=status)


def write_timeout(nbytes: int, base: float | None, throughput: float = KV_WRITE_THROUGHPUT) -> float | None:
    """Seconds a write of ``nbytes`` may take: ``base + nbytes / throughput`` (``None`` when ``base`` is).

    ``base`` is the time an empty round trip may take (the read timeout); the rest pays for the body at
    a deliberately conservative ``throughput`` (1 MiB/s by default, see :data:`KV_WRITE_THROUGHPUT`).
    """
    if base is None:
        return None
    return base + nbytes / throughput


class _Alone:
    """A bulk answer that cannot stand for a single ``GET``'s: the caller reads the key on its own."""

    __slots__ = ()


_ALONE = _Alone()


class _Waiter:
    """One coalesced read: its key, whether it wants metadata, its own future, its bounded call's ticket."""

    __slots__ = ("admitted", "deadline", "future", "key", "metadata", "ticket")

    def __init__(self, key: str, metadata: bool, future: asyncio.Future[Any], ticket: Any, deadline: float) -> None:
        self.key = key
        self.metadata = metadata
        self.future = future
        self.ticket = ticket
        self.deadline = deadline
        self.admitted = False


def _copy_error(exc: BackendError) -> BackendError:
    # Each coalesced caller raises its own copy: one exception object raised in many tasks would pile their
    # tracebacks onto it. Same type, message, attributes and cause; no traceback.
    copy = type(exc).__new__(type(exc))
    copy.__dict__.update(exc.__dict__)
    copy.args = exc.args
    copy.__cause__ = exc.__cause__
    copy.__suppress_context__ = True
    return copy


class _ReadCoalescer:
    """Micro-batching of the single reads of one binding (``get``, ``get_with_metadata``) into bulk gets.

    A read goes out on its own, in its caller's task, when nothing of this binding is in flight or queued and
    the KV gate has a free place (the single-caller path is a plain ``GET``). Otherwise it joins a queue, and
    one dispatcher task takes a place at the gate for each batch of at most ``bulk_get_max`` queued reads
    (waiting there while the gate is full, so the queue grows behind it) and sends the batch as one
    ``POST /bulk/get`` (a batch of one key as a plain ``GET``), from a task of its own.

    Per caller: its own future (a cancelled caller cancels no one else, and never the request); its own
    deadline at the queue (its bounded call's gate deadline, else the request timeout): a read still queued
    then fails as an admission timeout (nothing sent: a skip); its ticket is marked admitted when its batch
    gets a place, so its read budget counts from then, as for a single read. A failed batch fails each of its
    callers with a copy of the error (a miss each, counted per call by :class:`KVStore`).

    How many queued reads are in flight at once (the window, in keys; a batch goes out while fewer are) adapts
    to the server, as TCP's congestion window does: while the window is what holds reads back, each batch that
    answers within a quarter of its callers' read budget widens it (by one batch per window's worth of keys);
    a batch that takes more than half of that budget, or fails, halves it. A server that answers one request at
    a time (miniflare) so gets about one batch at a time, each within its budget, while the reads behind it
    wait in the queue (whose deadline is not their read budget); one that answers in parallel gets up to
    :attr:`WINDOW_MAX` keys. The window never shrinks below one batch. An answer that
    cannot be trusted to equal the single ``GET``'s bytes (see :meth:`_HTTPKVBackend._bulk_read`), and every
    answer of a batch the server refused for one of its values (a plain 400), is read again on its own.

    Attributes:
        window: Queued reads allowed in flight now, in keys (``batch_max`` .. :attr:`WINDOW_MAX`).
        in_flight: Read requests of this binding in flight (single and bulk).
        requests: Read requests sent for queued reads (single and bulk).
        bulk_requests: Of those, bulk gets.
        coalesced: Reads answered by a bulk get.
    """

    WINDOW_MAX = 800
    """Most queued reads of one binding in flight at once (in keys), however fast the server answers."""

    def __init__(self, backend: _HTTPKVBackend, client: httpx.AsyncClient, batch_max: int, wait: float) -> None:
        self._backend = backend
        self._gate = admission_of(client)
        self._batch_max = batch_max
        self._wait = wait
        self._pending: deque[_Waiter] = deque()
        self._dispatcher: asyncio.Task[None] | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self._keys = 0  # keys of the batches in flight
        self._batch_done: asyncio.Future[None] | None = None  # set when the dispatcher waits for the window
        self._held_back = False  # the dispatcher is waiting for the window
        self.window = float(batch_max)
        self.in_flight = 0
        self.requests = 0
        self.bulk_requests = 0
        self.coalesced = 0

    def direct(self) -> bool:
        """Whether a read now may go out on its own (nothing in flight or queued, a free place at the gate)."""
        return self.in_flight == 0 and not self._pending and (self._gate is None or self._gate.free)

    async def read(self, key: str, metadata: bool) -> tuple[bytes, Any] | None:
        """Queue one read and return its answer (see the class)."""
        loop = asyncio.get_running_loop()
        ticket = current_ticket()
        deadline = loop.time() + self._wait
        if ticket is not None and not ticket.admitted:
            deadline = min(deadline, ticket.deadline)
        waiter = _Waiter(key, metadata, loop.create_future(), ticket, deadline)
        self._pending.append(waiter)
        if self._dispatcher is None:
            # Started on the next turn of the loop: the reads arriving in this one join the same batch.
            self._dispatcher = loop.create_task(self._dispatch(), context=held_place(None))
        expiry = loop.call_at(deadline, self._expire, waiter)
        try:
            answer: tuple[bytes, Any] | None | _Alone = await waiter.future
        finally:
            expiry.cancel()
        if isinstance(answer, _Alone):
            self.in_flight += 1
            try:
                return await self._backend._get_one(key, metadata)
            finally:
                self.in_flight -= 1
        return answer

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.admitted or waiter.future.done():
            return
        timeout = AdmissionTimeout(f"kv: no place at the KV gate within {self._wait:.3g}s for a queued read")
        error = BackendUnavailableError(f"kv get {waiter.key!r}: queued, not sent: {timeout}", backend="kv")
        error.__cause__ = timeout
        waiter.future.set_exception(error)

    def _take(self) -> list[_Waiter]:
        batch: list[_Waiter] = []
        keys: set[str] = set()
        pending = self._pending
        while pending:
            waiter = pending[0]
            if waiter.future.done():  # expired or cancelled while queued
                pending.popleft()
                continue
            if waiter.key not in keys:
                if len(keys) >= self._batch_max:
                    break
                keys.add(waiter.key)
            batch.append(pending.popleft())
        return batch

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        gate = self._gate
        try:
            while self._pending:
                live = [w.deadline for w in self._pending if not w.future.done()]
                if not live:
                    self._pending.clear()  # every queued read expired or was cancelled
                    break
                if self._keys and self._keys >= self.window:
                    # As many reads in flight as the server bears: the queue grows until a batch ends.
                    # (A future of this loop, not an Event kept across loops: a backend may outlive a loop.)
                    done = self._batch_done = loop.create_future()
                    self._held_back = True
                    try:
                        async with asyncio.timeout(max(max(live) - loop.time(), 0.0)):
                            await done
                    except TimeoutError:
                        pass  # every queued read is past its deadline by now
                    finally:
                        self._held_back = False
                        self._batch_done = None
                    continue
                place: HeldPlace | None = None
                if gate is not None:
                    try:
                        # As long as the last queued read may still wait; each one fails on its own deadline.
                        await gate.acquire(max(max(live) - loop.time(), 0.0))
                    except AdmissionTimeout:
                        continue  # every queued read is past its deadline by now (each fails on its own timer)
                    place = HeldPlace(gate)
                batch = self._take()
                if not batch:
                    if gate is not None:
                        gate.release()
                    continue
                now = loop.time()
                for waiter in batch:
                    waiter.admitted = True
                    if waiter.ticket is not None:
                        waiter.ticket.admit(now)
                self.in_flight += 1
                self._keys += len({w.key for w in batch})  # given back by _send, which sends these keys
                sender = loop.create_task(self._send(batch, place), context=held_place(place))
                self._senders.add(sender)
                sender.add_done_callback(self._senders.discard)
        finally:
            self._dispatcher = None

    async def _send(self, batch: list[_Waiter], place: HeldPlace | None) -> None:
        keys = list(dict.fromkeys(w.key for w in batch))
        metadata = any(w.metadata for w in batch)
        answers: dict[str, tuple[bytes, Any] | None | _Alone]
        error: BackendError | None = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        budgets = [w.ticket.budget for w in batch if w.ticket is not None and w.ticket.budget is not None]
        budget = min(budgets, default=self._wait)
        slow, ok = True, False  # until it answers, in time
        try:
            self.requests += 1
            if len(keys) == 1:
                answers = {keys[0]: await self._backend._get_one(keys[0], metadata)}
            else:
                self.bulk_requests += 1
                answers = await self._backend._bulk_read(keys, metadata)
                self.coalesced += len(batch)
            slow, ok = loop.time() - started > budget / 4, True
        except BackendError as exc:
            if len(keys) > 1 and _is_value_rejection(exc):
                answers = dict.fromkeys(keys, _ALONE)  # the server refused one value: each key on its own
                ok = True
            else:
                answers, error = {}, exc
        except BaseException as exc:
            # Cancelled (the backend is closing) or a foreign failure: each caller gets its own miss.
            cause = scrubbed(exc)
            for waiter in batch:
                if not waiter.future.done():
                    failure = BackendUnavailableError(f"kv get {waiter.key!r}: batch failed: {cause}", backend="kv")
                    failure.__cause__ = cause
                    waiter.future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return  # every caller has its error; nobody awaits this task
        finally:
            self.in_flight -= 1
            self._keys -= len(keys)
            self._adapt(len(keys), slow, not ok or loop.time() - started > budget / 2)
            if self._batch_done is not None and not self._batch_done.done():
                self._batch_done.set_result(None)
            if place is not None and not place.taken:
                place.admission.release()
        for waiter in batch:
            if waiter.future.done():
                continue
            if error is not None:
                waiter.future.set_exception(_copy_error(error))
                continue
            answer = answers[waiter.key]
            if answer is not None and not isinstance(answer, _Alone):
                if not waiter.metadata:
                    answer = (answer[0], None)
                elif isinstance(answer[1], _Alone):
                    answer = _ALONE
            waiter.future.set_result(answer)

    def _adapt(self, keys: int, slow: bool, too_slow: bool) -> None:
        if too_slow:
            self.window = max(float(self._batch_max), self.window / 2)
        elif not slow and self._held_back:
            self.window = min(float(self.WINDOW_MAX), self.window + self._batch_max * keys / self.window)

    async def aclose(self) -> None:
        """Cancel the dispatcher and the batches in flight (their callers fail) and wait for them."""
        tasks = [*self._senders, *([self._dispatcher] if self._dispatcher is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for waiter in self._pending:
            if not waiter.future.done():
                waiter.future.set_exception(BackendUnavailableError("kv: the backend was closed", backend="kv"))
        self._pending.clear()


class _HTTPKVBackend:
    """One KV namespace over the KV REST API's shapes: the one implementation behind
    :class:`CloudflareKVBackend` (the REST API) and :class:`DataPlaneKVBackend` (dualcache's Worker).

    Subclasses only choose the base URL, the limits and the request budget.
    """

    name = "http"
    bulk_get_max = KV_BULK_GET_MAX
    """Most keys one bulk read may name."""
    bulk_write_max = KV_BULK_WRITE_MAX
    """Most entries one bulk write or bulk delete may carry."""
    bulk_body_max = KV_BULK_BODY_MAX
    """Largest bulk-write request body, in bytes."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        token: SecretStr | str | None,
        timeout: float,
        budget: RequestBudget | None,
        budget_wait: float | None,
    ) -> None:
        self._client = client
        self._base = base_url
        # Kept as a SecretStr; the header is built per request by auth_headers (see dualcache._redact).
        self._token = token if isinstance(token, SecretStr) or token is None else SecretStr(token)
        self._timeout = timeout
        self.budget = budget
        self._budget_wait = timeout / 2 if budget_wait is None else budget_wait

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={redact_url(self._base)!r})"

    @staticmethod
    def _quote(key: str) -> str:
        # Key names go in the URL path: percent-encode everything, '/' included (as the KV REST API requires).
        return quote(key, safe="")

    async def _request(
        self, method: str, path: str, what: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        limit = self._timeout if timeout is None else timeout
        if self.budget is not None:
            # Raises SkippedError (nothing sent) while blocked after a 429 or out of budget.
            await self.budget.acquire(self._budget_wait, backend="kv")
        headers = auth_headers(self._token, extra=kwargs.pop("headers", None))
        # Foreign exceptions are mapped with a scrubbed copy as the cause (no request, no traceback) and raised
        # after the except block, so no __cause__/__context__ holds the httpx request and its headers.
        error: BackendError | None = None
        try:
            response = await self._client.request(method, self._base + path, headers=headers, timeout=limit, **kwargs)
        except httpx.TimeoutException as exc:
            error = BackendUnavailableError(f"kv {what}: timed out after {limit:g}s", backend="kv")
            error.__cause__ = scrubbed(exc)
        except httpx.HTTPError as exc:
            error = BackendUnavailableError(f"kv {what}: {type(exc).__name__}: {scrubbed(exc)}", backend="kv")
            error.__cause__ = scrubbed(exc)
        if error is not None:
            raise error
        if self.budget is not None:
            self.budget.observe(response.status_code, response.headers)
        return response

    @staticmethod
    def _result(response: httpx.Response, what: str) -> Any:
        raise_for_status(response, backend="kv", what=what)
        bad: BadResponseError | None = None
        try:
            body = response.json()
        except ValueError as exc:
            bad = BadResponseError(f"kv {what}: response is not JSON", backend="kv")
            bad.__cause__ = scrubbed(exc)
        if bad is not None:
            raise bad  # outside the except block: no __context__ with the response's frames
        if not isinstance(body, dict) or body.get("success") is False:
            raise BadResponseError(f"kv {what}: unsuccessful envelope: {_envelope_errors(response)}", backend="kv")
        return body.get("result")

    metadata_header: bool = False
    """Whether a value's ``GET`` carries its metadata in ``cf-kv-metadata`` (the data plane does; the REST
    API documents no such header, so there it takes a second round trip)."""

    _reads: _ReadCoalescer | None = None
    """The read coalescer of this backend, or ``None`` when every read is its own request."""

    async def _get(self, key: str) -> httpx.Response | None:
        response = await self._request("GET", f"/values/{self._quote(key)}", f"get {key!r}")
        if response.status_code == 404:
            return None
        raise_for_status(response, backend="kv", what=f"get {key!r}")
        return response

    async def _get_one(self, key: str, metadata: bool) -> tuple[bytes, Any] | None:
        """One read of ``key`` on its own: ``(value, metadata)`` (``None`` unless ``metadata``), or ``None``."""
        found = await self._get(key)
        if found is None:
            return None
        value = found.content
        if not metadata:
            return value, None
        if self.metadata_header:
            header = found.headers.get("cf-kv-metadata")
            if header is None:
                return value, None
            try:
                return value, json.loads(header)
            except ValueError as exc:
                raise BadResponseError(f"kv get {key!r}: cf-kv-metadata is not JSON", backend="kv") from exc
        response = await self._request("GET", f"/metadata/{self._quote(key)}", f"metadata {key!r}")
        if response.status_code == 404:
            return value, None
        return value, self._result(response, f"metadata {key!r}")

    async def _read(self, key: str, metadata: bool) -> tuple[bytes, Any] | None:
        reads = self._reads
        if reads is None:
            return await self._get_one(key, metadata)
        if not reads.direct():
            return await reads.read(key, metadata)
        # Nothing of this binding in flight or queued, and a free place at the gate: today's single GET, in the
        # caller's own task (no hand-off, no extra wake-up on the single-caller hit path).
        reads.in_flight += 1
        try:
            return await self._get_one(key, metadata)
        finally:
            reads.in_flight -= 1

    async def get(self, key: str) -> bytes | None:
        """See :class:`KVBackend`. A 404 is a missing key, whatever its error code (not all are documented)."""
        found = await self._read(key, False)
        return None if found is None else found[0]

    async def get_with_metadata(self, key: str) -> tuple[bytes, Any] | None:
        """See :class:`KVBackend`: the value and its metadata, from the ``cf-kv-metadata`` header where the
        API sends one, else from the metadata endpoint (a second round trip)."""
        return await self._read(key, True)

    async def _bulk_read(self, keys: list[str], metadata: bool) -> dict[str, tuple[bytes, Any] | None | _Alone]:
        """One ``POST /bulk/get`` of distinct ``keys`` for coalesced single reads: per key its ``(value,
        metadata)``, ``None`` when missing, or :data:`_ALONE` when the answer cannot be trusted to be the bytes a
        single ``GET`` returns (not text, holding U+FFFD, not in the answer): that key is then read on its own.
        With ``metadata``, an answer without the metadata shape has :data:`_ALONE` as its metadata (only the
        readers that want metadata read alone)."""
        body: dict[str, Any] = {"keys": keys, "type": "text"}
        if metadata:
            body["withMetadata"] = True
        response = await self._request("POST", "/bulk/get", f"bulk get of {len(keys)} keys", json=body)
        result = self._result(response, "bulk get")
        values = result.get("values") if isinstance(result, dict) else None
        if not isinstance(values, dict):
            raise BadResponseError("kv bulk get: result.values is not an object", backend="kv")
        out: dict[str, tuple[bytes, Any] | None | _Alone] = {}
        for key in keys:
            if key not in values:
                out[key] = _ALONE
                continue
            value, meta = values[key], None
            if metadata and value is not None:
                if isinstance(value, dict) and "value" in value:
                    value, meta = value["value"], value.get("metadata")
                else:
                    meta = _ALONE  # a server that ignores withMetadata: its metadata readers read alone
            if value is None:
                out[key] = None
            elif isinstance(value, str) and "\ufffd" not in value:
                out[key] = (value.encode("utf-8"), meta)
            else:
                # Not text, or text decoding may have replaced bytes (a binary value in a Worker): read it raw.
                out[key] = _ALONE
        return out

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """See :class:`KVBackend`: one ``POST /bulk/get`` with ``type: text``.

        Bulk get returns text only. What a server does with a value that is not UTF-8 is not documented:
        the emulator refuses the whole request with a 400 (:meth:`KVStore.get_many_partial` then splits
        the batch to isolate the key), while a Worker's text decoding replaces the bad bytes with U+FFFD.
        So a value holding U+FFFD is read again on its own, raw, with one ``GET`` (a value that really
        holds U+FFFD costs one extra request; dualcache's own records never do).
        """
        if not keys:
            return {}
        response = await self._request(
            "POST", "/bulk/get", f"bulk get of {len(keys)} keys", json={"keys": list(keys), "type": "text"}
        )
        result = self._result(response, "bulk get")
        values = result.get("values") if isinstance(result, dict) else None
        if not isinstance(values, dict):
            raise BadResponseError("kv bulk get: result.values is not an object", backend="kv")
        out: dict[str, bytes] = {}
        suspect: list[str] = []
        for key, value in values.items():
            if isinstance(value, dict) and "value" in value:  # the withMetadata shape, handled defensively
                value = value["value"]
            if value is None:
                continue
            if isinstance(value, str):
                if "\ufffd" in value:
                    suspect.append(key)
                    continue
                out[key] = value.encode("utf-8")
            else:
                out[key] = json.dumps(value).encode("utf-8")
        for key in suspect:
            raw = await self.get(key)
            if raw is not None:
                out[key] = raw
        return out

    async def put(self, entry: KVEntry) -> None:
        """See :class:`KVBackend`: raw body, or multipart ``value`` + ``metadata`` when metadata is given."""
        params = {"expiration_ttl": str(entry.ttl)} if entry.ttl is not None else None
        what = f"put {entry.key!r}"
        path = f"/values/{self._quote(entry.key)}"
        timeout = write_timeout(len(entry.value), self._timeout)
        if entry.metadata is None:
            response = await self._request("PUT", path, what, params=params, content=entry.value, timeout=timeout)
        else:
            files = {"value": (None, entry.value), "metadata": (None, json.dumps(entry.metadata).encode("utf-8"))}
            response = await self._request("PUT", path, what, params=params, files=files, timeout=timeout)
        self._result(response, what)

    @staticmethod
    def _bulk_item(entry: KVEntry) -> bytes:
        try:
            item: dict[str, Any] = {"key": entry.key, "value": entry.value.decode("utf-8")}
        except UnicodeDecodeError:
            item = {"key": entry.key, "value": base64.b64encode(entry.value).decode("ascii"), "base64": True}
        if entry.ttl is not None:
            item["expiration_ttl"] = entry.ttl
        if entry.metadata is not None:
            item["metadata"] = entry.metadata
        return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def bulk_item_size(self, entry: KVEntry) -> int:
        """Bytes ``entry`` takes in a bulk-write body (what :class:`KVStore` splits bulk writes by)."""
        return len(self._bulk_item(entry))

    async def put_many(self, entries: Sequence[KVEntry]) -> None:
        """See :class:`KVBackend`: one ``PUT /bulk``; keys reported unsuccessful are retried once."""
        if not entries:
            return
        pending = list(entries)
        for attempt in (1, 2):
            body = b"[" + b",".join(self._bulk_item(e) for e in pending) + b"]"
            response = await self._request(
                "PUT",
                "/bulk",
                f"bulk write of {len(pending)} keys",
                content=body,
                headers={"content-type": "application/json"},
                timeout=write_timeout(len(body), self._timeout),
            )
            result = self._result(response, "bulk write")
            failed = result.get("unsuccessful_keys") if isinstance(result, dict) else None
            if not failed:
                return
            failed_set = set(failed)
            pending = [e for e in pending if e.key in failed_set]
            logger.warning("kv bulk write: %d keys unsuccessful (attempt %d)", len(pending), attempt)
        raise BackendError(
            f"kv bulk write: {len(pending)} keys still unsuccessful after a retry, e.g. {pending[0].key!r}",
            backend="kv",
        )

    async def delete(self, key: str) -> None:
        """See :class:`KVBackend`. A 404 is not an error."""
        response = await self._request("DELETE", f"/values/{self._quote(key)}", f"delete {key!r}")
        if response.status_code != 404:
            self._result(response, f"delete {key!r}")

    async def delete_many(self, keys: Sequence[str]) -> None:
        """See :class:`KVBackend`: one ``POST /bulk/delete``."""
        if keys:
            response = await self._request("POST", "/bulk/delete", f"bulk delete of {len(keys)} keys", json=list(keys))
            self._result(response, "bulk delete")

    async def list(self, *, prefix: str | None, cursor: str | None, limit: int) -> KVPage:
        """See :class:`KVBackend`: ``GET /keys`` with ``prefix`` repeated on every page."""
        params: dict[str, str | int] = {"limit": limit}
        if prefix:
            params["prefix"] = prefix
        if cursor:
            params["cursor"] = cursor
        response = await self._request("GET", "/keys", "list", params=params)
        result = self._result(response, "list")
        if not isinstance(result, list):
            raise BadResponseError("kv list: result is not a list", backend="kv")
        try:
            info = response.json().get("result_info") or {}
        except ValueError:
            info = {}
        keys = [
            KVKey(name=str(k["name"]), expiration=k.get("expiration"), metadata=k.get("metadata"))
            for k in result
            if isinstance(k, dict) and "name" in k
        ]
        next_cursor = info.get("cursor") if isinstance(info, dict) else None
        return KVPage(keys=keys, cursor=str(next_cursor) if next_cursor else None)

    async def aclose(self) -> None:
        """The client belongs to the caller; nothing to release."""


class CloudflareKVBackend(_HTTPKVBackend):
    """One Workers KV namespace over the Cloudflare REST API.

    For administration, warm-up and local use: every call counts against the account's 1,200 requests
    per 5 minutes, so requests go through a :class:`~dualcache.RequestBudget` (the process-wide one of
    the token by default). While that budget is blocked after a 429 or spent, calls raise
    :class:`~dualcache.SkippedError` without sending anything. In production use
    :class:`DataPlaneKVBackend`.

    Args:
        client: The shared ``httpx.AsyncClient`` (owned by the caller; not closed here).
        api_base_url: ``https://api.cloudflare.com/client/v4`` or the emulator's.
        account_id: The account id.
        namespace_id: The namespace id.
        api_token: A token with "Workers KV Storage Read/Write".
        timeout: Per-request timeout in seconds (writes get more, sized for their body).
        budget: The request budget; ``RequestBudget.for_token(api_token, api_base_url=...)`` when ``None``.
        budget_wait: Longest wait for the budget, in seconds; half of ``timeout`` when ``None``.
    """

    name = "cloudflare"
    bulk_write_max = KV_BULK_WRITE_MAX
    bulk_body_max = KV_BULK_BODY_MAX

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_base_url: str,
        account_id: str,
        namespace_id: str,
        api_token: SecretStr | str | None,
        timeout: float = 5.0,
        budget: RequestBudget | None = None,
        budget_wait: float | None = None,
    ) -> None:
        base = api_base_url.rstrip("/")
        account, namespace = quote(account_id, safe=""), quote(namespace_id, safe="")  # ids are path segments
        super().__init__(
            client,
            base_url=f"{base}/accounts/{account}/storage/kv/namespaces/{namespace}",
            token=api_token,
            timeout=timeout,
            budget=budget if budget is not None else RequestBudget.for_token(api_token, api_base_url=base),
            budget_wait=budget_wait,
        )


class DataPlaneKVBackend(_HTTPKVBackend):
    """One KV namespace through dualcache's data-plane Worker (``infra/worker/DATAPLANE.md``).

    The same API shapes as :class:`CloudflareKVBackend`, under ``{data_plane_url}/kv/{binding}``, with the
    Worker's limits (bulk writes of <= 100 entries and <= 32 MiB). No Cloudflare API call is made, so no
    request budget applies. A missing or wrong token is a 401, an
    :class:`~dualcache.AuthenticationError` (a miss for ``DualCache``).

    Concurrent single reads are coalesced (``coalesce_reads``): while a read of the binding is in flight or
    the KV gate is full, the next ones queue and go out together as bulk gets of up to 100 keys, each caller
    getting the value and metadata a single ``GET`` would have returned (see :meth:`read_counts`).

    Args:
        client: The shared ``httpx.AsyncClient`` (owned by the caller; not closed here).
        data_plane_url: The Worker's base URL (``StackOutputs.data_plane_url``).
        binding: The namespace's binding name, one of the six (``SESSIONS``, ..., ``API_CACHE``).
        token: The data-plane token (the Worker's ``DUALCACHE_TOKEN`` secret).
        timeout: Per-request timeout in seconds (writes get more, sized for their body); also the longest a
            coalesced read waits in its queue when it is not a bounded call of :class:`KVStore`.
        coalesce_reads: Whether concurrent ``get``/``get_with_metadata`` calls share bulk gets; ``False``: one
            request per read.

    Raises:
        ConfigError: ``binding`` is not one of the six binding names.
    """

    name = "dataplane"
    bulk_write_max = DATA_PLANE_BULK_WRITE_MAX
    bulk_body_max = DATA_PLANE_BULK_BODY_MAX
    metadata_header = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        data_plane_url: str,
        binding: str,
        token: SecretStr | str | None,
        timeout: float = 5.0,
        coalesce_reads: bool = True,
    ) -> None:
        if binding not in _BINDINGS:
            raise ConfigError(f"binding={binding!r} is not a namespace binding; valid bindings: {', '.join(_BINDINGS)}")
        if not isinstance(coalesce_reads, bool):
            raise ConfigError(f"coalesce_reads={coalesce_reads!r}: must be True or False")
        super().__init__(
            client,
            base_url=f"{data_plane_url.rstrip('/')}/kv/{quote(binding, safe='')}",
            token=token,
            timeout=timeout,
            budget=None,
            budget_wait=None,
        )
        if coalesce_reads:
            self._reads = _ReadCoalescer(self, client, self.bulk_get_max, timeout)

    def read_counts(self) -> dict[str, int]:
        """What the read coalescer did: ``requests`` (read requests sent for queued reads), ``bulk_requests``
        (of those, bulk gets), ``coalesced`` (reads answered by a bulk get) and ``in_flight`` (read requests of
        this binding in flight now); all 0 with ``coalesce_reads=False``."""
        reads = self._reads
        if reads is None:
            return dict.fromkeys(("requests", "bulk_requests", "coalesced", "in_flight"), 0)
        return {
            "requests": reads.requests,
            "bulk_requests": reads.bulk_requests,
            "coalesced": reads.coalesced,
            "in_flight": reads.in_flight,
        }

    async def aclose(self) -> None:
        """Fail the reads still queued and cancel the batches in flight; the client belongs to the caller."""
        if self._reads is not None:
            await self._reads.aclose()


# ---------------------------------------------------------------------------------------------------
# Front


@dataclass(frozen=True, slots=True)
class KVBatchRead:
    """The outcome of a bulk read that may have partly failed (:meth:`KVStore.get_many_partial`).

    Attributes:
        values: The values found, by key (missing keys are left out, as in :meth:`KVStore.get_many`).
        failed: The keys whose read failed, each with the error that cost it (one error per failed chunk;
            a :class:`~dualcache.SkippedError` when the chunk was not sent at all).
    """

    values: dict[str, bytes]
    failed: dict[str, BackendError]

    @property
    def errors(self) -> list[BackendError]:
        """The distinct errors of the failed chunks, in the order they happened."""
        seen: dict[int, BackendError] = {}
        for exc in self.failed.values():
            seen.setdefault(id(exc), exc)
        return list(seen.values())


def _is_value_rejection(exc: BackendError) -> bool:
    # A plain 400 to a bulk get whose keys were already validated: the server refused a value (a binary
    # value in a text-only bulk get, in the emulator). Not a 401/403/404/429/5xx, not a bad envelope.
    return type(exc) is BackendError and exc.status_code == 400


class KVStore:
    """One KV namespace: validated, counted, time-limited access over any :class:`KVBackend`.

    Every method checks its input before any I/O (:class:`~dualcache.InvalidInputError`), and maps
    failures to :class:`~dualcache.BackendError` subclasses (a timeout is a
    :class:`~dualcache.BackendUnavailableError`). A missing key is ``None``.

    Bulk calls follow the backend's limits (its ``bulk_get_max``, ``bulk_write_max`` and
    ``bulk_body_max`` attributes; Cloudflare's when it has none): reads <= 100 keys a request, writes
    split by count *and* by the bytes of the request body. Reads get ``timeout``; a write gets
    :meth:`write_timeout` of its body, ``timeout + bytes / write_throughput``.

    Args:
        backend: The backend holding the namespace.
        binding: The namespace binding name, for messages and counters.
        timeout: Seconds one read (get, bulk get, list) may take before it is abandoned; ``None``
            for no limit.
        write_timeout: The base of a write's or delete's budget, in seconds; ``None``: as ``timeout``. A
            write of ``n`` bytes gets ``write_timeout + n / write_throughput`` (:meth:`write_budget`).
        write_throughput: Bytes per second a write is assumed to move at least; 1 MiB/s by default
            (:data:`KV_WRITE_THROUGHPUT`), so a 40 MB bulk write gets its base + 38 s.
        breaker: The circuit breaker of this namespace, or ``None`` for none.
        abandoner: Holds the calls abandoned past their budget (one per store by default).
        queue_timeout: How long a request may wait for a place at the KV pool's admission gate, after which
            it is skipped; its own budget then counts from its admission. ``None``: the gate wait is part of
            the budget (at most half of it). Only backends whose client has a gate (the ones ``DualCache``
            builds) ever get admitted; for others the call is bounded by ``queue_timeout`` + its budget.

    Attributes:
        counts: Round trips made to the backend, by primitive (``get``, ``get_many``, ``put``, ...),
            ``errors``, and ``skipped`` (not sent: a blocked REST budget, an open breaker, or no place at the
            pool's gate).
    """

    def __init__(
        self,
        backend: KVBackend,
        *,
        binding: str = "",
        timeout: float | None = 1.0,
        write_timeout: float | None = None,
        write_throughput: float = KV_WRITE_THROUGHPUT,
        breaker: CircuitBreaker | None = None,
        abandoner: Abandoner | None = None,
        queue_timeout: float | None = None,
    ) -> None:
        for name, value in (("timeout", timeout), ("write_timeout", write_timeout), ("queue_timeout", queue_timeout)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf
            ):
                raise InvalidInputError(f"{name}={value!r}: must be a finite positive number of seconds or None")
        if (
            isinstance(write_throughput, bool)
            or not isinstance(write_throughput, int | float)
            or not (0 < write_throughput < math.inf)
        ):
            raise InvalidInputError(f"write_throughput={write_throughput!r}: must be a positive number of bytes/s")
        self.backend = backend
        self.binding = binding
        self.timeout = timeout
        self.write_timeout = write_timeout if write_timeout is not None else timeout
        self.write_throughput = write_throughput
        self.breaker = breaker
        self.queue_timeout = queue_timeout
        self._abandoner = abandoner if abandoner is not None else Abandoner()
        # In-process backends hold no connection pool that a cancelled call could wedge.
        self._cancel_safe = isinstance(backend, MemoryKVBackend | SQLiteKVBackend)
        # The memory backend itself (not a subclass, which may do anything) answers without ever awaiting
        # anything that can hang: a timeout would only cost a timer per call on the in-process hit path.
        self._unbounded = type(backend) is MemoryKVBackend
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"KVStore(binding={self.binding!r}, backend={self.backend.name!r}, timeout={self.timeout!r})"

    @property
    def answers_at_once(self) -> bool:
        """Whether a read returns without ever suspending (the memory backend): no other caller can run, let
        alone join, while one is in progress, so sharing it would be pure overhead."""
        return self._unbounded

    def write_budget(self, nbytes: int) -> float | None:
        """Seconds a write of ``nbytes`` may take: ``write_timeout + nbytes / write_throughput``."""
        return write_timeout(nbytes, self.write_timeout, self.write_throughput)

    def _limit(self, name: str, default: int | None) -> int | None:
        value = getattr(self.backend, name, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    async def _io(self, op: str, call: Any, *, timeout: float | None = None) -> Any:
        """Run one backend call within its budget, through the breaker; map every failure to the tree.

        ``timeout`` overrides the budget (a write's, sized for its body). A call past its budget is abandoned
        (it ends on the HTTP client's own timeouts), never awaited further; one that a blocked REST budget or
        an open breaker holds back, or that never got a place at the KV pool's gate, is a
        :class:`~dualcache.SkippedError` (counted in ``counts["skipped"]``, not ``errors``).
        """
        self.counts[op] += 1
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            call.close()
            self.counts["skipped"] += 1
            raise SkippedError(
                f"kv {self.binding} {op}: circuit open, not sent",
                backend="kv",
                reason="circuit_open",
                retry_after=breaker.retry_after(),
            )
        budget = timeout if timeout is not None else self.timeout if op in _KV_READS else self.write_timeout
        foreign: BackendUnavailableError | None = None
        try:
            if budget is None or self._unbounded:
                result = await call
            elif self._cancel_safe:
                # No connection pool to wedge: cancelling is safe (a SQLite call's thread finishes on its
                # own), and it spares a task per hit on the in-process path.
                try:
                    async with asyncio.timeout(budget):
                        result = await call
                except TimeoutError as exc:
                    raise BudgetExceeded(f"no answer within {budget:.3g}s") from exc
            else:
                result = await run_bounded(call, budget, self._abandoner, queue=self.queue_timeout)
        except BudgetExceeded as exc:
            self._failed(breaker)
            raise BackendUnavailableError(f"kv {self.binding} {op}: no answer within {budget}s", backend="kv") from exc
        except SkippedError:
            # Not sent (the REST budget is blocked): no verdict on the target.
            if breaker is not None:
                breaker.release()
            self.counts["skipped"] += 1
            raise
        except BackendError as exc:
            if is_admission_timeout(exc):
                # Waiting for a place at the pool's gate is not a KV failure: nothing was sent.
                if breaker is not None:
                    breaker.release()
                self.counts["skipped"] += 1
                raise SkippedError(
                    f"kv {self.binding} {op}: no free connection within {budget}s, not sent",
                    backend="kv",
                    reason="admission",
                ) from exc
            if isinstance(exc, BackendUnavailableError):
                if breaker is not None:
                    breaker.failure()
            elif breaker is not None:
                breaker.success()  # KV answered (a 4xx, a malformed body): the target is up
            self.counts["errors"] += 1  # once per failed call (an unavailable target was counted twice)
            raise
        except (InvalidInputError, UsageError):
            if breaker is not None:
                breaker.release()
            raise
        except asyncio.CancelledError:
            if breaker is not None:
                breaker.release()
            raise
        except Exception as exc:
            # A backend (an injected one especially) may fail with anything: OSError, a driver error, ...
            # Mapped here, at the one boundary, so callers (DualCache: "KV down is a miss") see a BackendError.
            self._failed(breaker)
            foreign = BackendUnavailableError(
                f"kv {self.binding} {op}: {self.backend.name} backend failed: {type(exc).__name__}: {scrubbed(exc)}",
                backend="kv",
            )
            foreign.__cause__ = scrubbed(exc)  # an injected backend's httpx error would hold its request
        if foreign is not None:
            raise foreign  # outside the except block: no __context__ holding the original
        if breaker is not None:
            breaker.success()
        return result

    def _failed(self, breaker: CircuitBreaker | None) -> None:
        self.counts["errors"] += 1
        if breaker is not None:
            breaker.failure()

    async def get(self, key: str) -> bytes | None:
        """Return the value of ``key`` as bytes, or ``None``."""
        check_key(key)
        if self._unbounded:
            return self._read_at_once(key)
        result: bytes | None = await self._io("get", self.backend.get(key))
        return result

    def _read_at_once(self, key: str) -> bytes | None:
        """:meth:`_io` of a ``get`` from the memory backend, which answers without awaiting anything: the same
        counts, breaker and error mapping, without a coroutine and a budget per read (the in-process hit)."""
        assert isinstance(self.backend, MemoryKVBackend)
        self.counts["get"] += 1
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            self.counts["skipped"] += 1
            raise SkippedError(
                f"kv {self.binding} get: circuit open, not sent",
                backend="kv",
                reason="circuit_open",
                retry_after=breaker.retry_after(),
            )
        try:
            value = self.backend._get_now(key)
        except Exception as exc:  # only an injected clock can fail here; mapped as _io maps a foreign failure
            self._failed(breaker)
            failure = BackendUnavailableError(
                f"kv {self.binding} get: memory backend failed: {type(exc).__name__}: {scrubbed(exc)}", backend="kv"
            )
            failure.__cause__ = scrubbed(exc)
        else:
            if breaker is not None:
                breaker.success()
            return value
        raise failure  # outside the except block: no __context__ holding the original

    async def get_text(self, key: str) -> str | None:
        """Return the value of ``key`` decoded as UTF-8, or ``None``."""
        value = await self.get(key)
        return None if value is None else value.decode("utf-8", errors="replace")

    async def get_json(self, key: str) -> Any:
        """Return the value of ``key`` parsed as JSON, or ``None`` when missing.

        Raises:
            BadResponseError: the stored value is not JSON.
        """
        value = await self.get(key)
        if value is None:
            return None
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise BadResponseError(f"kv {self.binding}: value of {key!r} is not JSON", backend="kv") from exc

    async def get_with_metadata(self, key: str) -> tuple[bytes, Any] | None:
        """Return ``(value, metadata)`` of ``key``, or ``None``."""
        check_key(key)
        result: tuple[bytes, Any] | None = await self._io("get_with_metadata", self.backend.get_with_metadata(key))
        return result

    async def get_many_partial(self, keys: Iterable[str]) -> KVBatchRead:
        """Read ``keys`` in one bulk read per ``bulk_get_max`` (100) distinct keys; a failure stays local.

        A chunk that fails costs only its own keys (in :attr:`KVBatchRead.failed`); the other chunks'
        values are returned. When the server refuses a chunk because of one of its values (a 400, as
        the emulator answers a binary value in a text-only bulk get), the chunk is split in halves
        until the value is isolated, and that key is read on its own with a plain ``get``; so one
        unreadable value costs at most that key.

        Raises:
            InvalidInputError: a key is invalid (before any I/O).
        """
        distinct = list(dict.fromkeys(check_key(k) for k in keys))
        size = self._limit("bulk_get_max", KV_BULK_GET_MAX) or KV_BULK_GET_MAX
        values: dict[str, bytes] = {}
        failed: dict[str, BackendError] = {}
        for i in range(0, len(distinct), size):
            await self._read_chunk(distinct[i : i + size], values, failed)
        return KVBatchRead(values, failed)

    async def _read_chunk(self, chunk: list[str], values: dict[str, bytes], failed: dict[str, BackendError]) -> None:
        try:
            values.update(await self._io("get_many", self.backend.get_many(chunk)))
            return
        except BackendError as exc:
            if not _is_value_rejection(exc):
                failed.update(dict.fromkeys(chunk, exc))
                return
        if len(chunk) > 1:
            mid = len(chunk) // 2
            await self._read_chunk(chunk[:mid], values, failed)
            await self._read_chunk(chunk[mid:], values, failed)
            return
        try:
            value = await self._io("get", self.backend.get(chunk[0]))
        except BackendError as exc:
            failed[chunk[0]] = exc
            return
        if value is not None:
            values[chunk[0]] = value

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Return the values of ``keys`` that exist, in one bulk read per 100 distinct keys.

        Raises:
            BackendError: a chunk failed (the first such error; see :meth:`get_many_partial` to keep the
                values of the chunks that did not).
        """
        batch = await self.get_many_partial(keys)
        if batch.failed:
            raise batch.errors[0]
        return batch.values

    def entry(self, key: str, value: bytes | str, *, ttl: int | None = None, metadata: Any = None) -> KVEntry:
        """Validate one write and return it as a :class:`KVEntry` (no I/O)."""
        check_key(key)
        return KVEntry(key, check_value(key, value), check_ttl(ttl), check_metadata(key, metadata))

    async def put(self, key: str, value: bytes | str, *, ttl: int | None = None, metadata: Any = None) -> None:
        """Write ``value`` under ``key``, expiring after ``ttl`` seconds (>= 60) when given."""
        entry = self.entry(key, value, ttl=ttl, metadata=metadata)
        await self._io("put", self.backend.put(entry), timeout=self.write_budget(len(entry.value)))

    async def put_json(self, key: str, value: Any, *, ttl: int | None = None, metadata: Any = None) -> None:
        """Write ``value`` serialized as JSON."""
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"value for KV key {key!r} is not JSON-serializable: {exc}") from None
        await self.put(key, text, ttl=ttl, metadata=metadata)

    def _item_size(self, entry: KVEntry) -> int:
        sizer = getattr(self.backend, "bulk_item_size", None)
        if callable(sizer):
            return int(sizer(entry))
        # A backend without a body: an estimate (the value, the key, and some room for the rest).
        return len(entry.value) + len(entry.key.encode("utf-8")) + 64

    def plan_writes(self, entries: Sequence[KVEntry]) -> list[tuple[list[KVEntry], int]]:
        """Split validated ``entries`` into requests: ``[(entries, body_bytes)]`` (no I/O).

        A batch holds at most ``bulk_write_max`` entries and, when the backend has a request body
        limit (``bulk_body_max``), at most that many bytes of serialized body. An entry too large for
        any bulk body is a batch of one, sent as a single put.
        """
        count_max = self._limit("bulk_write_max", KV_BULK_WRITE_MAX) or KV_BULK_WRITE_MAX
        body_max = self._limit("bulk_body_max", None)
        plan: list[tuple[list[KVEntry], int]] = []
        batch: list[KVEntry] = []
        size = 2  # "[" and "]"
        for e in entries:
            n = self._item_size(e)
            if body_max is not None and 2 + n > body_max:
                plan.append(([e], n))
                continue
            grown = size + n + (1 if batch else 0)  # "," between items
            if batch and (len(batch) >= count_max or (body_max is not None and grown > body_max)):
                plan.append((batch, size))
                batch, size = [], 2
                grown = size + n
            batch.append(e)
            size = grown
        if batch:
            plan.append((batch, size))
        return plan

    async def put_many(self, entries: Iterable[KVEntry] | Mapping[str, bytes | str], *, ttl: int | None = None) -> None:
        """Write many values: bulk writes split by count and by body bytes (:meth:`plan_writes`).

        A batch of one goes as a single put. Each request gets :meth:`write_budget` of its body.

        Args:
            entries: :class:`KVEntry` objects (from :meth:`entry`), or a mapping of key to value.
            ttl: TTL for the values of a mapping (``KVEntry`` objects carry their own).
        """
        if isinstance(entries, Mapping):
            items = [self.entry(k, v, ttl=ttl) for k, v in entries.items()]
        else:
            items = [self.entry(e.key, e.value, ttl=e.ttl, metadata=e.metadata) for e in entries]
        if not items:
            return
        for batch, nbytes in self.plan_writes(items):
            if len(batch) == 1:
                await self._io("put", self.backend.put(batch[0]), timeout=self.write_budget(len(batch[0].value)))
            else:
                await self._io("put_many", self.backend.put_many(batch), timeout=self.write_budget(nbytes))

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a missing key is fine)."""
        check_key(key)
        await self._io("delete", self.backend.delete(key))

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Delete ``keys``, in one bulk delete per ``bulk_write_max`` (10,000; 100 on the data plane)."""
        distinct = list(dict.fromkeys(check_key(k) for k in keys))
        size = self._limit("bulk_write_max", KV_BULK_WRITE_MAX) or KV_BULK_WRITE_MAX
        for i in range(0, len(distinct), size):
            await self._io("delete_many", self.backend.delete_many(distinct[i : i + size]))

    async def list_page(
        self, *, prefix: str | None = None, cursor: str | None = None, limit: int = KV_LIST_MAX
    ) -> KVPage:
        """Return one page of keys (at most ``limit``, 10..1000 as Cloudflare allows) starting with ``prefix``.

        Raises:
            InvalidInputError: ``limit`` is not an integer 10..1000 (before any I/O).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not KV_LIST_MIN <= limit <= KV_LIST_MAX:
            raise InvalidInputError(
                f"limit={limit!r}: must be an integer {KV_LIST_MIN}..{KV_LIST_MAX} (Cloudflare's bounds for a listing)"
            )
        result: KVPage = await self._io("list", self.backend.list(prefix=prefix, cursor=cursor, limit=limit))
        return result

    async def list_keys(self, *, prefix: str | None = None) -> AsyncIterator[KVKey]:
        """Yield every key starting with ``prefix``, following cursors (an empty page may still have more)."""
        cursor: str | None = None
        while True:
            page = await self.list_page(prefix=prefix, cursor=cursor)
            for key in page.keys:
                yield key
            if page.cursor is None:
                return
            cursor = page.cursor

    async def aclose(self) -> None:
        """Cancel abandoned calls still running, then close the backend."""
        await self._abandoner.aclose()
        await self.backend.aclose()
