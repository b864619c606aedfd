"""IO writes under faults: a 503 never lands, a lost answer is learned with its Idempotency-Key,
and row, workflow and search attribute agree (io_drift).

The worker is started and stopped by the test (a stopped worker is what a frozen or dead one
looks like to Temporal and to the API), against the session's real PostgreSQL and Temporal.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.io import IoActivities, io_drift
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import AdUnit, Event, IoBooking, PromoCode, WriteRequest
from db.tenants import NewTenant
from domain.io import (
    BookIoInput,
    BookIoResult,
    IoStatus,
    IoWorkflowInput,
    ReserveIoInput,
    UnitRequest,
)
from tests.conftest import FAULT_BUDGET_S, Stack, new_worker, stack_worker, start_stack
from tests.helpers.factories import ad_unit, book_io, make_deal, make_show
from workflows import search_attributes as sa
from workflows.io import REQUEST_ABANDONED, IoBookingWorkflow
from workflows.starters import io_workflow_id

BUDGET_S = FAULT_BUDGET_S
TODAY = datetime.now(UTC).date()
SOON = TODAY + timedelta(days=10)


async def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.2)


async def _count(stack: Stack, tenant: NewTenant, model: Any, **where: Any) -> int:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(await s.scalar(stmt) or 0)


async def _abandoned_request(stack: Stack, tenant: NewTenant) -> WriteRequest:
    """The one request the API fenced off (its id is the update id it sent)."""
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        (row,) = (await s.scalars(select(WriteRequest).where(WriteRequest.state == "abandoned"))).all()
    return row


async def _refused_when_the_worker_returns(stack: Stack, workflow_id: str, request_id: str) -> None:
    """Runs the worker until the queued update is answered: refused by the fence, not applied."""
    handle = stack.client.get_workflow_handle(workflow_id)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await asyncio.wait_for(handle.get_update_handle(request_id).result(), timeout=60)
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == REQUEST_ABANDONED


async def _booked(stack: Stack, tenant: NewTenant, air: Any, **extra: Any) -> dict[str, Any]:
    """A won deal and an IO booked on it (the worker runs for this only)."""
    h = stack.auth(tenant)
    async with stack_worker(stack):
        deal = await make_deal(stack.http, h, stage="won")
        r = await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], air)], **extra)
        assert r.status_code == 201, r.text
        io = dict(r.json())
        if air <= TODAY:
            # Aired at once (the air date has begun): wait for the workflow to say so.
            handle = stack.client.get_workflow_handle(io["workflow_id"])

            async def aired() -> bool:
                snap = await handle.query(IoBookingWorkflow.snapshot)
                return snap is not None and snap.units[0].status.value == "aired"

            await _until(aired)
    return io


async def test_a_delivery_answered_503_never_lands(api_only: Stack) -> None:
    stack = api_only
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    io = await _booked(stack, tenant, TODAY)
    unit = io["ad_units"][0]["id"]
    url = f"/api/v1/io/{io['id']}/delivery"

    # The worker is gone: the update waits in Temporal past the API's budget.
    started = asyncio.get_running_loop().time()
    r = await stack.http.post(url, json={"ad_unit_id": unit, "impressions": 7000}, headers=h)
    assert r.status_code == 503, r.text
    assert r.json()["detail"] == "the delivery report was not applied, and it never will be; retry"
    assert r.headers["Retry-After"] == "1"
    assert asyncio.get_running_loop().time() - started < BUDGET_S + 3
    fenced = await _abandoned_request(stack, tenant)
    assert fenced.entity_id == io["id"]

    async with stack_worker(stack):
        await _refused_when_the_worker_returns(stack, io["workflow_id"], fenced.request_id)
        handle = stack.client.get_workflow_handle(io["workflow_id"])
        snap = await handle.query(IoBookingWorkflow.snapshot)
        assert snap is not None
        assert snap.units[0].delivered_impressions == 0 and snap.units[0].delivery_reports == 0
        got = (await stack.http.get(f"/api/v1/io/{io['id']}", headers=h)).json()
        assert got["ad_units"][0]["delivered_impressions"] == 0
        assert await _count(stack, tenant, Event, type="io.delivery_reported") == 0

        # With the worker up, the same report is applied once.
        r = await stack.http.post(url, json={"ad_unit_id": unit, "impressions": 7000}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["ad_units"][0]["delivered_impressions"] == 7000
        assert await _count(stack, tenant, Event, type="io.delivery_reported") == 1


async def test_a_cancel_answered_503_never_lands(api_only: Stack) -> None:
    stack = api_only
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    io = await _booked(stack, tenant, SOON, promo_code=f"C{uuid.uuid4().hex[:6]}")

    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "ghost?"}, headers=h)
    assert r.status_code == 503, r.text
    assert "never will be" in r.json()["detail"] and r.headers["Retry-After"]
    fenced = await _abandoned_request(stack, tenant)

    async with stack_worker(stack):
        await _refused_when_the_worker_returns(stack, io["workflow_id"], fenced.request_id)
        got = (await stack.http.get(f"/api/v1/io/{io['id']}", headers=h)).json()
        assert got["status"] == "scheduled" and got["cancel_reason"] is None
        assert [u["status"] for u in got["ad_units"]] == ["scheduled"]
        assert got["promo_code_status"] == "active"
        assert await _count(stack, tenant, Event, type="io.cancelled") == 0
        handle = stack.client.get_workflow_handle(io["workflow_id"])
        snap = await handle.query(IoBookingWorkflow.snapshot)
        assert snap is not None and snap.status is IoStatus.SCHEDULED
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(sa.IO_STATUS) == "scheduled"

        r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "real"}, headers=h)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert await _count(stack, tenant, Event, type="io.cancelled") == 1


async def test_a_booking_answered_503_never_lands(api_only: Stack) -> None:
    stack = api_only
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    code = f"G{uuid.uuid4().hex[:6]}"
    async with stack_worker(stack):
        deal = await make_deal(stack.http, h, stage="won")
        show = await make_show(stack.http, h, slots={"mid_roll": 1})

    r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)], promo_code=code)
    assert r.status_code == 503, r.text
    assert r.json()["detail"] == "the booking was not applied, and it never will be; retry"
    fenced = await _abandoned_request(stack, tenant)
    wid = io_workflow_id(str(tenant.id), fenced.entity_id)
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, wid)
    # The run exists (update-with-start started it) and says it is booking.
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(sa.IO_STATUS) == "booking"

    async with stack_worker(stack):
        await _refused_when_the_worker_returns(stack, wid, fenced.request_id)
        result = await handle.result()
        assert result.status is IoStatus.ABANDONED
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(sa.IO_STATUS) == "abandoned"
        # Nothing was booked: no IO, no units holding the slot, no promo code.
        assert await _count(stack, tenant, IoBooking) == 0
        assert await _count(stack, tenant, AdUnit) == 0
        assert await _count(stack, tenant, PromoCode) == 0
        assert await _count(stack, tenant, Event, type="io.scheduled") == 0
        # So the slot and the code are free for the retry.
        r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)], promo_code=code)
        assert r.status_code == 201, r.text
        assert r.json()["id"] != fenced.entity_id
        assert await _count(stack, tenant, IoBooking) == 1


async def test_a_lost_answer_is_learned_by_retrying_with_the_idempotency_key(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, worker=False, worker_sticky_timeout_seconds=1.0):
        tenant = await stack.new_tenant()
        h = stack.auth(tenant)
        io = await _booked(stack, tenant, TODAY)
        unit = io["ad_units"][0]["id"]
        url = f"/api/v1/io/{io['id']}/delivery"
        key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        body = {"ad_unit_id": unit, "impressions": 4200, "source": "art19"}

        # The client gives up on the answer (a dropped connection) while the worker is away...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stack.http.post(url, json=body, headers=h | key), timeout=1.0)
        async with stack_worker(stack):
            # ...the queued update lands once the worker is back.
            async def landed(stack: Stack = stack, tenant: NewTenant = tenant) -> bool:
                return await _count(stack, tenant, Event, type="io.delivery_reported") == 1

            await _until(landed)
            # The retry with the same key answers what happened, and writes nothing more.
            r = await stack.http.post(url, json=body, headers=h | key)
            assert r.status_code == 200, r.text
            assert r.headers["Idempotent-Replayed"] == "true"
            assert r.json()["ad_units"][0]["delivered_impressions"] == 4200
            r = await stack.http.post(url, json=body, headers=h | key)
            assert r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true"
            assert await _count(stack, tenant, Event, type="io.delivery_reported") == 1
            # The key belongs to that report: another body with it is refused, naming the header.
            r = await stack.http.post(url, json=body | {"impressions": 1}, headers=h | key)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
            # A cancel with a key, retried, is answered the same way.
            ckey = {"Idempotency-Key": f"c-{uuid.uuid4()}"}
            url = f"/api/v1/io/{io['id']}/cancel"
            first = await stack.http.post(url, json={"reason": "pulled"}, headers=h | ckey)
            assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
            again = await stack.http.post(url, json={"reason": "pulled"}, headers=h | ckey)
            assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["cancel_reason"] == "pulled"
            assert await _count(stack, tenant, Event, type="io.cancelled") == 1


async def test_a_booking_retried_with_its_key_after_a_503_books_once(api_only: Stack) -> None:
    stack = api_only
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    async with stack_worker(stack):
        deal = await make_deal(stack.http, h, stage="won")
    key = {"Idempotency-Key": f"b-{uuid.uuid4()}"}
    body = {"campaign_id": deal["id"], "ad_units": [ad_unit(deal["show_id"], SOON)]}
    r = await stack.http.post("/api/v1/io", json=body, headers=h | key)
    assert r.status_code == 503, r.text
    async with stack_worker(stack):
        r = await stack.http.post("/api/v1/io", json=body, headers=h | key)
        assert r.status_code == 201, r.text
        again = await stack.http.post("/api/v1/io", json=body, headers=h | key)
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == r.json()["id"]
        assert await _count(stack, tenant, IoBooking) == 1


async def test_io_drift_finds_a_row_its_workflow_disagrees_with(stack: Stack, owner_sm: SessionMaker) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    ios = [
        (await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], air)])).json()
        for air in (TODAY, SOON)
    ]
    aired, later = ios

    async def settled() -> bool:
        return await io_drift(stack.client, stack.sm, tenant.id) == []

    # Row = workflow = search attribute for both (the aired one once its move to measuring lands).
    await _until(settled)
    assert (await stack.http.get(f"/api/v1/io/{aired['id']}", headers=h)).json()["status"] == "measuring"

    async with tenant_tx(sm=owner_sm, tenant_id=tenant.id) as s:
        await s.execute(update(IoBooking).where(IoBooking.id == uuid.UUID(later["id"])).values(status="live"))
    (drift,) = await io_drift(stack.client, stack.sm, tenant.id)
    assert drift.io_id == later["id"] and drift.row_status == "live"
    assert drift.search_attribute_status == "scheduled" and drift.running
    assert "row says 'live'" in drift.reason
    # Another tenant's IOs are not this tenant's drift.
    assert await io_drift(stack.client, stack.sm, (await stack.new_tenant()).id) == []


async def test_a_booking_whose_write_won_the_race_is_answered_201_and_adopted(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(
        database, client, sm, worker=False, update_budget_seconds=4.0, worker_sticky_timeout_seconds=1.0
    ):
        tenant = await stack.new_tenant()
        h = stack.auth(tenant)
        async with stack_worker(stack):
            deal = await make_deal(stack.http, h, stage="won")
        key = f"w-{uuid.uuid4()}"
        body = {"campaign_id": deal["id"], "ad_units": [ad_unit(deal["show_id"], SOON)]}
        posted = asyncio.create_task(
            stack.http.post("/api/v1/io", json=body, headers=h | {"Idempotency-Key": key})
        )

        async def registered(stack: Stack = stack, tenant: NewTenant = tenant) -> bool:
            async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
                return bool(await s.scalar(select(func.count()).select_from(WriteRequest)))

        await _until(registered)
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            pending = (await s.scalars(select(WriteRequest))).one()
        # The booking's write commits while the API still waits (a worker that answers late).
        spec = ad_unit(deal["show_id"], SOON)
        booking = BookIoInput(
            campaign_id=deal["id"],
            ad_units=[UnitRequest(**spec)],
            idempotency_key=key,
            request_id=pending.request_id,
        )
        wrote = await ActivityEnvironment().run(
            IoActivities(sm).reserve_io,
            ReserveIoInput(
                tenant_id=str(tenant.id), io_id=pending.entity_id, booking=booking, at=datetime.now(UTC)
            ),
        )
        assert wrote.applied
        r = await posted
        # The API's fence found the write: it answers what happened, not a 503.
        assert r.status_code == 201, r.text
        assert r.json()["id"] == pending.entity_id
        async with stack_worker(stack):
            # The queued update reaches the workflow, which adopts the booking it finds written.
            handle = stack.client.get_workflow_handle(io_workflow_id(str(tenant.id), pending.entity_id))
            adopted = handle.get_update_handle(pending.request_id, result_type=BookIoResult)
            outcome = await asyncio.wait_for(adopted.result(), 60)
            assert outcome.io_id == pending.entity_id and outcome.status is IoStatus.SCHEDULED

            async def agrees(stack: Stack = stack, tenant: NewTenant = tenant) -> bool:
                return await io_drift(stack.client, stack.sm, tenant.id) == []

            await _until(agrees)
            assert await _count(stack, tenant, IoBooking) == 1
            assert await _count(stack, tenant, Event, type="io.scheduled") == 1


async def test_a_run_that_no_booking_reaches_ends_abandoned(
    time_skipping_env: WorkflowEnvironment, sm: SessionMaker
) -> None:
    env = time_skipping_env
    tenant = uuid.uuid4()
    async with new_worker(env.client, IoBookingWorkflow, activities=[IoActivities(sm).reserve_io]) as w:
        handle = await env.client.start_workflow(
            IoBookingWorkflow.run,
            IoWorkflowInput(tenant_id=str(tenant), io_id=str(uuid.uuid4()), book_via_update=True),
            id=f"io/{tenant}/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        result = await handle.result()
        assert result.status is IoStatus.ABANDONED
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(sa.IO_STATUS) == "abandoned"
