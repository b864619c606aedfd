"""No invoice without a delivery figure: an IO whose measurement window ends with a CPM unit
unreported waits in awaiting_delivery (io.delivery_overdue once, then reminders) until a report
arrives or an operator closes it. Real PostgreSQL, the real API, the time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, update
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.io import io_drift
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import Event, IoBooking
from db.tenants import NewTenant
from domain.io import IoStatus
from tests.conftest import Stack, start_stack
from tests.helpers.factories import ad_unit, book_io, make_deal, make_show
from tests.helpers.io import TODAY, deliver, event_types, get_io, io_until, sleep_to
from workflows.io import IoBookingWorkflow
from workflows.search_attributes import IO_STATUS

REMINDER_HOURS = 24


@pytest.fixture
async def ts_stack(
    time_skipping_env: WorkflowEnvironment, database: EmbeddedDatabase, sm: SessionMaker
) -> AsyncIterator[Stack]:
    """The API and worker against the time-skipping server, reminders every 24 hours."""
    async for s in start_stack(
        database, time_skipping_env.client, sm, io_delivery_reminder_hours=REMINDER_HOURS
    ):
        yield s


async def _events(stack: Stack, tenant: NewTenant, io_id: str, type_: str) -> list[dict[str, Any]]:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        rows = await s.scalars(
            select(Event.payload).where(Event.entity_id == io_id, Event.type == type_).order_by(Event.id)
        )
        return [dict(p) for p in rows.all()]


async def _book_two_cpm_and_flat(stack: Stack, h: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Two CPM units (days 1 and 2) and a flat one (day 2), a 3-day window unless told."""
    deal = await make_deal(stack.http, h, stage="won")
    other = await make_show(stack.http, h, name="Other Show")
    r = await book_io(
        stack.http,
        h,
        deal["id"],
        [
            ad_unit(deal["show_id"], TODAY + timedelta(days=1), impressions_goal=10000),
            ad_unit(other["id"], TODAY + timedelta(days=2), impressions_goal=20000, cpm_usd=20),
            ad_unit(
                other["id"],
                TODAY + timedelta(days=2),
                placement="pre_roll",
                pricing_model="flat",
                flat_usd=300,
                cpm_usd=None,
                impressions_goal=None,
            ),
        ],
        **{"measurement_window_days": 3, "underdelivery_policy": "prorata", **fields},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _cpm_units(io: dict[str, Any]) -> tuple[str, str]:
    """The 10,000-impression unit and the 20,000 one (units come back in air date order)."""
    goals = {u["impressions_goal"]: u["id"] for u in io["ad_units"]}
    return goals[10000], goals[20000]


async def _search_status(stack: Stack, workflow_id: str) -> str | None:
    desc = await stack.client.get_workflow_handle(workflow_id).describe()
    return desc.typed_search_attributes.get(IO_STATUS)


async def test_no_report_waits_reminds_and_a_late_report_invoices(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    io = await _book_two_cpm_and_flat(stack, h)
    a, b = _cpm_units(io)
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    await sleep_to(env, 2.5)
    await io_until(stack, h, io["id"], lambda x: x["status"] == "measuring")
    await deliver(stack, h, io["id"], a, 10000)  # b is never reported before the window ends

    # The window ends on day 5: no invoice, the IO waits, visibly, and says so once.
    await sleep_to(env, 5.5)
    got = await io_until(stack, h, io["id"], lambda x: x["status"] == "awaiting_delivery")
    assert got["invoice"] is None and got["completed_at"] is None
    assert await _search_status(stack, io["workflow_id"]) == "awaiting_delivery"
    listed = await stack.http.get("/api/v1/io", params={"status": "awaiting_delivery"}, headers=h)
    assert [i["id"] for i in listed.json()["items"]] == [io["id"]]
    overdue = await _events(stack, tenant, io["id"], "io.delivery_overdue")
    assert len(overdue) == 1
    assert [u["ad_unit_id"] for u in overdue[0]["units"]] == [b]
    assert overdue[0]["reminder_hours"] == REMINDER_HOURS
    assert await _events(stack, tenant, io["id"], "io.delivery_reminder") == []
    snap = await handle.query(IoBookingWorkflow.snapshot)
    assert snap is not None and snap.status is IoStatus.AWAITING_DELIVERY

    # A reminder after the interval (24 h), the overdue notice still once.
    await sleep_to(env, 6.6)
    for _ in range(50):
        reminders = await _events(stack, tenant, io["id"], "io.delivery_reminder")
        if reminders:
            break
        await env.sleep(timedelta(seconds=1))
    assert len(reminders) == 1 and reminders[0]["reminder"] == 1
    assert [u["ad_unit_id"] for u in reminders[0]["units"]] == [b]
    assert len(await _events(stack, tenant, io["id"], "io.delivery_overdue")) == 1
    assert (await get_io(stack, h, io["id"]))["status"] == "awaiting_delivery"

    # The late report: reconciled and invoiced with it at once.
    await deliver(stack, h, io["id"], b, 15000)
    result = await handle.result()
    assert result.status is IoStatus.COMPLETED
    done = await get_io(stack, h, io["id"])
    lines = {line["ad_unit_id"]: line for line in done["invoice"]["lines"]}
    assert lines[b]["quantity"] == 15000 and Decimal(lines[b]["amount_usd"]) == Decimal("300.00")
    assert Decimal(done["invoice"]["total_usd"]) == Decimal("850.00")  # 250 + 300 + flat 300
    assert done["status"] == "completed"
    assert await _search_status(stack, io["workflow_id"]) == "completed"
    types = await event_types(stack, tenant, io["id"])
    assert types.count("io.delivery_overdue") == 1 and types[-1] == "io.completed"

    history = await handle.fetch_history()
    await Replayer(workflows=[IoBookingWorkflow], data_converter=pydantic_data_converter).replay_workflow(
        history
    )


@pytest.mark.parametrize(("bill_as", "billed_b"), [("zero", "0.00"), ("goal", "400.00")])
async def test_an_operator_closes_the_missing_delivery(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment, bill_as: str, billed_b: str
) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    # Make-goods are the policy: a unit an operator closes is billed as told, never made good.
    io = await _book_two_cpm_and_flat(stack, h, underdelivery_policy="makegood")
    a, b = _cpm_units(io)
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    await sleep_to(env, 2.5)
    await io_until(stack, h, io["id"], lambda x: x["status"] == "measuring")
    await deliver(stack, h, io["id"], a, 10000)

    # Before the window ends there is nothing to close.
    r = await stack.http.post(f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": bill_as}, headers=h)
    assert r.status_code == 409 and "not awaiting a delivery report" in r.json()["detail"]
    r = await stack.http.post(f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": "half"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "bill_as"]

    await sleep_to(env, 5.5)
    await io_until(stack, h, io["id"], lambda x: x["status"] == "awaiting_delivery")
    key = {**h, "Idempotency-Key": f"close-{bill_as}"}
    r = await stack.http.post(f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": bill_as}, headers=key)
    assert r.status_code == 200, r.text
    result = await handle.result()
    assert result.status is IoStatus.COMPLETED
    done = await get_io(stack, h, io["id"])
    assert done["status"] == "completed" and len(done["ad_units"]) == 3  # no make-good for b
    lines = {line["ad_unit_id"]: line for line in done["invoice"]["lines"]}
    assert Decimal(lines[b]["amount_usd"]) == Decimal(billed_b)
    assert "an operator closed it" in lines[b]["note"]
    assert Decimal(lines[a]["amount_usd"]) == Decimal("250.00")
    reported = await _events(stack, tenant, io["id"], "io.delivery_reported")
    assert reported[-1]["ad_unit_id"] == b and reported[-1]["billed_as"] == bill_as

    # The same key again answers what the close did; a new close is refused: the IO is invoiced.
    again = await stack.http.post(
        f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": bill_as}, headers=key
    )
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
    r = await stack.http.post(f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": bill_as}, headers=h)
    assert r.status_code == 409
    assert (await event_types(stack, tenant, io["id"])).count("io.completed") == 1


async def test_a_cancelled_io_still_waits_for_the_report_of_what_aired(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    units = [ad_unit(deal["show_id"], TODAY + timedelta(days=d)) for d in (1, 5)]
    r = await book_io(stack.http, h, deal["id"], units, measurement_window_days=2)
    assert r.status_code == 201, r.text
    io = r.json()
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    await sleep_to(env, 1.5)
    await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "budget cut"}, headers=h)
    assert r.status_code == 200, r.text

    # The aired unit's window ends on day 3 without a report: no invoice; the IO stays cancelled.
    await sleep_to(env, 3.5)
    for _ in range(50):
        if await _events(stack, tenant, io["id"], "io.delivery_overdue"):
            break
        await env.sleep(timedelta(seconds=1))
    got = await get_io(stack, h, io["id"])
    assert got["status"] == "cancelled" and got["invoice"] is None
    assert len(await _events(stack, tenant, io["id"], "io.delivery_overdue")) == 1
    r = await stack.http.post(f"/api/v1/io/{io['id']}/close-delivery", json={"bill_as": "goal"}, headers=h)
    assert r.status_code == 200, r.text
    result = await handle.result()
    assert result.status is IoStatus.CANCELLED and result.invoice_total_usd == Decimal("250.00")


async def test_a_zero_day_window_waits_for_the_report_of_a_unit_aired_today(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack = ts_stack
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    r = await book_io(
        stack.http,
        h,
        deal["id"],
        [ad_unit(deal["show_id"], TODAY)],
        measurement_window_days=0,
        underdelivery_policy="prorata",
    )
    assert r.status_code == 201, r.text
    io = r.json()
    unit = io["ad_units"][0]["id"]
    got = await io_until(stack, h, io["id"], lambda x: x["status"] == "awaiting_delivery")
    assert got["invoice"] is None and got["ad_units"][0]["status"] == "aired"
    assert len(await _events(stack, tenant, io["id"], "io.delivery_overdue")) == 1

    # The report comes through the deliveries import (the workflow's signal).
    csv = f"io_id,ad_unit_id,impressions\n{io['id']},{unit},7500\n".encode()
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("d.csv", csv)}, data={"kind": "deliveries"}, headers=h
    )
    assert r.status_code == 202, r.text
    await stack.client.get_workflow_handle(r.json()["workflow_id"]).result()
    done = await io_until(stack, h, io["id"], lambda x: x["status"] == "completed")
    assert done["ad_units"][0]["delivered_impressions"] == 7500
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    result = await handle.result()
    assert result.status is IoStatus.COMPLETED
    assert result.invoice_total_usd == Decimal("187.50")  # 7,500 of 10,000 at $25 CPM, prorated


async def test_a_flat_only_io_invoices_without_a_report(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack = ts_stack
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    flat = ad_unit(
        deal["show_id"], TODAY, pricing_model="flat", flat_usd=450, cpm_usd=None, impressions_goal=None
    )
    r = await book_io(stack.http, h, deal["id"], [flat], measurement_window_days=0)
    assert r.status_code == 201, r.text
    io = r.json()
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    result = await handle.result()
    assert result.status is IoStatus.COMPLETED and result.invoice_total_usd == Decimal("450.00")
    types = await event_types(stack, tenant, io["id"])
    assert "io.delivery_overdue" not in types and types[-1] == "io.completed"


async def test_io_drift_knows_an_io_awaiting_delivery(stack: Stack, owner_sm: SessionMaker) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    r = await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], TODAY)], measurement_window_days=0)
    assert r.status_code == 201, r.text
    io = r.json()

    async def settled() -> bool:
        return (await get_io(stack, h, io["id"]))["status"] == "awaiting_delivery" and not await io_drift(
            stack.client, stack.sm, tenant.id
        )

    # Row = workflow = search attribute: awaiting_delivery is no drift (real server, real time).
    for _ in range(150):
        if await settled():
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the IO never settled in awaiting_delivery")
    async with tenant_tx(sm=owner_sm, tenant_id=tenant.id) as s:
        await s.execute(
            update(IoBooking).where(IoBooking.id == uuid.UUID(io["id"])).values(status="measuring")
        )
    (drift,) = await io_drift(stack.client, stack.sm, tenant.id)
    assert (
        drift.search_attribute_status == "awaiting_delivery" and drift.workflow_status == "awaiting_delivery"
    )
    assert drift.row_status == "measuring" and drift.running
