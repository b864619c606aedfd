"""The maintenance singleton: one per deployment, its rounds, drift repair, a failing tenant."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import update
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from activities.maintenance import MaintenanceActivities
from db.deals import insert_deal
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import Deal
from domain.deals import DealState
from domain.maintenance import (
    MaintenanceRound,
    MaintenanceStatus,
    RepairDealDriftInput,
    RepairDealDriftResult,
    RunNowInput,
)
from domain.stages import Stage
from tests.conftest import Stack, new_worker, start_stack
from tests.helpers.factories import make_advertiser, make_deal
from worker import keep_maintenance_running
from workflows import search_attributes as sa
from workflows.deals import DealWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.starters import (
    MAINTENANCE_SUMMARY,
    deal_workflow_id,
    maintenance_workflow_id,
    match_schedule_id,
    start_maintenance,
)

# Rounds come from run_now only (the timer is an hour), and a row is settled after half a second.
QUIET: dict[str, Any] = {"maintenance_seconds": 3600, "maintenance_drift_settle_seconds": 0.5}


@pytest.fixture
async def mstack(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API and worker, with maintenance rounds only on demand."""
    async for s in start_stack(database, client, sm, **QUIET):
        yield s


@pytest.fixture
async def started(client: Client) -> AsyncIterator[list[WorkflowHandle[Any, Any]]]:
    """Maintenance workflows a test started, terminated afterwards (they loop forever)."""
    handles: list[WorkflowHandle[Any, Any]] = []
    yield handles
    for h in handles:
        try:
            await client.get_workflow_handle(h.id).terminate("test over")
        except Exception:  # noqa: BLE001 - already closed
            pass


async def _start(
    stack: Stack, started: list[WorkflowHandle[Any, Any]], *tenants: uuid.UUID, task_queue: str | None = None
) -> WorkflowHandle[Any, Any]:
    handle = await start_maintenance(
        stack.client, task_queue or stack.settings.temporal_task_queue, tenant_ids=[str(t) for t in tenants]
    )
    started.append(handle)
    return handle


async def _status(handle: WorkflowHandle[Any, Any], rounds: int) -> MaintenanceStatus:
    for _ in range(150):
        status: MaintenanceStatus = await handle.query(MaintenanceWorkflow.status)
        if status.rounds_done >= rounds:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"the maintenance workflow did not finish round {rounds}")


async def _run_now(handle: WorkflowHandle[Any, Any]) -> MaintenanceRound:
    result: MaintenanceRound = await handle.execute_update(MaintenanceWorkflow.run_now, RunNowInput())
    return result


async def _move_behind_its_back(
    owner_sm: SessionMaker, deal_id: str, stage: Stage, client: Client, workflow_id: str
) -> datetime:
    """What an orphaned stage write leaves: the row moved, the workflow never told."""
    # Only once the workflow has read its row (a query answers after its first task, whose
    # local activity re-reads the row): otherwise it would simply adopt the move at start.
    await client.get_workflow_handle(workflow_id).query(DealWorkflow.state)
    at = datetime.now(UTC)
    async with owner_sm() as s, s.begin():
        await s.execute(
            update(Deal)
            .where(Deal.id == uuid.UUID(deal_id))
            .values(stage=stage.value, stage_changed_at=at, updated_at=at)
        )
    await asyncio.sleep(QUIET["maintenance_drift_settle_seconds"] + 0.2)
    return at


