"""IO activities against the real database: each one run twice writes once and emits one event."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.io import IO_NOT_COMMITTED, IoActivities
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.fences import abandon_request, new_request_id, request_state
from db.models import AdUnit, Event, IoBooking, PromoCode
from db.tenants import NewTenant
from domain.io import (
    BOOKING_CONFLICT,
    BookIoInput,
    BookMakegoodInput,
    CancelUnitsInput,
    CompleteIoInput,
    IoStatus,
    LoadIoInput,
    MarkAiredInput,
    RecordDeliveryInput,
    ReserveIoInput,
    UnitRequest,
    UnitStatus,
    build_invoice,
)
from tests.conftest import Stack, start_stack
from tests.helpers.factories import ad_unit, book_io, make_deal
from worker import build_worker

TODAY = datetime.now(UTC).date()
NOW = datetime.now(UTC)


@pytest.fixture
async def api_only(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API without a worker: the activities are driven by the test, not by a workflow."""
    async for s in start_stack(database, client, sm, worker=False):
        yield s


async def _booked(stack: Stack) -> tuple[NewTenant, dict[str, Any]]:
    """An IO booked through the API; the worker runs only for the booking (its workflow's first step)."""
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    async with build_worker(stack.client, stack.settings, stack.sm):
        deal = await make_deal(stack.http, h, stage="won")
        r = await book_io(
            stack.http,
            h,
            deal["id"],
            [
                ad_unit(deal["show_id"], TODAY + timedelta(days=1)),
                ad_unit(deal["show_id"], TODAY + timedelta(days=2)),
            ],
            promo_code=f"P{uuid.uuid4().hex[:6]}",
        )
    assert r.status_code == 201, r.text
    return tenant, r.json()


async def _count(sm: SessionMaker, tenant: NewTenant, model: Any, **where: Any) -> int:
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(await s.scalar(stmt) or 0)


async def test_every_io_activity_is_idempotent(api_only: Stack, sm: SessionMaker) -> None:
    tenant, io = await _booked(api_only)
    tid, iid = str(tenant.id), io["id"]
    acts = IoActivities(sm)
    env = ActivityEnvironment()
    a, b = (u["id"] for u in io["ad_units"])

    for _ in range(2):
        snap = await env.run(acts.load_io, LoadIoInput(tenant_id=tid, io_id=iid, at=NOW))
    assert [u.id for u in snap.units] == [a, b] and snap.total_usd == Decimal("500.00")
    assert await _count(sm, tenant, Event, entity_id=iid, type="io.scheduled") == 1

    aired = MarkAiredInput(tenant_id=tid, io_id=iid, unit_ids=[a], io_status=IoStatus.LIVE, at=NOW)
    for _ in range(2):
        await env.run(acts.mark_aired, aired)
    assert await _count(sm, tenant, Event, entity_id=iid, type="io.ad_aired") == 1
    assert await _count(sm, tenant, AdUnit, io_id=uuid.UUID(iid), status="aired") == 1

    report = RecordDeliveryInput(
        tenant_id=tid,
        io_id=iid,
        ad_unit_id=a,
        impressions=4000,
        impressions_goal=10000,
        unit_status=UnitStatus.AIRED,
        source="test",
        seq=1,
        at=NOW,
    )
    for _ in range(2):
        await env.run(acts.record_delivery, report)
    assert await _count(sm, tenant, Event, entity_id=iid, type="io.delivery_reported") == 1

    unit_a = next(u for u in snap.units if u.id == a).model_copy(
        update={"status": UnitStatus.AIRED, "delivered_impressions": 4000}
    )
    mg = BookMakegoodInput(
        tenant_id=tid, io_id=iid, unit=unit_a, shortfall=6000, after=TODAY + timedelta(days=5), at=NOW
    )
    first = await env.run(acts.book_makegood, mg)
    again = await env.run(acts.book_makegood, mg)
    assert first.unit is not None and again.unit is not None and first.unit.id == again.unit.id
    assert first.unit.air_date == TODAY + timedelta(days=6) and first.unit.impressions_goal == 6000
    assert await _count(sm, tenant, AdUnit, io_id=uuid.UUID(iid)) == 3
    assert await _count(sm, tenant, Event, entity_id=iid, type="io.makegood_scheduled") == 1

    cancel = CancelUnitsInput(tenant_id=tid, io_id=iid, unit_ids=[b, first.unit.id], reason="test", at=NOW)
    for _ in range(2):
        await env.run(acts.cancel_io, cancel)
    assert await _count(sm, tenant, Event, entity_id=iid, type="io.cancelled") == 1
    assert await _count(sm, tenant, PromoCode, io_id=uuid.UUID(iid), status="void") == 1
    assert await _count(sm, tenant, AdUnit, io_id=uuid.UUID(iid), status="cancelled") == 2

    units = [unit_a] + [
        u.model_copy(update={"status": UnitStatus.CANCELLED}) for u in snap.units if u.id == b
    ]
    invoice, statuses = build_invoice(io_id=iid, units=units, issued_at=NOW, payment_terms_days=30)
    done = CompleteIoInput(
        tenant_id=tid,
        io_id=iid,
        invoice=invoice,
        unit_statuses=statuses,
        io_status=IoStatus.CANCELLED,
        at=NOW,
    )
    for _ in range(2):
        await env.run(acts.complete_io, done)
    assert await _count(sm, tenant, Event, entity_id=iid, type="io.completed") == 1
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        row = await s.get(IoBooking, uuid.UUID(iid))
        assert row is not None and row.invoice is not None
        assert row.invoice["total_usd"] == "100.00" and row.status == "cancelled"
        billed = await s.scalar(select(AdUnit.billed_usd).where(AdUnit.id == uuid.UUID(a)))
    assert billed == Decimal("100.00")


