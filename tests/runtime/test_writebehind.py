"""WriteBehind on its own: batches, byte splits, retries with backoff, bounds, drops, flush and close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from runtime_support import FakeClock

from dualcache import (
    BackendUnavailableError,
    ConfigError,
    KVEntry,
    KVStore,
    MemoryKVBackend,
    Operation,
    SkippedError,
    Stats,
)
from dualcache._writebehind import WriteBehind, WriteBehindPolicy

OP = Operation.EMBEDDINGS


class _Backend(MemoryKVBackend):
    """Memory KV that records each write's size, fails the first ``failures`` writes, or hangs."""

    def __init__(self, *, clock: FakeClock, failures: int = 0, hang: bool = False, blocked: bool = False) -> None:
        super().__init__(clock=clock)
        self.failures, self.hang, self.blocked = failures, hang, blocked
        self.batches: list[int] = []
        self.attempts = 0

    async def _gate(self, n: int) -> None:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.blocked:
            raise SkippedError("kv blocked", backend="kv", reason="rate_limited", retry_after=60)
        if self.failures:
            self.failures -= 1
            raise BackendUnavailableError("kv write failed", backend="kv", status_code=503)
        self.batches.append(n)

    async def put(self, entry: KVEntry) -> None:
        await self._gate(1)
        await super().put(entry)

    async def put_many(self, entries: Sequence[KVEntry]) -> None:
        await self._gate(len(entries))
        await super().put_many(entries)


class Rig:
    def __init__(self, clock: FakeClock, policy: WriteBehindPolicy | None = None, **backend: Any) -> None:
        self.backend = _Backend(clock=clock, **backend)
        self.store = KVStore(self.backend, binding="EMBEDDINGS_CACHE", timeout=None)
        self.stats = Stats()
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.queue = WriteBehind(policy or WriteBehindPolicy(), self.stats, sleep=sleep)

    def snap(self) -> dict[str, Any]:
        return self.stats.snapshot()[OP.value]


def entries(n: int, size: int = 10, prefix: str = "k") -> list[KVEntry]:
    return [KVEntry(f"{prefix}{i}", b"v" * size, 3600) for i in range(n)]


