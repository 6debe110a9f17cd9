"""Fixtures of the data-plane contract suite: one running implementation per parameter, shared by the session.

Every test speaks only HTTP to ``dataplane.url`` with ``dataplane.token``, and runs against both
implementations of ``infra/worker/DATAPLANE.md``: the real Worker in workerd (``workerd``) and the local
emulator's data plane (``emulator``), so the two cannot drift. Tests share the implementation, so each one
works under its own key prefix.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from dualcache import load_stack_config
from dualcache._stackconfig import WorkerRateLimitSettings
from dualcache.local import Clock, Emulator
from tests.contract.workerd import DataPlane, node_or_none, workerd_data_plane

IMPLEMENTATIONS = ["workerd", "emulator"]
RATE_LIMITS = {"CONTRACT_LIMITER": (3, 60)}
"""The Workers Rate Limiting binding both implementations bind: 3 calls a key per 60 s."""
WITHOUT_TOKEN = ["workerd"]  # the emulator always has a data-plane token (given, or generated)
REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def emulator_data_plane() -> Iterator[DataPlane]:
    """The local emulator's data plane, on a frozen clock that ``advance`` moves (no wall-clock drift)."""
    frozen = time.time()
    with tempfile.TemporaryDirectory() as folder:
        config = load_stack_config(REPO, "dev")
        limiters = {
            n: WorkerRateLimitSettings(namespace_id="1001", limit=lim, period=per)
            for n, (lim, per) in RATE_LIMITS.items()
        }
        config = config.model_copy(
            update={"data_plane": config.data_plane.model_copy(update={"rate_limits": limiters})}
        )
        emu = Emulator(config=config, data_dir=folder, clock=Clock(base=lambda: frozen))
        with emu:
            url = emu.outputs.data_plane_url
            assert url is not None
            yield DataPlane("emulator", url, emu.data_plane_token, lambda seconds: emu.control.advance_clock(seconds))


def _start(name: str, *, with_token: bool) -> AbstractContextManager[DataPlane]:
    if name == "workerd":
        if node_or_none() is None:
            pytest.skip("Node.js is not installed; the data-plane Worker runs in workerd")
        return workerd_data_plane(with_token=with_token, rate_limits=RATE_LIMITS)
    if name == "emulator":
        assert with_token
        return emulator_data_plane()
    raise AssertionError(f"no data-plane implementation named {name!r}")


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def dataplane(request: pytest.FixtureRequest) -> Iterator[DataPlane]:
    """A running data plane with a token."""
    with _start(request.param, with_token=True) as plane:
        yield plane


@pytest.fixture(scope="session", params=WITHOUT_TOKEN)
def dataplane_without_token(request: pytest.FixtureRequest) -> Iterator[DataPlane]:
    """A running data plane that has no ``DUALCACHE_TOKEN`` configured."""
    with _start(request.param, with_token=False) as plane:
        yield plane


@pytest.fixture
def client(dataplane: DataPlane) -> Iterator[httpx.Client]:
    """An HTTP client for the data plane, sending its token."""
    assert dataplane.token is not None
    headers = {"authorization": f"Bearer {dataplane.token}"}
    with httpx.Client(base_url=dataplane.url, headers=headers, timeout=60.0) as http:
        yield http


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone."""
    return f"t-{uuid.uuid4().hex[:12]}/"
