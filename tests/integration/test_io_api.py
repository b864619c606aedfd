"""IO bookings over HTTP: booking, inventory races, promo codes, vanity URLs, bad input, cancel,
documents. Real PostgreSQL, real Temporal dev server."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from typing import Any

import openpyxl
import pypdf
import pytest
from sqlalchemy import func, select

from db.engine import tenant_tx
from db.models import AdUnit, Event, IoBooking, PromoCode
from db.tenants import NewTenant
from domain.io import PROMO_ALPHABET
from tests.conftest import Stack, start_stack
from tests.helpers.factories import ad_unit, book_io, make_advertiser, make_deal, make_show
from workflows.io import IoBookingWorkflow

TODAY = datetime.now(UTC).date()
SOON = TODAY + timedelta(days=10)


async def _won_deal(stack: Stack, h: dict[str, str], **adv: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    advertiser = await make_advertiser(stack.http, h, **adv)
    deal = await make_deal(stack.http, h, advertiser=advertiser, stage="won")
    return deal, advertiser


async def _counts(stack: Stack, tenant: NewTenant) -> tuple[int, int, int]:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        ios = await s.scalar(select(func.count()).select_from(IoBooking))
        units = await s.scalar(select(func.count()).select_from(AdUnit))
        codes = await s.scalar(select(func.count()).select_from(PromoCode))
    return int(ios or 0), int(units or 0), int(codes or 0)


async def _events(stack: Stack, tenant: NewTenant, io_id: str, type_: str, want: int = 1) -> list[Event]:
    """Waits (the workflow writes them) until `want` events of a type exist for the IO."""
    for _ in range(100):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            rows = list(
                (await s.scalars(select(Event).where(Event.entity_id == io_id, Event.type == type_))).all()
            )
        if len(rows) >= want:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {type_} event for IO {io_id}")


async def test_booking_a_won_deal_prices_units_and_schedules_the_workflow(
    stack: Stack, tenant: NewTenant
) -> None:
    h = stack.auth(tenant)
    deal, advertiser = await _won_deal(stack, h, name="Acme Coffee", domain="acme.example")
    grind = await make_show(stack.http, h, name="The Daily Grind!")
    other = await make_show(stack.http, h)
    r = await book_io(
        stack.http,
        h,
        deal["id"],
        [
            ad_unit(grind["id"], SOON, cpm_usd=25, impressions_goal=40000),
            ad_unit(
                other["id"],
                SOON + timedelta(days=7),
                placement="pre_roll",
                cpm_usd="18.50",
                impressions_goal=12000,
            ),
            ad_unit(
                grind["id"],
                SOON + timedelta(days=14),
                pricing_model="flat",
                flat_usd=1500,
                cpm_usd=None,
                impressions_goal=None,
                format="produced",
                insertion="baked_in",
                duration_s=30,
            ),
        ],
        payment_terms_days=45,
    )
    assert r.status_code == 201, r.text
    io = r.json()
    assert io["status"] == "scheduled"
    assert io["campaign_id"] == deal["id"] and io["advertiser_name"] == "Acme Coffee"
    assert [u["price_usd"] for u in io["ad_units"]] == [1000.0, 222.0, 1500.0]
    assert io["total_usd"] == 2722.0
    assert all(u["status"] == "scheduled" for u in io["ad_units"])
    assert io["next_air_date"] == SOON.isoformat()
    assert io["payment_terms_days"] == 45 and io["underdelivery_policy"] == "makegood"
    assert io["measurement_window_days"] == 30
    # A readable code: the advertiser's name and four unambiguous characters.
    assert re.fullmatch(rf"ACMECFFEE[{PROMO_ALPHABET}]{{4}}|ACME[{PROMO_ALPHABET}]{{4}}", io["promo_code"])
    assert io["promo_code_status"] == "active"
    assert io["vanity_url"] == "https://acme.example/the-daily-grind"
    assert io["workflow_id"] == f"io/{tenant.id}/{io['id']}"

    (scheduled,) = await _events(stack, tenant, io["id"], "io.scheduled")
    assert scheduled.payload["total_usd"] == "2722.00" and scheduled.payload["units"] == 3
    desc = await stack.client.get_workflow_handle(io["workflow_id"]).describe()
    assert desc.search_attributes.get("IoStatus") == ["scheduled"]
    assert await desc.static_summary() == f"IO: Acme Coffee x 2 shows, $2,722, next air {SOON.isoformat()}"

    got = await stack.http.get(f"/api/v1/io/{io['id']}", headers=h)
    assert got.status_code == 200 and got.json()["ad_units"] == io["ad_units"]
    listed = await stack.http.get("/api/v1/io", params={"campaign_id": deal["id"]}, headers=h)
    assert [i["id"] for i in listed.json()["items"]] == [io["id"]]
    assert listed.json()["items"][0]["units"] == 3


async def test_a_deal_that_is_not_won_cannot_be_booked(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, stage="negotiation")
    r = await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], SOON)])
    assert r.status_code == 409
    assert "negotiation" in r.json()["detail"] and "won" in r.json()["detail"]
    assert r.json()["code"] == "deal_not_won" and r.json()["stage"] == "negotiation"
    assert await _counts(stack, tenant) == (0, 0, 0)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"ad_units": []}, ["body", "ad_units"]),
        ({"unit": {"duration_s": 20}}, ["body", "ad_units", 0, "duration_s"]),
        ({"unit": {"duration_s": 135}}, ["body", "ad_units", 0, "duration_s"]),
        ({"unit": {"placement": "halftime"}}, ["body", "ad_units", 0, "placement"]),
        ({"unit": {"format": "jingle"}}, ["body", "ad_units", 0, "format"]),
        ({"unit": {"insertion": "live"}}, ["body", "ad_units", 0, "insertion"]),
        ({"unit": {"impressions_goal": None}}, ["body", "ad_units", 0]),
        ({"unit": {"pricing_model": "flat"}}, ["body", "ad_units", 0]),
        ({"unit": {"cpm_usd": -3}}, ["body", "ad_units", 0, "cpm_usd"]),
        (
            {"unit": {"air_date": (TODAY - timedelta(days=1)).isoformat()}},
            ["body", "ad_units", 0, "air_date"],
        ),
        ({"unit": {"show_id": str(uuid.uuid4())}}, ["body", "ad_units", 0, "show_id"]),
        ({"campaign_id": str(uuid.uuid4())}, ["body", "campaign_id"]),
        ({"promo_code": "no spaces!"}, ["body", "promo_code"]),
        ({"vanity_path": "../etc"}, ["body", "vanity_path"]),
        ({"underdelivery_policy": "refund"}, ["body", "underdelivery_policy"]),
        ({"payment_terms_days": -1}, ["body", "payment_terms_days"]),
    ],
)
async def test_bad_bookings_get_a_422_naming_the_field_and_write_nothing(
    stack: Stack, tenant: NewTenant, change: dict[str, Any], where: list[Any]
) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    unit = ad_unit(deal["show_id"], SOON) | change.pop("unit", {})
    body = {"campaign_id": deal["id"], "ad_units": [unit]} | change
    r = await stack.http.post("/api/v1/io", json=body, headers=h)
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert any(loc[: len(where)] == where for loc in locs), locs
    assert await _counts(stack, tenant) == (0, 0, 0)


async def test_vanity_path_needs_an_advertiser_domain(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h, domain=None)
    r = await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], SOON)], vanity_path="spring")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "vanity_path"]
    assert "no domain" in r.json()["detail"][0]["msg"]
    r = await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], SOON)])
    assert r.status_code == 201 and r.json()["vanity_url"] is None


async def test_twenty_bookings_racing_for_the_last_slot_one_wins(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    show = await make_show(stack.http, h, name="Tight Inventory", slots={"mid_roll": 2})
    first = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)])
    assert first.status_code == 201

    results = await asyncio.gather(
        *(book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)]) for _ in range(20))
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 19, codes
    loser = next(r for r in results if r.status_code == 409).json()
    assert "Tight Inventory has no free mid_roll slot on " + SOON.isoformat() in loser["detail"]
    assert loser["code"] == "no_free_slot"
    assert loser["conflicts"][0]["capacity"] == 2 and loser["conflicts"][0]["booked"] == 2
    assert await _counts(stack, tenant) == (2, 2, 2)
    # Other placements and dates of the show are untouched.
    r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON, placement="pre_roll")])
    assert r.status_code == 201


async def test_one_request_cannot_overbook_a_slot_by_itself(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    show = await make_show(stack.http, h, name="Solo")
    units = [ad_unit(show["id"], SOON, placement="post_roll") for _ in range(2)]
    r = await book_io(stack.http, h, deal["id"], units)
    assert r.status_code == 409
    assert r.json()["conflicts"][0]["ad_unit"] == 1
    assert await _counts(stack, tenant) == (0, 0, 0)


async def test_promo_codes_are_unique_per_tenant_ignoring_case(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    show = await make_show(stack.http, h, slots={"mid_roll": 10, "pre_roll": 10, "post_roll": 10})

    def unit(i: int) -> list[dict[str, Any]]:
        return [ad_unit(show["id"], SOON + timedelta(days=i))]

    # Concurrent requests for the same code in different cases: exactly one gets it.
    racing = await asyncio.gather(
        *(
            book_io(stack.http, h, deal["id"], unit(i), promo_code=code)
            for i, code in enumerate(["GRIND", "grind", "Grind", "gRiNd", "GRIND", "grind"])
        )
    )
    assert sorted(r.status_code for r in racing) == [201] + [409] * 5
    assert "already in use" in next(r for r in racing if r.status_code == 409).json()["detail"]
    # Generated codes never collide, even when booked all at once.
    generated = await asyncio.gather(*(book_io(stack.http, h, deal["id"], unit(10 + i)) for i in range(12)))
    assert all(r.status_code == 201 for r in generated)
    codes = [r.json()["promo_code"].lower() for r in generated]
    assert len(set(codes)) == 12 and "grind" not in codes
    # Another tenant may use the same code.
    other = await stack.new_tenant()
    oh = stack.auth(other)
    odeal, _ = await _won_deal(stack, oh)
    r = await book_io(stack.http, oh, odeal["id"], [ad_unit(odeal["show_id"], SOON)], promo_code="grind")
    assert r.status_code == 201


async def test_vanity_urls_are_unique_per_advertiser_domain(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, advertiser = await _won_deal(stack, h, domain="brand.example")
    show = await make_show(stack.http, h, name="Night Owls", slots={"mid_roll": 5})
    urls = []
    for i in range(3):
        r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON + timedelta(days=i))])
        assert r.status_code == 201
        urls.append(r.json()["vanity_url"])
    assert urls == [
        "https://brand.example/night-owls",
        "https://brand.example/night-owls-2",
        "https://brand.example/night-owls-3",
    ]
    r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)], vanity_path="/Spring")
    assert r.status_code == 201 and r.json()["vanity_url"] == "https://brand.example/Spring"
    r = await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)], vanity_path="spring")
    assert r.status_code == 409 and "already used" in r.json()["detail"]
    # The same path on another advertiser's domain is free.
    deal2, _ = await _won_deal(stack, h, domain="other.example")
    r = await book_io(
        stack.http, h, deal2["id"], [ad_unit(show["id"], SOON + timedelta(days=5))], vanity_path="spring"
    )
    assert r.status_code == 201


async def test_a_retried_post_with_an_idempotency_key_books_once(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    headers = h | {"Idempotency-Key": f"io-{uuid.uuid4()}"}
    body = {"campaign_id": deal["id"], "ad_units": [ad_unit(deal["show_id"], SOON)]}
    first = await stack.http.post("/api/v1/io", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    # The retries (the answer was lost, say) answer the IO the first one booked.
    for _ in range(2):
        again = await stack.http.post("/api/v1/io", json=body, headers=headers)
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
    assert await _counts(stack, tenant) == (1, 1, 1)
    # The same key for another booking is refused, naming the header; nothing is written.
    other = body | {"payment_terms_days": 60}
    r = await stack.http.post("/api/v1/io", json=other, headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await _counts(stack, tenant) == (1, 1, 1)


async def test_concurrent_twins_with_one_idempotency_key_book_at_most_once(
    stack: Stack, tenant: NewTenant
) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    headers = h | {"Idempotency-Key": f"io-{uuid.uuid4()}"}
    body = {"campaign_id": deal["id"], "ad_units": [ad_unit(deal["show_id"], SOON)]}
    results = await asyncio.gather(
        *(stack.http.post("/api/v1/io", json=body, headers=headers) for _ in range(3))
    )
    # A twin fences off the attempt it replaces: that one answers 503 (never applied); every 2xx
    # names the one IO that was booked.
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {201, 503} and 201 in codes, codes
    assert len({r.json()["id"] for r in results if r.status_code == 201}) == 1
    assert all("never will be" in r.json()["detail"] for r in results if r.status_code == 503)
    assert await _counts(stack, tenant) == (1, 1, 1)
    booked = next(r for r in results if r.status_code == 201).json()["id"]
    again = await stack.http.post("/api/v1/io", json=body, headers=headers)
    assert again.status_code == 201 and again.json()["id"] == booked


async def test_delivery_is_refused_for_unknown_unaired_or_negative(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    io = (await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], SOON)])).json()
    unit_id = io["ad_units"][0]["id"]
    url = f"/api/v1/io/{io['id']}/delivery"

    r = await stack.http.post(url, json={"ad_unit_id": str(uuid.uuid4()), "impressions": 5}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ad_unit_id"]
    r = await stack.http.post(url, json={"ad_unit_id": unit_id, "impressions": 5}, headers=h)
    assert r.status_code == 409 and "has not aired yet" in r.json()["detail"]
    r = await stack.http.post(url, json={"ad_unit_id": unit_id, "impressions": -1}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "impressions"]
    r = await stack.http.post(
        f"/api/v1/io/{uuid.uuid4()}/delivery", json={"ad_unit_id": unit_id, "impressions": 5}, headers=h
    )
    assert r.status_code == 404
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        reported = await s.scalar(
            select(func.count()).select_from(Event).where(Event.type == "io.delivery_reported")
        )
    assert reported == 0


async def test_cancel_before_air_frees_the_slots_and_voids_the_code(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    show = await make_show(stack.http, h, slots={"mid_roll": 1})
    io = (await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)], promo_code="SPRING")).json()
    assert (await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)])).status_code == 409

    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": ""}, headers=h)
    assert r.status_code == 422
    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "brand pulled out"}, headers=h)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "cancelled" and got["cancel_reason"] == "brand pulled out"
    assert [u["status"] for u in got["ad_units"]] == ["cancelled"]
    assert got["promo_code_status"] == "void" and got["invoice"] is None
    (ev,) = await _events(stack, tenant, io["id"], "io.cancelled")
    assert ev.payload["reason"] == "brand pulled out"
    # Nothing aired, nothing to bill: the workflow ends.
    result = await stack.client.get_workflow_handle_for(IoBookingWorkflow.run, io["workflow_id"]).result()
    assert result.status.value == "cancelled" and result.invoice_total_usd is None
    # The slot is free again; the voided code stays reserved (baked-in reads live on).
    assert (await book_io(stack.http, h, deal["id"], [ad_unit(show["id"], SOON)])).status_code == 201
    r = await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], SOON)], promo_code="spring")
    assert r.status_code == 409
    # A retried cancel after the workflow finished is still a success; a delivery is a clear 409.
    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "again"}, headers=h)
    assert r.status_code == 200 and r.json()["cancel_reason"] == "brand pulled out"
    r = await stack.http.post(
        f"/api/v1/io/{io['id']}/delivery",
        json={"ad_unit_id": io["ad_units"][0]["id"], "impressions": 1},
        headers=h,
    )
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


async def test_documents_open_and_carry_the_booking(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h, name="Acme")
    show = await make_show(stack.http, h, name='=HYPERLINK("http://evil.example","x")')
    io = (
        await book_io(
            stack.http,
            h,
            deal["id"],
            [
                ad_unit(show["id"], SOON),
                ad_unit(
                    deal["show_id"],
                    SOON,
                    pricing_model="flat",
                    flat_usd=900,
                    cpm_usd=None,
                    impressions_goal=None,
                ),
            ],
            promo_code="ACMEPOD",
        )
    ).json()

    pdf = await stack.http.get(f"/api/v1/io/{io['id']}/document", params={"format": "pdf"}, headers=h)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in pypdf.PdfReader(BytesIO(pdf.content)).pages)
    assert "ACMEPOD" in text and "$1,150.00" in text and "Acme" in text
    assert io["vanity_url"] in text

    xlsx = await stack.http.get(f"/api/v1/io/{io['id']}/document", params={"format": "xlsx"}, headers=h)
    assert xlsx.status_code == 200
    wb = openpyxl.load_workbook(BytesIO(xlsx.content))
    cells = [c for ws in wb.worksheets for row in ws.iter_rows() for c in row if c.value is not None]
    values = [c.value for c in cells]
    assert "ACMEPOD" in values and 1150 in values
    evil = [c for c in cells if isinstance(c.value, str) and "HYPERLINK" in c.value]
    assert evil and all(c.data_type != "f" and c.value.startswith("'") for c in evil)
    assert any(isinstance(v, datetime) and v.date() == SOON for v in values)

    r = await stack.http.get(f"/api/v1/io/{io['id']}/document", params={"format": "docx"}, headers=h)
    assert r.status_code == 422
    r = await stack.http.get(f"/api/v1/io/{uuid.uuid4()}/document", headers=h)
    assert r.status_code == 404


async def test_another_tenant_never_sees_an_io(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal, _ = await _won_deal(stack, h)
    io = (await book_io(stack.http, h, deal["id"], [ad_unit(deal["show_id"], SOON)])).json()
    other = stack.auth(await stack.new_tenant())
    assert (await stack.http.get(f"/api/v1/io/{io['id']}", headers=other)).status_code == 404
    assert (await stack.http.get("/api/v1/io", headers=other)).json()["items"] == []
    r = await stack.http.post(f"/api/v1/io/{io['id']}/cancel", json={"reason": "x"}, headers=other)
    assert r.status_code == 404
    # Nor can it book another tenant's deal or shows.
    r = await book_io(stack.http, other, deal["id"], [ad_unit(deal["show_id"], SOON)])
    assert r.status_code == 422


async def test_the_feature_flag_turns_io_routes_off(database: Any, client: Any, sm: Any) -> None:
    async for off in start_stack(database, client, sm, enable_io_bookings=False):
        t = await off.new_tenant()
        r = await off.http.get("/api/v1/io", headers=off.auth(t))
        assert r.status_code == 404 and "ENABLE_IO_BOOKINGS" in r.json()["detail"]
        from worker import registrations

        assert "IoBookingWorkflow" not in {w.__name__ for w in registrations(off.settings, sm)[0]}


def test_air_dates_are_dates(tmp_path: Any) -> None:
    # Guards the test data itself: SOON must stay in the future for every test above.
    assert isinstance(SOON, date) and SOON > TODAY