async def test_load_io_retries_until_the_booking_commits_then_gives_up(sm: SessionMaker) -> None:
    acts = IoActivities(sm)
    env = ActivityEnvironment()
    missing = LoadIoInput(
        tenant_id=str(uuid.uuid4()), io_id=str(uuid.uuid4()), at=NOW, give_up_after_attempts=3
    )
    with pytest.raises(ApplicationError) as early:
        await env.run(acts.load_io, missing)
    assert early.value.type == IO_NOT_COMMITTED and not early.value.non_retryable
    env.info = dataclasses.replace(env.info, attempt=3)
    with pytest.raises(ApplicationError) as late:
        await env.run(acts.load_io, missing)
    assert late.value.non_retryable


async def _abandoned(sm: SessionMaker, tenant: NewTenant, entity_id: str) -> str:
    """A request the API gave up on (fenced as abandoned before any write)."""
    request_id = new_request_id()
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        assert (
            await abandon_request(
                session=s, tenant_id=tenant.id, request_id=request_id, entity_type="io", entity_id=entity_id
            )
            == "abandoned"
        )
    return request_id


async def test_reserve_io_books_once_and_never_for_an_abandoned_request(
    api_only: Stack, sm: SessionMaker
) -> None:
    tenant = await api_only.new_tenant()
    h = api_only.auth(tenant)
    deal = await make_deal(api_only.http, h, stage="won")
    acts = IoActivities(sm)
    env = ActivityEnvironment()
    tid = str(tenant.id)

    def booking(request_id: str, **kw: Any) -> BookIoInput:
        spec = ad_unit(deal["show_id"], TODAY + timedelta(days=3))
        return BookIoInput(
            campaign_id=deal["id"], ad_units=[UnitRequest(**spec)], request_id=request_id, **kw
        )

    io_id = str(uuid.uuid4())
    first_req = ReserveIoInput(tenant_id=tid, io_id=io_id, booking=booking(new_request_id()), at=NOW)
    # Run twice (a retried activity): one IO, one io.scheduled, the same snapshot.
    first = await env.run(acts.reserve_io, first_req)
    again = await env.run(acts.reserve_io, first_req)
    assert first.applied and again.applied and first.snapshot is not None
    assert first.snapshot == again.snapshot and first.snapshot.io_id == io_id
    assert first.snapshot.status is IoStatus.SCHEDULED and first.snapshot.promo_code
    assert await _count(sm, tenant, IoBooking) == 1 and await _count(sm, tenant, AdUnit) == 1
    assert await _count(sm, tenant, Event, type="io.scheduled") == 1

    # The API gave up first: nothing is written, and the activity says so.
    other = str(uuid.uuid4())
    rid = await _abandoned(sm, tenant, other)
    out = await env.run(
        acts.reserve_io, ReserveIoInput(tenant_id=tid, io_id=other, booking=booking(rid), at=NOW)
    )
    assert not out.applied and out.snapshot is None
    assert await _count(sm, tenant, IoBooking) == 1 and await _count(sm, tenant, PromoCode) == 1

    # A refusal is non-retryable, carries the 409's detail, and leaves nothing (not even a claim).
    rid = new_request_id()
    taken = booking(rid, promo_code=first.snapshot.promo_code.lower())
    with pytest.raises(ApplicationError) as refused:
        await env.run(
            acts.reserve_io, ReserveIoInput(tenant_id=tid, io_id=str(uuid.uuid4()), booking=taken, at=NOW)
        )
    assert refused.value.type == BOOKING_CONFLICT and refused.value.non_retryable
    assert "already in use" in refused.value.details[0]
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        assert await request_state(session=s, request_id=rid) is None
    assert await _count(sm, tenant, IoBooking) == 1 and await _count(sm, tenant, AdUnit) == 1


async def test_delivery_and_cancel_write_nothing_for_an_abandoned_request(
    api_only: Stack, sm: SessionMaker
) -> None:
    tenant, io = await _booked(api_only)
    tid, iid = str(tenant.id), io["id"]
    a = io["ad_units"][0]["id"]
    acts = IoActivities(sm)
    env = ActivityEnvironment()
    report = RecordDeliveryInput(
        tenant_id=tid,
        io_id=iid,
        ad_unit_id=a,
        impressions=4000,
        impressions_goal=10000,
        unit_status=UnitStatus.AIRED,
        source="test",
        seq=1,
        at=NOW,
        request_id=await _abandoned(sm, tenant, iid),
    )
    out = await env.run(acts.record_delivery, report)
    assert out is not None and not out.applied
    assert await _count(sm, tenant, Event, type="io.delivery_reported") == 0
    assert await _count(sm, tenant, AdUnit, id=uuid.UUID(a), delivered_impressions=0) == 1
    cancel = CancelUnitsInput(
        tenant_id=tid,
        io_id=iid,
        unit_ids=[u["id"] for u in io["ad_units"]],
        reason="ghost",
        at=NOW,
        request_id=await _abandoned(sm, tenant, iid),
    )
    out_c = await env.run(acts.cancel_io, cancel)
    assert out_c is not None and not out_c.applied
    assert await _count(sm, tenant, Event, type="io.cancelled") == 0
    assert await _count(sm, tenant, IoBooking, status="scheduled") == 1
    assert await _count(sm, tenant, PromoCode, status="active") == 1
    # The same writes with a live request are applied, and a retry of it writes nothing more.
    live = report.model_copy(update={"request_id": new_request_id()})
    for _ in range(2):
        written = await env.run(acts.record_delivery, live)
        assert written is not None and written.applied
    assert await _count(sm, tenant, Event, type="io.delivery_reported") == 1
