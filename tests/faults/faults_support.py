"""Constants shared by the fault suite."""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "faults-token"
