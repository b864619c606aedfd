"""Deals: create, read, list, and move through the pipeline via DealWorkflow's update."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api import errors
from api.bodies import JsonBody
from api.deps import (
    ATTEMPT_TIMEOUT_S,
    DATABASE_UNAVAILABLE,
    RETRYABLE_RPC,
    SettingsDep,
    TemporalDep,
    TenantDbDep,
    feature_flag,
    fence_off,
    parse_id,
    read_back,
)
from api.openapi import (
    ETAG_HEADER,
    REPLAYED_HEADER,
    invalid,
    invalid_cursor,
    key_reused,
    not_applied,
    not_found,
    outcome_unknown,
    precondition_failed,
    problem,
    transition_conflict,
)
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from api.timing import ServerTiming
from db.deals import DealRow, HistoryRow, deal_seed, deals_query, get_deal, get_history, insert_deal
from db.fences import begin_keyed_request, fingerprint, new_request_id
from db.models import Advertiser, Campaign, Show
from domain.deals import ChangeStageInput, ChangeStageResult, DealWorkflowInput
from domain.stages import (
    Stage,
    TransitionError,
    check_transition,
    is_open,
    probability,
    weighted_value,
)
from settings import Settings
from workflows.deals import (
    FORBIDDEN_TRANSITION,
    INVALID_REQUEST,
    PRECONDITION_FAILED,
    REQUEST_ABANDONED,
    DealWorkflow,
)
from workflows.starters import deal_start_options, deal_workflow_id

log = logging.getLogger("sponsorflow.api.deals")

router = APIRouter(
    prefix="/api/v1/deals",
    tags=["deals"],
    dependencies=[Depends(feature_flag("enable_deal_pipeline", "ENABLE_DEAL_PIPELINE"))],
)

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


class SeedCache:
    """Recently seen deals: their workflow seed and the last answer this process gave.

    A seed holds what a run starts from; everything that changes with moves is re-read by the
    run itself, so a stale seed costs at most a run that learns the deal is closed. A recent
    answer lets the next move skip the database altogether when the workflow confirms that its
    move started from the stage entry that answer showed (otherwise the row is read).
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._max = max_entries
        self._seeds: dict[tuple[uuid.UUID, uuid.UUID], DealWorkflowInput] = {}
        self._answers: dict[tuple[uuid.UUID, uuid.UUID], tuple[DealPublic, float]] = {}

    def get(self, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> DealWorkflowInput | None:
        """The cached seed of a deal of this tenant, if any."""
        return self._seeds.get((tenant_id, campaign_id))

    def recent(self, tenant_id: uuid.UUID, campaign_id: uuid.UUID, max_age: float) -> DealPublic | None:
        """The last answer about this deal, if younger than max_age seconds."""
        hit = self._answers.get((tenant_id, campaign_id))
        if hit is None or time.monotonic() - hit[1] > max_age:
            return None
        return hit[0]

    def put(
        self,
        tenant_id: uuid.UUID,
        campaign_id: uuid.UUID,
        seed: DealWorkflowInput,
        answer: DealPublic | None = None,
    ) -> None:
        """Remembers a deal's seed, and the answer just given (the cache empties itself when full)."""
        if len(self._seeds) >= self._max:
            self._seeds.clear()
            self._answers.clear()
        key = (tenant_id, campaign_id)
        self._seeds[key] = seed
        if answer is not None and len(answer.history) <= _MAX_CACHED_HISTORY:
            self._answers[key] = (answer, time.monotonic())
        else:
            self._answers.pop(key, None)


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


def _days_in_stage(c: Campaign) -> int:
    return max(0, (datetime.now(UTC) - c.stage_changed_at).days)


def _json(deal: DealPublic, timing: ServerTiming, *, replayed: bool = False) -> Response:
    # The model is built here from trusted rows; serialising it directly spares FastAPI's
    # second validation pass on the hot path (the route keeps response_model for the docs).
    headers = {**timing.headers(), "ETag": etag(deal.stage, deal.stage_changed_at)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(deal.model_dump_json(by_alias=True), media_type="application/json", headers=headers)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def etag(stage: Stage, entered_at: datetime) -> str:
    """The deal's current stage entry as an entity tag: `"<stage>.<microseconds since epoch>"`."""
    return f'"{stage.value}.{(entered_at - _EPOCH) // timedelta(microseconds=1)}"'


@dataclass(frozen=True)
class Precondition:
    """What If-Match asked for: any entry (`*`), one entry, or something no entry matches."""

    stage: Stage | None = None
    entered_at: datetime | None = None
    unmatchable: bool = False

    def holds(self, stage: Stage, entered_at: datetime) -> bool:
        """Whether the deal's current entry satisfies it."""
        if self.unmatchable:
            return False
        return self.stage is None or (self.stage, self.entered_at) == (stage, entered_at)


def parse_if_match(value: str | None) -> Precondition | None:
    """Parses If-Match (one of our ETags, a list of them, or `*`); None when absent or `*`."""
    if value is None or value.strip() == "*":
        return None
    tags = [t.strip().removeprefix("W/") for t in value.split(",") if t.strip()]
    if len(tags) != 1:
        # Several tags: only one can be the current entry; a list is honoured as its first element
        # would be ambiguous, so it is refused as unmatchable unless it is exactly one tag.
        return Precondition(unmatchable=True)
    tag = tags[0].strip('"')
    stage_name, _, micros = tag.rpartition(".")
    try:
        return Precondition(stage=Stage(stage_name), entered_at=_EPOCH + timedelta(microseconds=int(micros)))
    except (ValueError, OverflowError):
        return Precondition(unmatchable=True)


def _precondition_failed(stage: Stage, entered_at: datetime) -> HTTPException:
    return errors.stage_moved(stage, etag(stage, entered_at))


def _entries(history: list[HistoryRow]) -> list[HistoryEntry]:
    return [
        HistoryEntry(
            from_=Stage(h.from_stage) if h.from_stage else None,
            to=Stage(h.to_stage),
            at=h.changed_at,
            reason=h.reason,
        )
        for h in history
    ]


def _public(row: DealRow, history: list[HistoryEntry], settings: Settings) -> DealPublic:
    c = row.campaign
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
        days_in_stage=_days_in_stage(c),
        lost_reason=c.lost_reason,
        expected_close=c.expected_close,
        owner_email=c.owner_email,
        created_at=c.created_at,
        workflow_id=wid,
        temporal_ui_url=settings.workflow_url(wid),
        history=history,
    )


def _summary(c: Campaign) -> DealSummary:
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
        days_in_stage=_days_in_stage(c),
        lost_reason=c.lost_reason,
    )


