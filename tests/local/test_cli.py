"""``dualcache dev`` as a subprocess: starts, writes the outputs file, serves, stops on SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dualcache import ConfigError, Namespace, StackOutputs
from dualcache.local import Emulator
from dualcache.local._cli import _api_token, _without_userinfo, register, run_dev
from dualcache.local._server import connect_host, is_loopback

CONSOLE_SCRIPT = Path(sys.executable).with_name("dualcache")


def start(
    command: list[str], data: Path, project_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], StackOutputs]:
    process = subprocess.Popen(
        [*command, "dev", "--port", "0", "--data", str(data), "--project-dir", str(project_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
    )
    outputs_file = data / "outputs.dev.json"
    # A restart on the same folder finds the previous run's file (it stays after Ctrl-C): wait for the
    # new one, which names the new port.
    previous = outputs_file.read_text(encoding="utf-8") if outputs_file.exists() else None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dualcache dev exited early: {process.communicate()}")
        if outputs_file.exists() and outputs_file.read_text(encoding="utf-8") != previous:
            outputs = StackOutputs.load(outputs_file)
            try:
                httpx.get(outputs.api_base_url.removesuffix("/client/v4") + "/__emulator/stats", timeout=1)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            return process, outputs
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"dualcache dev did not become ready: {process.communicate()}")


@pytest.mark.parametrize(
    ("command", "sig"),
    [
        pytest.param([sys.executable, "-m", "dualcache.local"], signal.SIGINT, id="module-sigint"),
        pytest.param([str(CONSOLE_SCRIPT)], signal.SIGINT, id="console-script-sigint"),
        pytest.param([sys.executable, "-m", "dualcache.local"], signal.SIGTERM, id="module-sigterm"),
    ],
)
def test_cli_dev_serves_until_interrupted_and_writes_outputs(
    tmp_path: Path, project_dir: Path, command: list[str], sig: signal.Signals
) -> None:
    process, outputs = start(command, tmp_path, project_dir)
    try:
        assert outputs.api_base_url.startswith("http://127.0.0.1:")
        assert outputs.api_base_url.endswith("/client/v4")
        assert outputs.gateway_base_url == outputs.api_base_url.removesuffix("/client/v4") + "/v1"
        ns = outputs.namespace_id(Namespace.SESSIONS)
        url = f"{outputs.api_base_url}/accounts/{outputs.account_id}/storage/kv/namespaces/{ns}/values/k"
        assert httpx.put(url, content=b"v").status_code == 200
        assert httpx.get(url).content == b"v"
    finally:
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "emulated at http://127.0.0.1:" in stdout
    assert "local, deterministic stand-ins" in stdout
    assert "stopped" in stderr
    assert (tmp_path / "emulator.sqlite3").exists()


def test_cli_dev_data_survives_a_restart_with_the_same_namespace_ids(tmp_path: Path, project_dir: Path) -> None:
    command = [sys.executable, "-m", "dualcache.local"]
    process, outputs = start(command, tmp_path, project_dir)
    ns = outputs.namespace_id(Namespace.API_CACHE)
    path = f"/accounts/{outputs.account_id}/storage/kv/namespaces/{ns}/values/spam%3A1"
    try:
        httpx.put(outputs.api_base_url + path, content=b"spam")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    process, again = start(command, tmp_path, project_dir)
    try:
        assert again.namespaces == outputs.namespaces
        assert httpx.get(again.api_base_url + path).content == b"spam"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)


def test_cli_dev_requires_the_token_it_was_given(tmp_path: Path, project_dir: Path) -> None:
    upstream = "http://user:pw-secret@127.0.0.1:9/v1"
    process, outputs = start(
        [sys.executable, "-m", "dualcache.local"],
        tmp_path,
        project_dir,
        "--token",
        "dev-tok",
        "--openai-upstream",
        upstream,
    )
    try:
        url = f"{outputs.api_base_url}/accounts/{outputs.account_id}/storage/kv/namespaces"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer dev-tok"}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=20)
    assert "dev-tok" not in stdout
    assert "Bearer token required" in stdout
    assert "pw-secret" not in stdout
    assert "openai/* forwarded to http://***@127.0.0.1:9/v1" in stdout


def _args(tmp_path: Path, project_dir: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dev", "--data", str(tmp_path), "--project-dir", str(project_dir), *argv])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["--port", "70000"], "not a port number", id="bad-port"),
        pytest.param(["--openai-upstream", "localhost:11434"], "not an http(s) URL", id="bad-upstream"),
        pytest.param(["--stack", "nope"], "no stack file", id="unknown-stack"),
        pytest.param(["--host", "203.0.113.7"], "cannot listen on 203.0.113.7", id="unbindable-host"),
    ],
)
def test_cli_dev_rejects_bad_arguments(tmp_path: Path, project_dir: Path, argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run_dev(_args(tmp_path, project_dir, *argv))


def test_cli_dev_refuses_a_data_path_that_is_not_a_folder(tmp_path: Path, project_dir: Path) -> None:
    state = tmp_path / "state.txt"
    state.write_text("kept\n")
    with pytest.raises(ConfigError, match=re.escape(f"--data {str(state)!r} is not a directory")):
        run_dev(_args(tmp_path, project_dir, "--data", str(state)))
    with pytest.raises(ConfigError, match=re.escape(f"{str(state)!r} is not a directory, so the folder cannot be")):
        run_dev(_args(tmp_path, project_dir, "--data", str(state / "inner" / "deeper")))
    assert state.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]


def test_cli_dev_reports_an_occupied_port_and_writes_nothing(tmp_path: Path, project_dir: Path) -> None:
    with Emulator(project_dir=project_dir, data_dir=tmp_path / "first") as first:  # another emulator holds it
        port = int(first.url.rsplit(":", 1)[1])
        data = tmp_path / "second"
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["dev", "--port", str(port), "--data", str(data), "--project-dir", str(project_dir)])
        with pytest.raises(ConfigError) as info:
            run_dev(args)
    message = str(info.value)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in message
    assert "port 0 takes a free one" in message
    assert not data.exists()


def test_cli_dev_defaults_to_loopback_and_the_environment_token(
    tmp_path: Path, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALCACHE_DEV_TOKEN", "from-env")
    args = _args(tmp_path, project_dir)
    assert (args.host, args.port, args.token, args.stack) == ("127.0.0.1", 8787, None, "dev")
    assert _api_token(args.token, args.token_file) == ("from-env", "$DUALCACHE_DEV_TOKEN")
    explicit = _args(tmp_path, project_dir, "--token", "explicit")
    assert _api_token(explicit.token, explicit.token_file) == ("explicit", "--token")


@pytest.mark.parametrize(
    ("host", "loopback", "connect"),
    [
        pytest.param("127.0.0.1", True, "127.0.0.1", id="ipv4-loopback"),
        pytest.param("::1", True, "[::1]", id="ipv6-loopback"),
        pytest.param("localhost", True, "localhost", id="localhost"),
        pytest.param("0.0.0.0", False, "127.0.0.1", id="ipv4-wildcard"),
        pytest.param("::", False, "[::1]", id="ipv6-wildcard"),
        pytest.param("192.0.2.5", False, "192.0.2.5", id="lan-address"),
        pytest.param("devbox.example", False, "devbox.example", id="host-name"),
    ],
)
def test_cli_dev_host_helpers(host: str, loopback: bool, connect: str) -> None:
    assert is_loopback(host) is loopback
    assert connect_host(host) == connect


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        pytest.param("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1", id="plain"),
        pytest.param("http://user:pw@127.0.0.1:11434/v1", "http://***@127.0.0.1:11434/v1", id="user-password"),
        pytest.param("https://key@llm.example/v1", "https://***@llm.example/v1", id="user-only"),
    ],
)
def test_cli_dev_prints_upstream_without_credentials(url: str, printed: str) -> None:
    assert _without_userinfo(url) == printed


def test_cli_dev_serves_the_data_plane_with_a_generated_token_it_prints(tmp_path: Path, project_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DUALCACHE_DATA_PLANE_TOKEN"}
    process, outputs = start([sys.executable, "-m", "dualcache.local"], tmp_path, project_dir, env=env)
    try:
        assert outputs.data_plane_url == outputs.api_base_url.removesuffix("/client/v4") + "/dataplane"
        assert outputs.data_plane_worker_name == "jobmatch-ai-dualcache-dev"
        kv = f"{outputs.data_plane_url}/kv/SESSIONS/values/k"
        assert httpx.put(kv, content=b"v").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=20)
    (line,) = [x for x in stdout.splitlines() if "data-plane token" in x]
    token = re.search(r"DUALCACHE_DATA_PLANE_TOKEN=(\S+)", line)
    assert token is not None and len(token.group(1)) >= 32 and "(generated)" in line
    assert token.group(1) not in (tmp_path / "outputs.dev.json").read_text(encoding="utf-8")
    assert f"data plane           {outputs.data_plane_url}" in stdout


@pytest.mark.parametrize("via", ["flag", "environment"])
def test_cli_dev_takes_the_data_plane_token_from_flag_or_environment(
    tmp_path: Path, project_dir: Path, via: str
) -> None:
    secret = f"dp-token-{via}"
    env = {**os.environ, "DUALCACHE_DATA_PLANE_TOKEN": secret if via == "environment" else "env-loses"}
    extra = ["--data-plane-token", secret] if via == "flag" else []
    process, outputs = start([sys.executable, "-m", "dualcache.local"], tmp_path, project_dir, *extra, env=env)
    try:
        kv = f"{outputs.data_plane_url}/kv/SESSIONS/values/k"
        assert httpx.put(kv, content=b"v", headers={"authorization": f"Bearer {secret}"}).status_code == 200
        assert httpx.get(kv, headers={"authorization": "Bearer env-loses"}).status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    assert secret not in stdout and secret not in stderr
    assert secret not in (tmp_path / "outputs.dev.json").read_text(encoding="utf-8")
    source = "--data-plane-token" if via == "flag" else "$DUALCACHE_DATA_PLANE_TOKEN"
    assert f"data-plane token     from {source}" in stdout


def test_cli_dev_refuses_a_bad_data_plane_token_without_repeating_it(
    tmp_path: Path, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALCACHE_DATA_PLANE_TOKEN", "two words")
    with pytest.raises(ConfigError, match=re.escape("$DUALCACHE_DATA_PLANE_TOKEN")) as info:
        run_dev(_args(tmp_path, project_dir))
    assert "two words" not in str(info.value)
    assert not tmp_path.joinpath("outputs.dev.json").exists()


def test_cli_dev_help_warns_that_a_flag_shows_in_the_process_list(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["dev", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "visible to other users in the process list" in help_text
    assert "$DUALCACHE_DATA_PLANE_TOKEN" in help_text


def test_cli_dev_second_on_one_data_folder_fails_with_one_line_naming_folder_and_pid(
    tmp_path: Path, project_dir: Path
) -> None:
    command = [sys.executable, "-m", "dualcache.local"]
    first, outputs = start(command, tmp_path, project_dir)
    try:
        written = (tmp_path / "outputs.dev.json").read_text(encoding="utf-8")
        second = subprocess.run(
            [*command, "dev", "--port", "0", "--data", str(tmp_path), "--project-dir", str(project_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith("dualcache dev: error: data folder ")
        assert repr(str(tmp_path)) in line and f"process {first.pid}" in line
        assert second.stdout == ""
        assert (tmp_path / "outputs.dev.json").read_text(encoding="utf-8") == written  # not rewritten
        assert httpx.get(outputs.api_base_url.removesuffix("/client/v4") + "/__emulator/stats").status_code == 200
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=20)
    again, _ = start(command, tmp_path, project_dir)  # the lock went with the first process
    again.send_signal(signal.SIGINT)
    again.communicate(timeout=20)
    assert again.returncode == 0
