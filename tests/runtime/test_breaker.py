"""The circuit breaker as a pure state machine, driven by a fake monotonic clock."""

from __future__ import annotations

import logging

import pytest

from dualcache import BreakerPolicy, BreakerState, CircuitBreaker, ConfigError


class Tick:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, cooldown: float = 10.0) -> tuple[CircuitBreaker, Tick]:
    tick = Tick()
    return CircuitBreaker("kv TEST", BreakerPolicy(failures=failures, cooldown=cooldown), clock=tick), tick


def test_breaker_opens_after_n_consecutive_failures() -> None:
    breaker, _ = make(failures=3)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert [breaker.allow() for _ in range(4)] == [False] * 4
    assert (breaker.opened, breaker.rejected) == (1, 4)


def test_breaker_success_resets_the_consecutive_count() -> None:
    breaker, _ = make(failures=3)
    for outcome in ("f", "f", "s", "f", "f"):
        assert breaker.allow()
        breaker.failure() if outcome == "f" else breaker.success()
    assert breaker.state is BreakerState.CLOSED


def test_breaker_lets_exactly_one_probe_through_after_the_cooldown() -> None:
    breaker, tick = make(failures=1, cooldown=10.0)
    breaker.allow()
    breaker.failure()
    tick.now = 9.9
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.1)
    tick.now = 10.0
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert [breaker.allow() for _ in range(3)] == [False] * 3
    assert breaker.probes == 1


def test_breaker_probe_success_closes() -> None:
    breaker, tick = make(failures=1)
    breaker.allow()
    breaker.failure()
    tick.now = 11.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(5))


def test_breaker_probe_failure_reopens_for_a_new_cooldown() -> None:
    breaker, tick = make(failures=1, cooldown=10.0)
    breaker.allow()
    breaker.failure()
    tick.now = 10.0
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    tick.now = 19.0
    assert not breaker.allow()
    tick.now = 20.0
    assert breaker.allow()
    assert breaker.opened == 2


def test_breaker_released_probe_lets_another_probe_go() -> None:
    breaker, tick = make(failures=1)
    breaker.allow()
    breaker.failure()
    tick.now = 10.0
    assert breaker.allow()
    breaker.release()  # never sent (no place at the pool's gate): no verdict
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert breaker.probes == 2


def test_breaker_disabled_never_opens() -> None:
    tick = Tick()
    breaker = CircuitBreaker("gateway", BreakerPolicy(failures=1, enabled=False), clock=tick)
    for _ in range(10):
        assert breaker.allow()
        breaker.failure()
    assert (breaker.state, breaker.opened) == (BreakerState.CLOSED, 0)


def test_breaker_logs_one_line_per_state_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dualcache._breaker")
    breaker, tick = make(failures=2)
    for _ in range(50):  # 2 failures open it; 48 calls are refused, silently
        if breaker.allow():
            breaker.failure()
    tick.now = 10.0
    assert breaker.allow()
    breaker.success()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert ["open" in messages[0], "half_open" in messages[1], "closed" in messages[2]] == [True] * 3
    assert all("kv TEST" in m for m in messages)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"failures": 0}, "failures", id="zero-failures"),
        pytest.param({"failures": True}, "failures", id="bool-failures"),
        pytest.param({"cooldown": 0}, "cooldown", id="zero-cooldown"),
        pytest.param({"cooldown": float("nan")}, "cooldown", id="nan-cooldown"),
        pytest.param({"cooldown": float("inf")}, "cooldown", id="inf-cooldown"),
    ],
)
def test_breaker_policy_rejects_bad_values_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"BreakerPolicy.{field}="):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]
