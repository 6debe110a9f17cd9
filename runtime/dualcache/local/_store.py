"""The emulator's durable state: KV namespaces and values, gateways and the gateway cache, in SQLite.

One connection, guarded by a lock: the server runs on one event loop, but the in-process
:class:`~dualcache.local.Emulator` opens and closes the store from another thread. Expiry is decided by
the caller's clock (the emulator's injectable clock), never by SQLite's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CachedResponse", "KVEntry", "Store"]

DB_FILENAME = "emulator.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE TABLE IF NOT EXISTS kv (
    namespace_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    metadata TEXT,
    expiration INTEGER,
    PRIMARY KEY (namespace_id, key)
);
CREATE TABLE IF NOT EXISTS gateways (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    settings TEXT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE TABLE IF NOT EXISTS gateway_cache (
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    status INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (account_id, gateway_id, cache_key)
);
"""


@dataclass(frozen=True)
class KVEntry:
    """A stored KV pair. ``metadata`` is the JSON text as written; ``expiration`` unix seconds or None."""

    key: str
    value: bytes
    metadata: str | None
    expiration: int | None


@dataclass(frozen=True)
class CachedResponse:
    """A response held in a gateway's cache."""

    status: int
    content_type: str
    body: bytes


class Store:
    """SQLite-backed state under a data directory (created if missing); survives restarts."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_FILENAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._closed = False

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if not self._closed:
                self._conn.close()
                self._closed = True

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def _write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(sql, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- namespaces ---------------------------------------------------------------------------------

    def namespaces(self, account_id: str) -> list[tuple[str, str]]:
        """Return ``(id, title)`` of the account's namespaces, ordered by title."""
        rows = self._query("SELECT id, title FROM namespaces WHERE account_id = ? ORDER BY title, id", (account_id,))
        return [(str(r[0]), str(r[1])) for r in rows]

    def namespace(self, account_id: str, namespace_id: str) -> tuple[str, str] | None:
        """Return ``(id, title)`` of one namespace, or None."""
        rows = self._query(
            "SELECT id, title FROM namespaces WHERE account_id = ? AND id = ?", (account_id, namespace_id)
        )
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def namespace_by_title(self, account_id: str, title: str) -> str | None:
        """Return the id of the namespace titled ``title``, or None."""
        rows = self._query("SELECT id FROM namespaces WHERE account_id = ? AND title = ?", (account_id, title))
        return str(rows[0][0]) if rows else None

    def create_namespace(self, account_id: str, namespace_id: str, title: str) -> None:
        """Create (or re-title) a namespace."""
        self._write_many(
            "INSERT INTO namespaces (account_id, id, title) VALUES (?, ?, ?) "
            "ON CONFLICT (account_id, id) DO UPDATE SET title = excluded.title",
            [(account_id, namespace_id, title)],
        )

    def delete_namespace(self, account_id: str, namespace_id: str) -> None:
        """Delete a namespace and its values."""
        self._write_many("DELETE FROM namespaces WHERE account_id = ? AND id = ?", [(account_id, namespace_id)])
        self._write_many("DELETE FROM kv WHERE namespace_id = ?", [(namespace_id,)])

    # -- KV values ----------------------------------------------------------------------------------

    def kv_get(self, namespace_id: str, key: str, now: float) -> KVEntry | None:
        """Return the live entry under ``key`` (expired entries are deleted and reported missing)."""
        rows = self._query(
            "SELECT key, value, metadata, expiration FROM kv WHERE namespace_id = ? AND key = ?", (namespace_id, key)
        )
        if not rows:
            return None
        entry = KVEntry(str(rows[0][0]), bytes(rows[0][1]), rows[0][2], rows[0][3])
        if entry.expiration is not None and entry.expiration <= now:
            self._write_many("DELETE FROM kv WHERE namespace_id = ? AND key = ?", [(namespace_id, key)])
            return None
        return entry

    def kv_get_many(self, namespace_id: str, keys: Sequence[str], now: float) -> dict[str, KVEntry]:
        """Return the live entries among ``keys``."""
        found: dict[str, KVEntry] = {}
        for key in dict.fromkeys(keys):
            entry = self.kv_get(namespace_id, key, now)
            if entry is not None:
                found[key] = entry
        return found

    def kv_put_many(self, namespace_id: str, entries: Sequence[KVEntry]) -> None:
        """Write entries in one transaction (last write wins)."""
        self._write_many(
            "INSERT INTO kv (namespace_id, key, value, metadata, expiration) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace_id, key) DO UPDATE SET value = excluded.value, "
            "metadata = excluded.metadata, expiration = excluded.expiration",
            [(namespace_id, e.key, e.value, e.metadata, e.expiration) for e in entries],
        )

    def kv_delete_many(self, namespace_id: str, keys: Sequence[str]) -> None:
        """Delete keys (missing keys are fine)."""
        self._write_many("DELETE FROM kv WHERE namespace_id = ? AND key = ?", [(namespace_id, k) for k in keys])

    def kv_list(
        self, namespace_id: str, *, prefix: str, after: str | None, limit: int, now: float
    ) -> tuple[list[KVEntry], bool]:
        """Return up to ``limit`` live entries with ``prefix``, after key ``after``, in byte order.

        Returns:
            The entries (values omitted) and whether more keys follow.
        """
        self._write_many(
            "DELETE FROM kv WHERE namespace_id = ? AND expiration IS NOT NULL AND expiration <= ?",
            [(namespace_id, now)],
        )
        # Keys are TEXT in UTF-8 with the BINARY collation: comparison is memcmp, i.e. UTF-8 byte order.
        sql = "SELECT key, metadata, expiration FROM kv WHERE namespace_id = ? AND substr(key, 1, ?) = ?"
        params: list[Any] = [namespace_id, len(prefix), prefix]
        if after is not None:
            sql += " AND key > ?"
            params.append(after)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit + 1)
        rows = self._query(sql, params)
        entries = [KVEntry(str(r[0]), b"", r[1], r[2]) for r in rows[:limit]]
        return entries, len(rows) > limit

    # -- gateways -----------------------------------------------------------------------------------

    def gateways(self, account_id: str) -> list[dict[str, Any]]:
        """Return the account's gateways (settings dicts), ordered by id."""
        rows = self._query("SELECT settings FROM gateways WHERE account_id = ? ORDER BY id", (account_id,))
        return [json.loads(r[0]) for r in rows]

    def gateway(self, account_id: str, gateway_id: str) -> dict[str, Any] | None:
        """Return one gateway's settings, or None."""
        rows = self._query("SELECT settings FROM gateways WHERE account_id = ? AND id = ?", (account_id, gateway_id))
        return json.loads(rows[0][0]) if rows else None

    def put_gateway(self, account_id: str, settings: dict[str, Any]) -> None:
        """Create or replace a gateway (``settings["id"]`` is its id)."""
        self._write_many(
            "INSERT INTO gateways (account_id, id, settings) VALUES (?, ?, ?) "
            "ON CONFLICT (account_id, id) DO UPDATE SET settings = excluded.settings",
            [(account_id, settings["id"], json.dumps(settings, sort_keys=True))],
        )

    def delete_gateway(self, account_id: str, gateway_id: str) -> None:
        """Delete a gateway and its cache."""
        self._write_many("DELETE FROM gateways WHERE account_id = ? AND id = ?", [(account_id, gateway_id)])
        self.clear_gateway_cache(account_id, gateway_id)

    # -- gateway cache ------------------------------------------------------------------------------

    def cache_get(self, account_id: str, gateway_id: str, cache_key: str, now: float) -> CachedResponse | None:
        """Return the live cached response under ``cache_key``, or None."""
        rows = self._query(
            "SELECT status, content_type, body, expires_at FROM gateway_cache "
            "WHERE account_id = ? AND gateway_id = ? AND cache_key = ?",
            (account_id, gateway_id, cache_key),
        )
        if not rows or rows[0][3] <= now:
            return None
        return CachedResponse(int(rows[0][0]), str(rows[0][1]), bytes(rows[0][2]))

    def cache_put(
        self, account_id: str, gateway_id: str, cache_key: str, response: CachedResponse, expires_at: float
    ) -> None:
        """Store a response until ``expires_at`` (clock seconds)."""
        self._write_many(
            "INSERT INTO gateway_cache (account_id, gateway_id, cache_key, status, content_type, body, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, gateway_id, cache_key) DO UPDATE SET "
            "status = excluded.status, content_type = excluded.content_type, body = excluded.body, "
            "expires_at = excluded.expires_at",
            [(account_id, gateway_id, cache_key, response.status, response.content_type, response.body, expires_at)],
        )

    def clear_gateway_cache(self, account_id: str, gateway_id: str) -> None:
        """Drop every cached response of a gateway."""
        self._write_many(
            "DELETE FROM gateway_cache WHERE account_id = ? AND gateway_id = ?", [(account_id, gateway_id)]
        )
