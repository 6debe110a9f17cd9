"""Fixtures of the fault suite: a fresh in-process emulator per test (its fault controls drive the faults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_support import PROJECT_DIR, TOKEN


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[object]:
    from dualcache.local import Emulator

    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path / "emulator", token=TOKEN) as emulator:
        yield emulator
