"""Test helpers shared by several test modules (moved from tests/unit/test_scoring.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

from domain.scoring import HORIZON_DAYS, AdvertiserFeatures, ShowFeatures

TWO_A_DAY = (2,) * HORIZON_DAYS


def show(name: str, **kw: Any) -> ShowFeatures:
    base = ShowFeatures(
        id=name,
        name=name,
        geo={},
        age={},
        female_share=None,
        categories=(),
        brand_safety={},
        cpm_usd=None,
        avg_downloads=10_000,
        recent_downloads=None,
        prior_downloads=None,
        free_mid_slots=TWO_A_DAY,
    )
    return replace(base, **kw)


FINTECH = AdvertiserFeatures(
    id="ledgerly",
    name="Ledgerly",
    target_geo=("us", "CA"),
    target_age=("25-34", "35-44"),
    target_categories=("business", "Technology"),
    target_gender=None,
    tolerance="medium",
    budget_usd=50_000.0,
    flight_start_day=0,
    flight_end_day=30,
    flight_end_date=date(2026, 12, 15),
)
