"""Helpers of the infra tests (imported by name: tests/infra is not a package, so it cannot shadow `infra`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STACKS = ("dev", "staging", "prod")
ACCOUNT = "0123456789abcdef0123456789abcdef"

StackWriter = Callable[..., Path]


def base_config() -> dict[str, Any]:
    """A minimal valid stack config (full keys, as in a stack file)."""
    return {
        "jobmatch-ai:accountId": ACCOUNT,
        "jobmatch-ai:gateway": {"cacheTtl": 3600, "authentication": False},
        "jobmatch-ai:worker": {"compatibilityDate": "2025-03-11"},
    }
