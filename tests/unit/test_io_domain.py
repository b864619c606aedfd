"""IO domain rules: pricing, promo codes, slugs, slot capacity, reconciliation and invoicing."""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from domain.io import (
    PROMO_ALPHABET,
    PROMO_CODE_PATTERN,
    AdFormat,
    Insertion,
    IoSnapshot,
    IoStatus,
    Makegood,
    Placement,
    PricingModel,
    UnderdeliveryPolicy,
    UnitState,
    UnitStatus,
    air_moment,
    build_invoice,
    cpm_amount,
    delivery_progress,
    generate_promo_code,
    impressions_with_makegoods,
    invoice_lines,
    io_summary,
    makegoods_due,
    slot_capacity,
    slugify,
    unit_price,
)

D = Decimal
MG, PRO = UnderdeliveryPolicy.MAKEGOOD, UnderdeliveryPolicy.PRORATA


def cpm_unit(
    uid: str = "u1", delivered: int = 0, status: UnitStatus = UnitStatus.AIRED, **kw: Any
) -> UnitState:
    fields: dict[str, Any] = {
        "id": uid,
        "show_id": "s1",
        "show_name": "The Daily Grind",
        "placement": Placement.MID_ROLL,
        "format": AdFormat.HOST_READ,
        "insertion": Insertion.DYNAMIC,
        "air_date": date(2026, 12, 3),
        "duration_s": 60,
        "pricing_model": PricingModel.CPM,
        "cpm_usd": D("25.00"),
        "impressions_goal": 40_000,
        "price_usd": D("1000.00"),
        "delivered_impressions": delivered,
        "status": status,
    }
    return UnitState(**(fields | kw))