def workflow_input(row: DealRow, settings: Settings) -> DealWorkflowInput:
    """Seeds a DealWorkflow from the deal's row (also for deals that only exist in Postgres)."""
    return deal_seed(row, stall_days=settings.stall_days, moves_per_run=settings.deal_moves_per_run)


def start_options(inp: DealWorkflowInput, settings: Settings) -> dict[str, Any]:
    """Workflow start options shared by create and update-with-start."""
    return deal_start_options(inp, settings.temporal_task_queue)


async def start_deal_workflow(client: Client, row: DealRow, settings: Settings) -> None:
    """Starts the deal's workflow, or finds it already running."""
    inp = workflow_input(row, settings)
    await client.start_workflow(DealWorkflow.run, inp, **start_options(inp, settings))


# How long a PATCH may build on the previous answer instead of reading the row: a deal's other
# fields (name, value) can change by import, so this bounds how stale they can look.
_ANSWER_TTL_S = 5.0
_MAX_CACHED_HISTORY = 200


def _update_failed(
    exc: WorkflowUpdateFailedError, current: Stage, target: Stage, campaign_id: str
) -> HTTPException:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == FORBIDDEN_TRANSITION:
        details = cause.details[0] if cause.details else {}
        allowed = [Stage(s) for s in details.get("allowed", [])]
        now_stage = Stage(details.get("current", current.value))
        return errors.transition_refused(TransitionError(now_stage, target, allowed, cause.message))
    if isinstance(cause, ApplicationError) and cause.type == INVALID_REQUEST:
        return errors.unprocessable(["body"], cause.message)
    if isinstance(cause, ApplicationError) and cause.type == PRECONDITION_FAILED:
        details = cause.details[0] if cause.details else {}
        return _precondition_failed(
            Stage(details.get("current", current.value)),
            datetime.fromisoformat(details["stage_entered_at"]),
        )
    if isinstance(cause, ApplicationError) and cause.type == REQUEST_ABANDONED:
        return _not_applied("the stage change was superseded before it was written")
    log.error("stage update of deal %s failed: %s", campaign_id, exc)
    return errors.unavailable("the stage change could not be recorded; retry")


