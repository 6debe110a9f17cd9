"""The in-process Emulator: outputs, persistence across restarts, API-token auth, the ASGI app, forwarding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dualcache import Namespace, StackConfig, UsageError
from dualcache.local import Emulator, EmulatorState, Store, create_app, emulated, provision

BGE = "@cf/baai/bge-base-en-v1.5"


def test_emulator_outputs_point_at_the_emulator(shared_emulator: Emulator, dev_config: StackConfig) -> None:
    o = shared_emulator.outputs
    assert shared_emulator.url.startswith("http://127.0.0.1:")
    assert o.api_base_url == shared_emulator.url + "/client/v4"
    assert o.gateway_base_url == shared_emulator.url + "/v1"
    assert (o.stack, o.account_id, o.gateway_id) == ("dev", dev_config.account_id, dev_config.gateway_id)
    assert o.worker_name == dev_config.worker_name
    assert o.policies == dev_config.policies
    assert o.namespaces == {b: dev_config.offline_namespace_id(b) for b in Namespace}
    assert shared_emulator.token is None


def test_emulated_gives_the_outputs_and_stops_the_server(tmp_path: Path, project_dir: Path) -> None:
    with emulated(stack="staging", project_dir=project_dir, data_dir=tmp_path) as outputs:
        assert outputs.stack == "staging" and outputs.api_base_url.startswith("http://127.0.0.1:")
        listed = httpx.get(f"{outputs.api_base_url}/accounts/{outputs.account_id}/storage/kv/namespaces").json()
        assert sorted(ns["id"] for ns in listed["result"]) == sorted(outputs.namespaces.values())
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{outputs.api_base_url}/accounts/{outputs.account_id}/storage/kv/namespaces", timeout=2)


def test_emulator_outside_any_project_is_a_config_error_saying_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dualcache import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        Emulator(data_dir=tmp_path / "data")
    assert str(info.value) == (
        f"Emulator: no Pulumi.yaml in {str(tmp_path.resolve())!r} or above; run inside the project, or pass "
        "project_dir (the directory holding Pulumi.yaml) or config"
    )
    assert list(tmp_path.iterdir()) == []


def test_emulator_finds_the_project_above_the_current_directory_and_uses_a_temporary_folder(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the temporary data folder goes
    monkeypatch.chdir(project_dir / "tests" / "local")
    emu = Emulator(stack="staging")
    assert (emu.config.stack, emu.data_dir) == ("staging", None)
    with emu:
        data_dir = emu.data_dir
        assert data_dir is not None and data_dir.parent == tmp_path and data_dir.name.startswith("dualcache-emulator-")
        assert (data_dir / "emulator.sqlite3").is_file()
        assert emu.outputs.gateway_id == "jobmatch-ai-staging"
    assert emu.data_dir is None and list(tmp_path.iterdir()) == []  # removed on stop
    with emu:  # a new start gets a fresh folder, empty again
        assert emu.data_dir is not None and emu.data_dir != data_dir
        assert (
            httpx.get(f"{emu.outputs.api_base_url}/accounts/{emu.outputs.account_id}/storage/kv/namespaces").json()[
                "result_info"
            ]["total_count"]
            == 6
        )
    assert list(tmp_path.iterdir()) == []


def test_emulator_removes_its_temporary_folder_when_start_fails(
    dev_config: StackConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from dualcache.local import Clock

    class BrokenClock(Clock):
        def now(self) -> float:
            raise RuntimeError("clock broken")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    emu = Emulator(config=dev_config, clock=BrokenClock())
    with pytest.raises(RuntimeError, match="clock broken"):
        emu.start()
    assert emu.data_dir is None and list(tmp_path.iterdir()) == []


def test_emulator_keeps_a_data_dir_it_was_given(project_dir: Path, tmp_path: Path) -> None:
    with Emulator(project_dir=project_dir, data_dir=tmp_path / "kept") as emu:
        assert emu.data_dir == tmp_path / "kept"
    assert (tmp_path / "kept" / "emulator.sqlite3").is_file() and emu.data_dir == tmp_path / "kept"


def test_emulated_finds_the_project_from_a_subdirectory(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(project_dir / "infra")
    with emulated(stack="prod") as outputs:
        assert (outputs.stack, outputs.gateway_id) == ("prod", "jobmatch-ai-prod")
        assert len(list(tmp_path.iterdir())) == 1
    assert list(tmp_path.iterdir()) == []


def test_emulator_refuses_a_stack_file_typo_before_any_io(tmp_path: Path) -> None:
    from dualcache import ConfigError

    (tmp_path / "Pulumi.yaml").write_text("name: jobmatch-ai\n")
    (tmp_path / "Pulumi.qa.yaml").write_text(
        'config:\n  jobmatch-ai:accountId: "0123456789abcdef0123456789abcdef"\n'
        "  jobmatch-ia:gateway:\n    cacheTtl: 60\n"
    )
    with pytest.raises(ConfigError, match=r"unknown config namespace 'jobmatch-ia' in .*Pulumi\.qa\.yaml"):
        Emulator(stack="qa", project_dir=tmp_path, data_dir=tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pulumi.qa.yaml", "Pulumi.yaml"]


def _readme_emulator_example(project_dir: Path) -> str:
    from tests.docs_support import doc_block, section

    local = project_dir / "docs" / "local.md"
    assert "the emulator also runs in-process" in section(local, "Pointing a service at it")
    block = doc_block(local, "Pointing a service at it", "emulated(")
    assert "from dualcache.local import Emulator" in block and "emulated(" in block
    return block


def test_readme_emulator_example_runs_as_written(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(project_dir / "tests")  # inside the project, not at its root
    namespace: dict[str, object] = {}
    exec(compile(_readme_emulator_example(project_dir), "docs/local.md", "exec"), namespace)
    emu = namespace["emu"]
    assert isinstance(emu, Emulator) and emu.config.stack == "dev"
    assert namespace["outputs"].__class__.__name__ == "StackOutputs"
    assert list(tmp_path.iterdir()) == []  # both temporary folders removed
    assert not (project_dir / "tests" / ".dualcache").exists()


def test_emulator_outputs_before_start_is_a_usage_error(project_dir: Path, tmp_path: Path) -> None:
    emu = Emulator(project_dir=project_dir, data_dir=tmp_path)
    with pytest.raises(UsageError):
        _ = emu.outputs
    with pytest.raises(UsageError):
        _ = emu.control


def test_emulator_data_survives_a_restart(project_dir: Path, tmp_path: Path) -> None:
    with Emulator(project_dir=project_dir, data_dir=tmp_path) as first:
        o = first.outputs
        ns = o.namespace_id(Namespace.EMBEDDINGS_CACHE)
        kv_url = f"{o.api_base_url}/accounts/{o.account_id}/storage/kv/namespaces/{ns}/values/embed%3Aabc"
        gw_url = f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/workers-ai/{BGE}"
        assert httpx.put(kv_url, content=b"vector").status_code == 200
        assert httpx.post(gw_url, json={"text": "persist"}).headers["cf-aig-cache-status"] == "MISS"
        first_port = first.url
    with Emulator(project_dir=project_dir, data_dir=tmp_path) as second:
        o2 = second.outputs
        assert o2.namespaces == o.namespaces
        kv_url2 = kv_url.replace(first_port, second.url)
        gw_url2 = gw_url.replace(first_port, second.url)
        assert httpx.get(kv_url2).content == b"vector"
        assert httpx.post(gw_url2, json={"text": "persist"}).headers["cf-aig-cache-status"] == "HIT"
        namespaces = httpx.get(f"{o2.api_base_url}/accounts/{o2.account_id}/storage/kv/namespaces").json()
        assert namespaces["result_info"]["total_count"] == 6


def test_emulator_restart_applies_changed_gateway_settings(
    project_dir: Path, tmp_path: Path, dev_config: StackConfig
) -> None:
    with Emulator(project_dir=project_dir, data_dir=tmp_path):
        pass
    changed = dev_config.model_copy(update={"gateway": dev_config.gateway.model_copy(update={"cache_ttl": 7200})})
    with Emulator(config=changed, data_dir=tmp_path) as emu:
        o = emu.outputs
        gw = httpx.get(f"{o.api_base_url}/accounts/{o.account_id}/ai-gateway/gateways/{o.gateway_id}").json()
        assert gw["result"]["cache_ttl"] == 7200


def test_emulator_config_override_turns_on_gateway_authentication(tmp_path: Path, dev_config: StackConfig) -> None:
    config = dev_config.model_copy(update={"gateway": dev_config.gateway.model_copy(update={"authentication": True})})
    with Emulator(config=config, data_dir=tmp_path, token="emu-token") as emu:
        o = emu.outputs
        url = f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/workers-ai/{BGE}"
        provider = {"authorization": "Bearer emu-token"}
        assert httpx.post(url, json={"text": "x"}, headers=provider).status_code == 401
        wrong = {**provider, "cf-aig-authorization": "Bearer other"}
        assert httpx.post(url, json={"text": "x"}, headers=wrong).status_code == 401
        right = {**provider, "cf-aig-authorization": "Bearer emu-token"}
        assert httpx.post(url, json={"text": "x"}, headers=right).status_code == 200
        assert emu.control.stats()["gateway"]["refused"] == 2


@pytest.fixture(scope="module")
def token_emulator(tmp_path_factory: pytest.TempPathFactory, dev_config: StackConfig) -> Iterator[Emulator]:
    with Emulator(config=dev_config, data_dir=tmp_path_factory.mktemp("token"), token="emu-token") as emu:
        yield emu


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="missing"),
        pytest.param({"authorization": "Bearer wrong"}, 403, id="wrong"),
        pytest.param({"authorization": "emu-token"}, 403, id="not-bearer"),
        pytest.param({"authorization": "Bearer emu-token"}, 200, id="right"),
    ],
)
def test_emulator_token_guards_every_api_request(
    token_emulator: Emulator, headers: dict[str, str], status: int
) -> None:
    emu = token_emulator
    emu.control.reset()
    o = emu.outputs
    ns = o.namespace_id(Namespace.SESSIONS)
    with httpx.Client(headers=headers) as client:
        kv = f"{o.api_base_url}/accounts/{o.account_id}/storage/kv/namespaces"
        calls = [
            ("GET", kv, None),
            ("GET", f"{kv}/{ns}/keys", None),
            ("PUT", f"{kv}/{ns}/values/guarded", b"v"),
            ("GET", f"{kv}/{ns}/metadata/guarded", None),
            ("POST", f"{kv}/{ns}/bulk/get", b'{"keys": ["guarded"]}'),
            ("DELETE", f"{kv}/{ns}/values/guarded", None),
            ("GET", f"{o.api_base_url}/accounts/{o.account_id}/ai-gateway/gateways", None),
            ("GET", f"{o.api_base_url}/accounts/{o.account_id}/ai-gateway/gateways/{o.gateway_id}", None),
        ]
        for method, url, content in calls:
            r = client.request(method, url, content=content)
            assert r.status_code == status, (method, url, r.text)
            if status != 200:
                assert r.json()["errors"][0]["code"] == 10000
        run = client.post(f"{o.api_base_url}/accounts/{o.account_id}/ai/run/{BGE}", json={"text": "x"})
        assert run.status_code == status
        via_gateway = client.post(
            f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/workers-ai/{BGE}", json={"text": "x"}
        )
        assert (via_gateway.status_code == 200) == (status == 200)
    assert emu.control.stats()["api"]["unauthorized"] == (0 if status == 200 else 10)
    assert emu.control.stats()["kv"]["put"] == (1 if status == 200 else 0)


async def test_create_app_serves_over_asgi_transport(tmp_path: Path, dev_config: StackConfig) -> None:
    store = Store(tmp_path)
    try:
        state = EmulatorState(store)
        provision(store, dev_config, state.clock.now())
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            ns = dev_config.offline_namespace_id(Namespace.API_CACHE)
            base = f"/client/v4/accounts/{dev_config.account_id}/storage/kv/namespaces/{ns}/values"
            assert (await client.put(f"{base}/spam%3A1", content=b"no")).status_code == 200
            assert (await client.get(f"{base}/spam%3A1")).content == b"no"
        assert state.snapshot()["kv"]["put"] == 1
    finally:
        store.close()


def test_emulator_forwards_openai_to_an_upstream(project_dir: Path, tmp_path: Path) -> None:
    with Emulator(project_dir=project_dir, data_dir=tmp_path / "upstream") as upstream:
        u = upstream.outputs
        upstream_base = f"{u.gateway_base_url}/{u.account_id}/{u.gateway_id}/openai"
        with Emulator(project_dir=project_dir, data_dir=tmp_path / "front", openai_upstream=upstream_base) as front:
            f = front.outputs
            url = f"{f.gateway_base_url}/{f.account_id}/{f.gateway_id}/openai/chat/completions"
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "forward me"}]}
            headers = {"authorization": "Bearer sk-upstream", "cf-aig-cache-ttl": "300"}
            first = httpx.post(url, json=body, headers=headers)
            second = httpx.post(url, json=body, headers=headers)
            assert first.status_code == 200
            assert "x-dualcache-local-model" not in first.headers
            assert (first.headers["cf-aig-cache-status"], second.headers["cf-aig-cache-status"]) == ("MISS", "HIT")
            assert second.json() == first.json()
            assert front.control.stats()["upstream"] == {"gpt-4o-mini": 1}
            assert upstream.control.stats()["upstream"] == {"gpt-4o-mini": 1}
            forwarded = upstream.control.requests()[0]
            assert forwarded["headers"]["authorization"] == "Bearer <redacted>"
            missing = httpx.post(url, json={"model": "gpt-nope", "messages": body["messages"]}, headers=headers)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_emulator_forwarding_to_an_unreachable_upstream_is_502(project_dir: Path, tmp_path: Path) -> None:
    from tests.local.helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    with Emulator(project_dir=project_dir, data_dir=tmp_path, openai_upstream=dead) as emu:
        o = emu.outputs
        r = httpx.post(
            f"{o.gateway_base_url}/{o.account_id}/{o.gateway_id}/openai/embeddings",
            json={"model": "text-embedding-3-small", "input": "x"},
            headers={"authorization": "Bearer sk"},
        )
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unreachable"


def test_require_local_extra_names_the_extra_when_starlette_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dualcache.local import require_local_extra

    require_local_extra()
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ImportError, match=r"pip install 'dualcache\[local\]'") as info:
        require_local_extra()
    assert info.value.name == "starlette"


def test_local_package_rejects_unknown_attributes() -> None:
    import dualcache.local

    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = dualcache.local.NoSuchThing  # type: ignore[attr-defined]
    assert "Emulator" in dir(dualcache.local)


def test_emulator_on_an_occupied_port_is_a_config_error_before_any_state(
    shared_emulator: Emulator, project_dir: Path, tmp_path: Path
) -> None:
    from dualcache import ConfigError

    port = int(shared_emulator.url.rsplit(":", 1)[1])
    second = Emulator(project_dir=project_dir, data_dir=tmp_path / "second", port=port)
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
        second.start()
    assert not (tmp_path / "second").exists()
    assert httpx.get(f"{shared_emulator.url}/__emulator/stats").status_code == 200  # the first one is unharmed


def test_emulator_second_on_one_data_folder_is_refused_naming_folder_and_pid(project_dir: Path, tmp_path: Path) -> None:
    import os

    from dualcache import ConfigError

    with Emulator(project_dir=project_dir, data_dir=tmp_path) as first:
        before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
        second = Emulator(project_dir=project_dir, data_dir=tmp_path)
        with pytest.raises(ConfigError) as info:
            second.start()
        message = str(info.value)
        assert "\n" not in message
        assert repr(str(tmp_path)) in message and f"process {os.getpid()}" in message
        assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # nothing written
        assert httpx.get(f"{first.url}/__emulator/stats").status_code == 200  # the first one is unharmed
        with pytest.raises(UsageError):
            _ = second.outputs
    with Emulator(project_dir=project_dir, data_dir=tmp_path) as again:  # released when the first stopped
        assert httpx.get(f"{again.url}/__emulator/stats").status_code == 200


def test_emulator_releases_the_lock_when_start_fails_after_taking_it(project_dir: Path, tmp_path: Path) -> None:
    import sqlite3

    from dualcache.local._lock import DataDirLock

    (tmp_path / "emulator.sqlite3").mkdir()  # SQLite cannot open a directory: the store fails after the lock
    with pytest.raises(sqlite3.OperationalError, match="unable to open database"):
        Emulator(project_dir=project_dir, data_dir=tmp_path).start()
    lock = DataDirLock(tmp_path)
    lock.acquire()  # nobody holds it any more
    assert lock.held
    lock.release()
    lock.release()  # idempotent
    assert not lock.held
