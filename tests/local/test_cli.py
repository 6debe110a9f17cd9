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
from dualcache.local._cli import register, run_dev

CONSOLE_SCRIPT = Path(sys.executable).with_name("dualcache")


def start(command: list[str], data: Path, project_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], StackOutputs]:
    process = subprocess.Popen(
        [*command, "dev", "--port", "0", "--data", str(data), "--project-dir", str(project_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    outputs_file = data / "outputs.dev.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dualcache dev exited early: {process.communicate()}")
        if outputs_file.exists():
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
    process, outputs = start([sys.executable, "-m", "dualcache.local"], tmp_path, project_dir, "--token", "dev-tok")
    try:
        url = f"{outputs.api_base_url}/accounts/{outputs.account_id}/storage/kv/namespaces"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer dev-tok"}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=20)
    assert "dev-tok" not in stdout
    assert "Bearer token required" in stdout


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
