"""Constants shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token"
