"""Matchmaking: start or join a recalculation, read the ranked matches, set the tenant's weights."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from temporalio.service import RPCError, RPCStatusCode

from api import errors
from api.deps import RETRYABLE_RPC, SettingsDep, TemporalDep, TenantDbDep, feature_flag
from api.openapi import invalid, invalid_cursor, problem
from api.pagination import CursorParam, LimitParam, Page, decode_cursor, encode_cursor
from db.matching import (
    MatchesAfter,
    RankedMatch,
    newest_ranking,
    ranked_matches,
    rankings_before,
    set_tenant_weights,
    stored_rationale,
    tenant_weights,
)
from db.models import MatchGeneration
from domain.scoring import DEFAULT_WEIGHTS, SIGNALS
from workflows.starters import (
    RecalculationScheduleState,
    recalculation_state,
    running_on_demand_recalculation,
    start_recalculation,
)
from workflows.starters import RunningRecalculation as RunningRun

log = logging.getLogger("sponsorflow.api.matching")

_flag = [Depends(feature_flag("enable_matchmaking", "ENABLE_MATCHMAKING"))]
router = APIRouter(tags=["matchmaking"], dependencies=_flag)


class RecalculationAccepted(BaseModel):
    """The recalculation this request started or joined."""

    workflow_id: str
    run_id: str | None
    status: str


class Signals(BaseModel):
    """The six sub-scores of a match, each in [0, 1]."""

    geo: float
    demographic: float
    topic: float
    lift: float
    inventory: float
    brand_safety: float


class MatchPublic(BaseModel):
    """One ranked advertiser-show pair."""

    advertiser_id: str
    advertiser_name: str
    show_id: str
    show_name: str
    score: float
    signals: Signals
    rationale: str
    generation: int


class Weights(BaseModel):
    """How much each signal counts in the 0-100 score (relative; they need not sum to 1)."""

    model_config = ConfigDict(extra="forbid")

    geo: float = Field(default=DEFAULT_WEIGHTS["geo"], ge=0, le=100, strict=True)
    demographic: float = Field(default=DEFAULT_WEIGHTS["demographic"], ge=0, le=100, strict=True)
    topic: float = Field(default=DEFAULT_WEIGHTS["topic"], ge=0, le=100, strict=True)
    lift: float = Field(default=DEFAULT_WEIGHTS["lift"], ge=0, le=100, strict=True)
    inventory: float = Field(default=DEFAULT_WEIGHTS["inventory"], ge=0, le=100, strict=True)
    brand_safety: float = Field(default=DEFAULT_WEIGHTS["brand_safety"], ge=0, le=100, strict=True)

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if not any(getattr(self, s) for s in SIGNALS):
            raise ValueError("at least one weight must be above 0")
        return self


async def _running_recalculation(temporal: Any, tenant: str) -> RecalculationAccepted | None:
    """The on-demand run of this tenant if it is running (a start that landed unanswered)."""
    try:
        desc = await asyncio.wait_for(running_on_demand_recalculation(temporal, tenant), timeout=5.0)
    except (RPCError, TimeoutError):
        return None
    if desc is None:
        return None
    return RecalculationAccepted(workflow_id=desc.id, run_id=desc.run_id, status="running")


@router.post(
    "/api/match/recalculate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RecalculationAccepted,
    operation_id="startRecalculation",
    responses={
        503: problem(
            "Temporal is unreachable or refused: no recalculation was started; retry",
            "Temporal is unreachable; no recalculation was started, retry",
            code="unavailable",
        )
    },
)
async def recalculate(db: TenantDbDep, temporal: TemporalDep, settings: SettingsDep) -> RecalculationAccepted:
    """Starts this tenant's recalculation, or joins the one already running (never two at once).

    Starting is idempotent (USE_EXISTING on one id), so an unanswered start is simply sent again
    within the update budget; before a 503 the run is looked up, so a start that did land after
    all is answered 202 instead of "retry".
    """
    tenant = str(db.tenant_id)
    deadline = time.monotonic() + settings.update_budget_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            handle = await asyncio.wait_for(
                start_recalculation(temporal, tenant, settings.temporal_task_queue, "manual"),
                timeout=max(0.1, min(5.0, deadline - time.monotonic())),
            )
            desc = await handle.describe()
            break
        except (RPCError, TimeoutError) as exc:
            if isinstance(exc, RPCError) and exc.status not in RETRYABLE_RPC | {
                RPCStatusCode.DEADLINE_EXCEEDED
            }:
                log.error("could not start the match recalculation of %s: %s", tenant, exc)
                raise errors.unavailable("Temporal refused the recalculation; retry") from None
            if time.monotonic() >= deadline:
                landed = await _running_recalculation(temporal, tenant)
                if landed is not None:
                    return landed
                log.error("could not start the match recalculation of %s: %s", tenant, exc)
                raise errors.unavailable(
                    "Temporal is unreachable; no recalculation was started, retry", retry_after=True
                ) from None
            await asyncio.sleep(min(1.0, 0.1 * 2**attempt))
    return RecalculationAccepted(
        workflow_id=handle.id,
        run_id=desc.run_id,
        status=desc.status.name.lower() if desc.status else "running",
    )


class RunningRecalculation(BaseModel):
    """A recalculation of this tenant going on now."""

    workflow_id: str
    run_id: str | None
    started_by: str  # "schedule" or "on demand" (POST or an import)
    started_at: datetime | None


class RecalculationSchedule(BaseModel):
    """The tenant's recalculation schedule (`match-recalc/{tenant}`)."""

    schedule_id: str
    every_hours: float | None
    paused: bool
    next_run_at: datetime | None


