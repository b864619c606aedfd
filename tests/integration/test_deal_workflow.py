"""DealWorkflow's decisions and its activities: retries, stall timers, continue-as-new."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.deals import DealActivities
from bench.regular_write import DealWorkflowRegularWrite
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import DealStageHistory, Event
from domain.deals import (
    ChangeStageInput,
    RecordStageChangeInput,
)
from domain.stages import Stage
from tests.conftest import new_worker
from tests.helpers.factories import deal_input, seed_deal
from workflows.deals import DealWorkflow
from workflows.starters import deal_workflow_id


async def _count(sm: SessionMaker, tenant_id: uuid.UUID, model: type, **where: object) -> int:
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(await s.scalar(stmt) or 0)


class FlakyAfterCommit(DealActivities):
    """Commits the move, then fails its first attempt as a lost connection would."""

    @activity.defn(name="record_stage_change")
    async def record_stage_change(self, inp: RecordStageChangeInput):  # type: ignore[no-untyped-def]
        result = await super().record_stage_change(inp)
        if activity.info().attempt == 1:
            raise RuntimeError("connection dropped after COMMIT")
        return result


@pytest.mark.parametrize(
    "workflow_class", [DealWorkflow, DealWorkflowRegularWrite], ids=["local-activity", "activity"]
)
async def test_retry_after_commit_writes_once(
    client: Client, sm: SessionMaker, workflow_class: type[DealWorkflow]
) -> None:
    tenant_id, c = await seed_deal(sm)
    acts = FlakyAfterCommit(sm)
    async with new_worker(
        client, workflow_class, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    ) as w:
        handle = await client.start_workflow(
            workflow_class.run,
            deal_input(tenant_id, c),
            id=f"deal/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        result = await handle.execute_update(
            DealWorkflow.change_stage, ChangeStageInput(stage=Stage.QUALIFIED)
        )
        assert result.changed and result.state.stage is Stage.QUALIFIED
        await handle.terminate()
    moves = await _count(sm, tenant_id, DealStageHistory, campaign_id=c.id, to_stage="qualified")
    events = await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stage_changed")
    assert (moves, events) == (1, 1)


async def test_activity_run_twice_writes_once(sm: SessionMaker) -> None:
    tenant_id, c = await seed_deal(sm)
    acts = DealActivities(sm)
    inp = RecordStageChangeInput(
        tenant_id=str(tenant_id),
        campaign_id=str(c.id),
        from_stage=Stage.LEAD,
        from_entered_at=c.stage_changed_at,
        to_stage=Stage.PROPOSAL,
        probability=50,
        at=datetime.now(UTC),
        idempotency_key=f"test/{uuid.uuid4()}",
    )
    assert (await acts.record_stage_change(inp)).outcome == "applied"
    again = await acts.record_stage_change(inp.model_copy(update={"at": datetime.now(UTC)}))
    # The retry reports the entry as first stored, not its own clock.
    assert again.outcome == "already_applied" and again.stage_entered_at == inp.at
    assert await _count(sm, tenant_id, DealStageHistory, campaign_id=c.id) == 2  # created + move
    assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stage_changed") == 1
    # A decision taken against a stage entry the row no longer shows is refused, not written.
    stale = inp.model_copy(update={"idempotency_key": f"test/{uuid.uuid4()}", "to_stage": Stage.QUALIFIED})
    result = await acts.record_stage_change(stale)
    assert result.outcome == "stale" and result.stage is Stage.PROPOSAL
    assert await _count(sm, tenant_id, DealStageHistory, campaign_id=c.id) == 2


async def test_stall_timer_fires_once_per_stage_entry(
    time_skipping_env: WorkflowEnvironment, sm: SessionMaker
) -> None:
    env = time_skipping_env
    tenant_id, c = await seed_deal(sm)
    acts = DealActivities(sm)
    async with new_worker(
        env.client,
        DealWorkflow,
        activities=[acts.record_stage_change, acts.record_stall, acts.load_deal],
    ) as w:
        handle = await env.client.start_workflow(
            DealWorkflow.run,
            deal_input(tenant_id, c, stall_days={"lead": 14, "qualified": 3}),
            id=deal_workflow_id(str(tenant_id), str(c.id)),
            task_queue=w.task_queue,
        )
        await env.sleep(timedelta(days=13))
        assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stalled") == 0
        await env.sleep(timedelta(days=2))
        assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stalled") == 1
        await env.sleep(timedelta(days=30))
        assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stalled") == 1
        assert (await handle.query(DealWorkflow.state)).stalled
        # A new stage entry arms a new timer with that stage's limit.
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.QUALIFIED))
        assert not (await handle.query(DealWorkflow.state)).stalled
        await env.sleep(timedelta(days=4))
        assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stalled") == 2
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
            payloads = (
                await s.scalars(
                    select(Event.payload).where(Event.entity_id == str(c.id), Event.type == "deal.stalled")
                )
            ).all()
        assert sorted(p["stage"] for p in payloads) == ["lead", "qualified"]
        # Closed deals never stall: the run ends.
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.LOST, reason="x"))
        result = await handle.result()
        assert result.stage is Stage.LOST and result.lost_reason == "x"


async def test_an_already_overdue_deal_stalls_at_once(
    time_skipping_env: WorkflowEnvironment, sm: SessionMaker
) -> None:
    env = time_skipping_env
    tenant_id, c = await seed_deal(sm, at=datetime.now(UTC) - timedelta(days=40))
    acts = DealActivities(sm)
    async with new_worker(
        env.client, DealWorkflow, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    ) as w:
        handle = await env.client.start_workflow(
            DealWorkflow.run,
            deal_input(tenant_id, c),
            id=deal_workflow_id(str(tenant_id), str(c.id)),
            task_queue=w.task_queue,
        )
        for _ in range(50):
            if (await handle.query(DealWorkflow.state)).stalled:
                break
            await asyncio.sleep(0.1)
        assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stalled") == 1
        await handle.terminate()


async def test_continue_as_new_carries_the_deal(client: Client, sm: SessionMaker) -> None:
    tenant_id, c = await seed_deal(sm)
    acts = DealActivities(sm)
    async with new_worker(
        client, DealWorkflow, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    ) as w:
        wid = deal_workflow_id(str(tenant_id), str(c.id))
        first = await client.start_workflow(
            DealWorkflow.run, deal_input(tenant_id, c, moves_per_run=3), id=wid, task_queue=w.task_queue
        )
        path = [Stage.QUALIFIED, Stage.PROPOSAL, Stage.NEGOTIATION, Stage.PROPOSAL, Stage.NEGOTIATION]
        for stage in path:
            handle = client.get_workflow_handle_for(DealWorkflow.run, wid)
            for _ in range(50):
                try:
                    await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=stage))
                    break
                except WorkflowUpdateFailedError:
                    raise
                except Exception:  # noqa: BLE001 - the update can race the run's rollover
                    await asyncio.sleep(0.1)
        state = await client.get_workflow_handle_for(DealWorkflow.run, wid).query(DealWorkflow.state)
        desc = await client.get_workflow_handle(wid).describe()
        assert desc.run_id != first.result_run_id
        assert state.stage is Stage.NEGOTIATION and state.total_moves == 5
        await client.get_workflow_handle(wid).terminate()
    assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stage_changed") == 5


async def test_a_rejected_update_names_allowed_targets(
    client: Client, sm: SessionMaker, database: EmbeddedDatabase
) -> None:
    tenant_id, c = await seed_deal(sm)
    acts = DealActivities(sm)
    async with new_worker(
        client, DealWorkflow, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    ) as w:
        handle = await client.start_workflow(
            DealWorkflow.run,
            deal_input(tenant_id, c, synced=True),
            id=f"deal/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        try:
            await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.WON))
            raise AssertionError("lead -> won was accepted")
        except WorkflowUpdateFailedError as err:
            assert "allowed: qualified, proposal, negotiation, lost" in str(err.cause)
        # Rejected in the validator: nothing reached the history, nothing was written.
        history = await handle.fetch_history()
        kinds = {e.event_type for e in history.events}
        from temporalio.api.enums.v1 import EventType

        assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in kinds
        await handle.terminate()
    assert await _count(sm, tenant_id, Event, entity_id=str(c.id), type="deal.stage_changed") == 0
