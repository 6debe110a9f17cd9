"""The data-plane Worker's source: one ES module made of health.js and dataplane.js, that never logs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.contract.workerd import WORKER_DIR, node_or_none

SOURCES = [WORKER_DIR / "health.js", WORKER_DIR / "dataplane.js"]


def _module() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)


@pytest.mark.skipif(node_or_none() is None, reason="Node.js is not installed")
def test_dataplane_module_parses_as_one_es_module(tmp_path: Path) -> None:
    # A top-level name declared in both halves would be a SyntaxError here (and a failed upload).
    module = tmp_path / "dataplane.mjs"
    module.write_text(_module(), encoding="utf-8")
    node = node_or_none()
    assert node is not None
    proc = subprocess.run([node, "--check", str(module)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_dataplane_module_has_one_default_export_and_takes_over_its_fetch() -> None:
    module = _module()
    assert len(re.findall(r"^export default ", module, flags=re.MULTILINE)) == 1
    assert module.rstrip().endswith("worker.fetch = handleDataPlane;")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_worker_sources_never_log(path: Path) -> None:
    # The Workers never log: not a token, not a value, not anything else.
    assert "console." not in path.read_text(encoding="utf-8")
