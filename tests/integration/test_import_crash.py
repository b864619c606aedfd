"""A worker killed with SIGKILL in the middle of an import: the next one resumes, exact counts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import ShowDownload
from tests.conftest import Stack, start_stack

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
ROWS = 60_000


@pytest.fixture
async def headless_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> AsyncIterator[Stack]:
    """The API only: the worker runs as a real process the test can kill."""
    async for s in start_stack(
        database, client, sm, worker=False, import_chunk_rows=2000, import_heartbeat_seconds=2
    ):
        yield s


def _worker(stack: Stack, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        SPONSORFLOW_DATABASE_URL=str(stack.settings.database_url),
        SPONSORFLOW_TEMPORAL_ADDRESS=stack.settings.temporal_target,
        SPONSORFLOW_TEMPORAL_TASK_QUEUE=stack.settings.temporal_task_queue,
        SPONSORFLOW_ADMIN_TOKEN="unused",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


async def test_sigkill_mid_import_resumes_with_exact_counts(headless_stack: Stack, tmp_path: Path) -> None:
    stack = headless_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post(
        "/api/v1/shows", json={"external_id": "show-1", "name": "Grind", "avg_downloads": 1}, headers=h
    )
    assert r.status_code == 201
    countries = ["US", "GB", "CA", "DE", "FR", "AU"]
    # Unique (show, date, country) keys: one day per six rows.
    lines = ["show_external_id,date,downloads,country"] + [
        f"show-1,{date(2000, 1, 1) + timedelta(days=i // len(countries))},{i},{countries[i % len(countries)]}"
        for i in range(ROWS)
    ]
    content = ("\n".join(lines) + "\n").encode()

    log = tmp_path / "worker.log"
    first = _worker(stack, log)
    try:
        r = await stack.http.post(
            "/api/v1/etl/upload",
            files={"file": ("dl.csv", content)},
            data={"kind": "show_downloads"},
            headers=h,
        )
        assert r.status_code == 202, r.text
        import_id = r.json()["import_id"]
        for _ in range(600):
            status = (await stack.http.get(f"/api/v1/etl/status/{import_id}", headers=h)).json()
            if status["rows_processed"] >= 6000:
                break
            await asyncio.sleep(0.02)
        assert 0 < status["rows_processed"] < ROWS, f"could not catch the import mid-way: {status}"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = status["rows_processed"]
    finally:
        if first.poll() is None:
            first.kill()

    second = _worker(stack, log)
    try:
        for _ in range(1200):
            status = (await stack.http.get(f"/api/v1/etl/status/{import_id}", headers=h)).json()
            if status["status"] in ("completed", "completed_with_errors", "failed"):
                break
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert status["status"] == "completed", (status, log.read_text()[-3000:])
    assert (status["rows_processed"], status["rows_inserted"], status["rows_updated"]) == (ROWS, ROWS, 0)
    assert status["rows_failed"] == 0 and status["progress"] == 1.0
    async with tenant_tx(sm=stack.sm, tenant_id=t.id) as s:
        stored = await s.scalar(select(func.count()).select_from(ShowDownload))
        total = await s.scalar(select(func.sum(ShowDownload.downloads)))
    assert stored == ROWS and total == sum(range(ROWS))
    assert killed_at < ROWS
