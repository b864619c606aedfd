"""Test helpers shared by several test modules (moved from tests/integration/test_imports.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Stack

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


async def upload(stack: Stack, h: dict[str, str], kind: str, name: str, content: bytes) -> dict[str, Any]:
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": (name, content)}, data={"kind": kind}, headers=h
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending" and body["workflow_id"].startswith("import/")
    for _ in range(300):
        status = (await stack.http.get(f"/api/v1/etl/status/{body['import_id']}", headers=h)).json()
        if status["status"] in FINAL:
            return dict(status)
        await asyncio.sleep(0.1)
    raise AssertionError(f"import did not finish: {status}")