async def test_writebehind_batches_per_100_keys_and_returns_at_once(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.queue.submit(OP, rig.store, entries(250))
    assert len(rig.queue) == 250 and rig.backend.batches == []  # submit queued them and returned
    assert await rig.queue.flush() == 0
    assert sorted(rig.backend.batches) == [50, 100, 100]
    assert len(rig.backend._data) == 250 and rig.queue.written == 250
    assert rig.backend._data["k7"][2] == clock.now + 3600  # the TTL travels with the record


async def test_writebehind_splits_batches_by_bytes(clock: FakeClock) -> None:
    rig = Rig(clock, WriteBehindPolicy(batch_bytes=1000, concurrency=1))
    rig.queue.submit(OP, rig.store, entries(10, size=298))  # 300 bytes each with the key: 3 a batch
    rig.queue.submit(OP, rig.store, [KVEntry("big", b"x" * 5000)])  # bigger than a batch: alone
    await rig.queue.flush()
    assert rig.backend.batches == [3, 3, 3, 1, 1]
    assert len(rig.backend._data) == 11


async def test_writebehind_retries_with_backoff(clock: FakeClock) -> None:
    rig = Rig(clock, WriteBehindPolicy(max_attempts=3, base_delay=0.1, max_delay=1.0), failures=2)
    rig.queue.submit(OP, rig.store, entries(5))
    await rig.queue.flush()
    assert rig.sleeps == [0.1, 0.2]
    assert len(rig.backend._data) == 5
    assert (rig.snap()["errors"], rig.queue.failed) == (0, 0)


async def test_writebehind_gives_up_after_bounded_attempts_and_logs_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(clock, WriteBehindPolicy(max_attempts=2, base_delay=0.5, concurrency=1), failures=10**6)
    rig.queue.submit(OP, rig.store, entries(300))
    await rig.queue.flush()
    assert rig.backend._data == {}
    assert rig.queue.failed == 300 and len(rig.queue) == 0
    assert rig.snap()["errors"] == 3  # once per failed batch of 100
    assert rig.sleeps == [0.5, 0.5, 0.5]  # one wait between the two attempts of each batch
    failures = [r for r in caplog.records if "failed after retries" in r.getMessage()]
    assert len(failures) == 1
    rig.backend.failures = 0
    rig.queue.submit(OP, rig.store, entries(1))
    await rig.queue.flush()
    assert "succeed again" in caplog.text


async def test_writebehind_full_queue_drops_counts_and_logs_once_per_episode(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(clock, WriteBehindPolicy(max_entries=10))
    rig.queue.submit(OP, rig.store, entries(25))
    assert len(rig.queue) == 10
    assert rig.snap()["kv_write_dropped"] == 15 and rig.queue.dropped == 15
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1
    await rig.queue.flush()
    assert "queue drained; 15 write(s) were dropped" in caplog.text
    assert len(rig.backend._data) == 10
    rig.queue.submit(OP, rig.store, entries(20, prefix="second"))  # a new episode, a new line
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 2


async def test_writebehind_bounded_in_bytes(clock: FakeClock) -> None:
    rig = Rig(clock, WriteBehindPolicy(max_bytes=1000))
    rig.queue.submit(OP, rig.store, entries(5, size=298))
    assert (len(rig.queue), rig.queue.queued_bytes, rig.snap()["kv_write_dropped"]) == (3, 900, 2)


async def test_writebehind_newer_record_replaces_the_queued_one_and_is_pending(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.queue.submit(OP, rig.store, [KVEntry("k", b"old")])
    rig.queue.submit(OP, rig.store, [KVEntry("k", b"new")])
    assert rig.queue.pending(rig.store, "k") == b"new" and len(rig.queue) == 1
    assert rig.queue.pending(rig.store, "other") is None
    await rig.queue.flush()
    assert rig.backend._data["k"][0] == b"new"
    assert rig.queue.pending(rig.store, "k") is None


async def test_writebehind_refuses_an_invalid_record_without_failing_the_others(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.queue.submit(OP, rig.store, [KVEntry("ok", b"v"), KVEntry("bad-ttl", b"v", ttl=5)])
    await rig.queue.flush()
    assert set(rig.backend._data) == {"ok"}
    assert (rig.queue.failed, rig.snap()["errors"]) == (1, 1)


async def test_writebehind_aclose_is_bounded_and_counts_what_is_left(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(clock, hang=True)
    rig.queue.submit(OP, rig.store, entries(150))
    assert await rig.queue.aclose(timeout=0.05) == 150
    assert rig.snap()["kv_write_dropped"] == 150 and len(rig.queue) == 0
    assert "150 record(s) not written within 0.1 s of closing" in caplog.text
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    rig.queue.submit(OP, rig.store, entries(1, prefix="late"))  # after closing: dropped, counted
    assert rig.snap()["kv_write_dropped"] == 151


async def test_writebehind_aclose_flushes_what_it_can(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.queue.submit(OP, rig.store, entries(120))
    assert await rig.queue.aclose() == 0
    assert len(rig.backend._data) == 120 and rig.snap()["kv_write_dropped"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"batch_keys": 101}, r"batch_keys=101: must be an integer 1\.\.100", id="batch-keys"),
        pytest.param({"max_entries": 0}, r"max_entries=0: must be an integer >= 1", id="entries"),
        pytest.param({"concurrency": True}, r"concurrency=True", id="bool"),
        pytest.param({"base_delay": -1}, r"base_delay=-1: must be a number of seconds >= 0", id="delay"),
        pytest.param({"close_timeout": 0}, r"close_timeout=0: must be > 0", id="close"),
    ],
)
def test_writebehind_policy_rejects_bad_bounds(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WriteBehindPolicy(**kwargs)


async def test_writebehind_logs_nothing_per_key(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dualcache")
    rig = Rig(clock, WriteBehindPolicy(max_entries=5))
    for i in range(50):
        rig.queue.submit(OP, rig.store, [KVEntry(f"k{i}", b"v")])
    await rig.queue.flush()
    assert len([r for r in caplog.records if r.name == "dualcache._writebehind"]) == 2  # full, then drained


async def test_writebehind_counts_a_blocked_kv_as_skipped_without_retrying(clock: FakeClock) -> None:
    rig = Rig(clock, WriteBehindPolicy(concurrency=1), blocked=True)
    rig.queue.submit(OP, rig.store, entries(150))
    assert await rig.queue.flush() == 0
    assert rig.backend.attempts == 2 and rig.sleeps == []  # one try per batch: a block is not retried
    assert (rig.snap()["kv_skipped"], rig.snap()["errors"]) == (150, 0)
    assert rig.backend._data == {} and rig.queue.failed == 150