def flat_unit(uid: str = "f1", status: UnitStatus = UnitStatus.AIRED) -> UnitState:
    return cpm_unit(
        uid, status=status, pricing_model=PricingModel.FLAT, cpm_usd=None, impressions_goal=None,
        flat_usd=D("750.004"), price_usd=D("750.00"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cpm", "impressions", "expected"),
    [
        ("25", 40_000, "1000.00"),
        ("18.50", 12_000, "222.00"),
        ("5", 1, "0.01"),  # $0.005 rounds half up
        ("25", 1, "0.03"),  # $0.025 rounds up, not to even
        ("4", 1, "0.00"),  # $0.004 rounds down
    ],
)
def test_cpm_pricing_rounds_half_up_to_cents(cpm: str, impressions: int, expected: str) -> None:
    assert cpm_amount(D(cpm), impressions) == D(expected)
    price = unit_price(PricingModel.CPM, cpm_usd=D(cpm), impressions_goal=impressions, flat_usd=None)
    assert str(price) == expected


@pytest.mark.parametrize(("flat", "expected"), [("500", "500.00"), ("99.995", "100.00"), ("10.004", "10.00")])
def test_flat_price_rounds_to_cents(flat: str, expected: str) -> None:
    price = unit_price(PricingModel.FLAT, cpm_usd=None, impressions_goal=None, flat_usd=D(flat))
    assert str(price) == expected


@pytest.mark.parametrize(
    ("advertiser", "prefix"),
    [("Acme Corp", "ACME"), ("The Best Brew", "BEST"), ("Lollipop Inc", "PP"), ("Café Olé", "CAFE")],
)
def test_promo_code_prefix_and_readable_suffix(advertiser: str, prefix: str) -> None:
    code = generate_promo_code(advertiser, random.Random(1).choice)
    assert code == generate_promo_code(advertiser, random.Random(1).choice)
    assert code.startswith(prefix) and len(code) == len(prefix) + 4
    assert code == code.upper() and all(ch in PROMO_ALPHABET for ch in code)
    assert not set(code) & set("0O1IL")
    assert re.match(PROMO_CODE_PATTERN, code)


@pytest.mark.parametrize("advertiser", ["Ëmoji 🎧 Co", "🎧🎧", "!!!", "", "株式会社", "Oil"])
def test_promo_code_is_valid_for_awkward_names(advertiser: str) -> None:
    code = generate_promo_code(advertiser, random.Random(7).choice)
    assert re.match(PROMO_CODE_PATTERN, code) and code == code.upper()
    assert all(ch in PROMO_ALPHABET for ch in code[-4:])


@pytest.mark.parametrize("advertiser", ["🎧🎧", "!!!", "Oil"])
def test_fallback_promo_prefix_avoids_ambiguous_letters(advertiser: str) -> None:
    code = generate_promo_code(advertiser, random.Random(7).choice)
    assert all(ch in PROMO_ALPHABET for ch in code)


@pytest.mark.parametrize(
    ("name", "slug"),
    [("The Daily Grind!", "the-daily-grind"), ("Café Olé", "cafe-ole"), ("", "listen"), ("🎧 !!", "listen")],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_slugify_caps_long_names_without_trailing_dash() -> None:
    slug = slugify("a" * 79 + " bcd" * 20)
    assert len(slug) <= 80 and not slug.endswith("-") and slug == "a" * 79


@pytest.mark.parametrize(
    ("slots", "placement", "expected"),
    [
        (None, Placement.PRE_ROLL, 1),
        (None, Placement.MID_ROLL, 2),
        ({}, "post_roll", 1),
        ({"mid_roll": 4}, Placement.MID_ROLL, 4),
        ({"mid_roll": 4}, Placement.PRE_ROLL, 1),
        ({"post_roll": 0}, Placement.POST_ROLL, 0),
    ],
)
def test_slot_capacity(slots: dict[str, int] | None, placement: Placement | str, expected: int) -> None:
    assert slot_capacity(slots, placement) == expected


def test_air_moment_is_midnight_utc() -> None:
    assert air_moment(date(2026, 12, 3)) == datetime(2026, 12, 3, tzinfo=UTC)


def test_makegoods_due_only_for_aired_short_cpm_units() -> None:
    units = [
        cpm_unit("short", 30_000),
        cpm_unit("met", 40_000),
        flat_unit(),
        cpm_unit("cancelled", 0, UnitStatus.CANCELLED),
        cpm_unit("scheduled", 0, UnitStatus.SCHEDULED),
        cpm_unit("mg", 100, makegood_of="short", impressions_goal=10_000),
    ]
    assert makegoods_due(units, MG) == [Makegood(unit_id="short", shortfall=10_000)]
    assert makegoods_due(units, PRO) == []


def test_over_delivery_bills_the_goal_only() -> None:
    [line], statuses = invoice_lines([cpm_unit(delivered=41_250)])
    assert (line.quantity, line.amount_usd, line.note) == (40_000, D("1000.00"), "goal delivered")
    assert statuses == {"u1": UnitStatus.DELIVERED}


def test_short_unit_without_makegood_is_prorated() -> None:
    [line], statuses = invoice_lines([cpm_unit(delivered=30_000)])
    assert (line.quantity, line.amount_usd) == (30_000, D("750.00"))
    assert "prorated" in line.note and statuses["u1"] is UnitStatus.DELIVERED
    [line], _ = invoice_lines([cpm_unit(delivered=30_000, makegood_unavailable=True)])
    assert "no free slot" in line.note and line.amount_usd == D("750.00")


def test_makegood_impressions_count_toward_goal_capped() -> None:
    units = [cpm_unit(delivered=30_000), cpm_unit("mg", 15_000, makegood_of="u1", impressions_goal=10_000)]
    (orig, mg), statuses = invoice_lines(units)
    assert (orig.quantity, orig.amount_usd) == (40_000, D("1000.00"))
    assert "remainder prorated" not in orig.note
    assert (mg.amount_usd, mg.rate_usd) == (D("0.00"), D("0.00")) and "make-good" in mg.note
    assert statuses == {"u1": UnitStatus.MADE_GOOD, "mg": UnitStatus.DELIVERED}


def test_makegood_that_also_falls_short_prorates_the_remainder() -> None:
    units = [cpm_unit(delivered=30_000), cpm_unit("mg", 6_000, makegood_of="u1", impressions_goal=10_000)]
    (orig, _), statuses = invoice_lines(units)
    assert (orig.quantity, orig.amount_usd) == (36_000, D("900.00"))
    assert "remainder prorated" in orig.note and statuses["u1"] is UnitStatus.MADE_GOOD


def test_cancelled_makegood_does_not_count() -> None:
    units = [cpm_unit(delivered=30_000), cpm_unit("mg", 9_000, UnitStatus.CANCELLED, makegood_of="u1")]
    lines, statuses = invoice_lines(units)
    assert [(line.ad_unit_id, line.quantity) for line in lines] == [("u1", 30_000)]
    assert statuses == {"u1": UnitStatus.DELIVERED, "mg": UnitStatus.CANCELLED}


def test_build_invoice_flat_cancelled_totals_and_terms() -> None:
    units = [cpm_unit(delivered=30_000), flat_unit(), cpm_unit("c", status=UnitStatus.CANCELLED)]
    issued = datetime(2027, 1, 31, 23, 30, tzinfo=UTC)
    invoice, statuses = build_invoice(
        io_id="ab-cd-1234-5678", units=units, issued_at=issued, payment_terms_days=30
    )
    assert [line.ad_unit_id for line in invoice.lines] == ["u1", "f1"]
    assert invoice.lines[1].amount_usd == D("750.00") and invoice.lines[1].quantity == 1
    assert invoice.total_usd == sum(line.amount_usd for line in invoice.lines) == D("1500.00")
    assert invoice.due_date == date(2027, 3, 2)
    assert invoice.number.startswith("INV-") and invoice.number == "INV-ABCD123456"
    assert statuses == {"u1": UnitStatus.DELIVERED, "f1": UnitStatus.DELIVERED, "c": UnitStatus.CANCELLED}


@pytest.mark.parametrize(
    ("count", "next_air", "expected"),
    [
        (3, date(2026, 12, 3), "IO: Acme x 3 shows, $18,400, next air 2026-12-03"),
        (1, date(2026, 12, 3), "IO: Acme x 1 show, $18,400, next air 2026-12-03"),
        (3, None, "IO: Acme x 3 shows, $18,400"),
    ],
)
def test_io_summary(count: int, next_air: date | None, expected: str) -> None:
    assert io_summary("Acme", count, D("18400.00"), next_air) == expected


def test_snapshot_round_trips_through_json_with_decimal_money() -> None:
    units = [cpm_unit(delivered=30_000, cpm_usd=D("18.50")), flat_unit()]
    invoice, _ = build_invoice(
        io_id="io-1", units=units, issued_at=datetime(2027, 1, 1, tzinfo=UTC), payment_terms_days=30
    )
    snap = IoSnapshot(
        tenant_id="t", io_id="io-1", campaign_id="c", advertiser_id="a", advertiser_name="Café Olé",
        status=IoStatus.COMPLETED, underdelivery_policy=MG, measurement_window_days=7,
        payment_terms_days=30, total_usd=D("1750.00"), units=units, invoice=invoice,
    )  # fmt: skip
    back = IoSnapshot.model_validate_json(snap.model_dump_json())
    assert back == snap
    assert back.total_usd == D("1750.00") and isinstance(back.units[0].cpm_usd, Decimal)
    assert back.invoice is not None and back.invoice.total_usd == invoice.total_usd == D("1305.00")


def test_delivery_progress_and_invoice_count_makegoods_by_one_rule() -> None:
    # u1 short by 10k, made good by 15k (capped at the goal); u2 short with a cancelled make-good
    # (counts nothing); u3 not aired yet (not in the progress); a flat unit has no goal.
    units = [
        cpm_unit("u1", 30_000),
        cpm_unit("mg1", 15_000, makegood_of="u1", impressions_goal=10_000),
        cpm_unit("u2", 20_000),
        cpm_unit("mg2", 5_000, makegood_of="u2", impressions_goal=20_000, status=UnitStatus.CANCELLED),
        cpm_unit("u3", 0, status=UnitStatus.SCHEDULED),
        flat_unit(),
    ]
    assert impressions_with_makegoods(units) == {"u1": 45_000, "u2": 20_000, "u3": 0, "f1": 0}
    assert delivery_progress(units) == (80_000, 60_000)
    lines, _ = invoice_lines(units)
    billed = {line.ad_unit_id: line.quantity for line in lines}
    assert (billed["u1"], billed["u2"]) == (40_000, 20_000)
