"""SingleFlight and SharedReads on their own: detached computations, local cancellation, no leaks."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from dualcache._singleflight import SharedReads, SingleFlight


class Computation:
    """A computation that waits for ``release`` then answers every key, counting runs and cancellations."""

    def __init__(self, answer: Any = "answer", error: Exception | None = None) -> None:
        self.release = asyncio.Event()
        self.answer = answer
        self.error = error
        self.started = 0
        self.cancelled = 0

    async def __call__(self, futures: Mapping[str, asyncio.Future[Any]]) -> None:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        for key, future in futures.items():
            future.set_result(f"{self.answer}:{key}")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def _join(sf: SingleFlight, key: str) -> tuple[Any, bool]:
    flight = sf.get(key)
    assert flight is not None
    (answer,) = await sf.wait([flight])
    return answer


async def test_single_flight_one_computation_and_one_first_collector() -> None:
    sf = SingleFlight()
    compute = Computation()
    launched = sf.launch(["k"], compute)
    callers = [asyncio.create_task(sf.wait([launched["k"]]))] + [asyncio.create_task(_join(sf, "k")) for _ in range(3)]
    await _settle()
    compute.release.set()
    answers = await asyncio.gather(*callers)
    assert compute.started == 1
    flat = [answers[0][0], *answers[1:]]
    assert [value for value, _ in flat] == ["answer:k"] * 4
    assert sorted(first for _, first in flat) == [False, False, False, True]
    assert len(sf) == 0 and sf.get("k") is None


async def test_single_flight_cancelled_launcher_does_not_cancel_joiners() -> None:
    sf = SingleFlight()
    compute = Computation()
    launched = sf.launch(["k"], compute)
    leader = asyncio.create_task(sf.wait([launched["k"]]))
    joiners = [asyncio.create_task(_join(sf, "k")) for _ in range(2)]
    await _settle()
    leader.cancel()
    await _settle()
    assert compute.cancelled == 0 and sf.get("k") is not None  # still computing for the joiners
    compute.release.set()
    answers = await asyncio.gather(*joiners)
    assert answers == [("answer:k", True), ("answer:k", False)]  # the first joiner counts the outcome
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert (compute.started, sf.abandoned) == (1, 0)


async def test_single_flight_cancelled_joiner_does_not_cancel_the_others() -> None:
    sf = SingleFlight()
    compute = Computation()
    launched = sf.launch(["k"], compute)
    leader = asyncio.create_task(sf.wait([launched["k"]]))
    joiners = [asyncio.create_task(_join(sf, "k")) for _ in range(2)]
    await _settle()
    joiners[0].cancel()
    await _settle()
    compute.release.set()
    assert await leader == [("answer:k", True)]
    assert await joiners[1] == ("answer:k", False)
    with pytest.raises(asyncio.CancelledError):
        await joiners[0]
    assert compute.cancelled == 0


async def test_single_flight_everyone_cancelled_cancels_the_computation_and_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    sf = SingleFlight()
    compute = Computation()
    launched = sf.launch(["a", "b"], compute)
    callers = [asyncio.create_task(sf.wait(launched.values()))] + [
        asyncio.create_task(_join(sf, "b")) for _ in range(2)
    ]
    await _settle()
    for caller in callers:
        caller.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert sf.get("a") is None and sf.get("b") is None  # released at once: a later caller starts afresh
    await _settle()
    assert (compute.started, compute.cancelled, sf.abandoned) == (1, 1, 1)
    assert _other_tasks() == [] and sf.running == 0
    fresh = Computation()
    again = sf.launch(["a"], fresh)
    fresh.release.set()
    assert await sf.wait([again["a"]]) == [("answer:a", True)]
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_single_flight_error_reaches_every_waiter_and_is_never_reported_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    sf = SingleFlight()
    boom = ValueError("upstream said no")
    compute = Computation(error=boom)
    launched = sf.launch(["k", "unwatched"], compute)
    callers = [asyncio.create_task(sf.wait([launched["k"]])), asyncio.create_task(_join(sf, "k"))]
    await _settle()
    compute.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert results == [boom, boom]
    del launched, callers
    gc.collect()
    await _settle()
    assert "never retrieved" not in caplog.text
    assert len(sf) == 0


async def test_single_flight_answers_left_unsettled_are_an_error() -> None:
    sf = SingleFlight()

    async def forgetful(futures: Mapping[str, asyncio.Future[Any]]) -> None:
        futures["a"].set_result(1)

    launched = sf.launch(["a", "b"], forgetful)
    assert await sf.wait([launched["a"]]) == [(1, True)]
    with pytest.raises(RuntimeError, match="left key 'b' unanswered"):
        await sf.wait([launched["b"]])


async def test_single_flight_finished_answers_outlive_their_waiters() -> None:
    # Once every key is answered, the rest of the computation (a synchronous KV write) is not cancelled.
    sf = SingleFlight()
    wrote = asyncio.Event()
    proceed = asyncio.Event()

    async def answer_then_write(futures: Mapping[str, asyncio.Future[Any]]) -> None:
        futures["k"].set_result("v")
        await proceed.wait()
        wrote.set()

    launched = sf.launch(["k"], answer_then_write)
    assert await sf.wait([launched["k"]]) == [("v", True)]
    assert sf.running == 1
    proceed.set()
    await asyncio.wait_for(wrote.wait(), 5)
    assert sf.abandoned == 0


async def test_single_flight_disabled_registers_nothing() -> None:
    sf = SingleFlight(enabled=False)
    compute = Computation()
    launched = sf.launch(["k"], compute)
    assert sf.get("k") is None and len(sf) == 0
    compute.release.set()
    assert await sf.wait([launched["k"]]) == [("answer:k", True)]


async def test_single_flight_aclose_cancels_what_runs() -> None:
    sf = SingleFlight()
    compute = Computation()
    sf.launch(["k"], compute)
    await _settle()
    await sf.aclose()
    assert compute.cancelled == 1 and sf.running == 0 and len(sf) == 0


async def test_shared_reads_one_read_for_concurrent_readers() -> None:
    reads = SharedReads()
    release = asyncio.Event()
    sent = 0

    async def reader() -> tuple[bytes | None, bool] | None:
        nonlocal sent
        waiting = reads.join("k")
        if waiting is not None:
            answer: tuple[bytes | None, bool] | None = await asyncio.shield(waiting)
            return answer
        slot = reads.begin("k")
        got: tuple[bytes | None, bool] | None = None
        try:
            sent += 1
            await release.wait()
            got = (b"value", True)
            return got
        finally:
            reads.end("k", slot, got)

    tasks = [asyncio.create_task(reader()) for _ in range(5)]
    await _settle()
    release.set()
    assert await asyncio.gather(*tasks) == [(b"value", True)] * 5
    assert sent == 1 and len(reads) == 0


async def test_shared_reads_cancelled_reader_hands_none_to_the_others() -> None:
    reads = SharedReads()
    slot = reads.begin("k")
    waiting = reads.join("k")
    assert waiting is not None and reads.join("k") is waiting  # one future, created on the first join
    reads.end("k", slot, None)
    assert await waiting is None and reads.join("k") is None