def _workflow_stage(exc: WorkflowUpdateFailedError) -> Stage | None:
    """The stage a forbidden-move rejection was judged from (None for any other failure)."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == FORBIDDEN_TRANSITION and cause.details:
        current = cause.details[0].get("current")
        return Stage(current) if current else None
    return None


def _not_applied(why: str) -> HTTPException:
    return errors.not_applied(f"{why}: it was not applied, and it never will be; retry")


def _not_found(campaign_id: str) -> HTTPException:
    return errors.not_found("deal", campaign_id)


def _align(row: DealRow, history: list[HistoryRow]) -> None:
    """Makes the row's stage agree with its history's last entry.

    Row and history are two statements under READ COMMITTED; a move committed between them
    shows in the history only. The history is then the later truth, and a move changes nothing
    of the row but its stage fields.
    """
    if not history:
        return
    last, c = history[-1], row.campaign
    if (last.to_stage, last.changed_at) != (c.stage, c.stage_changed_at):
        c.stage, c.stage_changed_at = last.to_stage, last.changed_at
        c.probability = probability(Stage(last.to_stage))
        c.lost_reason = last.reason if last.to_stage == Stage.LOST.value else None


async def _read(db: TenantDbDep, cid: uuid.UUID) -> tuple[DealRow | None, list[HistoryRow]]:
    async with db.tx() as session:
        row = await get_deal(session=session, campaign_id=cid)
        if row is None:
            return None, []
        history = await get_history(session=session, campaign_id=cid)
    _align(row, history)
    return row, history


async def _load(db: TenantDbDep, campaign_id: str, settings: Settings) -> DealPublic:
    row, history = await _read(db, parse_id(campaign_id, "deal"))
    if row is None:
        raise _not_found(campaign_id)
    return _public(row, _entries(history), settings)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DealPublic,
    operation_id="createDeal",
    responses={
        409: problem(
            "the external_id is taken in this tenant",
            "external_id 'crm-1042' already exists in this tenant",
            code="duplicate_external_id",
        ),
        422: invalid(
            "invalid fields, an advertiser or show not in this tenant, or a lost deal without lost_reason",
            [
                {
                    "loc": ["body", "advertiser_id"],
                    "msg": "advertiser c0ffee00-0000-4000-8000-000000000000 not found in this tenant",
                    "type": "not_found",
                }
            ],
        ),
    },
)
async def create_deal(
    body: DealCreate,
    db: TenantDbDep,
    client: TemporalDep,
    settings: SettingsDep,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="a retried POST with the same key answers the deal it created, writing nothing",
        ),
    ] = None,
) -> DealPublic:
    """Creates a deal and starts its DealWorkflow."""
    if idempotency_key and (existing := await _by_idempotency_key(db, idempotency_key)) is not None:
        return await _load(db, str(existing), settings)
    try:
        row = await _insert(body, db, idempotency_key)
    except IntegrityError as exc:
        if idempotency_key and "uq_campaigns_idempotency" in str(exc.orig):
            existing = await _by_idempotency_key(db, idempotency_key)  # a concurrent twin won
            if existing is not None:
                return await _load(db, str(existing), settings)
        raise errors.duplicate(body.external_id) from None
    seeds: SeedCache = request.app.state.deal_seeds
    seeds.put(db.tenant_id, row.campaign.id, workflow_input(row, settings))
    if is_open(body.stage):
        try:
            await start_deal_workflow(client, row, settings)
        except (RPCError, RuntimeError) as exc:
            # RuntimeError: the lazy client could not connect. The row is the record; the first
            # stage PATCH starts the workflow lazily
            # (update-with-start), so the deal is not lost if Temporal blips here.
            log.warning("deal %s saved but its workflow did not start: %s", row.campaign.id, exc)
    return await _load(db, str(row.campaign.id), settings)


async def _by_idempotency_key(db: TenantDbDep, key: str) -> uuid.UUID | None:
    async with db.tx() as session:
        found: uuid.UUID | None = await session.scalar(
            select(Campaign.id).where(Campaign.idempotency_key == key)
        )
    return found


async def _insert(body: DealCreate, db: TenantDbDep, idempotency_key: str | None = None) -> DealRow:
    async with db.tx() as session:
        if await session.get(Advertiser, body.advertiser_id) is None:
            raise errors.unprocessable(
                ["body", "advertiser_id"],
                f"advertiser {body.advertiser_id} not found in this tenant",
                "not_found",
            )
        if body.show_id is not None and await session.get(Show, body.show_id) is None:
            raise errors.unprocessable(
                ["body", "show_id"], f"show {body.show_id} not found in this tenant", "not_found"
            )
        campaign = await insert_deal(
            session=session,
            tenant_id=db.tenant_id,
            advertiser_id=body.advertiser_id,
            show_id=body.show_id,
            name=body.name,
            value_usd=body.value_usd,
            stage=body.stage,
            at=datetime.now(UTC),
            expected_close=body.expected_close,
            lost_reason=body.lost_reason,
            owner_email=body.owner_email,
            external_id=body.external_id,
            idempotency_key=idempotency_key,
        )
        row = await get_deal(session=session, campaign_id=campaign.id)
        assert row is not None
    return row


@router.get("", response_model=Page[DealSummary], operation_id="listDeals", responses={422: invalid_cursor()})
async def get_deals(
    db: TenantDbDep,
    stage: Stage | None = None,
    advertiser_id: Annotated[uuid.UUID | None, Query()] = None,
    show_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
) -> Page[DealSummary]:
    """Lists deals newest first, filtered by stage, advertiser or show."""
    query = deals_query(stage=stage, advertiser_id=advertiser_id, show_id=show_id)
    stmt = newest_first(query, Campaign, cursor, limit)
    async with db.tx() as session:
        rows = list((await session.scalars(stmt)).all())
    next_cursor = newest_next_cursor(rows, limit)
    return Page(items=[_summary(c) for c in rows[:limit]], next_cursor=next_cursor)


@router.get(
    "/{campaign_id}",
    response_model=DealPublic,
    operation_id="getDeal",
    responses={200: {"headers": ETAG_HEADER}, 404: not_found("deal")},
)
async def read_deal(
    campaign_id: str, db: TenantDbDep, settings: SettingsDep, response: Response
) -> DealPublic:
    """Returns a deal with its stage, probability, weighted value and full history.

    The ETag header names the deal's current stage entry; send it back as If-Match on a stage
    change to move the deal only if nobody moved it meanwhile.
    """
    deal = await _load(db, campaign_id, settings)
    response.headers["ETag"] = etag(deal.stage, deal.stage_changed_at)
    return deal


@router.patch(
    "/{campaign_id}/stage",
    response_model=DealPublic,
    operation_id="changeDealStage",
    responses={
        200: {
            "description": "applied and in the deal's history (or a no-op: the deal was already there)",
            "headers": {**ETAG_HEADER, **REPLAYED_HEADER},
        },
        404: not_found("deal"),
        409: transition_conflict(),
        412: precondition_failed(),
        422: invalid(
            "unknown stage, lost without a reason, or an Idempotency-Key sent again with another move",
            [
                {
                    "loc": ["body"],
                    "msg": "Value error, reason is required to move a deal to lost",
                    "type": "value_error",
                }
            ],
            key_reused("stage change of this deal"),
        ),
        503: not_applied("the stage change"),
        504: outcome_unknown("the stage change"),
    },
)
async def change_stage(
    campaign_id: str,
    body: StageChange,
    db: TenantDbDep,
    client: TemporalDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="a retried PATCH with the same key answers what the first one did",
        ),
    ] = None,
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description="the deal's ETag (its current stage entry): move only if nobody moved it since",
        ),
    ] = None,
) -> Response:
    """Moves a deal: an update with a validator, sent with update-with-start, fenced by a request id."""
    timing = ServerTiming(response)
    cid = parse_id(campaign_id, "deal")
    precondition = parse_if_match(if_match)
    deadline = time.monotonic() + settings.update_budget_seconds
    if idempotency_key is not None:
        request_id = await _begin_keyed(db, client, settings, cid, body, idempotency_key, deadline)
        if request_id is None:
            # An earlier request with this key was applied: answer what it did.
            replay = await read_back(lambda: _load(db, campaign_id, settings), what="the stage change")
            return _json(replay, timing, replayed=True)
    else:
        request_id = new_request_id()
    move = ChangeStageInput(
        stage=body.stage,
        reason=body.reason,
        request_id=request_id,
        expected_stage=precondition.stage if precondition else None,
        expected_entered_at=precondition.entered_at if precondition else None,
    )
    seeds: SeedCache = request.app.state.deal_seeds
    seed = seeds.get(db.tenant_id, cid)
    # Once the update has been sent it may land: from then on nothing but the fence may say 503.
    sent = False
    if seed is not None and is_open(seed.stage) and not (precondition and precondition.unmatchable):
        sent = True
        recent = seeds.recent(db.tenant_id, cid, _ANSWER_TTL_S)
        if recent is not None:
            # Just answered about this deal: if the workflow's move starts where that answer
            # left it, the new answer is that one plus the move, no database round trip.
            answered = await _move_from_recent(
                db, client, settings, move, seed, recent, cid, timing, deadline
            )
        else:
            # Seen before: the update goes out at once and the read runs alongside it.
            answered = await _move_with_known_seed(db, client, settings, move, seed, cid, timing, deadline)
        if answered is not None:
            seeds.put(db.tenant_id, cid, _reseed(seed, answered), answered)
            return _json(answered, timing)
    attempt = 0
    nudged = False
    while True:
        attempt += 1
        try:
            with timing.measure("read"):
                row, history = await _read(db, cid)
        except DATABASE_UNAVAILABLE:
            if not sent:
                raise  # nothing sent: the generic 503 is true
            if time.monotonic() >= deadline:
                answered = await _give_up(db, client, settings, cid, request_id, "the database is away")
                return _json(answered, timing)
            await asyncio.sleep(0.2)
            continue
        if row is None:
            raise _not_found(campaign_id)
        seed = workflow_input(row, settings)
        seeds.put(db.tenant_id, cid, seed)
        current = Stage(row.campaign.stage)
        if precondition is not None and not precondition.holds(current, row.campaign.stage_changed_at):
            refusal = _precondition_failed(current, row.campaign.stage_changed_at)
            return _json(
                await _refuse_unless_applied(db, client, settings, cid, request_id, sent, refusal), timing
            )
        if not is_open(current) and not (current is Stage.LOST and body.stage is Stage.LEAD):
            # A closed deal has no running workflow; its rules need no Temporal round trip
            # (a no-op answers 200, anything but reopening a lost deal is a 409).
            try:
                check_transition(current, body.stage, body.reason)
            except TransitionError as exc:
                refused = await _refuse_unless_applied(
                    db, client, settings, cid, request_id, sent, errors.transition_refused(exc)
                )
                return _json(refused, timing)
            return _json(_public(row, _entries(history), settings), timing)
        try:
            sent = True
            with timing.measure("temporal"):
                result = await _send(client, move, seed, settings, deadline)
            break
        except (TimeoutError, RPCTimeoutOrCancelledError):
            log.warning("stage update of deal %s timed out (attempt %d); retrying", campaign_id, attempt)
        except WorkflowUpdateFailedError as exc:
            seen = _workflow_stage(exc)
            if seen is not None and seen is not current and not nudged:
                # The workflow judged the move from a stage the row has left (a write it never
                # learned of): let it adopt the row, then ask again.
                nudged = True
                await _nudge(client, db.tenant_id, cid)
                continue
            failure = _update_failed(exc, current, body.stage, campaign_id)
            if failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE and not _abandoned(exc):
                # The write itself failed (its activity ran out of attempts): its last attempt may
                # still have committed, so only the fence can say which.
                answered = await _give_up(db, client, settings, cid, request_id, "the write failed")
                return _json(answered, timing)
            if failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
                raise failure from None
            refused = await _refuse_unless_applied(db, client, settings, cid, request_id, sent, failure)
            return _json(refused, timing)
        except RPCError as exc:
            # The server caps in-flight updates per workflow (10 by default) and aborts the
            # updates in flight when a deal closes; both are worth another try, re-reading
            # the row so a deal that closed meanwhile gets its closed-deal answer.
            if exc.status not in RETRYABLE_RPC:
                log.error("Temporal refused the update of deal %s: %s", campaign_id, exc)
                refused = await _give_up(db, client, settings, cid, request_id, "Temporal refused it")
                return _json(refused, timing)
            await asyncio.sleep(min(0.5, 0.02 * 2 ** min(attempt, 5)) * (0.5 + random.random()))
        if time.monotonic() >= deadline:
            answered = await _give_up(
                db, client, settings, cid, request_id, "the stage change was not confirmed in time"
            )
            seeds.put(db.tenant_id, cid, _reseed(seed, answered), answered)
            return _json(answered, timing)
    answered = _answer(row, history, result, settings)
    if answered is None:
        # Other moves interleaved: answer with one consistent snapshot of the row and its history.
        with timing.measure("reread"):
            answered = await read_back(lambda: _load(db, campaign_id, settings), what="the stage change")
    seeds.put(db.tenant_id, cid, _reseed(seed, answered), answered)
    return _json(answered, timing)


_SCOPE = "deal-stage"


def _abandoned(exc: WorkflowUpdateFailedError) -> bool:
    cause = exc.cause
    return isinstance(cause, ApplicationError) and cause.type == REQUEST_ABANDONED


async def _refuse_unless_applied(
    db: TenantDbDep,
    client: Client,
    settings: Settings,
    cid: uuid.UUID,
    request_id: str,
    sent: bool,
    refusal: HTTPException,
) -> DealPublic:
    """Refuses the request, unless an earlier attempt of it, sent before, was applied after all.

    A refusal judged after an unanswered attempt may be about the deal that attempt moved (its
    write committed, its answer was lost): the fence says whether it was applied (then the answer
    is 200) and, if not, fences it off so it cannot land after this refusal.
    """
    if not sent:
        raise refusal
    outcome = await fence_off(
        db, request_id=request_id, entity_type="deal", entity_id=str(cid), what="the stage change"
    )
    if outcome == "abandoned":
        raise refusal
    await _nudge(client, db.tenant_id, cid)
    return await read_back(lambda: _load(db, str(cid), settings), what="the stage change")


async def _begin_keyed(
    db: TenantDbDep,
    client: Client,
    settings: Settings,
    cid: uuid.UUID,
    body: StageChange,
    key: str,
    deadline: float,
) -> str | None:
    """Registers this attempt under its Idempotency-Key; None when an earlier one was applied.

    An earlier attempt still pending (its API gave up, died, or is still waiting) is fenced off
    first: it can no longer land, so this attempt decides alone.
    """
    now = datetime.now(UTC)
    async with db.tx() as session:
        keyed = await begin_keyed_request(
            session=session,
            tenant_id=db.tenant_id,
            idempotency_key=f"{_SCOPE}:{cid}:{key}",
            fingerprint=fingerprint({"stage": body.stage.value, "reason": body.reason}),
            entity_type="deal",
            entity_id=str(cid),
            expires_at=now + timedelta(seconds=settings.update_budget_seconds),
            now=now,
        )
    if keyed.status == "mismatch":
        raise errors.key_reused("stage change of this deal")
    if keyed.status == "replay":
        await _nudge(client, db.tenant_id, cid)
        return None
    assert keyed.request_id is not None
    return keyed.request_id


async def _give_up(
    db: TenantDbDep, client: Client, settings: Settings, cid: uuid.UUID, request_id: str, why: str
) -> DealPublic:
    """Fences the request off (503: never applied), or finds that its write won (200)."""
    outcome = await fence_off(
        db, request_id=request_id, entity_type="deal", entity_id=str(cid), what="the stage change"
    )
    if outcome == "abandoned":
        raise _not_applied(why)
    # The write landed, but the workflow never told us: it may have been written inside a
    # workflow task the server lost. The workflow adopts the row on this nudge (and the
    # maintenance workflow would find it anyway).
    await _nudge(client, db.tenant_id, cid)
    return await read_back(lambda: _load(db, str(cid), settings), what="the stage change")


async def _nudge(client: Client, tenant_id: uuid.UUID, cid: uuid.UUID) -> None:
    """Asks the deal's workflow to re-read its row (best effort: a signal, bounded)."""
    handle = client.get_workflow_handle(deal_workflow_id(str(tenant_id), str(cid)))
    try:
        await asyncio.wait_for(handle.signal(DealWorkflow.resync), timeout=2.0)
    except (TimeoutError, RPCError, RPCTimeoutOrCancelledError, RuntimeError) as exc:
        log.info("could not ask deal %s to resync: %s", cid, exc)


