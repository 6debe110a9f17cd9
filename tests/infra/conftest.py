"""Fixtures of the infra tests: the three stacks' plans (run once) and throwaway stack files."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from _infra_support import REPO, STACKS, StackWriter

from infra.plan import PlanResult, run_plan


@pytest.fixture(scope="session")
def plans() -> dict[str, PlanResult]:
    """The offline plan of each committed stack file."""
    return {stack: run_plan(stack, REPO) for stack in STACKS}


@pytest.fixture
def write_stack(tmp_path: Path) -> StackWriter:
    """Write ``Pulumi.yaml`` and ``Pulumi.<stack>.yaml`` into a temp project dir; return the dir."""
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")

    def write(config: Mapping[str, Any], stack: str = "test") -> Path:
        (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": dict(config)}), encoding="utf-8")
        return tmp_path

    return write
