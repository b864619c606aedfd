"""A re-import tells the deals it changed (`resync`); long activities heartbeat through slow phases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import Show
from tests.conftest import Stack, new_worker, start_stack
from tests.helpers.imports import upload
from workflows import search_attributes as sa
from workflows.deals import DealWorkflow
from workflows.starters import deal_workflow_id, import_workflow_id

with workflow.unsafe.imports_passed_through():
    from activities.matching import MatchActivities
    from domain.matching import MatchRecalcResult, RecalculateInput

pytestmark = pytest.mark.timeout(180)


async def _signals(handle: WorkflowHandle[Any, Any]) -> list[str]:
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


CAMPAIGNS = (
    "external_id,advertiser_external_id,show_external_id,name,value_usd,stage,lost_reason\n"
    "c-1,adv-1,show-1,Q1 flight,12000,proposal,\n"
    "c-2,adv-1,show-1,Q2 flight,5000,lead,\n"
    "c-3,adv-1,show-1,Old,4000,lost,Budget cut\n"
    "c-4,adv-1,,Ledger,3000,qualified,\n"
    "c-5,adv-1,show-1,Same,1000,negotiation,\n"
)


async def test_a_reimport_resyncs_exactly_the_open_deals_it_changed(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    await upload(stack, h, "advertisers", "upload.csv", b"external_id,name\nadv-1,Acme\nadv-2,Ledgerly\n")
    await upload(stack, h, "shows", "upload.csv", b"external_id,name,avg_downloads\nshow-1,Grind,85000\n")
    first = await upload(stack, h, "campaigns", "upload.csv", CAMPAIGNS.encode())
    assert (first["status"], first["rows_inserted"], first["workflows_resynced"]) == ("completed", 5, 0)
    deals = {d["name"]: d["id"] for d in (await stack.http.get("/api/v1/deals", headers=h)).json()["items"]}

    def handle(name: str) -> WorkflowHandle[Any, Any]:
        return stack.client.get_workflow_handle(deal_workflow_id(str(t.id), deals[name]))

    # c-2's workflow is gone (an operator terminated it): its signal finds nothing, which is fine.
    await handle("Q2 flight").terminate(reason="test")
    # c-1: new value; c-2: new value, no workflow; c-3: closed (lost); c-4: another advertiser;
    # c-5: the same row again.
    changed = (
        CAMPAIGNS.replace("Q1 flight,12000", "Q1 flight,25000")
        .replace("Q2 flight,5000", "Q2 flight,6000")
        .replace("Old,4000", "Old,4500")
        .replace("c-4,adv-1,", "c-4,adv-2,")
    )
    again = await upload(stack, h, "campaigns", "upload.csv", changed.encode())
    assert (again["status"], again["rows_updated"], again["workflows_resynced"]) == ("completed", 5, 2), again

    assert await _signals(handle("Q1 flight")) == ["resync"]
    assert await _signals(handle("Ledger")) == ["resync"]
    assert await _signals(handle("Same")) == []
    if hasattr(DealWorkflow, "resync"):
        # The deal workflow adopts the row: its search attributes follow the import.
        for _ in range(100):
            attrs = (await handle("Q1 flight").describe()).typed_search_attributes
            if attrs.get(sa.DEAL_VALUE) == 25000.0:
                break
            await asyncio.sleep(0.1)
        assert attrs.get(sa.DEAL_VALUE) == 25000.0
        adv2 = (await handle("Ledger").describe()).typed_search_attributes.get(sa.ADVERTISER_ID)
        advertisers = (await stack.http.get("/api/v1/advertisers", headers=h)).json()["items"]
        assert adv2 == next(a["id"] for a in advertisers if a["external_id"] == "adv-2")
        query = f"TenantId = '{t.id}' AND DealValue > 20000"
        for _ in range(100):
            found = [w.id async for w in stack.client.list_workflows(query)]
            if found:
                break
            await asyncio.sleep(0.2)
        assert found == [deal_workflow_id(str(t.id), deals["Q1 flight"])]

    history = (await stack.http.get("/api/v1/etl/history", headers=h)).json()["items"]
    assert history[0]["status"] == "completed"


@pytest.fixture
async def quick_heartbeat_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> AsyncIterator[Stack]:
    async for s in start_stack(database, client, sm, import_heartbeat_seconds=2):
        yield s


async def _attempts(handle: WorkflowHandle[Any, Any], activity_type: str) -> list[int]:
    scheduled: set[int] = set()
    attempts = []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if e.activity_task_scheduled_event_attributes.activity_type.name == activity_type:
                scheduled.add(e.event_id)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = e.activity_task_started_event_attributes
            if attrs.scheduled_event_id in scheduled:
                attempts.append(attrs.attempt)
    return attempts


async def test_load_rows_heartbeats_while_a_chunk_waits_on_a_lock(quick_heartbeat_stack: Stack) -> None:
    """A chunk commit blocked for 3x the heartbeat timeout: the attempt is not timed out and retried."""
    stack = quick_heartbeat_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post(
        "/api/v1/shows", json={"external_id": "s-1", "name": "Grind", "avg_downloads": 1}, headers=h
    )
    assert r.status_code == 201
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with tenant_tx(sm=stack.sm, tenant_id=t.id) as session:
            await session.scalar(select(Show.id).where(Show.external_id == "s-1").with_for_update())
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    began = time.monotonic()
    importing = asyncio.create_task(
        upload(stack, h, "shows", "upload.csv", b"external_id,name,avg_downloads\ns-1,Grind,2\ns-2,Trail,3\n")
    )
    await asyncio.sleep(6)
    release.set()
    await holder
    status = await importing
    assert status["status"] == "completed" and (status["rows_inserted"], status["rows_updated"]) == (1, 1)
    assert time.monotonic() - began >= 6
    handle = stack.client.get_workflow_handle(import_workflow_id(str(t.id), status["import_id"]))
    assert await _attempts(handle, "load_rows") == [1]


@workflow.defn(sandboxed=False)
class _RecalcWithShortHeartbeat:
    """The match activity with a 2 s heartbeat timeout and no retry: a silent phase fails it."""

    @workflow.run
    async def run(self, inp: RecalculateInput) -> MatchRecalcResult:
        return await workflow.execute_activity_method(
            MatchActivities.recalculate_matches,
            inp,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def test_match_recalculation_heartbeats_through_a_slow_load_and_lock_wait(
    client: Client, sm: SessionMaker, owner_sm: SessionMaker, stack: Stack
) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    for i in range(3):
        r = await stack.http.post(
            "/api/v1/shows",
            json={"external_id": f"s-{i}", "name": f"Show {i}", "avg_downloads": 1000},
            headers=h,
        )
        assert r.status_code == 201
        r = await stack.http.post(
            "/api/v1/advertisers", json={"external_id": f"a-{i}", "name": f"Adv {i}"}, headers=h
        )
        assert r.status_code == 201
    loading, writing = asyncio.Event(), asyncio.Event()
    end_load, end_lock = asyncio.Event(), asyncio.Event()

    async def block_load() -> None:  # the load's read of advertisers waits behind this
        async with owner_sm() as session, session.begin():
            await session.execute(text("LOCK TABLE advertisers IN ACCESS EXCLUSIVE MODE"))
            loading.set()
            await end_load.wait()

    async def hold_writer_lock() -> None:  # what a concurrent recalculation would hold
        async with tenant_tx(sm=sm, tenant_id=t.id) as session:
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"match/{t.id}"}
            )
            writing.set()
            await end_lock.wait()

    blockers = [asyncio.create_task(block_load()), asyncio.create_task(hold_writer_lock())]
    await loading.wait()
    await writing.wait()
    task_queue = f"tq-{uuid.uuid4()}"
    phases: list[str] = []
    async with new_worker(
        client,
        _RecalcWithShortHeartbeat,
        activities=[MatchActivities(sm).recalculate_matches],
        task_queue=task_queue,
    ):
        began = time.monotonic()
        handle = await client.start_workflow(
            _RecalcWithShortHeartbeat.run,
            RecalculateInput(
                tenant_id=str(t.id),
                run_key=f"test/{uuid.uuid4()}",
                trigger="test",
                top_n=50,
                chunk_advertisers=500,
            ),
            id=f"test-recalc-{uuid.uuid4()}",
            task_queue=task_queue,
        )

        async def watch(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                desc = await handle.describe()
                for act in desc.raw_description.pending_activities:
                    if act.heartbeat_details.payloads:
                        details = client.data_converter.payload_converter.from_payload(
                            act.heartbeat_details.payloads[0]
                        )
                        phases.append(str(details.get("phase")))
                await asyncio.sleep(0.3)

        await watch(4)  # the load is blocked
        end_load.set()
        await watch(4)  # scoring is done in no time; pruning and the new generation wait for the lock
        end_lock.set()
        result = await handle.result()
    await asyncio.gather(*blockers)
    assert time.monotonic() - began >= 8  # four times the heartbeat timeout
    assert result.shows == 3 and result.advertisers == 3
    assert "load" in phases and any(p.startswith("waiting for the writer lock") for p in phases), phases
    assert await _attempts(handle, "recalculate_matches") == [1]