def _reseed(seed: DealWorkflowInput, deal: DealPublic) -> DealWorkflowInput:
    """The seed with the stage the deal was last seen at (a closed deal then skips Temporal)."""
    return seed.model_copy(
        update={
            "stage": deal.stage,
            "stage_entered_at": deal.stage_changed_at,
            "lost_reason": deal.lost_reason,
        }
    )


async def _send(
    client: Client,
    move: ChangeStageInput,
    seed: DealWorkflowInput,
    settings: Settings,
    deadline: float | None = None,
) -> ChangeStageResult:
    """One bounded update-with-start attempt, with the request id as the update's id.

    Bounded because an update lost in a run that was closing would otherwise hold the request
    open; a resend carries the same update id, so the server answers it once.
    """
    timeout = ATTEMPT_TIMEOUT_S
    if deadline is not None:
        timeout = max(0.05, min(timeout, deadline - time.monotonic()))
    try:
        return await _send_once(client, move, seed, settings, timeout)
    except RuntimeError as exc:
        # The process's lazy client could not connect (Temporal down since the API started).
        raise RPCError(str(exc), RPCStatusCode.UNAVAILABLE, b"") from exc


async def _send_once(
    client: Client, move: ChangeStageInput, seed: DealWorkflowInput, settings: Settings, timeout: float
) -> ChangeStageResult:
    return await asyncio.wait_for(
        client.execute_update_with_start_workflow(
            DealWorkflow.change_stage,
            move,
            id=move.request_id,
            start_workflow_operation=WithStartWorkflowOperation(
                DealWorkflow.run, seed, **start_options(seed, settings)
            ),
        ),
        timeout=timeout,
    )


