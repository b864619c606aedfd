"""The life of an IO under time skipping: air dates pass, delivery comes in, the measurement
window closes, shortfalls are made good or prorated, the invoice goes out. Real PostgreSQL, the
real API, the Temporal time-skipping test server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.io import IoActivities
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from domain.io import IoStatus, IoWorkflowInput
from tests.conftest import Stack, new_worker, start_stack
from tests.helpers.factories import ad_unit, book_io, make_advertiser, make_deal, make_show
from tests.helpers.io import TODAY, deliver, event_types, get_io, io_until, sleep_to
from workflows.io import IoBookingWorkflow
from workflows.search_attributes import IO_STATUS


@pytest.fixture
async def ts_stack(
    time_skipping_env: WorkflowEnvironment, database: EmbeddedDatabase, sm: SessionMaker
) -> AsyncIterator[Stack]:
    """The API and worker against the time-skipping server."""
    async for s in start_stack(database, time_skipping_env.client, sm):
        yield s


async def _book_three(stack: Stack, h: dict[str, str], policy: str) -> dict[str, Any]:
    """Two CPM units and a flat one, on three shows, airing in the next four days."""
    advertiser = await make_advertiser(stack.http, h, name="Acme", domain="acme.example")
    deal = await make_deal(stack.http, h, advertiser=advertiser, stage="won")
    shows = [await make_show(stack.http, h, name=n) for n in ("Alpha Cast", "Beta Hour", "Gamma Talk")]
    r = await book_io(
        stack.http,
        h,
        deal["id"],
        [
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
        ],
        underdelivery_policy=policy,
        measurement_window_days=7,
        payment_terms_days=30,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_full_life_with_a_makegood(ts_stack: Stack, time_skipping_env: WorkflowEnvironment) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    io = await _book_three(stack, h, "makegood")
    a, b, flat = (u["id"] for u in io["ad_units"])
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])

    await sleep_to(env, 2.5)
    got = await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
    assert got["status"] == "live" and [u["status"] for u in got["ad_units"][1:]] == ["scheduled"] * 2
    desc = await handle.describe()
    assert desc.search_attributes.get("IoStatus") == ["live"]

    await sleep_to(env, 4.5)
    got = await io_until(stack, h, io["id"], lambda x: x["status"] == "measuring")
    assert [u["status"] for u in got["ad_units"]] == ["aired"] * 3

    # Delivery to date, cumulative: the latest report wins; A reaches its goal, B falls short.
    await deliver(stack, h, io["id"], a, 6000)
    got = await deliver(stack, h, io["id"], a, 10400)
    assert (
        got["ad_units"][0]["status"] == "delivered" and got["ad_units"][0]["delivered_impressions"] == 10400
    )
    got = await deliver(stack, h, io["id"], b, 15000)
    assert got["ad_units"][1]["status"] == "aired" and got["ad_units"][1]["delivered_pct"] == 75.0
    assert got["delivery"] == {
        "impressions_goal": 30000,
        "delivered_impressions": 25000,
        "delivered_pct": 83.3,
        "under_delivering": True,
    }

    # The window closes 7 days after the last air date: B's 5,000 shortfall gets a make-good.
    await sleep_to(env, 11.5)
    got = await io_until(stack, h, io["id"], lambda x: len(x["ad_units"]) == 4)
    makegood = next(u for u in got["ad_units"] if u["makegood_of"] == b)
    assert makegood["impressions_goal"] == 5000 and makegood["price_usd"] == 0.0
    assert makegood["show_name"] == "Beta Hour" and makegood["placement"] == "mid_roll"
    assert makegood["status"] == "scheduled" and got["status"] == "live"
    assert next(u for u in got["ad_units"] if u["id"] == b)["status"] == "made_good"
    assert got["invoice"] is None

    await sleep_to(env, 12.5)
    await io_until(
        stack,
        h,
        io["id"],
        lambda x: any(u["id"] == makegood["id"] and u["status"] == "aired" for u in x["ad_units"]),
    )
    await deliver(stack, h, io["id"], makegood["id"], 4000)

    # Skip past the window explicitly: the test server's result() long-poll gave up on a 7-day skip.
    await sleep_to(env, 19.5)
    result = await handle.result()
    assert result.status is IoStatus.COMPLETED
    done = await get_io(stack, h, io["id"])
    invoice = done["invoice"]
    lines = {line["ad_unit_id"]: line for line in invoice["lines"]}
    assert Decimal(lines[a]["amount_usd"]) == Decimal("250.00")  # the goal, not the overdelivery
    assert lines[b]["quantity"] == 19000 and Decimal(lines[b]["amount_usd"]) == Decimal("380.00")
    assert "remainder prorated" in lines[b]["note"]
    assert Decimal(lines[makegood["id"]]["amount_usd"]) == Decimal("0.00")
    assert Decimal(lines[flat]["amount_usd"]) == Decimal("500.00")
    assert Decimal(invoice["total_usd"]) == Decimal("1130.00")
    issued = datetime.fromisoformat(invoice["issued_at"])
    assert invoice["due_date"] == (issued.date() + timedelta(days=30)).isoformat()
    assert done["status"] == "completed" and done["completed_at"] is not None
    assert {u["id"]: u["billed_usd"] for u in done["ad_units"]}[a] == 250.0
    types = await event_types(stack, tenant, io["id"])
    assert types.count("io.ad_aired") == 4 and types.count("io.delivery_reported") == 4
    assert types.count("io.makegood_scheduled") == 1
    assert types[0] == "io.scheduled" and types[-1] == "io.completed"
    assert (await handle.describe()).search_attributes.get("IoStatus") == ["completed"]

    # The IO is closed: more delivery is refused with a clear message.
    r = await stack.http.post(
        f"/api/v1/io/{io['id']}/delivery", json={"ad_unit_id": a, "impressions": 1}, headers=h
    )
    assert r.status_code == 409 and "completed" in r.json()["detail"]
    history = await handle.fetch_history()
    await Replayer(workflows=[IoBookingWorkflow], data_converter=pydantic_data_converter).replay_workflow(
        history
    )


async def test_full_life_prorata(ts_stack: Stack, time_skipping_env: WorkflowEnvironment) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    io = await _book_three(stack, h, "prorata")
    a, b, flat = (u["id"] for u in io["ad_units"])
    await sleep_to(env, 4.5)
    await io_until(stack, h, io["id"], lambda x: x["status"] == "measuring")
    await deliver(stack, h, io["id"], a, 10000)
    await deliver(stack, h, io["id"], b, 15000)

    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    # Skip past the window explicitly: the test server's result() long-poll gave up on a 7-day skip.
    await sleep_to(env, 11.5)
    result = await handle.result()
    assert result.status is IoStatus.COMPLETED and result.invoice_total_usd == Decimal("1050.00")
    done = await get_io(stack, h, io["id"])
    lines = {line["ad_unit_id"]: line for line in done["invoice"]["lines"]}
    assert Decimal(lines[a]["amount_usd"]) == Decimal("250.00")
    assert Decimal(lines[b]["amount_usd"]) == Decimal("300.00") and "prorated" in lines[b]["note"]
    assert Decimal(lines[flat]["amount_usd"]) == Decimal("500.00")
    assert len(done["ad_units"]) == 3  # no make-good under prorata
    assert "io.makegood_scheduled" not in await event_types(stack, tenant, io["id"])


async def test_cancel_mid_flight_bills_what_aired(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    io = await _book_three(stack, h, "makegood")
    a, b, flat = (u["id"] for u in io["ad_units"])
    await sleep_to(env, 2.5)
    await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")

    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "budget cut"}, headers=h)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [u["status"] for u in got["ad_units"]] == ["aired", "cancelled", "cancelled"]
    assert got["status"] == "cancelled" and got["promo_code_status"] == "void"
    # The cancelled units' slots are free for someone else now.
    deal2 = await make_deal(stack.http, h, stage="won")
    b_unit = io["ad_units"][1]
    r = await book_io(
        stack.http,
        h,
        deal2["id"],
        [
            ad_unit(b_unit["show_id"], TODAY + timedelta(days=3)),
            ad_unit(b_unit["show_id"], TODAY + timedelta(days=3)),
        ],
    )
    assert r.status_code == 201
    # A cancelled unit takes no delivery; the aired one still does.
    r = await stack.http.post(
        f"/api/v1/io/{io['id']}/delivery", json={"ad_unit_id": b, "impressions": 5}, headers=h
    )
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    await deliver(stack, h, io["id"], a, 8000)

    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    # Skip past the window explicitly: the test server's result() long-poll gave up on a 7-day skip.
    await sleep_to(env, 9.5)
    result = await handle.result()
    assert result.status is IoStatus.CANCELLED
    done = await get_io(stack, h, io["id"])
    invoice = done["invoice"]
    assert [line["ad_unit_id"] for line in invoice["lines"]] == [a]
    # Cancelled IOs are not made good: the aired unit's shortfall is prorated.
    assert Decimal(invoice["total_usd"]) == Decimal("200.00")
    assert done["status"] == "cancelled"
    types = await event_types(stack, tenant, io["id"])
    assert types.count("io.cancelled") == 1 and types[-1] == "io.completed"
    assert "io.makegood_scheduled" not in types
    assert flat not in {line["ad_unit_id"] for line in invoice["lines"]}


async def test_no_free_slot_for_a_makegood_falls_back_to_prorata(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    show = await make_show(
        stack.http, h, name="Sold Out", slots={"mid_roll": 1, "pre_roll": 0, "post_roll": 0}
    )
    r = await book_io(
        stack.http, h, deal["id"], [ad_unit(show["id"], TODAY + timedelta(days=1))], measurement_window_days=1
    )
    io = r.json()
    unit = io["ad_units"][0]["id"]
    handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
    # Every mid-roll of the next 90 days after the window is sold.
    filler = [ad_unit(show["id"], TODAY + timedelta(days=d)) for d in range(2, 95)]
    for i in range(0, len(filler), 50):
        assert (await book_io(stack.http, h, deal["id"], filler[i : i + 50])).status_code == 201
    await sleep_to(env, 1.5)
    await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
    await deliver(stack, h, io["id"], unit, 5000)
    # Skip past the window explicitly: the test server's result() long-poll gave up on a 7-day skip.
    await sleep_to(env, 2.5)
    result = await handle.result()
    assert result.invoice_total_usd == Decimal("125.00")
    done = await get_io(stack, h, io["id"])
    assert "no free slot" in done["invoice"]["lines"][0]["note"]


async def test_a_booking_that_never_committed_is_abandoned(
    time_skipping_env: WorkflowEnvironment, sm: SessionMaker
) -> None:
    env = time_skipping_env
    acts = IoActivities(sm)
    tenant = uuid.uuid4()
    async with new_worker(env.client, IoBookingWorkflow, activities=[acts.load_io]) as w:
        result = await env.client.execute_workflow(
            IoBookingWorkflow.run,
            IoWorkflowInput(tenant_id=str(tenant), io_id=str(uuid.uuid4()), load_attempts=2),
            id=f"io/{tenant}/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
    assert result.status is IoStatus.ABANDONED


async def test_deliveries_import_signals_the_io_workflows(
    ts_stack: Stack, time_skipping_env: WorkflowEnvironment
) -> None:
    stack, env = ts_stack, time_skipping_env
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="won")
    show = deal["show_id"]
    io = (
        await book_io(
            stack.http,
            h,
            deal["id"],
            [ad_unit(show, TODAY + timedelta(days=1)), ad_unit(show, TODAY + timedelta(days=20))],
        )
    ).json()
    aired, later = (u["id"] for u in io["ad_units"])
    await sleep_to(env, 1.5)
    await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")

    csv = (
        "IO_ID;Ad_Unit_ID;Impressions;Source\n"
        f"{io['id']};{aired};3000;art19\n"
        f"{io['id']};{later};10;art19\n"
        f"{uuid.uuid4()};{aired};5;art19\n"
        f"{io['id']};not-an-id;5;art19\n"
        f"{io['id']};{aired.upper()};4500;art19\n"
        f"{io['id']};{aired};-4;art19\n"
    ).encode()
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("delivery.csv", csv)}, data={"kind": "deliveries"}, headers=h
    )
    assert r.status_code == 202, r.text
    await stack.client.get_workflow_handle(r.json()["workflow_id"]).result()
    status = (await stack.http.get(f"/api/v1/etl/status/{r.json()['import_id']}", headers=h)).json()
    assert status["status"] == "completed_with_errors"
    assert (status["rows_processed"], status["rows_updated"], status["rows_failed"]) == (6, 1, 4)
    errors = {(e["row"], e["column"]): e["message"] for e in status["errors"]}
    assert "has not aired yet" in errors[(3, "ad_unit_id")]
    assert "no IO with this id" in errors[(4, "io_id")]
    assert "UUID" in errors[(5, "ad_unit_id")]
    assert "negative" in errors[(7, "impressions")]
    assert any("appears more than once" in w for w in status["warnings"])

    # The last figure of the unit in the file is what the workflow recorded, once.
    got = await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["delivered_impressions"] == 4500)
    assert got["ad_units"][1]["delivered_impressions"] == 0
    types = await event_types(stack, tenant, io["id"])
    assert types.count("io.delivery_reported") == 1


async def test_many_delivery_reports_continue_as_new_with_the_state(
    time_skipping_env: WorkflowEnvironment, database: EmbeddedDatabase, sm: SessionMaker
) -> None:
    env = time_skipping_env
    async for stack in start_stack(database, env.client, sm, io_reports_per_run=3):
        tenant = await stack.new_tenant()
        h = stack.auth(tenant)
        deal = await make_deal(stack.http, h, stage="won")
        io = (
            await book_io(
                stack.http,
                h,
                deal["id"],
                [
                    ad_unit(deal["show_id"], TODAY + timedelta(days=1)),
                    ad_unit(deal["show_id"], TODAY + timedelta(days=2)),
                ],
                measurement_window_days=3,
                underdelivery_policy="prorata",
            )
        ).json()
        a, b = (u["id"] for u in io["ad_units"])
        handle = stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"])
        first_run = (await handle.describe()).run_id
        await sleep_to(env, 1.5)
        await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
        for n in (1000, 2000, 3000, 4000, 5000, 6000, 7000):
            await deliver(stack, h, io["id"], a, n)
        desc = await handle.describe()
        assert desc.run_id != first_run
        # The new run carries the IoStatus search attribute on: it still agrees with the row.
        assert desc.typed_search_attributes.get(IO_STATUS) == (await get_io(stack, h, io["id"]))["status"]
        # The new run still follows the rest of the timeline: b airs, then the invoice.
        await sleep_to(env, 2.5)
        got = await io_until(stack, h, io["id"], lambda x: x["ad_units"][1]["status"] == "aired")
        assert got["ad_units"][0]["delivered_impressions"] == 7000
        await deliver(stack, h, io["id"], b, 10000)
        await sleep_to(env, 5.5)
        result = await handle.result()
        assert result.status is IoStatus.COMPLETED
        # a: 7,000 of 10,000 prorated ($175) + b: the goal ($250).
        assert result.invoice_total_usd == Decimal("425.00")
        types = await event_types(stack, tenant, io["id"])
        assert types.count("io.delivery_reported") == 8 and types.count("io.scheduled") == 1
