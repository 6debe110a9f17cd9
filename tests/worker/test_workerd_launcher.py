"""The workerd launcher's failures are clear: no node_modules, a launcher that dies, one that prints nonsense."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.contract.workerd import LAUNCHER, WORKER_DIR, WorkerdError, node_or_none, workerd_data_plane

pytestmark = pytest.mark.skipif(node_or_none() is None, reason="Node.js is not installed")


def _worker_dir(tmp_path: Path, launcher: str) -> Path:
    (tmp_path / "node_modules" / "miniflare").mkdir(parents=True)
    (tmp_path / "dev.mjs").write_text(launcher, encoding="utf-8")
    return tmp_path


def test_workerd_launcher_without_node_modules_says_run_make_setup(tmp_path: Path) -> None:
    with pytest.raises(WorkerdError, match="has no miniflare: run make setup"), workerd_data_plane(worker_dir=tmp_path):
        pytest.fail("started without node_modules")


def test_workerd_launcher_that_exits_reports_its_status_and_stderr(tmp_path: Path) -> None:
    worker_dir = _worker_dir(tmp_path, 'process.stderr.write("workerd: address in use\\n"); process.exit(3);\n')
    with (
        pytest.raises(WorkerdError, match=r"exited \(status 3\).*workerd: address in use"),
        workerd_data_plane(worker_dir=worker_dir),
    ):
        pytest.fail("a dead launcher was taken for a running Worker")


def test_workerd_launcher_that_prints_no_url_is_refused(tmp_path: Path) -> None:
    worker_dir = _worker_dir(tmp_path, 'console.log("hello"); process.stdin.resume();\n')
    with (
        pytest.raises(WorkerdError, match="printed 'hello' instead of its URL"),
        workerd_data_plane(worker_dir=worker_dir),
    ):
        pytest.fail("a launcher without a URL was taken for a running Worker")


def test_workerd_launcher_passes_the_token_or_none(tmp_path: Path) -> None:
    launcher = (
        'console.log(`http://127.0.0.1:1/${process.env.DUALCACHE_TOKEN ?? "none"}`);\n'
        'process.stdin.on("end", () => process.exit(0)); process.stdin.resume();\n'
    )
    worker_dir = _worker_dir(tmp_path, launcher)
    with workerd_data_plane(token="tok-123", worker_dir=worker_dir) as plane:
        assert (plane.name, plane.url, plane.token) == ("workerd", "http://127.0.0.1:1/tok-123", "tok-123")
    with workerd_data_plane(with_token=False, worker_dir=worker_dir) as plane:
        assert (plane.url, plane.token) == ("http://127.0.0.1:1/none", None)


def test_dev_mjs_serves_until_its_stdin_closes_then_exits_cleanly() -> None:
    node = node_or_none()
    assert node is not None
    env = os.environ | {"DUALCACHE_TOKEN": "launcher-test"}
    proc = subprocess.Popen(
        [node, str(LAUNCHER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=WORKER_DIR, env=env, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{url}/kv/SESSIONS/keys", headers={"authorization": "Bearer launcher-test"})
        assert response.status_code == 200 and response.json()["result"] == []
        proc.stdin.write("advance x\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("error unknown command")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
