"""The deal API's schemas (DealCreate, StageChange, DealPublic, DealSummary) and their builders."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.bodies import JsonBody
from db.deals import DealRow, HistoryRow
from db.models import Deal
from domain.stages import Stage, weighted_value
from settings import Settings
from workflows.starters import deal_workflow_id

Reason = Annotated[str, Field(min_length=1, max_length=2000)]


class DealCreate(JsonBody):
    """A new deal for an advertiser, optionally on one show."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "advertiser_id": "c0ffee00-0000-4000-8000-000000000000",
                    "show_id": "5eed0000-0000-4000-8000-000000000000",
                    "name": "Q3 host-read flight",
                    "value_usd": 12000,
                    "expected_close": "2031-06-30",
                }
            ]
        },
    )

    advertiser_id: uuid.UUID
    show_id: uuid.UUID | None = None
    name: str = Field(min_length=1, max_length=300)
    value_usd: Decimal = Field(ge=0, le=Decimal("999999999999.99"), decimal_places=2)
    stage: Stage = Stage.LEAD
    expected_close: date | None = None
    lost_reason: Reason | None = None
    owner_email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    external_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _lost_needs_reason(self) -> DealCreate:
        if self.stage is Stage.LOST and not self.lost_reason:
            raise ValueError("lost_reason is required when a deal is created as lost")
        return self


class StageChange(JsonBody):
    """A requested stage move; `reason` is required for `lost` and becomes the lost_reason."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [{"stage": "proposal"}, {"stage": "lost", "reason": "budget moved to Q4"}]
        },
    )

    stage: Stage
    reason: Reason | None = None

    @field_validator("reason")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("reason must not contain NUL characters")
        return v

    @model_validator(mode="after")
    def _lost_needs_reason(self) -> StageChange:
        if self.stage is Stage.LOST and not self.reason:
            raise ValueError("reason is required to move a deal to lost")
        return self


class HistoryEntry(BaseModel):
    """One move of the deal's history (from is null for its creation)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: Stage | None = Field(default=None, alias="from")
    to: Stage
    at: datetime
    reason: str | None = None


class DealPublic(BaseModel):
    """A deal as clients see it."""

    id: str
    name: str
    external_id: str | None
    advertiser_id: str
    advertiser_name: str
    show_id: str | None
    show_name: str | None
    stage: Stage
    probability: int
    value_usd: float
    weighted_value_usd: float
    currency: str
    stage_changed_at: datetime
    days_in_stage: int
    lost_reason: str | None
    expected_close: date | None
    owner_email: str | None
    created_at: datetime
    workflow_id: str
    temporal_ui_url: str
    history: list[HistoryEntry] = Field(default_factory=list)


class DealSummary(BaseModel):
    """A deal in a list (no history)."""

    id: str
    external_id: str | None
    name: str
    advertiser_id: str
    show_id: str | None
    stage: Stage
    probability: int
    value_usd: float
    weighted_value_usd: float
    stage_changed_at: datetime
    days_in_stage: int
    lost_reason: str | None


def days_in_stage(c: Deal) -> int:
    """Whole days the deal has been in its current stage."""
    return max(0, (datetime.now(UTC) - c.stage_changed_at).days)


def entries(history: list[HistoryRow]) -> list[HistoryEntry]:
    """The stored history as clients see it."""
    return [
        HistoryEntry(
            from_=Stage(h.from_stage) if h.from_stage else None,
            to=Stage(h.to_stage),
            at=h.changed_at,
            reason=h.reason,
        )
        for h in history
    ]


def public_deal(row: DealRow, history: list[HistoryEntry], settings: Settings) -> DealPublic:
    """A deal as clients see it, from its row and history."""
    c = row.deal
    wid = deal_workflow_id(str(c.tenant_id), str(c.id))
    return DealPublic(
        id=str(c.id),
        name=c.name,
        external_id=c.external_id,
        advertiser_id=str(c.advertiser_id),
        advertiser_name=row.advertiser_name,
        show_id=str(c.show_id) if c.show_id else None,
        show_name=row.show_name,
        stage=Stage(c.stage),
        probability=c.probability,
        value_usd=float(c.value_usd),
        weighted_value_usd=weighted_value(float(c.value_usd), c.probability),
        currency=c.currency,
        stage_changed_at=c.stage_changed_at,
        days_in_stage=days_in_stage(c),
        lost_reason=c.lost_reason,
        expected_close=c.expected_close,
        owner_email=c.owner_email,
        created_at=c.created_at,
        workflow_id=wid,
        temporal_ui_url=settings.workflow_url(wid),
        history=history,
    )


def summary(c: Deal) -> DealSummary:
    """A deal in a list."""
    return DealSummary(
        id=str(c.id),
        external_id=c.external_id,
        name=c.name,
        advertiser_id=str(c.advertiser_id),
        show_id=str(c.show_id) if c.show_id else None,
        stage=Stage(c.stage),
        probability=c.probability,
        value_usd=float(c.value_usd),
        weighted_value_usd=weighted_value(float(c.value_usd), c.probability),
        stage_changed_at=c.stage_changed_at,
        days_in_stage=days_in_stage(c),
        lost_reason=c.lost_reason,
    )
