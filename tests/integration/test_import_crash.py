"""A worker killed with SIGKILL in the middle of an import: the next one resumes, exact counts."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import ShowDownload
from tests.conftest import Stack, start_stack
from tests.helpers.imports import downloads_csv, worker_process

pytestmark = pytest.mark.timeout(300)
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


async def test_sigkill_mid_import_resumes_with_exact_counts(headless_stack: Stack, tmp_path: Path) -> None:
    stack = headless_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post(
        "/api/v1/shows", json={"external_id": "show-1", "name": "Grind", "avg_downloads": 1}, headers=h
    )
    assert r.status_code == 201
    content = downloads_csv(ROWS, date(2000, 1, 1))

    log = tmp_path / "worker.log"
    first = worker_process(stack, log)
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

    second = worker_process(stack, log)
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