class RankingPublic(BaseModel):
    """One ranking a recalculation wrote (a row of `match_generations`)."""

    generation: int
    computed_on: date
    computed_at: datetime
    trigger: str
    pairs_scored: int
    matches_written: int
    weights: dict[str, float]


class RecalculationStatus(BaseModel):
    """What is running, when the schedule runs next, and which ranking GET /matches reads."""

    running: list[RunningRecalculation]
    schedule: RecalculationSchedule | None
    current: RankingPublic | None


def _running(run: RunningRun) -> RunningRecalculation:
    return RunningRecalculation(
        workflow_id=run.workflow_id, run_id=run.run_id, started_by=run.started_by, started_at=run.started_at
    )


def _schedule(sched: RecalculationScheduleState) -> RecalculationSchedule:
    return RecalculationSchedule(
        schedule_id=sched.schedule_id,
        every_hours=sched.every.total_seconds() / 3600 if sched.every is not None else None,
        paused=sched.paused,
        next_run_at=sched.next_run_at,
    )


def _ranking(g: MatchGeneration) -> RankingPublic:
    return RankingPublic(
        generation=g.generation,
        computed_on=g.computed_on,
        computed_at=g.created_at,
        trigger=g.trigger,
        pairs_scored=g.pairs_scored,
        matches_written=g.matches_written,
        weights=dict(g.weights or {}),
    )


@router.get(
    "/api/match/recalculate",
    response_model=RecalculationStatus,
    operation_id="getRecalculationStatus",
    responses={
        503: problem("Temporal is unreachable; retry", "Temporal is unreachable; retry", code="unavailable")
    },
)
async def recalculation_status(db: TenantDbDep, temporal: TemporalDep) -> RecalculationStatus:
    """This tenant's recalculations: the ones running now, its schedule, the current ranking."""
    try:
        running, schedule = await recalculation_state(temporal, str(db.tenant_id))
    except RPCError as exc:
        log.error("could not read the match recalculation of %s: %s", db.tenant_id, exc)
        raise errors.unavailable("Temporal is unreachable; retry") from None
    async with db.tx() as session:
        newest = await newest_ranking(session=session)
    return RecalculationStatus(
        running=[_running(r) for r in running],
        schedule=_schedule(schedule) if schedule is not None else None,
        current=_ranking(newest) if newest is not None else None,
    )


