"""Free-slot hints and delivery percentages (domain.io), as the IO API shows them."""

from __future__ import annotations

from datetime import date

from domain.io import DaySlots, delivered_pct, slots_by_day


def test_each_day_counts_booked_and_free_slots_from_the_first() -> None:
    booked = {date(2031, 3, 2): 1, date(2031, 3, 4): 2}
    assert slots_by_day(date(2031, 3, 1), 4, 2, booked) == [
        DaySlots(date(2031, 3, 1), 0, 2),
        DaySlots(date(2031, 3, 2), 1, 1),
        DaySlots(date(2031, 3, 3), 0, 2),
        DaySlots(date(2031, 3, 4), 2, 0),
    ]


def test_an_overbooked_day_has_no_free_slot_not_a_negative_count() -> None:
    # A show's slots can shrink after bookings were made: the day shows what is booked, 0 free.
    assert slots_by_day(date(2031, 3, 1), 1, 1, {date(2031, 3, 1): 3}) == [DaySlots(date(2031, 3, 1), 3, 0)]


def test_days_cross_month_and_year_ends() -> None:
    days = slots_by_day(date(2031, 12, 31), 2, 1, {})
    assert [d.day for d in days] == [date(2031, 12, 31), date(2032, 1, 1)]


def test_delivered_percent_is_rounded_to_a_tenth_and_absent_without_goal() -> None:
    assert delivered_pct(1, 3) == 33.3
    assert delivered_pct(2, 3) == 66.7
    assert delivered_pct(45_000, 40_000) == 112.5  # over-delivery is shown, not capped
    assert delivered_pct(10, None) is None
    assert delivered_pct(0, 0) is None
