"""Write-behind: the cache's KV writes leave the caller's path and land in batches.

A caller that computed a fresh answer hands its record to :class:`WriteBehind` and returns; a few
background writers take the queued records per namespace, in bulk writes of at most
``batch_keys`` keys and ``batch_bytes`` bytes (the :class:`~dualcache.KVStore` splits further by its
backend's limits), and retry a failed batch with exponential backoff, a bounded number of times.

Bounds, so that a KV outage never turns into a memory leak:

* the queue holds at most ``max_entries`` records and ``max_bytes`` bytes (keys and values, counting
  the batches being written); a record that does not fit is dropped and counted in
  ``kv_write_dropped``, and the log says so once per episode (one line when dropping starts, one when
  the queue has drained), never once per key;
* a batch that still fails after ``max_attempts`` is given up, counted once in ``errors`` per
  operation it carried; the log says so once per namespace until a write to it succeeds again;
* :meth:`WriteBehind.aclose` flushes within ``close_timeout`` seconds; what it could not write is
  counted in ``kv_write_dropped`` and logged in one line.

A newer record of a key still queued replaces the older one (last write wins, as in KV). While a
record is queued or being written, :meth:`WriteBehind.pending` returns it, so a caller that misses KV
meanwhile is served the record instead of paying the provider again.

Invalidation (``DualCache.forget`` / ``forget_user``) first :meth:`WriteBehind.discard` drops the queued
records it removes (else the queue would write them after the delete), then :meth:`WriteBehind.settle`
waits for the matching records already being written, so the delete that follows lands after them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from dualcache._exceptions import BackendError, ConfigError, InvalidInputError, SkippedError
from dualcache._kv import KVEntry, KVStore
from dualcache._policy import Operation
from dualcache._stats import Stats

__all__ = ["WriteBehind", "WriteBehindPolicy"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WriteBehindPolicy:
    """Bounds of the write-behind queue of a :class:`~dualcache.DualCache`.

    Attributes:
        max_entries: Most records queued or being written at once; more are dropped (counted).
        max_bytes: Most bytes (keys and values) queued or being written at once; more are dropped.
        batch_keys: Most keys in one bulk write (1..100).
        batch_bytes: Most bytes in one bulk write (a bigger record goes alone in its batch).
        max_attempts: Attempts per batch, the first one included (1..20).
        base_delay: First backoff in seconds before a retry; doubled after each failed attempt.
        max_delay: Cap of one backoff, in seconds.
        concurrency: Most bulk writes in flight at once (1..64).
        close_timeout: Seconds ``aclose()`` spends flushing the queue before it gives up (counted).
    """

    max_entries: int = 10_000
    max_bytes: int = 64 * _MIB
    batch_keys: int = 100
    batch_bytes: int = 16 * _MIB
    max_attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 2.0
    concurrency: int = 4
    close_timeout: float = 10.0

    def __post_init__(self) -> None:
        ints = {
            "max_entries": (self.max_entries, 1, None),
            "max_bytes": (self.max_bytes, 1, None),
            "batch_keys": (self.batch_keys, 1, 100),
            "batch_bytes": (self.batch_bytes, 1, None),
            "max_attempts": (self.max_attempts, 1, 20),
            "concurrency": (self.concurrency, 1, 64),
        }
        for name, (value, low, high) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bound = f"{low}..{high}" if high else f">= {low}"
                raise ConfigError(f"WriteBehindPolicy.{name}={value!r}: must be an integer {bound}")
        floats = {"base_delay": self.base_delay, "max_delay": self.max_delay, "close_timeout": self.close_timeout}
        for name, number in floats.items():
            # NaN passes `< 0` (every comparison with it is false) and inf never ends a wait: both refused.
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number < math.inf:
                raise ConfigError(f"WriteBehindPolicy.{name}={number!r}: must be a number of seconds >= 0, finite")
        if self.close_timeout <= 0:
            raise ConfigError(f"WriteBehindPolicy.close_timeout={self.close_timeout!r}: must be > 0 seconds")


@dataclass(slots=True)
class _Item:
    op: Operation
    entry: KVEntry
    size: int


class _Lane:
    """The queued and in-progress records of one namespace (one :class:`KVStore`)."""

    __slots__ = ("failing", "queued", "settled", "store", "writing")

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.queued: OrderedDict[str, _Item] = OrderedDict()
        self.writing: dict[str, _Item] = {}
        self.failing = False
        self.settled: list[asyncio.Future[None]] = []  # woken when a batch of this lane is finished


def _matches(key: str, keys: Collection[str], prefix: str | None) -> bool:
    return key in keys or (prefix is not None and key.startswith(prefix))


Sleep = Callable[[float], Awaitable[None]]


class WriteBehind:
    """A bounded queue of KV writes, flushed in bulk by background writers (see the module docstring).

    Args:
        policy: The bounds.
        stats: Where drops (``kv_write_dropped``) and failed batches (``errors``) are counted.
        sleep: Awaitable sleep between retries (tests pass one that records the waits).

    Attributes:
        written: Records written so far.
        failed: Records given up after ``max_attempts`` (or refused by the store's validation).
        dropped: Records dropped (queue full, or not flushed by ``aclose``).
    """

    def __init__(self, policy: WriteBehindPolicy, stats: Stats, *, sleep: Sleep | None = None) -> None:
        self.policy = policy
        self.stats = stats
        self._sleep: Sleep = sleep or asyncio.sleep
        self._lanes: dict[KVStore, _Lane] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._entries = 0
        self._bytes = 0
        self._queued = 0
        self._episode_drops = 0
        self._closed = False
        self.written = 0
        self.failed = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"WriteBehind(entries={self._entries}, bytes={self._bytes}, writers={len(self._workers)})"

    def __len__(self) -> int:
        """Records queued or being written."""
        return self._entries

    @property
    def queued_bytes(self) -> int:
        """Bytes (keys and values) queued or being written."""
        return self._bytes

    def pending(self, store: KVStore, key: str) -> bytes | None:
        """Return the value of ``key`` queued (or being written) for ``store``, if any."""
        lane = self._lanes.get(store)
        if lane is None:
            return None
        item = lane.queued.get(key) or lane.writing.get(key)
        return None if item is None else item.entry.value

    def discard(self, store: KVStore, *, keys: Collection[str] = (), prefix: str | None = None) -> list[str]:
        """Drop the queued records of ``store`` whose key is in ``keys`` or starts with ``prefix``.

        Records already being written are not dropped (the request is out): :meth:`settle` waits for them.

        Returns:
            The keys dropped.
        """
        lane = self._lanes.get(store)
        if lane is None:
            return []
        dropped = [k for k in lane.queued if _matches(k, keys, prefix)]
        for k in dropped:
            item = lane.queued.pop(k)
            self._account(-1, -item.size, queued=-1)
        return dropped

    async def settle(
        self, store: KVStore, *, keys: Collection[str] = (), prefix: str | None = None, timeout: float | None = None
    ) -> list[str]:
        """Wait until no record of ``store`` matching ``keys``/``prefix`` is being written, at most ``timeout``
        seconds (default ``policy.close_timeout``).

        Returns:
            The matching keys whose writes had started (written or given up by now, unless the time ran out).
        """
        lane = self._lanes.get(store)
        if lane is None:
            return []
        seen = [k for k in lane.writing if _matches(k, keys, prefix)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.policy.close_timeout if timeout is None else timeout)
        while any(_matches(k, keys, prefix) for k in lane.writing):
            left = deadline - loop.time()
            if left <= 0:
                logger.warning("KV write-behind: a write to %s did not finish in time", lane.store.binding or "KV")
                break
            waiter: asyncio.Future[None] = loop.create_future()
            lane.settled.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=left)
            except TimeoutError:
                continue
        return seen

    def submit(self, op: Operation, store: KVStore, entries: Sequence[KVEntry]) -> None:
        """Queue ``entries`` for ``store`` and return at once (never raises, never waits).

        Must be called from a running event loop (the writers are its tasks).
        """
        lane = self._lanes.get(store)
        if lane is None:
            lane = self._lanes[store] = _Lane(store)
        for entry in entries:
            try:
                checked = store.entry(entry.key, entry.value, ttl=entry.ttl, metadata=entry.metadata)
            except InvalidInputError as exc:
                # A record KV would refuse: counted as a failed write, never queued (it would fail its batch).
                self.failed += 1
                self.stats.error(op)
                logger.warning("%s: KV write of %r refused before queueing: %s", op.value, entry.key, exc)
                continue
            size = len(checked.key.encode("utf-8")) + len(checked.value)
            old = lane.queued.get(checked.key)
            freed = old.size if old is not None else 0
            held = self._entries - (old is not None)
            if self._closed or held + 1 > self.policy.max_entries or self._bytes - freed + size > self.policy.max_bytes:
                self._drop(op, 1, closed=self._closed)
                continue
            if old is not None:
                del lane.queued[checked.key]
                self._account(-1, -old.size, queued=-1)
            lane.queued[checked.key] = _Item(op, checked, size)
            self._account(1, size, queued=1)
        self._spawn()

    def _account(self, entries: int, size: int, *, queued: int = 0) -> None:
        self._entries += entries
        self._bytes += size
        self._queued += queued

    def _drop(self, op: Operation, n: int, *, closed: bool = False) -> None:
        self.dropped += n
        self.stats.write_dropped(op, n)
        if self._episode_drops == 0 and not closed:
            logger.warning(
                "KV write-behind queue full (%d records, %d bytes; bounds %d records, %d bytes): dropping new "
                "writes until it drains; they are counted in kv_write_dropped",
                self._entries,
                self._bytes,
                self.policy.max_entries,
                self.policy.max_bytes,
            )
        self._episode_drops += n

    def _spawn(self) -> None:
        if not self._queued:
            return
        needed = min(self.policy.concurrency, -(-self._queued // self.policy.batch_keys))
        loop = asyncio.get_running_loop()
        while len(self._workers) < needed:
            task = loop.create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _take(self) -> tuple[_Lane, list[_Item]] | None:
        for lane in self._lanes.values():
            if not lane.queued:
                continue
            batch: list[_Item] = []
            size = 0
            while lane.queued and len(batch) < self.policy.batch_keys:
                key, item = next(iter(lane.queued.items()))
                if batch and size + item.size > self.policy.batch_bytes:
                    break
                del lane.queued[key]
                lane.writing[key] = item
                batch.append(item)
                size += item.size
            self._queued -= len(batch)
            # Move the lane to the end: namespaces take turns.
            self._lanes[lane.store] = self._lanes.pop(lane.store)
            return lane, batch
        return None

    async def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                if self._episode_drops and self._entries == 0:
                    logger.warning("KV write-behind queue drained; %d write(s) were dropped", self._episode_drops)
                    self._episode_drops = 0
                return
            await self._write(*taken)

    async def _write(self, lane: _Lane, batch: list[_Item]) -> None:
        entries = [item.entry for item in batch]
        error: BaseException | None = None
        skipped = False
        started = time.perf_counter()
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                if len(entries) == 1:
                    e = entries[0]
                    await lane.store.put(e.key, e.value, ttl=e.ttl, metadata=e.metadata)
                else:
                    await lane.store.put_many(entries)
            except SkippedError as exc:  # KV is blocked (429 block, budget, open breaker): nothing was sent
                error, skipped = exc, True
                break
            except BackendError as exc:
                error = exc
                if attempt < self.policy.max_attempts:
                    await self._sleep(min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1)))
                continue
            except Exception as exc:  # a store that refuses the batch itself: retrying would not help
                error = exc
                break
            error = None
            break
        self._finish(lane, batch)
        if error is None:
            self.written += len(batch)
            elapsed = time.perf_counter() - started  # retries included: what the write cost
            for op in {item.op for item in batch}:
                self.stats.observe(op, "kv_write", elapsed)
            if lane.failing:
                lane.failing = False
                logger.warning("KV writes to %s succeed again", lane.store.binding or "a namespace")
            return
        self.failed += len(batch)
        if skipped:
            for op, n in Counter(item.op for item in batch).items():
                self.stats.skip(op, "kv", n)
            return
        for op in Counter(item.op for item in batch):
            self.stats.error(op)
        if not lane.failing:
            lane.failing = True
            logger.warning(
                "KV write of %d record(s) to %s failed after retries, not written: %s; further failures there are "
                "counted in errors, not logged, until a write succeeds",
                len(batch),
                lane.store.binding or "a namespace",
                error,
            )

    def _finish(self, lane: _Lane, batch: list[_Item]) -> None:
        for item in batch:
            if lane.writing.get(item.entry.key) is item:
                del lane.writing[item.entry.key]
            self._account(-1, -item.size)
        waiters, lane.settled = lane.settled, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until everything queued has been written (or given up), at most ``timeout`` seconds
        (default ``policy.close_timeout``); the queue stays open.

        Returns:
            How many records are still queued or being written.
        """
        limit = self.policy.close_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while self._workers:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._workers), timeout=left)
        return self._entries

    async def aclose(self, timeout: float | None = None) -> int:
        """Flush what is queued, within ``timeout`` seconds (default ``policy.close_timeout``).

        Records submitted afterwards are dropped (counted).

        Returns:
            How many records could not be written in time (counted in ``kv_write_dropped``).
        """
        self._closed = True
        self._spawn_all()
        limit = self.policy.close_timeout if timeout is None else timeout
        if self._workers:
            _, late = await asyncio.wait(set(self._workers), timeout=limit)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        left: Counter[Operation] = Counter()
        for lane in self._lanes.values():
            for item in (*lane.queued.values(), *lane.writing.values()):
                left[item.op] += 1
            lane.queued.clear()
            lane.writing.clear()
        self._entries = self._bytes = self._queued = 0
        unwritten = sum(left.values())
        for op, n in left.items():
            self._drop(op, n, closed=True)
        if unwritten:
            logger.warning("KV write-behind: %d record(s) not written within %.1f s of closing", unwritten, limit)
        return unwritten

    def _spawn_all(self) -> None:
        try:
            self._spawn()
        except RuntimeError:  # no running loop: nothing can be flushed; aclose() counts what is left
            return
