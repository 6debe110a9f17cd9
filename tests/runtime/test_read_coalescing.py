"""Read coalescing in the data-plane KV client: concurrent single reads share bulk gets, each caller keeps its
own answer, its own failure, its own cancellation and its own gate deadline (against the Worker's test double,
held open so that requests are in flight; the same reads over the emulator and workerd are in test_kvstore)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from dataplane_double import FakeDataPlane
from runtime_support import FakeClock

from dualcache import (
    BackendUnavailableError,
    ConfigError,
    DataPlaneKVBackend,
    KVStore,
    LayerLimits,
    SkippedError,
)
from dualcache._transport import admission_of, build_client

TOKEN = "coalescing-token"
URL = "https://dataplane.test"
BINDING = "EMBEDDINGS_CACHE"


class HeldPlane:
    """The double behind a switch: while ``hold`` is set, every request waits for :meth:`release`; ``fail_bulk``
    answers bulk gets with that status instead."""

    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        self.plane = FakeDataPlane(TOKEN, clock, **kwargs)
        self.hold = asyncio.Event()
        self.hold.set()
        self.arrived = 0
        self.fail_bulk: int | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived += 1
        await self.hold.wait()
        if self.fail_bulk is not None and request.url.path.endswith("/bulk/get"):
            self.plane.requests.append(request)
            return httpx.Response(self.fail_bulk, json={"success": False, "errors": [{"code": 1, "message": "down"}]})
        return self.plane(request)

    def block(self) -> None:
        """Hold every request from now on; ``arrived`` counts from 0 again."""
        self.hold.clear()
        self.arrived = 0

    def release(self) -> None:
        self.hold.set()

    def sent(self, path: str) -> list[httpx.Request]:
        return [r for r in self.plane.requests if r.url.path.endswith(path)]


async def until(condition: object, steps: int = 200) -> None:
    """Let the loop run until ``condition()`` holds (no sleeping on time)."""
    for _ in range(steps):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def store_of(client: httpx.AsyncClient, **kwargs: object) -> KVStore:
    backend = DataPlaneKVBackend(client, data_plane_url=URL, binding=BINDING, token=TOKEN, **kwargs)  # type: ignore[arg-type]
    return KVStore(backend, binding=BINDING, timeout=5.0, queue_timeout=5.0)


async def seed(store: KVStore, n: int) -> None:
    await store.put_many({f"k{i:03d}": f"v{i}" for i in range(n)})
    await store.put("meta", "m", metadata={"a": [1, "é"]})


async def test_coalescer_concurrent_reads_share_bulk_gets_with_single_get_answers(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        store = store_of(client)
        await seed(store, 150)
        held.plane.requests.clear()
        held.block()
        keys = [f"k{i:03d}" for i in range(160)]  # k150..k159 are missing
        reads = [asyncio.ensure_future(store.get(k)) for k in keys]
        meta = asyncio.ensure_future(store.get_with_metadata("meta"))
        plain = asyncio.ensure_future(store.get("meta"))
        await until(lambda: held.arrived == 2)  # the direct GET and the first bulk get (one batch at a time at first)
        for _ in range(20):
            await asyncio.sleep(0)
        assert held.arrived == 2  # the second batch waits for the first
        held.release()
        answers = await asyncio.gather(*reads)
        assert answers == [f"v{i}".encode() if i < 150 else None for i in range(160)]
        assert await meta == (b"m", {"a": [1, "é"]})
        assert await plain == b"m"
        bulks = held.sent("/bulk/get")
        assert [len(json.loads(r.content)["keys"]) for r in bulks] == [100, 60]
        # The second batch holds a metadata read: it asks for metadata, and the plain read of "meta" shares it.
        assert json.loads(bulks[1].content).get("withMetadata") is True
        assert len(held.plane.requests) == 3
        assert store.backend.read_counts() == {  # type: ignore[attr-defined]
            "requests": 2,
            "bulk_requests": 2,
            "coalesced": 161,
            "in_flight": 0,
        }
        assert store.counts["get"] == 161 and store.counts["get_with_metadata"] == 1


async def test_coalescer_bulk_without_metadata_shape_sends_only_metadata_readers_alone(clock: FakeClock) -> None:
    # A server whose bulk get ignores withMetadata answers plain values: the plain reads keep them, the metadata
    # reads read alone (the single GET's cf-kv-metadata header has the metadata).
    held = HeldPlane(clock, bulk_metadata=False)
    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        store = store_of(client)
        await seed(store, 3)
        await store.put("meta2", "n", metadata={"b": 2})
        held.plane.requests.clear()
        held.block()
        first = asyncio.ensure_future(store.get("k000"))
        await until(lambda: held.arrived == 1)
        others = asyncio.gather(
            store.get("k001"), store.get_with_metadata("meta"), store.get("meta2"), store.get_with_metadata("k002")
        )
        await until(lambda: held.arrived == 2)
        held.release()
        assert await first == b"v0"
        assert await others == [b"v1", (b"m", {"a": [1, "é"]}), b"n", (b"v2", None)]
        paths = [r.url.path.rsplit("/", 1)[-1] for r in held.plane.requests]
        assert paths == ["k000", "get", "meta", "k002"]


async def test_coalescer_failed_bulk_costs_only_its_callers(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        store = store_of(client)
        await seed(store, 10)
        held.block()
        held.fail_bulk = 503
        reads = [asyncio.ensure_future(store.get(f"k{i:03d}")) for i in range(6)]
        await until(lambda: held.arrived == 2)
        held.release()
        answers = await asyncio.gather(*reads, return_exceptions=True)
        assert answers[0] == b"v0"  # the direct GET, not in the failed batch
        errors = answers[1:]
        assert all(isinstance(e, BackendUnavailableError) and e.status_code == 503 for e in errors)
        assert len({id(e) for e in errors}) == 5  # each caller its own error
        assert store.counts["errors"] == 5
        held.fail_bulk = None
        assert await asyncio.gather(*(store.get(f"k{i:03d}") for i in range(6))) == [f"v{i}".encode() for i in range(6)]


async def test_coalescer_cancelled_caller_cancels_no_one_else(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        backend = DataPlaneKVBackend(client, data_plane_url=URL, binding=BINDING, token=TOKEN)
        store = KVStore(backend, binding=BINDING, timeout=5.0)
        await seed(store, 10)
        held.plane.requests.clear()
        held.block()
        first = asyncio.ensure_future(backend.get("k000"))
        await until(lambda: held.arrived == 1)
        queued = [asyncio.ensure_future(backend.get(f"k{i:03d}")) for i in range(1, 5)]
        await asyncio.sleep(0)  # each has joined the queue; the dispatcher has not run yet
        queued[1].cancel()  # cancelled while queued: left out of the batch
        await until(lambda: held.arrived == 2)
        queued[2].cancel()  # cancelled while its batch is in flight: the batch goes on for the others
        await asyncio.sleep(0)
        held.release()
        assert await first == b"v0"
        assert await queued[0] == b"v1" and await queued[3] == b"v4"
        for task in (queued[1], queued[2]):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert json.loads(held.sent("/bulk/get")[0].content)["keys"] == ["k001", "k003", "k004"]
        assert backend.read_counts()["in_flight"] == 0


async def test_coalescer_queues_behind_the_gate_within_its_bound(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    client = build_client("kv", LayerLimits(2, 1), httpx.Timeout(5.0), transport=httpx.MockTransport(held))
    gate = admission_of(client)
    assert gate is not None
    async with client:
        store = store_of(client)
        await seed(store, 250)
        held.plane.requests.clear()
        gate.peak = 0
        held.block()
        reads = [asyncio.ensure_future(store.get(f"k{i:03d}")) for i in range(250)]
        await until(lambda: held.arrived == 1)  # the direct GET holds the gate's only place
        for _ in range(20):
            await asyncio.sleep(0)
        assert held.arrived == 1 and gate.in_flight == 1  # the other 249 reads wait behind the gate, unsent
        held.release()
        assert await asyncio.gather(*reads) == [f"v{i}".encode() for i in range(250)]
        assert len(held.plane.requests) == 4  # 1 + 100 + 100 + 49
        assert gate.peak == 1 and gate.in_flight == 0


async def test_coalescer_window_widens_while_it_holds_fast_reads_back_and_halves_on_failure(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        store = store_of(client)
        reads = store.backend._reads  # type: ignore[attr-defined]
        await seed(store, 300)
        assert reads.window == 100
        for _ in range(3):  # a few reads at a time never fill the window: it stays one batch wide
            held.block()
            burst = [asyncio.ensure_future(store.get(f"k{i:03d}")) for i in range(10)]
            await until(lambda: held.arrived == 2)
            held.release()
            await asyncio.gather(*burst)
        assert reads.window == 100
        for _ in range(4):  # 300 at once: the window holds reads back, and the batches answer at once: it widens
            held.block()
            window = reads.window
            burst = [asyncio.ensure_future(store.get(f"k{i:03d}")) for i in range(300)]
            await until(lambda: held.arrived >= 2)
            for _ in range(20):
                await asyncio.sleep(0)
            # The direct GET, then batches of 100 while fewer keys than the window are in flight.
            assert held.arrived == 1 + min(3, -(-window // 100))
            held.release()
            assert await asyncio.gather(*burst) == [f"v{i}".encode() for i in range(300)]
        wide = reads.window
        assert 200 <= wide <= reads.WINDOW_MAX
        held.block()
        held.fail_bulk = 503
        burst = [asyncio.ensure_future(store.get(f"k{i:03d}")) for i in range(101)]
        await until(lambda: held.arrived == 2)
        held.release()
        await asyncio.gather(*burst, return_exceptions=True)
        assert reads.window == max(100, wide / 2)


async def test_coalescer_read_queued_past_its_gate_deadline_is_skipped(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    client = build_client("kv", LayerLimits(2, 1), httpx.Timeout(5.0), transport=httpx.MockTransport(held))
    async with client:
        backend = DataPlaneKVBackend(client, data_plane_url=URL, binding=BINDING, token=TOKEN)
        store = KVStore(backend, binding=BINDING, timeout=5.0, queue_timeout=0.05)
        await seed(store, 3)
        held.plane.requests.clear()
        held.block()
        first = asyncio.ensure_future(store.get("k000"))
        await until(lambda: held.arrived == 1)  # it holds the gate's only place
        with pytest.raises(SkippedError) as skipped:
            await store.get("k001")
        assert skipped.value.reason == "admission"
        assert store.counts["skipped"] == 1 and store.counts["errors"] == 0
        held.release()
        assert await first == b"v0"
        assert len(held.plane.requests) == 1  # the skipped read was never sent
        assert await store.get("k001") == b"v1"


async def test_coalescer_off_sends_one_request_per_read(clock: FakeClock) -> None:
    held = HeldPlane(clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        store = store_of(client, coalesce_reads=False)
        await seed(store, 5)
        held.plane.requests.clear()
        held.block()
        reads = [asyncio.ensure_future(store.get(f"k{i:03d}")) for i in range(5)]
        await until(lambda: held.arrived == 5)
        held.release()
        assert await asyncio.gather(*reads) == [f"v{i}".encode() for i in range(5)]
        assert held.sent("/bulk/get") == [] and len(held.plane.requests) == 5
        assert store.backend.read_counts()["requests"] == 0  # type: ignore[attr-defined]


def test_coalescer_option_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="coalesce_reads='yes'"):
        DataPlaneKVBackend(
            httpx.AsyncClient(),
            data_plane_url=URL,
            binding=BINDING,
            token=TOKEN,
            coalesce_reads="yes",  # type: ignore[arg-type]
        )
