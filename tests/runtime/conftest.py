"""Fixtures of the runtime tests: a fake clock, one in-process emulator for the Cloudflare KV backend, and
for the data-plane backend a test double, the emulator's data plane and the real Worker in workerd."""

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


@pytest.fixture(scope="session")
def kv_workerd() -> Iterator[object]:
    from tests.contract.workerd import node_or_none, workerd_data_plane

    if node_or_none() is None:
        pytest.skip("Node.js is not installed; the data-plane Worker runs in workerd")
    with workerd_data_plane(token=TOKEN) as plane:
        yield plane


async def _empty(client: httpx.AsyncClient, base: str) -> None:
    """Delete every key of a data-plane namespace, so a test sharing the session's Worker starts empty."""
    while True:
        listed = (await client.get(f"{base}/keys", params={"limit": 1000})).json()["result"]
        if not listed:
            return
        names = [k["name"] for k in listed]
        for i in range(0, len(names), 100):
            assert (await client.post(f"{base}/bulk/delete", json=names[i : i + 100])).status_code == 200


@pytest.fixture(params=["memory", "sqlite", "cloudflare", "dataplane", "dataplane-emulator", "dataplane-workerd"])
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
    if request.param in ("dataplane-emulator", "dataplane-workerd"):
        # The real Worker in workerd (its KV clock moves only in RATE_LIMITS, see infra/worker/dev.mjs), and the
        # emulator's data plane: the same backend against both implementations of DATAPLANE.md.
        sent = [0]

        async def count(_request: httpx.Request) -> None:
            sent[0] += 1

        if request.param == "dataplane-workerd":
            plane = request.getfixturevalue("kv_workerd")
            url, token, binding, advance = plane.url, plane.token, "RATE_LIMITS", plane.advance  # type: ignore[attr-defined]
        else:
            emu = request.getfixturevalue("kv_emulator")
            url, token, binding = emu.outputs.data_plane_url, emu.data_plane_token, "SESSIONS"  # type: ignore[attr-defined]
            control = emu.control  # type: ignore[attr-defined]

            def advance(seconds: float) -> None:
                control.advance_clock(seconds)

        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=headers, timeout=30.0) as admin:
            await _empty(admin, f"{url}/kv/{binding}")
        async with httpx.AsyncClient(event_hooks={"request": [count]}) as client:
            backend = DataPlaneKVBackend(client, data_plane_url=url, binding=binding, token=token, timeout=30.0)
            store = KVStore(backend, binding=binding, timeout=30.0)
            yield KVCase(store, lambda s: advance(int(s)), lambda: sent[0])
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
