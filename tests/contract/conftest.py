"""Fixtures of the data-plane contract suite: one running implementation per parameter, shared by the session.

Every test speaks only HTTP to ``dataplane.url`` with ``dataplane.token``, so another implementation of
``infra/worker/DATAPLANE.md`` (the local emulator) joins by adding a parameter to the two fixtures below.
Tests share the implementation, so each one works under its own key prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from tests.contract.workerd import DataPlane, node_or_none, workerd_data_plane

IMPLEMENTATIONS = ["workerd"]


def _start(name: str, *, with_token: bool) -> AbstractContextManager[DataPlane]:
    if name == "workerd":
        if node_or_none() is None:
            pytest.skip("Node.js is not installed; the data-plane Worker runs in workerd")
        return workerd_data_plane(with_token=with_token)
    raise AssertionError(f"no data-plane implementation named {name!r}")


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def dataplane(request: pytest.FixtureRequest) -> Iterator[DataPlane]:
    """A running data plane with a token."""
    with _start(request.param, with_token=True) as plane:
        yield plane


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
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