async def _signals(client: Client, workflow_id: str) -> list[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


async def test_started_twice_it_runs_once_and_its_first_round_does_everything(
    mstack: Stack, started: list[WorkflowHandle[Any, Any]]
) -> None:
    tenant = await mstack.new_tenant()
    first = await _start(mstack, started, tenant.id)
    second = await _start(mstack, started, tenant.id)
    assert first.id == second.id == maintenance_workflow_id(mstack.settings.temporal_task_queue)
    assert first.result_run_id == second.result_run_id
    running = [
        wf
        async for wf in mstack.client.list_workflows(
            f"WorkflowId = '{first.id}' AND ExecutionStatus = 'Running'"
        )
    ]
    assert len(running) <= 1  # visibility may lag; the describe below is authoritative
    desc = await first.describe()
    assert desc.run_id == first.result_run_id
    assert await desc.static_summary() == MAINTENANCE_SUMMARY

    # The first round runs at once and runs every phase: the tenant gets its schedule.
    status = await _status(first, 1)
    report = status.last_round
    assert report is not None and report.round == 1
    assert report.schedules is not None and report.schedules.created == 1
    assert report.sweep is not None and report.sweep.started == 0
    assert report.drift is not None and report.errors == []
    assert report.summary() == (
        "round 1: 1 schedule changed, 0 deal workflows started, 0 drifted deals resynced, "
        "0 repaired by io_drift, 0 repaired by stuck_imports, 0 repaired by webhook_retention, "
        "0 repaired by webhook_workflows"
    )
    await mstack.client.get_schedule_handle(match_schedule_id(str(tenant.id))).describe()
    # The UI's current details say the same.
    meta = await first.query("__temporal_workflow_metadata")
    assert meta.current_details == report.summary()
    # A second round finds nothing to change and writes nothing.
    again = await _run_now(first)
    assert again.round == 2
    assert again.schedules is not None and again.schedules.unchanged == 1 and again.schedules.changed == 0
    await mstack.client.get_schedule_handle(match_schedule_id(str(tenant.id))).delete()


async def test_a_round_starts_the_workflow_of_an_open_deal_that_has_none(
    mstack: Stack, started: list[WorkflowHandle[Any, Any]]
) -> None:
    tenant = await mstack.new_tenant()
    adv = await make_advertiser(mstack.http, mstack.auth(tenant), name="Acme")
    async with tenant_tx(sm=mstack.sm, tenant_id=tenant.id) as s:
        c = await insert_deal(
            session=s,
            tenant_id=tenant.id,
            advertiser_id=uuid.UUID(adv["id"]),
            show_id=None,
            name="Orphan",
            value_usd=Decimal("9000"),
            stage=Stage.PROPOSAL,
            at=datetime.now(UTC),
        )
    handle = await _start(mstack, started, tenant.id)
    await _status(handle, 1)
    report = (await handle.query(MaintenanceWorkflow.status)).last_round
    assert report is not None and report.sweep is not None and report.sweep.started == 1, report
    wf = mstack.client.get_workflow_handle(deal_workflow_id(str(tenant.id), str(c.id)))
    desc = await wf.describe()
    assert desc.status is not None and desc.status.name == "RUNNING"
    assert desc.typed_search_attributes.get(sa.DEAL_STAGE) == "proposal"
    # The next full round finds it running.
    report = await _run_now(handle)
    assert report.sweep is not None and report.sweep.started == 0
    await mstack.client.get_schedule_handle(match_schedule_id(str(tenant.id))).delete()


async def test_a_deal_moved_behind_its_workflows_back_is_resynced(
    mstack: Stack, owner_sm: SessionMaker, started: list[WorkflowHandle[Any, Any]]
) -> None:
    tenant = await mstack.new_tenant()
    h = mstack.auth(tenant)
    drifted = await make_deal(mstack.http, h, name="Drifted")
    steady = await make_deal(mstack.http, h, name="Steady")
    await asyncio.sleep(QUIET["maintenance_drift_settle_seconds"] + 0.2)  # settled: compared
    handle = await _start(mstack, started, tenant.id)
    first = await _status(handle, 1)
    # Freshly created deals are compared too, and agree with their workflows.
    assert first.last_round is not None and first.last_round.drift is not None
    assert first.last_round.drift.checked >= 2 and first.last_round.drift.resynced == 0

    at = await _move_behind_its_back(
        owner_sm, drifted["id"], Stage.NEGOTIATION, mstack.client, drifted["workflow_id"]
    )
    report = await _run_now(handle)
    wid = deal_workflow_id(str(tenant.id), drifted["id"])
    assert report.drift is not None and report.drift.resynced_ids == [wid], report
    assert "1 drifted deal resynced" in report.summary()
    assert "resync" in await _signals(mstack.client, wid)
    assert "resync" not in await _signals(mstack.client, deal_workflow_id(str(tenant.id), steady["id"]))

    # The workflow adopts the row: state query and search attributes agree with it.
    wf = mstack.client.get_workflow_handle(wid)
    for _ in range(100):
        state: DealState = await wf.query(DealWorkflow.state)
        if state.stage is Stage.NEGOTIATION:
            break
        await asyncio.sleep(0.1)
    assert state.stage is Stage.NEGOTIATION and state.stage_entered_at == at
    for _ in range(100):
        attrs = (await wf.describe()).typed_search_attributes
        if attrs.get(sa.DEAL_STAGE) == "negotiation":
            break
        await asyncio.sleep(0.1)
    assert attrs.get(sa.STAGE_ENTERED_AT) == at
    # Repaired: the next round (whose window still covers the row) sends nothing more.
    report = await _run_now(handle)
    assert report.drift is not None and report.drift.resynced == 0 and report.drift.checked >= 2
    await mstack.client.get_schedule_handle(match_schedule_id(str(tenant.id))).delete()


class _OneTenantBroken(MaintenanceActivities):
    """The real activities, except that one tenant's drift check raises (say, its data is bad)."""

    broken: str = ""

    async def _repair_tenant(self, tenant_id: uuid.UUID, *args: Any) -> None:
        if str(tenant_id) == self.broken:
            raise RuntimeError("this tenant's rows cannot be read")
        await super()._repair_tenant(tenant_id, *args)


async def test_a_failing_tenant_does_not_stop_the_others(
    mstack: Stack, owner_sm: SessionMaker, started: list[WorkflowHandle[Any, Any]], caplog: Any
) -> None:
    good, bad = await mstack.new_tenant("Good"), await mstack.new_tenant("Bad")
    deals = {}
    for t in (good, bad):
        deals[t.id] = await make_deal(mstack.http, mstack.auth(t))
    acts = _OneTenantBroken(mstack.sm, mstack.settings.model_copy(update={"enable_matchmaking": False}))
    acts.broken = str(bad.id)
    async with new_worker(
        mstack.client,
        MaintenanceWorkflow,
        activities=[
            acts.load_maintenance_config,
            acts.reconcile_schedules,
            acts.sweep_open_deals,
            acts.repair_deal_drift,
            acts.run_plugged_checks,
        ],
    ) as w:
        handle = await _start(mstack, started, bad.id, good.id, task_queue=w.task_queue)
        await _status(handle, 1)
        for t in (good, bad):
            await _move_behind_its_back(
                owner_sm, deals[t.id]["id"], Stage.QUALIFIED, mstack.client, deals[t.id]["workflow_id"]
            )
        with caplog.at_level(logging.WARNING, logger="sponsorflow.maintenance"):
            report = await _run_now(handle)
    assert report.drift is not None and report.errors == []
    assert [f.tenant_id for f in report.drift.failed] == [str(bad.id)]
    assert "cannot be read" in report.drift.failed[0].error
    assert report.drift.resynced_ids == [deal_workflow_id(str(good.id), deals[good.id]["id"])]
    assert "1 drifted deal resynced" in report.summary()
    assert report.summary().endswith("1 tenant failed")
    assert any(str(bad.id) in r.getMessage() for r in caplog.records)
    # The other phases ran for both tenants.
    assert report.sweep is not None and report.sweep.tenants == 2 and report.sweep.failed == []


async def test_drift_repair_compares_only_the_window_it_is_given(
    mstack: Stack, owner_sm: SessionMaker
) -> None:
    """A row that moved outside the window is left to the round whose window covers it."""
    tenant = await mstack.new_tenant()
    deal = await make_deal(mstack.http, mstack.auth(tenant))
    at = await _move_behind_its_back(owner_sm, deal["id"], Stage.PROPOSAL, mstack.client, deal["workflow_id"])
    acts = MaintenanceActivities(mstack.sm, mstack.settings)
    env = ActivityEnvironment(client=mstack.client)

    async def run(since: datetime, until: datetime) -> RepairDealDriftResult:
        inp = RepairDealDriftInput(tenant_ids=[str(tenant.id)], since=since, until=until)
        result: RepairDealDriftResult = await env.run(acts.repair_deal_drift, inp)
        return result

    later = await run(at + timedelta(seconds=1), at + timedelta(seconds=2))
    assert later.checked == 0 and later.resynced == 0
    covering = await run(at - timedelta(seconds=1), at + timedelta(seconds=1))
    assert covering.checked == 1 and covering.resynced == 1


async def test_the_worker_keeps_polling_when_the_singleton_cannot_be_started(
    database: EmbeddedDatabase, client: Client, caplog: Any
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(database, client, temporal_address="127.0.0.1:1")
    nowhere = await Client.connect("127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter)
    with caplog.at_level(logging.WARNING, logger="sponsorflow.worker"):
        task = asyncio.create_task(keep_maintenance_running(nowhere, settings))
        await asyncio.sleep(3.5)
        assert not task.done(), "the ensure loop gave up (or crashed) instead of retrying"
        task.cancel()
    attempts = [r for r in caplog.records if "maintenance workflow not started" in r.getMessage()]
    assert len(attempts) >= 2, "a failed start is retried later"
    # With Temporal there, the same loop starts the singleton.
    task = asyncio.create_task(keep_maintenance_running(client, settings))
    wid = maintenance_workflow_id(settings.temporal_task_queue)
    try:
        for _ in range(100):
            try:
                desc = await client.get_workflow_handle(wid).describe()
                break
            except Exception:  # noqa: BLE001 - not there yet
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the maintenance workflow was never started")
        assert desc.status is not None and desc.status.name == "RUNNING"
    finally:
        task.cancel()
        await client.get_workflow_handle(wid).terminate("test over")


async def test_record_and_replay_a_maintenance_history(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, started: list[WorkflowHandle[Any, Any]]
) -> None:
    """Three rounds (the first at start, two on demand), then continue-as-new: replayed."""
    async for stack in start_stack(database, client, sm, **QUIET, maintenance_rounds_per_run=3):
        tenant = await stack.new_tenant()
        await make_deal(stack.http, stack.auth(tenant))
        handle = await _start(stack, started, tenant.id)
        await _status(handle, 1)
        await _run_now(handle)
        assert (await _run_now(handle)).round == 3
        first_run = stack.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
        for _ in range(100):
            desc = await first_run.describe()
            if desc.status is not None and desc.status.name == "CONTINUED_AS_NEW":
                break
            await asyncio.sleep(0.1)
        assert desc.status is not None and desc.status.name == "CONTINUED_AS_NEW"
        # The next run carries the count on and waits for its interval before a round.
        status: MaintenanceStatus = await stack.client.get_workflow_handle(handle.id).query(
            MaintenanceWorkflow.status
        )
        assert status.rounds_done == 3 and status.next_round_at is not None
        history = await first_run.fetch_history()
        await Replayer(
            workflows=[MaintenanceWorkflow], data_converter=pydantic_data_converter
        ).replay_workflow(history)
        await stack.client.get_schedule_handle(match_schedule_id(str(tenant.id))).delete()
