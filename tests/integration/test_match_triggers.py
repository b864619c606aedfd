"""Who starts a recalculation and when it runs again: imports during scoring, the schedule's runs.

The scoring activity is replaced by a gated stand-in here, to hold a run mid-scoring and test the
workflow's decisions; the real activity is tested in test_matching.py and test_match_partitions.py.
Real Temporal dev server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from domain.matching import MatchRecalcResult, RecalculateInput
from tests.conftest import Stack, new_worker
from workflows.matching import MatchRecalculationWorkflow
from workflows.starters import (
    ensure_match_schedule,
    match_schedule_id,
    match_workflow_id,
    recalculate_after_change,
    start_recalculation,
)


class GatedScoring:
    """Stands in for MatchActivities.recalculate_matches: records each run, holds the first."""

    def __init__(self) -> None:
        self.triggers: list[str] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @activity.defn(name="recalculate_matches")
    async def recalculate_matches(self, inp: RecalculateInput) -> MatchRecalcResult:
        self.triggers.append(inp.trigger)
        self.entered.set()
        await self.release.wait()
        n = len(self.triggers)
        return MatchRecalcResult(
            generation=n,
            shows=1,
            advertisers=1,
            pairs_scored=1,
            pairs_excluded=0,
            matches_written=1,
            duration_s=0,
        )


@pytest.fixture
async def gated(client: Client) -> AsyncIterator[tuple[GatedScoring, str]]:
    scoring = GatedScoring()
    async with new_worker(client, MatchRecalculationWorkflow, activities=[scoring.recalculate_matches]) as w:
        yield scoring, w.task_queue
        scoring.release.set()


async def test_an_import_during_scoring_makes_the_run_score_once_more(
    client: Client, gated: tuple[GatedScoring, str]
) -> None:
    scoring, tq = gated
    tenant_id = str(uuid.uuid4())
    handle = await start_recalculation(client, tenant_id, tq, "manual")
    await asyncio.wait_for(scoring.entered.wait(), 20)
    # Two imports complete while it scores: both reach the running run, neither starts another.
    for _ in range(2):
        told = await recalculate_after_change(client, tenant_id, tq, "import")
        assert (told.id, told.result_run_id) == (handle.id, handle.result_run_id)
    scoring.release.set()
    result = await handle.result()  # follows the continue-as-new
    assert scoring.triggers == ["manual", "import"]
    assert result.generation == 2
    desc = await client.get_workflow_handle(match_workflow_id(tenant_id)).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED and desc.run_id != handle.result_run_id
    # The first run's history (signals, then continue-as-new) replays, and guards this from now on.
    history = await client.get_workflow_handle(handle.id, run_id=handle.result_run_id).fetch_history()
    await Replayer(
        workflows=[MatchRecalculationWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history)


async def test_an_import_with_no_run_going_starts_one_that_scores_once(
    client: Client, gated: tuple[GatedScoring, str]
) -> None:
    scoring, tq = gated
    scoring.release.set()
    tenant_id = str(uuid.uuid4())
    handle = await recalculate_after_change(client, tenant_id, tq, "import")
    assert handle.id == match_workflow_id(tenant_id)
    await handle.result()
    assert scoring.triggers == ["import"]
    desc = await client.get_workflow_handle(match_workflow_id(tenant_id)).describe()
    assert desc.run_id == handle.result_run_id, "the signal that started the run made it run again"


async def test_asking_while_the_schedule_runs_joins_that_run(
    stack: Stack, gated: tuple[GatedScoring, str]
) -> None:
    scoring, tq = gated
    tenant = await stack.new_tenant()
    tenant_id = str(tenant.id)
    await ensure_match_schedule(stack.client, tenant_id, tq, timedelta(hours=24))
    schedule = stack.client.get_schedule_handle(match_schedule_id(tenant_id))
    try:
        await schedule.trigger()
        await asyncio.wait_for(scoring.entered.wait(), 30)
        r = await stack.http.post("/api/match/recalculate", headers=stack.auth(tenant))
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["workflow_id"].startswith(f"{match_workflow_id(tenant_id)}-"), body
        assert body["status"] == "running"
        # The status names the run, who started it, and when the schedule runs next.
        r = await stack.http.get("/api/match/recalculate", headers=stack.auth(tenant))
        assert r.status_code == 200, r.text
        status = r.json()
        assert [(x["workflow_id"], x["started_by"]) for x in status["running"]] == [
            (body["workflow_id"], "schedule")
        ]
        assert status["schedule"]["schedule_id"] == match_schedule_id(tenant_id)
        assert status["schedule"]["every_hours"] == 24 and status["schedule"]["paused"] is False
        next_run = datetime.fromisoformat(status["schedule"]["next_run_at"])
        assert datetime.now(UTC) < next_run <= datetime.now(UTC) + timedelta(hours=24)
        assert status["current"] is None
        scoring.release.set()
        await stack.client.get_workflow_handle(body["workflow_id"], run_id=body["run_id"]).result()
        assert scoring.triggers == ["schedule"]
        for _ in range(100):  # the schedule hears of the finished run a moment later
            r = await stack.http.get("/api/match/recalculate", headers=stack.auth(tenant))
            if not r.json()["running"]:
                break
            await asyncio.sleep(0.1)
        assert r.json()["running"] == []
    finally:
        await schedule.delete()
