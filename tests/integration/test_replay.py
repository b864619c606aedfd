"""Replay guards: recorded DealWorkflow histories must replay against today's code.

Set SPONSORFLOW_RECORD_HISTORIES=1 to (re)record tests/histories/ from a real run; commit the
files only when a change is meant to be compatible with running workflows.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import update
from temporalio.client import Client, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.deals import DealActivities
from db.engine import SessionMaker, tenant_tx
from db.fences import abandon_request
from db.models import Deal
from domain.deals import ChangeStageInput, RecordStageChangeInput
from domain.stages import Stage, probability
from tests.conftest import Stack, new_worker
from tests.helpers.factories import ad_unit, book_io, deal_input, make_deal, make_show, seed_deal
from tests.helpers.histories import HISTORIES
from workflows.deals import DealWorkflow
from workflows.imports import ImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.matching import MatchRecalculationWorkflow


async def _life_of_a_deal(client: Client, sm: SessionMaker, entered: datetime) -> WorkflowHistory:
    """Sync, moves, a rejected move, a no-op, a stall (on time-skipping), then lost."""
    acts = DealActivities(sm)
    async with new_worker(
        client, DealWorkflow, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    ) as w:
        handle = await client.start_workflow(
            DealWorkflow.run,
            deal_input(*await seed_deal(sm, at=entered)),
            id=f"deal/replay/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.QUALIFIED))
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.WON))
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.QUALIFIED))
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.PROPOSAL))
        await handle.query(DealWorkflow.state)
        await handle.execute_update(
            DealWorkflow.change_stage, ChangeStageInput(stage=Stage.LOST, reason="budget")
        )
        await handle.result()
        return await handle.fetch_history()


async def _replay(history: WorkflowHistory) -> None:
    await Replayer(workflows=[DealWorkflow], data_converter=pydantic_data_converter).replay_workflow(history)


async def test_replay_a_fresh_history(client: Client, sm: SessionMaker) -> None:
    await _replay(await _life_of_a_deal(client, sm, datetime.now(UTC)))


async def test_replay_a_history_with_a_stall(
    time_skipping_env: WorkflowEnvironment, sm: SessionMaker
) -> None:
    history = await _life_of_a_deal(time_skipping_env.client, sm, datetime.now(UTC) - timedelta(days=30))
    await _replay(history)
    if os.environ.get("SPONSORFLOW_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / "deal_workflow_v1.json").write_text(history.to_json())


async def _a_deal_under_faults(client: Client, sm: SessionMaker) -> WorkflowHistory:
    """A fenced update, an update that adopts its own orphaned write, a resync, a value change."""
    acts = DealActivities(sm)
    tenant_id, campaign = await seed_deal(sm)
    cid = str(campaign.id)

    async def orphan(frm: Stage, to: Stage, entered: datetime, request_id: str | None) -> datetime:
        at = datetime.now(UTC)
        await acts.record_stage_change(
            RecordStageChangeInput(
                tenant_id=str(tenant_id),
                campaign_id=cid,
                from_stage=frm,
                from_entered_at=entered,
                to_stage=to,
                probability=probability(to),
                at=at,
                idempotency_key=f"deal/{cid}/{frm.value}@{entered.isoformat()}->{to.value}",
                request_id=request_id,
            )
        )
        return at

    async with new_worker(
        client, DealWorkflow, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    ) as w:
        handle = await client.start_workflow(
            DealWorkflow.run,
            deal_input(tenant_id, campaign),
            id=f"deal/replay/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        moved = await handle.execute_update(
            DealWorkflow.change_stage,
            ChangeStageInput(stage=Stage.QUALIFIED, request_id="req-r1"),
            id="req-r1",
        )
        # The API gave up on req-r2 before a worker ran it: refused, nothing written.
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
            await abandon_request(
                session=s, tenant_id=tenant_id, request_id="req-r2", entity_type="deal", entity_id=cid
            )
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                DealWorkflow.change_stage,
                ChangeStageInput(stage=Stage.PROPOSAL, request_id="req-r2"),
                id="req-r2",
            )
        # req-r3's write committed in a workflow task that was lost; the update comes again.
        await orphan(Stage.QUALIFIED, Stage.NEGOTIATION, moved.state.stage_entered_at, "req-r3")
        await handle.execute_update(
            DealWorkflow.change_stage,
            ChangeStageInput(stage=Stage.NEGOTIATION, request_id="req-r3"),
            id="req-r3",
        )
        # A write nobody is waiting for, and an import's value change: resync adopts both.
        state = await handle.query(DealWorkflow.state)
        await orphan(Stage.NEGOTIATION, Stage.PROPOSAL, state.stage_entered_at, None)
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
            await s.execute(update(Deal).where(Deal.id == campaign.id).values(value_usd=Decimal("30000")))
        await handle.signal(DealWorkflow.resync)
        for _ in range(100):
            state = await handle.query(DealWorkflow.state)
            if state.stage is Stage.PROPOSAL and state.value_usd == 30000:
                break
            await asyncio.sleep(0.05)
        assert state.stage is Stage.PROPOSAL and state.value_usd == 30000
        # If-Match against the entry it left: refused by the handler after the resync.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                DealWorkflow.change_stage,
                ChangeStageInput(
                    stage=Stage.LEAD,
                    expected_stage=Stage.NEGOTIATION,
                    expected_entered_at=state.stage_entered_at,
                ),
            )
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.WON))
        await handle.result()
        return await handle.fetch_history()


async def test_replay_a_deal_under_faults(client: Client, sm: SessionMaker) -> None:
    history = await _a_deal_under_faults(client, sm)
    await _replay(history)
    name = "deal_workflow_v2_faults.json"
    if os.environ.get("SPONSORFLOW_RECORD_HISTORIES") and not (HISTORIES / name).exists():
        (HISTORIES / name).write_text(history.to_json())


async def test_replay_an_import_history(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    for kind, content in (
        ("advertisers", b"external_id,name\nadv-1,Acme\n"),
        (
            "campaigns",
            b"external_id,advertiser_external_id,name,value_usd,stage\nc-1,adv-1,Q1,1000,proposal\n"
            b"c-2,adv-9,Ghost,1,lead\n",
        ),
    ):
        r = await stack.http.post(
            "/api/v1/etl/upload", files={"file": (f"{kind}.csv", content)}, data={"kind": kind}, headers=h
        )
        assert r.status_code == 202
        handle = stack.client.get_workflow_handle(r.json()["workflow_id"])
        await handle.result()
    history = await handle.fetch_history()
    await Replayer(workflows=[ImportWorkflow], data_converter=pydantic_data_converter).replay_workflow(
        history
    )
    if os.environ.get("SPONSORFLOW_RECORD_HISTORIES"):
        (HISTORIES / "csv_import_workflow_v1.json").write_text(history.to_json())


async def test_replay_an_io_booked_through_update_with_start(stack: Stack) -> None:
    """The booking path: book (update-with-start), air, a fenced delivery and cancel; a refused booking."""
    t = await stack.new_tenant()
    h = stack.auth(t)
    today = datetime.now(UTC).date()
    deal = await make_deal(stack.http, h, stage="won")
    show = await make_show(stack.http, h, slots={"mid_roll": 1})
    r = await book_io(
        stack.http,
        h,
        deal["id"],
        [ad_unit(show["id"], today), ad_unit(show["id"], today + timedelta(days=5))],
        measurement_window_days=1,
    )
    assert r.status_code == 201, r.text
    io = r.json()
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    for _ in range(100):
        snap = await handle.query(IoBookingWorkflow.snapshot)
        if snap is not None and snap.units[0].status.value == "aired":
            break
        await asyncio.sleep(0.1)
    first = io["ad_units"][0]["id"]
    r = await stack.http.post(
        f"/api/v1/io/{io['id']}/delivery", json={"ad_unit_id": first, "impressions": 3000}, headers=h
    )
    assert r.status_code == 200, r.text
    refused = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], today)])
    assert refused.status_code == 409, refused.text
    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "replay"}, headers=h)
    assert r.status_code == 200, r.text
    booked = await handle.fetch_history()
    query = f"TenantId = '{t.id}' AND IoStatus = 'rejected'"
    for _ in range(100):
        found = [wf.id async for wf in stack.client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.1)
    (rejected_id,) = found
    refused_run = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, rejected_id)
    assert (await refused_run.result()).status.value == "rejected"
    rejected = await refused_run.fetch_history()
    replayer = Replayer(workflows=[IoBookingWorkflow], data_converter=pydantic_data_converter)
    for history, name in (
        (booked, "io_booking_workflow_v2_update_with_start.json"),
        (rejected, "io_booking_workflow_v2_rejected.json"),
    ):
        await replayer.replay_workflow(history)
        if os.environ.get("SPONSORFLOW_RECORD_HISTORIES") and not (HISTORIES / name).exists():
            (HISTORIES / name).write_text(history.to_json())


WORKFLOWS = {
    "deal_workflow": DealWorkflow,
    "csv_import_workflow": ImportWorkflow,
    "io_booking_workflow": IoBookingWorkflow,
    "match_recalculation_workflow": MatchRecalculationWorkflow,
    "maintenance_workflow": MaintenanceWorkflow,
}


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.name)
async def test_recorded_histories_still_replay(path: Path) -> None:
    workflow = WORKFLOWS[path.stem.rsplit("_v", 1)[0]]
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await Replayer(workflows=[workflow], data_converter=pydantic_data_converter).replay_workflow(history)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_workflow_has_a_recorded_history(name: str) -> None:
    assert list(HISTORIES.glob(f"{name}_v*.json")), "record one with SPONSORFLOW_RECORD_HISTORIES=1"
