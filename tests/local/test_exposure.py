"""The emulator's exposure: loopback Host headers only, a control API a web page cannot drive, bounded
counters, tokens that need not be on the command line, and no password echoed from an upstream URL."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import httpx
import pytest

from dualcache import ConfigError
from dualcache.local import Emulator, EmulatorState, Store, create_app
from dualcache.local._cli import _api_token, _data_plane_token, register, run_dev
from dualcache.local._state import MODEL_COUNTERS_MAX, OTHER_MODELS


def _port(emu: Emulator) -> str:
    return emu.url.rsplit(":", 1)[1]


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("evil.example", id="dns-rebinding-name"),
        pytest.param("evil.example:{port}", id="name-with-port"),
        pytest.param("127.0.0.1.evil.example", id="loopback-prefix"),
        pytest.param("192.0.2.5:{port}", id="other-address"),
        pytest.param("", id="empty"),
    ],
)
@pytest.mark.parametrize("path", ["/__emulator/stats", "/client/v4/accounts/{account}/storage/kv/namespaces"])
def test_emulator_refuses_a_foreign_host_header(client: httpx.Client, emu: Emulator, host: str, path: str) -> None:
    url = path.format(account=emu.outputs.account_id)
    response = client.get(url, headers={"host": host.format(port=_port(emu))})
    assert response.status_code == 421
    assert "only answers Host 127.0.0.1, localhost or [::1]" in response.json()["error"]
    assert len(response.content) < 200
    assert emu.control.stats()["requests"] == 0  # refused before anything is served or logged


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "127.0.0.1", "LOCALHOST"])
def test_emulator_serves_loopback_host_headers(client: httpx.Client, emu: Emulator, host: str) -> None:
    response = client.get("/__emulator/stats", headers={"host": host.format(port=_port(emu))})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("bound", "host", "allowed"),
    [
        pytest.param("127.0.0.1", "evil.example", False, id="loopback-bind-refuses-names"),
        pytest.param("192.0.2.5", "192.0.2.5:8787", True, id="bound-address"),
        pytest.param("192.0.2.5", "192.0.2.6:8787", False, id="another-address"),
        pytest.param("devbox.example", "devbox.example:8787", True, id="bound-name"),
        pytest.param("0.0.0.0", "192.0.2.7:8787", True, id="wildcard-takes-addresses"),
        pytest.param("0.0.0.0", "evil.example:8787", False, id="wildcard-refuses-names"),
        pytest.param("::", "[2001:db8::1]:8787", True, id="ipv6-wildcard"),
        pytest.param("0.0.0.0", "localhost:8787", True, id="wildcard-loopback"),
    ],
)
def test_emulator_host_allowed_when_bound_elsewhere_on_purpose(
    tmp_path: Path, bound: str, host: str, allowed: bool
) -> None:
    store = Store(tmp_path)
    try:
        assert EmulatorState(store, bound_host=bound).host_allowed(host) is allowed
    finally:
        store.close()


def test_emulator_control_post_needs_a_json_content_type(client: httpx.Client, emu: Emulator) -> None:
    body = json.dumps({"kv": {"error_rate": 1.0, "status": 500}})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": content_type} if content_type else {}
        response = client.post("/__emulator/faults", content=body, headers=headers)
        assert response.status_code == 415, content_type
        assert "Content-Type: application/json" in response.json()["error"]
    assert emu.control.faults() == {}  # nothing was injected
    assert client.post("/__emulator/faults", content=body, headers={"content-type": "application/json"}).is_success
    assert set(emu.control.faults()) == {"kv"}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1"])
def test_emulator_control_refuses_cross_origin_requests(
    client: httpx.Client, emu: Emulator, method: str, origin: str
) -> None:
    before = emu.state.clock.offset
    response = client.request(method, "/__emulator/clock", json={"advance": 10**6}, headers={"origin": origin})
    assert response.status_code == 403
    assert response.json() == {"error": "cross-origin requests to /__emulator are refused"}
    assert emu.state.clock.offset == before


def test_emulator_control_accepts_its_own_origin(client: httpx.Client, emu: Emulator) -> None:
    response = client.post("/__emulator/reset", json={}, headers={"origin": emu.url})
    assert response.status_code == 200


def test_emulator_model_counters_stay_bounded_with_20k_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        state = EmulatorState(store)
        for i in range(20_000):
            state.count("upstream", f"@cf/attacker/model-{i:05d}-" + "x" * 100)
            state.count("direct", f"m{i}")
        state.count("upstream", "y" * 10_000)
        stats = state.snapshot()
    finally:
        store.close()
    assert len(stats["upstream"]) == MODEL_COUNTERS_MAX + 1 == len(stats["direct"])
    assert stats["upstream"][OTHER_MODELS] == 20_000 - MODEL_COUNTERS_MAX + 1
    assert stats["direct"][OTHER_MODELS] == 20_000 - MODEL_COUNTERS_MAX
    assert sum(stats["upstream"].values()) == 20_001
    assert len(json.dumps(stats)) < 64 * 1024


async def test_emulator_model_counters_bound_names_sent_over_http(tmp_path: Path, dev_config: object) -> None:
    store = Store(tmp_path)
    try:
        state = EmulatorState(store)
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            account = "0123456789abcdef0123456789abcdef"
            for i in range(MODEL_COUNTERS_MAX + 5):
                await http.post(f"/client/v4/accounts/{account}/ai/run/@cf/nope/m{i}", json={"text": "x"})
            stats = (await http.get("/__emulator/stats")).json()
    finally:
        store.close()
    assert len(stats["direct"]) == MODEL_COUNTERS_MAX + 1
    assert stats["direct"][OTHER_MODELS] == 5


def _args(tmp_path: Path, project_dir: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dev", "--data", str(tmp_path / "data"), "--project-dir", str(project_dir), *argv])


def test_cli_dev_reads_tokens_from_files(tmp_path: Path, project_dir: Path) -> None:
    (tmp_path / "api").write_text("api-token-from-file\n")
    (tmp_path / "dp").write_text("dp-token-from-file\nignored second line\n")
    args = _args(tmp_path, project_dir, "--token-file", str(tmp_path / "api"), "--data-plane-token-file", "dp")
    args.data_plane_token_file = tmp_path / "dp"
    assert _api_token(args.token, args.token_file) == ("api-token-from-file", "--token-file")
    assert _data_plane_token(args.data_plane_token, args.data_plane_token_file) == (
        "dp-token-from-file",
        "--data-plane-token-file",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param("has space inside\n", "visible ASCII", id="space"),
        pytest.param("x" * 5000, "is 5,000 bytes; the limit is 4,096", id="too-long"),
    ],
)
def test_cli_dev_refuses_a_bad_token_file_without_showing_it(
    tmp_path: Path, project_dir: Path, content: str, message: str
) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        _api_token(None, path)
    assert "inside" not in str(info.value)


def test_cli_dev_refuses_a_token_fifo_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        _api_token(None, fifo)


def test_cli_dev_token_flag_and_file_exclude_each_other(
    tmp_path: Path, project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _args(tmp_path, project_dir, "--token", "a", "--token-file", "f")
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_dev_help_says_token_flags_are_visible_in_the_process_list() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    dev = parser._subparsers._group_actions[0].choices["dev"]  # type: ignore[union-attr]
    text = " ".join(dev.format_help().split())
    assert text.count("visible to other users in the process list") == 2
    assert "--token-file PATH" in text and "$DUALCACHE_DEV_TOKEN" in text


@pytest.mark.parametrize(
    "upstream", ["ftp://user:PW-s3cret@x.example/v1", "localhost:PW-s3cret@x", "gopher://:PW-s3cret@h/"]
)
def test_cli_dev_never_echoes_an_upstream_password(tmp_path: Path, project_dir: Path, upstream: str) -> None:
    with pytest.raises(ConfigError, match="is not an http\\(s\\) URL") as info:
        run_dev(_args(tmp_path, project_dir, "--openai-upstream", upstream))
    assert "PW-s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as state_info:
        EmulatorState(Store(tmp_path / "s"), openai_upstream=upstream)
    assert "PW-s3cret" not in str(state_info.value)
    assert re.search(r"\*\*\*@", str(state_info.value))
