"""GET /api/v1/dashboard: the sales team's cards in one read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import SettingsDep, TenantDbDep
from api.events import EventPublic
from api.imports import ImportSummary
from db.dashboard import DashboardQuery, dashboard

router = APIRouter(prefix="/api/v1/dashboard", tags=["dashboard"])


class StageTotals(BaseModel):
    """Deals in one stage."""

    stage: str
    count: int
    value_usd: float
    weighted_value_usd: float


class OpenPipeline(BaseModel):
    """Every open stage together."""

    count: int
    value_usd: float
    weighted_value_usd: float


class WinRate(BaseModel):
    """Deals closed in the window: won, lost, the rate (null with none) and days from creation to win."""

    won: int
    lost: int
    rate: float | None
    avg_days_to_close: float | None


class StalledDeal(BaseModel):
    """An open deal past its stage's stall limit."""

    id: str
    name: str
    stage: str
    days_in_stage: int
    stall_limit_days: int
    advertiser_name: str
    value_usd: float


class Stalled(BaseModel):
    """How many deals are stalled, and the longest-waiting ones."""

    count: int
    items: list[StalledDeal]


class AirDate(BaseModel):
    """A booked unit airing soon."""

    io_id: str
    ad_unit_id: str
    air_date: str
    show_name: str
    advertiser_name: str
    placement: str
    status: str


class AirDates(BaseModel):
    """Units airing today through the next 14 days."""

    count: int
    items: list[AirDate]


class Underdelivery(BaseModel):
    """An IO behind its delivery pace."""

    io_id: str
    advertiser_name: str
    status: str
    impressions_goal: int
    delivered_impressions: int
    expected_to_date: int
    delivery_pct: float
    pace_pct: float


class Underdelivering(BaseModel):
    """IOs whose aired units delivered under 90% of what they should have by now."""

    count: int
    items: list[Underdelivery]


class TopMatch(BaseModel):
    """One of the best pairs of the current ranking."""

    advertiser_id: str
    advertiser_name: str
    show_id: str
    show_name: str
    score: float


class StageMovement(BaseModel):
    """Moves into each stage per ISO week (Mondays, UTC), oldest week first."""

    weeks: list[str]
    series: dict[str, list[int]]


class Dashboard(BaseModel):
    """Every card of the dashboard."""

    as_of: datetime
    window_days: int
    pipeline: list[StageTotals]
    open_pipeline: OpenPipeline
    win_rate: WinRate
    stalled: Stalled
    upcoming_air_dates: AirDates
    underdelivering: Underdelivering
    top_matches: list[TopMatch]
    latest_imports: list[ImportSummary]
    latest_events: list[EventPublic]
    stage_movement: StageMovement


@router.get("", response_model=Dashboard, operation_id="getDashboard")
async def get_dashboard(
    db: TenantDbDep,
    settings: SettingsDep,
    window_days: Annotated[
        int, Query(ge=1, le=3650, description="Win rate and days to close over this many days")
    ] = 90,
    limit: Annotated[int, Query(ge=1, le=50, description="Rows per list card")] = 10,
) -> Any:
    """Pipeline by stage, win rate, stalled deals, air dates, under-delivery, matches, imports, events."""
    query = DashboardQuery(
        tenant_id=db.tenant_id,
        now=datetime.now(UTC),
        window_days=window_days,
        stall_days=settings.stall_days,
        list_limit=limit,
    )
    return await dashboard(tx=db.tx, q=query)
