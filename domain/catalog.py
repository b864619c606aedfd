"""Shows and advertisers: the fields of the import formats, validated the same way everywhere."""

from __future__ import annotations

import math
import re
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domain.io import Placement

GARM_CATEGORIES: tuple[str, ...] = (
    "adult_explicit",
    "arms_ammunition",
    "crime_harmful_acts",
    "death_injury_conflict",
    "online_piracy",
    "hate_speech",
    "obscenity_profanity",
    "drugs_tobacco_alcohol",
    "spam_harmful",
    "terrorism",
    "debated_social_issues",
    "misinformation",
)
AGE_BANDS: tuple[str, ...] = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
PLACEMENTS: tuple[str, ...] = tuple(p.value for p in Placement)


class RiskLevel(StrEnum):
    """GARM risk level of a content category, from least to most risky."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    FLOOR = "floor"


class Tolerance(StrEnum):
    """The highest GARM risk an advertiser accepts in any category."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


_COUNTRY = re.compile(r"^[A-Z]{2}$")
Name = Annotated[str, Field(min_length=1, max_length=300)]
ExternalId = Annotated[str, Field(min_length=1, max_length=200)]
Label = Annotated[str, Field(min_length=1, max_length=100)]


# Rounding is not an error. Audience shares come out of ad-ops spreadsheets with two decimals
# (0.62, or 62%), so a distribution that really sums to 1 is written summing to a little more. Rounding
# half-up moves each share by at most 0.005; 0.01 per listed share (a full unit in the last place)
# also covers exporters that round up or round an already rounded figure, while any real mistake
# (a share typed twice, 0.6 for 0.06, a column summed into a row) overshoots it by far. So shares that
# add up to at most 1 + 0.01 x (number of shares listed) are taken as rounding and scaled down
# proportionally to add up to exactly 1; a larger excess is an error naming the field. A sum below 1
# stays as it is: a distribution need not list every country or band.
SHARE_ROUNDING_PER_SHARE = Decimal("0.01")
# A sum this close to 1 is 1: floats divided by their sum add up to 1 within a few ulps.
_ONE_AND_NOISE = Decimal("1.000000001")


def share_excess_allowed(count: int) -> Decimal:
    """The largest sum of `count` shares still taken as rounding (and normalised to 1)."""
    return 1 + SHARE_ROUNDING_PER_SHARE * count


def normalise_shares(v: dict[str, float], what: str) -> tuple[dict[str, float], bool]:
    """Checks a share map and scales a rounded one down to sum to 1: (shares, whether it was scaled).

    Raises ValueError naming `what` when a share is out of range or the sum is more than rounding.
    """
    for key, share in v.items():
        if not (math.isfinite(share) and 0 <= share <= 1):
            raise ValueError(f"{what} share for {key!r} must be between 0 and 1, got {share}")
    # Summed as the decimals that were written (0.51 is 0.51, not its binary neighbour), so the
    # bound is exact: 0.51 + 0.51 is within the 1.02 allowed for two shares.
    total = sum((Decimal(repr(float(share))) for share in v.values()), Decimal(0))
    if total <= _ONE_AND_NOISE:
        return v, False
    allowed = share_excess_allowed(len(v))
    if total > allowed:
        raise ValueError(
            f"{what} shares add up to {total:.4f}, more than 1 "
            f"(up to {allowed:.2f} for {len(v)} share(s) is taken as rounding and scaled to 1)"
        )
    return {key: float(Decimal(repr(float(share))) / total) for key, share in v.items()}, True


def _shares(v: dict[str, float], what: str) -> dict[str, float]:
    return normalise_shares(v, what)[0]


def _country(code: str) -> str:
    code = code.strip().upper()
    if not _COUNTRY.match(code):
        raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code")
    return code


class ShowFields(BaseModel):
    """A show as the API and the `shows` import describe it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: ExternalId | None = None
    name: Name
    categories: list[Label] = Field(default_factory=list, max_length=20)
    avg_downloads: int = Field(ge=0, le=1_000_000_000)
    episodes_per_month: int | None = Field(default=None, ge=0, le=200)
    cpm_usd: float | None = Field(default=None, ge=0, le=10_000)
    geo: dict[str, float] = Field(
        default_factory=dict,
        description="Audience share by ISO 3166-1 alpha-2 country, each 0..1. Shares adding up to at most "
        "1 + 0.01 per share listed are taken as rounding and stored scaled down to sum to 1; "
        "a larger sum is refused. A sum below 1 is kept.",
    )
    age: dict[str, float] = Field(
        default_factory=dict,
        description="Audience share by age band, each 0..1; the same rounding rule as geo.",
    )
    female_share: float | None = Field(default=None, ge=0, le=1)
    brand_safety: dict[str, RiskLevel] = Field(default_factory=dict)
    rss_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://\S+$")
    slots: dict[str, int] | None = None

    @field_validator("geo")
    @classmethod
    def _geo(cls, v: dict[str, float]) -> dict[str, float]:
        return _shares({_country(k): s for k, s in v.items()}, "geo")

    @field_validator("age")
    @classmethod
    def _age(cls, v: dict[str, float]) -> dict[str, float]:
        for band in v:
            if band not in AGE_BANDS:
                raise ValueError(f"unknown age band {band!r}; expected one of {', '.join(AGE_BANDS)}")
        return _shares(v, "age")

    @field_validator("brand_safety")
    @classmethod
    def _garm(cls, v: dict[str, RiskLevel]) -> dict[str, RiskLevel]:
        for category in v:
            if category not in GARM_CATEGORIES:
                raise ValueError(f"unknown GARM category {category!r}")
        return v

    @field_validator("slots")
    @classmethod
    def _slots(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is None:
            return v
        for placement, count in v.items():
            if placement not in PLACEMENTS:
                raise ValueError(f"unknown placement {placement!r}; expected {', '.join(PLACEMENTS)}")
            if not 0 <= count <= 10:
                raise ValueError(f"slots for {placement} must be between 0 and 10")
        return v


class AdvertiserFields(BaseModel):
    """An advertiser as the API and the `advertisers` import describe it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: ExternalId | None = None
    name: Name
    domain: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$",
    )
    target_categories: list[Label] = Field(default_factory=list, max_length=20)
    target_geo: list[str] = Field(default_factory=list, max_length=250)
    target_age: list[str] = Field(default_factory=list, max_length=6)
    brand_safety_tolerance: Tolerance = Tolerance.MEDIUM
    # Matchmaking weighs the show's female_share when a campaign targets one gender.
    target_gender: Literal["female", "male"] | None = None
    budget_usd: float | None = Field(default=None, ge=0, le=1_000_000_000)
    flight_start: date | None = None
    flight_end: date | None = None

    @field_validator("target_geo")
    @classmethod
    def _geo(cls, v: list[str]) -> list[str]:
        return [_country(c) for c in v]

    @field_validator("target_age")
    @classmethod
    def _age(cls, v: list[str]) -> list[str]:
        for band in v:
            if band not in AGE_BANDS:
                raise ValueError(f"unknown age band {band!r}; expected one of {', '.join(AGE_BANDS)}")
        return v

    @model_validator(mode="after")
    def _flight(self) -> AdvertiserFields:
        if self.flight_start and self.flight_end and self.flight_end < self.flight_start:
            raise ValueError("flight_end is before flight_start")
        return self
