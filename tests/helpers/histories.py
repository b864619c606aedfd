"""Test helpers shared by several test modules (moved from tests/integration/test_replay.py)."""

from __future__ import annotations

from pathlib import Path

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
