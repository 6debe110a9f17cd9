"""Fixtures of the runtime tests: a fake clock, one in-process emulator for the Cloudflare KV backend, and a
test double of the data-plane Worker for the data-plane backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from dataplane_double import FakeDataPlane
from runtime_support import FakeClock, KVCase

from dualcache import (
    CloudflareKVBackend,
    DataPlaneKVBackend,
    KVStore,
    MemoryKVBackend,
    RequestBudget,
    SQLiteKVBackend,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "runtime-test-token"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _fresh_request_budgets() -> Iterator[None]:
    # The REST budgets are process-wide per token: a 429 in one test must not block the next one.
    RequestBudget.clear_registry()
    yield
    RequestBudget.clear_registry()


@pytest.fixture(scope="session")
def kv_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from dualcache.local import Emulator

    with Emulator(
        stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path_factory.mktemp("kv-emulator"), token=TOKEN
    ) as emu:
        yield emu


@pytest.fixture(params=["memory", "sqlite", "cloudflare", "dataplane"])
async def kv_case(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> AsyncIterator[KVCase]:
    if request.param == "memory":
        store = KVStore(MemoryKVBackend(clock=clock), binding="TEST")
        yield KVCase(store, clock.advance, lambda: 0)
        await store.aclose()
        return
    if request.param == "sqlite":
        store = KVStore(SQLiteKVBackend(tmp_path / "kv.sqlite3", "TEST", clock=clock), binding="TEST")
        yield KVCase(store, clock.advance, lambda: 0)
        await store.aclose()
        return
    if request.param == "dataplane":
        plane = FakeDataPlane(TOKEN, clock)
        async with httpx.AsyncClient(transport=httpx.MockTransport(plane)) as client:
            backend = DataPlaneKVBackend(
                client, data_plane_url="https://dataplane.test", binding="EMBEDDINGS_CACHE", token=TOKEN
            )
            store = KVStore(backend, binding="EMBEDDINGS_CACHE")
            yield KVCase(store, clock.advance, lambda: len(plane.requests))
        return
    emu = request.getfixturevalue("kv_emulator")
    account = emu.outputs.account_id  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as client:
        created = await client.post(
            f"{emu.outputs.api_base_url}/accounts/{account}/storage/kv/namespaces",  # type: ignore[attr-defined]
            json={"title": f"runtime-test-{uuid.uuid4().hex}"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert created.status_code == 200, created.text
        backend = CloudflareKVBackend(
            client,
            api_base_url=emu.outputs.api_base_url,  # type: ignore[attr-defined]
            account_id=account,
            namespace_id=created.json()["result"]["id"],
            api_token=TOKEN,
        )
        store = KVStore(backend, binding="TEST", timeout=10.0)
        control = emu.control  # type: ignore[attr-defined]
        yield KVCase(store, lambda s: control.advance_clock(s), lambda: int(control.stats()["requests"]))
