"""Fixtures of the emulator tests: one shared in-process emulator, fresh namespaces and gateways per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dualcache import StackConfig, load_stack_config
from dualcache.local import Emulator
from tests.local.helpers import Gateways, KVNamespace

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture(scope="session")
def dev_config() -> StackConfig:
    return load_stack_config(PROJECT_DIR, "dev")


@pytest.fixture(scope="session")
def shared_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


@pytest.fixture
def emu(shared_emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator with counters, request log and faults cleared."""
    shared_emulator.control.reset()
    shared_emulator.control.clear_faults()
    yield shared_emulator
    shared_emulator.control.clear_faults()


@pytest.fixture(scope="session")
def shared_client(shared_emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_emulator.url, timeout=10.0) as c:
        yield c


@pytest.fixture
def client(emu: Emulator, shared_client: httpx.Client) -> httpx.Client:
    """A client of the shared emulator (reset for this test)."""
    return shared_client


@pytest.fixture
def kv(client: httpx.Client, emu: Emulator) -> KVNamespace:
    """A fresh namespace on the shared emulator."""
    return KVNamespace(client, emu.outputs.account_id)


@pytest.fixture
def gateways(client: httpx.Client, emu: Emulator) -> Gateways:
    """Creates gateways on the shared emulator."""
    return Gateways(client, emu.outputs.account_id)
