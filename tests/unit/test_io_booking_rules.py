"""IO booking rules (domain.io): what refuses a booking and with which detail, slot counting, paths."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from domain.io import (
    BOOKING_CONFLICT,
    BOOKING_INVALID,
    BOOKING_UNAVAILABLE,
    AdFormat,
    BookingRefused,
    BookIoInput,
    Insertion,
    Placement,
    PricingModel,
    UnitRequest,
    booking_summary,
    check_booking,
    next_vanity_path,
    no_free_slot,
    promo_exhausted,
    promo_taken,
    slot_conflicts,
    vanity_taken,
)

DAY = date(2030, 5, 6)
SHOW = str(uuid.uuid4())


def unit(show: str = SHOW, placement: Placement = Placement.MID_ROLL, **kw: Any) -> UnitRequest:
    values: dict[str, Any] = {
        "show_id": show,
        "placement": placement,
        "format": AdFormat.HOST_READ,
        "insertion": Insertion.DYNAMIC,
        "air_date": DAY,
        "duration_s": 60,
        "pricing_model": PricingModel.CPM,
        "cpm_usd": Decimal("25"),
        "impressions_goal": 10000,
    }
    return UnitRequest(**(values | kw))


def booking(*units: UnitRequest, **kw: Any) -> BookIoInput:
    return BookIoInput(campaign_id=str(uuid.uuid4()), ad_units=list(units) or [unit()], **kw)


def check(b: BookIoInput, **kw: Any) -> None:
    values: dict[str, Any] = {
        "deal_stage": "won",
        "advertiser_name": "Acme",
        "advertiser_domain": "acme.example",
        "known_show_ids": {SHOW},
    }
    check_booking(b, **(values | kw))


def test_a_won_deal_with_known_shows_passes() -> None:
    check(booking(vanity_path="spring"))


@pytest.mark.parametrize(
    ("kw", "kind", "loc"),
    [
        ({"deal_stage": None}, BOOKING_INVALID, ["body", "campaign_id"]),
        ({"known_show_ids": set()}, BOOKING_INVALID, ["body", "ad_units", 0, "show_id"]),
    ],
)
def test_unknown_deal_or_show_is_a_422_naming_the_field(
    kw: dict[str, Any], kind: str, loc: list[Any]
) -> None:
    with pytest.raises(BookingRefused) as refused:
        check(booking(), **kw)
    assert refused.value.kind == kind and refused.value.detail[0]["loc"] == loc
    assert refused.value.detail[0]["type"] == "not_found"


def test_a_deal_not_won_is_a_conflict_naming_its_stage() -> None:
    with pytest.raises(BookingRefused) as refused:
        check(booking(), deal_stage="negotiation")
    assert refused.value.kind == BOOKING_CONFLICT
    assert refused.value.detail["stage"] == "negotiation"
    assert "only a won deal can be booked" in refused.value.detail["message"] == refused.value.message


def test_a_vanity_path_needs_a_domain() -> None:
    with pytest.raises(BookingRefused) as refused:
        check(booking(vanity_path="spring"), advertiser_domain=None)
    assert refused.value.detail[0]["loc"] == ["body", "vanity_path"] and "no domain" in refused.value.message
    check(booking(), advertiser_domain=None)  # no path asked for: fine


def test_slot_conflicts_count_what_is_booked_and_what_this_booking_adds() -> None:
    shows = {SHOW: ("Solo", {"mid_roll": 2})}
    key = (SHOW, DAY, "mid_roll")
    assert slot_conflicts([unit(), unit()], shows=shows, usage={}) == []
    (only,) = slot_conflicts([unit(), unit()], shows=shows, usage={key: 1})
    assert only["ad_unit"] == 1 and only["booked"] == 1 and only["capacity"] == 2
    # Default inventory (one pre-roll) when the show says nothing; other placements are separate.
    none = {SHOW: ("Solo", None)}
    assert slot_conflicts([unit(placement=Placement.PRE_ROLL)], shows=none, usage={key: 2}) == []
    assert len(slot_conflicts([unit(placement=Placement.PRE_ROLL)] * 2, shows=none, usage={})) == 1
    refused = no_free_slot([only])
    assert refused.kind == BOOKING_CONFLICT
    assert refused.detail["message"] == (
        f"ad_units[1]: Solo has no free mid_roll slot on {DAY.isoformat()} (1 of 2 booked)"
    )
    assert refused.detail["conflicts"] == [only]


def test_refusals_keep_the_details_clients_rely_on() -> None:
    assert promo_taken("GRIND").detail == (
        "promo code 'GRIND' is already in use in this network (codes ignore case)"
    )
    assert (
        vanity_taken("a.example", "x").detail
        == "vanity URL https://a.example/x is already used by another IO"
    )
    assert promo_exhausted().kind == BOOKING_UNAVAILABLE


def test_next_vanity_path_counts_up_past_taken_paths() -> None:
    assert next_vanity_path("grind", set()) == "grind"
    assert next_vanity_path("grind", {"grind", "grind-2"}) == "grind-3"


def test_booking_summary_names_shows_total_and_first_air_date() -> None:
    other = str(uuid.uuid4())
    later = date(2030, 6, 1)
    units = [
        unit(air_date=later),
        unit(
            show=other,
            pricing_model=PricingModel.FLAT,
            cpm_usd=None,
            impressions_goal=None,
            flat_usd=Decimal("500"),
        ),
    ]
    assert booking_summary("Acme", units) == "IO: Acme x 2 shows, $750, next air 2030-05-06"