async def _move_from_recent(
    db: TenantDbDep,
    client: Client,
    settings: Settings,
    body: ChangeStageInput,
    seed: DealWorkflowInput,
    recent: DealPublic,
    cid: uuid.UUID,
    timing: ServerTiming,
    deadline: float,
) -> DealPublic | None:
    """Sends the update and builds the answer on the previous one when they join up exactly."""
    try:
        with timing.measure("temporal"):
            result = await _send(client, body, seed, settings, deadline)
    except WorkflowUpdateFailedError as exc:
        if _workflow_stage(exc) is not None:
            # Judged from the workflow's stage, which the last answer cannot vouch for (a write
            # behind its back): the careful path reads the row, repairs and answers.
            return None
        failure = _update_failed(exc, recent.stage, body.stage, str(cid))
        if failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE and not _abandoned(exc):
            return None  # the write failed: the careful path asks the fence
        raise failure from None
    except (TimeoutError, RPCTimeoutOrCancelledError, RPCError):
        return None
    move, state = result.move, result.state
    seen = (recent.stage, recent.stage_changed_at)
    if move is not None and seen == (move.from_stage, move.from_entered_at):
        entry = HistoryEntry(from_=move.from_stage, to=move.to_stage, at=move.at, reason=move.reason)
        history = [*recent.history, entry]
    elif move is None and seen == (state.stage, state.stage_entered_at):
        history = recent.history
    else:
        # Someone else moved the deal since: read it.
        with timing.measure("reread"):
            return await read_back(lambda: _load(db, str(cid), settings), what="the stage change")
    return recent.model_copy(
        update={
            "stage": state.stage,
            "probability": state.probability,
            "weighted_value_usd": weighted_value(recent.value_usd, state.probability),
            "stage_changed_at": state.stage_entered_at,
            "days_in_stage": recent.days_in_stage if move is None else 0,
            "lost_reason": state.lost_reason,
            "history": history,
        }
    )