@router.get(
    "/api/v1/match/recalculations",
    response_model=Page[RankingPublic],
    operation_id="listRankings",
    responses={422: invalid_cursor()},
)
async def list_rankings(
    db: TenantDbDep, limit: LimitParam = 50, cursor: CursorParam = None
) -> Page[RankingPublic]:
    """Every ranking this tenant's recalculations wrote, newest first: when, why, how much."""
    after = decode_cursor(cursor, ("g",))
    try:
        before = None if after is None else int(after["g"])
    except (TypeError, ValueError):
        raise errors.malformed_cursor() from None
    async with db.tx() as session:
        rows = await rankings_before(session=session, before=before, limit=limit)
    next_cursor = encode_cursor({"g": rows[limit - 1].generation}) if len(rows) > limit else None
    return Page(items=[_ranking(g) for g in rows[:limit]], next_cursor=next_cursor)


@router.get(
    "/api/v1/matches",
    response_model=Page[MatchPublic],
    operation_id="listMatches",
    responses={422: invalid_cursor()},
)
async def list_matches(
    db: TenantDbDep,
    advertiser_id: Annotated[uuid.UUID | None, Query(description="only this advertiser's best shows")] = None,
    show_id: Annotated[uuid.UUID | None, Query(description="only this show's best advertisers")] = None,
    min_score: Annotated[float, Query(ge=0, le=100)] = 0,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
) -> Page[MatchPublic]:
    """Ranked matches of the current ranking, best first."""
    after = _matches_after(cursor)
    async with db.tx() as session:
        rows = await ranked_matches(
            session=session,
            tenant_id=db.tenant_id,
            after=after,
            advertiser_id=advertiser_id,
            show_id=show_id,
            min_score=min_score,
            limit=limit,
        )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor({"g": last.generation, "s": float(last.score), "id": last.id})
    return Page(items=[_match(r) for r in rows[:limit]], next_cursor=next_cursor)


def _matches_after(cursor: str | None) -> MatchesAfter | None:
    after = decode_cursor(cursor, ("g", "s", "id"))
    if after is None:
        return None
    try:
        return MatchesAfter(generation=int(after["g"]), score=float(after["s"]), match_id=int(after["id"]))
    except (TypeError, ValueError):
        raise errors.malformed_cursor() from None


def _match(row: RankedMatch) -> MatchPublic:
    m, computed_on, weights, a, s = row
    return MatchPublic(
        advertiser_id=str(m.advertiser_id),
        advertiser_name=a.name,
        show_id=str(m.show_id),
        show_name=s.name,
        score=float(m.score),
        signals=Signals(**{k: round(float(getattr(m, k)), 4) for k in SIGNALS}),
        # Worded now, for this page only, from the facts the recalculation kept.
        rationale=stored_rationale(show=s, advertiser=a, match=m, computed_on=computed_on, weights=weights),
        generation=m.generation,
    )


@router.get("/api/v1/match/weights", response_model=Weights, operation_id="getMatchWeights")
async def read_weights(db: TenantDbDep) -> Weights:
    """This tenant's signal weights (the documented defaults unless changed)."""
    async with db.tx() as session:
        weights = await tenant_weights(session=session, tenant_id=db.tenant_id)
    return Weights(**weights)


@router.put(
    "/api/v1/match/weights",
    response_model=Weights,
    operation_id="setMatchWeights",
    responses={
        422: invalid(
            "a weight out of 0-100, an unknown signal, or every weight 0",
            [
                {
                    "loc": ["body"],
                    "msg": "Value error, at least one weight must be above 0",
                    "type": "value_error",
                }
            ],
        )
    },
)
async def write_weights(body: Weights, db: TenantDbDep) -> Weights:
    """Sets this tenant's signal weights; the next recalculation uses them."""
    async with db.tx() as session:
        await set_tenant_weights(session=session, tenant_id=db.tenant_id, weights=body.model_dump())
    return body
