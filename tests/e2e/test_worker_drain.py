"""A worker process that gets SIGTERM mid-activity lets the activity finish, then exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from temporalio.client import Client

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.conftest import Stack, start_stack
from tests.helpers.imports import downloads_csv, worker_process

pytestmark = pytest.mark.timeout(180)
ROWS = 200_000
DRAINING = {"SPONSORFLOW_IMPORT_CHUNK_ROWS": "2000", "SPONSORFLOW_WORKER_SHUTDOWN_SECONDS": "60"}


@pytest.fixture
async def headless_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> AsyncIterator[Stack]:
    """The API only: the worker runs as a real process the test can signal."""
    async for s in start_stack(database, client, sm, worker=False, import_chunk_rows=2000):
        yield s


async def test_sigterm_mid_import_lets_the_activity_finish(headless_stack: Stack, tmp_path: Path) -> None:
    stack = headless_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post(
        "/api/v1/shows", json={"external_id": "show-1", "name": "Grind", "avg_downloads": 1}, headers=h
    )
    assert r.status_code == 201
    content = downloads_csv(ROWS, date(1900, 1, 1))

    log = tmp_path / "worker.log"
    first = worker_process(
        stack, log, SPONSORFLOW_IMPORT_CHUNK_ROWS="2000", SPONSORFLOW_WORKER_SHUTDOWN_SECONDS="60"
    )
    try:
        r = await stack.http.post(
            "/api/v1/etl/upload",
            files={"file": ("dl.csv", content)},
            data={"kind": "show_downloads"},
            headers=h,
        )
        assert r.status_code == 202, r.text
        import_id = r.json()["import_id"]
        for _ in range(1200):
            status = (await stack.http.get(f"/api/v1/etl/status/{import_id}", headers=h)).json()
            if status["rows_processed"] >= 4000:
                break
            await asyncio.sleep(0.02)
        assert 0 < status["rows_processed"] < ROWS // 2, f"could not catch the import early: {status}"
        first.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        code = await asyncio.to_thread(first.wait, 90)
        drained_in = time.monotonic() - signalled_at
    finally:
        if first.poll() is None:
            first.kill()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "SIGTERM: draining" in text and "worker stopped" in text
    # The running activity finished its file before the worker left: every chunk is committed,
    # though no worker has run since (the workflow's last steps still wait for one).
    status = (await stack.http.get(f"/api/v1/etl/status/{import_id}", headers=h)).json()
    assert status["rows_processed"] == ROWS, (status, text[-3000:])
    assert status["status"] == "running"
    print(f"\nSIGTERM at about 4,000 of {ROWS:,} rows; the worker drained and exited 0 in {drained_in:.1f}s")

    second = worker_process(
        stack, log, SPONSORFLOW_IMPORT_CHUNK_ROWS="2000", SPONSORFLOW_WORKER_SHUTDOWN_SECONDS="60"
    )
    try:
        for _ in range(600):
            status = (await stack.http.get(f"/api/v1/etl/status/{import_id}", headers=h)).json()
            if status["status"] in ("completed", "completed_with_errors", "failed"):
                break
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 60) == 0
    assert status["status"] == "completed", status
    assert (status["rows_processed"], status["rows_inserted"], status["rows_updated"]) == (ROWS, ROWS, 0)


async def test_build_worker_drains_and_bounds_the_sticky_wait(client: Client, sm: SessionMaker) -> None:
    from settings import Settings
    from worker import build_worker

    settings = Settings(
        database_url="postgresql+asyncpg://unused@/x",
        worker_shutdown_seconds=12,
        worker_sticky_timeout_seconds=2.5,
    )
    config = build_worker(client, settings, sm, task_queue=f"tq-{uuid.uuid4()}").config()
    assert config.get("graceful_shutdown_timeout") == timedelta(seconds=12)
    assert config.get("sticky_queue_schedule_to_start_timeout") == timedelta(seconds=2.5)
    defaults = build_worker(client, Settings(), sm, task_queue=f"tq-{uuid.uuid4()}").config()
    assert defaults.get("graceful_shutdown_timeout") == timedelta(seconds=25)
    assert defaults.get("sticky_queue_schedule_to_start_timeout") == timedelta(seconds=3)