async def _move_with_known_seed(
    db: TenantDbDep,
    client: Client,
    settings: Settings,
    body: ChangeStageInput,
    seed: DealWorkflowInput,
    cid: uuid.UUID,
    timing: ServerTiming,
    deadline: float,
) -> DealPublic | None:
    """Sends the update with a cached seed while reading; None hands over to the careful path.

    The seed's stage may be stale: a run it starts re-reads the row before deciding anything.
    """
    read = asyncio.create_task(_read(db, cid))
    try:
        with timing.measure("temporal"):
            result = await _send(client, body, seed, settings, deadline)
    except WorkflowUpdateFailedError as exc:
        row, _ = await read
        if row is None:
            raise _not_found(str(cid)) from None
        if _workflow_stage(exc) not in (None, Stage(row.campaign.stage)):
            return None  # the workflow and the row disagree: the careful path repairs and retries
        failure = _update_failed(exc, Stage(row.campaign.stage), body.stage, str(cid))
        if failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE and not _abandoned(exc):
            return None  # the write failed: the careful path asks the fence
        raise failure from None
    except (TimeoutError, RPCTimeoutOrCancelledError, RPCError):
        await asyncio.gather(read, return_exceptions=True)
        return None
    try:
        row, history = await read
    except DATABASE_UNAVAILABLE:
        # The move is applied; the read that ran alongside it met a database that is away.
        row, history = await read_back(lambda: _read(db, cid), what="the stage change")
    if row is None:
        raise _not_found(str(cid))
    return _answer(row, history, result, settings)


def _answer(
    row: DealRow, history: list[HistoryRow], result: ChangeStageResult, settings: Settings
) -> DealPublic | None:
    """The deal after the update, from a read taken just before or just after it committed.

    Returns None when other moves came in between, so the caller reads a fresh snapshot.
    """
    c, move, state = row.campaign, result.move, result.state
    seen = (c.stage, c.stage_changed_at)
    after = (state.stage.value, state.stage_entered_at)
    entries = _entries(history)
    if move is not None and seen == (move.from_stage.value, move.from_entered_at):
        entries.append(HistoryEntry(from_=move.from_stage, to=move.to_stage, at=move.at, reason=move.reason))
    elif seen != after:
        return None
    c.stage, c.stage_changed_at = after
    c.probability = state.probability
    c.lost_reason = state.lost_reason
    return _public(row, entries, settings)
