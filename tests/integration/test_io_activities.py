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
from db.models import AdUnit, Event, IoBooking, PromoCode
from db.tenants import NewTenant
from domain.io import (
    BookMakegoodInput,
    CancelUnitsInput,
    CompleteIoInput,
    IoStatus,
    LoadIoInput,
    MarkAiredInput,
    RecordDeliveryInput,
    UnitStatus,
    build_invoice,
)
from tests.conftest import Stack, start_stack
from tests.factories import ad_unit, book_io, make_deal
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
    async with tenant_tx(sm, tenant.id) as s:
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
    async with tenant_tx(sm, tenant.id) as s:
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
