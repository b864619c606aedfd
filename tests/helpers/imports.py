"""Test helpers shared by several test modules (moved from tests/integration/test_imports.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
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


ROOT = Path(__file__).resolve().parents[2]
COUNTRIES = ["US", "GB", "CA", "DE", "FR", "AU"]


def downloads_csv(rows: int, first_day: date, show: str = "show-1") -> bytes:
    """A show_downloads file of `rows` unique (show, date, country) rows: one day per six rows."""
    n = len(COUNTRIES)
    lines = ["show_external_id,date,downloads,country"] + [
        f"{show},{first_day + timedelta(days=i // n)},{i},{COUNTRIES[i % n]}" for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def worker_process(stack: Stack, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """`sponsorflow worker` as a real process on the stack's database and task queue (env: more settings).

    Nothing of the caller's SPONSORFLOW_* environment leaks in; its output goes to `log`.
    """
    child = {k: v for k, v in os.environ.items() if not k.startswith("SPONSORFLOW_")}
    child.update(
        SPONSORFLOW_DATABASE_URL=str(stack.settings.database_url),
        SPONSORFLOW_TEMPORAL_ADDRESS=stack.settings.temporal_target,
        SPONSORFLOW_TEMPORAL_TASK_QUEUE=stack.settings.temporal_task_queue,
        SPONSORFLOW_ADMIN_TOKEN="unused",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker"],
        cwd=ROOT,
        env=child,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
