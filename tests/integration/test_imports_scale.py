"""A CRM-shaped campaigns import (90% closed won/lost, 10% open) through the real import path."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from db.engine import tenant_tx
from db.models import Deal, DealStageHistory, Event
from tests.conftest import Stack

pytestmark = pytest.mark.timeout(600)
ROWS = int(os.environ.get("SPONSORFLOW_TEST_SCALE_ROWS", "3000"))
FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


def crm_campaigns(rows: int, advertisers: int = 50) -> tuple[bytes, int]:
    """Every tenth deal open (lead..negotiation), the rest won or lost; returns (file, open deals)."""
    opens = ("lead", "qualified", "proposal", "negotiation")
    lines = ["external_id,advertiser_external_id,name,value_usd,stage,lost_reason"]
    n_open = 0
    for i in range(rows):
        if i % 10 == 0:
            stage, reason = opens[(i // 10) % 4], ""
            n_open += 1
        elif i % 2:
            stage, reason = "won", ""
        else:
            stage, reason = "lost", "Budget cut"
        lines.append(f"crm-{i:06d},adv-{i % advertisers:03d},Deal {i},{1000 + i % 9000},{stage},{reason}")
    return ("\n".join(lines) + "\n").encode(), n_open


async def _upload(stack: Stack, h: dict[str, str], kind: str, content: bytes) -> str:
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": (f"{kind}.csv", content)}, data={"kind": kind}, headers=h
    )
    assert r.status_code == 202, r.text
    return str(r.json()["import_id"])


async def _wait(
    stack: Stack, h: dict[str, str], import_id: str, seen: list[dict[str, Any]]
) -> dict[str, Any]:
    for _ in range(6000):
        status = dict((await stack.http.get(f"/api/v1/etl/status/{import_id}", headers=h)).json())
        seen.append({**status, "t": time.monotonic()})
        if status["status"] in FINAL:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"import did not finish: {status}")


async def test_crm_campaigns_exact_counts_and_two_phases(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    advertisers = "external_id,name\n" + "".join(f"adv-{i:03d},Advertiser {i}\n" for i in range(50))
    await _wait(stack, h, await _upload(stack, h, "advertisers", advertisers.encode()), [])
    content, n_open = crm_campaigns(ROWS)
    seen: list[dict[str, Any]] = []
    began = time.monotonic()
    import_id = await _upload(stack, h, "campaigns", content)
    status = await _wait(stack, h, import_id, seen)
    took = time.monotonic() - began
    rows_done = next((s["t"] for s in seen if s["rows_processed"] >= ROWS), seen[-1]["t"]) - began
    print(f"\n{ROWS} campaigns ({n_open} open): rows committed {rows_done:.1f} s, final {took:.1f} s")
    assert status["status"] == "completed", status
    assert (status["rows_processed"], status["rows_inserted"], status["rows_updated"]) == (ROWS, ROWS, 0)
    assert status["workflows_started"] == n_open
    async with tenant_tx(sm=stack.sm, tenant_id=t.id) as s:
        deals = await s.scalar(select(func.count()).select_from(Deal))
        history = await s.scalar(select(func.count()).select_from(DealStageHistory))
        created = await s.scalar(
            select(func.count(func.distinct(Event.entity_id))).where(Event.type == "deal.created")
        )
        created_all = await s.scalar(select(func.count()).where(Event.type == "deal.created"))
    assert (deals, history, created, created_all) == (ROWS, ROWS, ROWS, ROWS)

    # Two phases: every row committed (and said so) while workflows were still being started.
    assert status["phase"] == "done" and status["workflows_to_start"] == n_open
    assert status["workflows_pending"] == 0
    assert all(
        s["phase"] == "rows" and s["workflows_to_start"] is None for s in seen if s["rows_processed"] < ROWS
    )
    second = [s for s in seen if s["phase"] == "workflows"]
    assert second, "the workflows phase was never visible"
    assert all(s["rows_processed"] == ROWS and s["workflows_to_start"] == n_open for s in second)
    # The status says when the rows phase ended: not before every row was in, and before the end.
    assert all(s["rows_finished_at"] is None for s in seen if s["phase"] == "rows")
    assert all(s["rows_finished_at"] == status["rows_finished_at"] for s in second)
    started, rows_finished, finished = (
        datetime.fromisoformat(status[k]) for k in ("started_at", "rows_finished_at", "finished_at")
    )
    assert started < rows_finished < finished
    assert any(s["workflows_started"] < n_open for s in second)
    assert all(s["workflows_pending"] == n_open - s["workflows_started"] for s in second)
    done = (await stack.http.get("/api/v1/events?type=etl.import_completed", headers=h)).json()["items"][-1]
    payload = done["payload"]
    assert (payload["rows_committed"], payload["workflows_to_start"], payload["workflows_started"]) == (
        ROWS,
        n_open,
        n_open,
    )


async def test_shows_and_advertisers_chunks_of_10k_rows(stack: Stack) -> None:
    """A full default chunk of catalog rows is one statement batch under PostgreSQL's parameter cap."""
    t = await stack.new_tenant()
    h = stack.auth(t)
    rows = 10_000
    shows = "external_id,name,avg_downloads,categories\n" + "".join(
        f"show-{i:05d},Show {i},{1000 + i},Business\n" for i in range(rows)
    )
    status = await _wait(stack, h, await _upload(stack, h, "shows", shows.encode()), [])
    assert (status["status"], status["rows_inserted"]) == ("completed", rows), status
    advertisers = "external_id,name,domain\n" + "".join(
        f"adv-{i:05d},Adv {i},a{i}.example\n" for i in range(rows)
    )
    status = await _wait(stack, h, await _upload(stack, h, "advertisers", advertisers.encode()), [])
    assert (status["status"], status["rows_inserted"]) == ("completed", rows), status
