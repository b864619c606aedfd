"""Insertion orders: book (slots, promo code, vanity URL), read, report delivery, cancel, documents."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import func, select
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import errors
from api.bodies import JsonBody
from api.deps import (
    ATTEMPT_TIMEOUT_S,
    RETRYABLE_RPC,
    SettingsDep,
    TemporalDep,
    TenantDbDep,
    feature_flag,
    fence_off,
    parse_id,
    read_back,
)
from api.io_documents import DocumentUnit, IoDocument, render_pdf, render_xlsx
from api.openapi import (
    REPLAYED_HEADER,
    booking_conflict,
    invalid,
    invalid_cursor,
    key_reused,
    not_applied,
    not_found,
    outcome_unknown,
    problem,
)
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from db.fences import (
    KeyedRequest,
    begin_keyed_request,
    fingerprint,
    new_request_id,
    request_state,
)
from db.io import (
    IoRecord,
    booked_per_day,
    booking_facts,
    io_of_request,
    io_with_idempotency_key,
    load_io,
)
from db.models import AdUnit, Advertiser, Campaign, IoBooking, Show, Tenant
from domain.io import (
    BOOKING_REFUSALS,
    PROMO_CODE_PATTERN,
    VANITY_PATH_PATTERN,
    AdFormat,
    BillAs,
    BookingRefused,
    BookIoInput,
    BookIoResult,
    CancelIoInput,
    CloseDeliveryInput,
    Insertion,
    Invoice,
    IoStatus,
    IoWorkflowInput,
    Placement,
    PricingModel,
    ReportDeliveryInput,
    UnderdeliveryPolicy,
    UnitRequest,
    UnitStatus,
    delivery_progress,
    slot_capacity,
)
from settings import Settings
from workflows.io import REQUEST_ABANDONED, IoBookingWorkflow
from workflows.starters import io_start_options, io_workflow_id

log = logging.getLogger("sponsorflow.api.io")

router = APIRouter(
    prefix="/api/v1/io",
    tags=["io"],
    dependencies=[Depends(feature_flag("enable_io_bookings", "ENABLE_IO_BOOKINGS"))],
)

Money = Annotated[Decimal, Field(gt=0, le=Decimal("999999999.99"), decimal_places=2)]


class AdUnitCreate(JsonBody):
    """One placement to book: a show's episode on an air date, and its price."""

    model_config = ConfigDict(extra="forbid")

    show_id: uuid.UUID
    placement: Placement
    format: AdFormat
    insertion: Insertion
    air_date: date
    duration_s: int = Field(
        ge=15, le=120, multiple_of=15, strict=True, description="15 to 120 seconds in steps of 15"
    )
    pricing_model: PricingModel
    cpm_usd: Money | None = None
    impressions_goal: int | None = Field(default=None, ge=1, le=10_000_000_000, strict=True)
    flat_usd: Money | None = None

    @field_validator("air_date")
    @classmethod
    def _not_past(cls, v: date) -> date:
        today = datetime.now(UTC).date()
        if v < today:
            raise ValueError(f"air_date {v.isoformat()} is in the past (today is {today.isoformat()} UTC)")
        return v

    @model_validator(mode="after")
    def _pricing_fields(self) -> AdUnitCreate:
        if self.pricing_model is PricingModel.CPM:
            if self.cpm_usd is None or self.impressions_goal is None:
                raise ValueError("a cpm unit needs cpm_usd and impressions_goal")
            if self.flat_usd is not None:
                raise ValueError("a cpm unit takes no flat_usd")
        else:
            if self.flat_usd is None:
                raise ValueError("a flat unit needs flat_usd")
            if self.cpm_usd is not None or self.impressions_goal is not None:
                raise ValueError("a flat unit takes no cpm_usd or impressions_goal")
        return self


class IoCreate(JsonBody):
    """An insertion order for a won deal."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "campaign_id": "c0ffee00-0000-4000-8000-000000000000",
                    "ad_units": [
                        {
                            "show_id": "5eed0000-0000-4000-8000-000000000000",
                            "placement": "mid_roll",
                            "format": "host_read",
                            "insertion": "baked_in",
                            "air_date": "2031-03-02",
                            "duration_s": 60,
                            "pricing_model": "cpm",
                            "cpm_usd": 25,
                            "impressions_goal": 40000,
                        }
                    ],
                    "promo_code": "GRIND20",
                    "vanity_path": "grind",
                }
            ]
        },
    )

    campaign_id: uuid.UUID
    ad_units: list[AdUnitCreate] = Field(min_length=1, max_length=200)
    promo_code: str | None = Field(default=None, pattern=PROMO_CODE_PATTERN)
    vanity_path: str | None = Field(default=None, pattern=VANITY_PATH_PATTERN)
    payment_terms_days: int = Field(default=30, ge=0, le=365, strict=True)
    underdelivery_policy: UnderdeliveryPolicy = UnderdeliveryPolicy.MAKEGOOD
    measurement_window_days: int = Field(default=30, ge=0, le=365, strict=True)

    @field_validator("vanity_path", mode="before")
    @classmethod
    def _strip_slash(cls, v: Any) -> Any:
        return v.strip().strip("/") if isinstance(v, str) else v


class DeliveryReport(JsonBody):
    """Delivered impressions of one ad unit to date (cumulative: a later report replaces it)."""

    model_config = ConfigDict(extra="forbid")

    ad_unit_id: uuid.UUID
    impressions: int = Field(ge=0, le=10_000_000_000, strict=True)
    source: str | None = Field(default=None, max_length=200)

    @field_validator("source")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("source must not contain NUL characters")
        return v


class IoCancel(JsonBody):
    """Why the IO is cancelled."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"reason": "the advertiser pulled the campaign"}]},
    )

    reason: str = Field(min_length=1, max_length=2000)

    @field_validator("reason")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("reason must not contain NUL characters")
        return v


class DeliveryClose(JsonBody):
    """How to bill the CPM units of an IO awaiting delivery that nobody reported delivery for."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"bill_as": "zero"}]})

    bill_as: BillAs = Field(
        description="`zero`: bill them as 0 impressions delivered; `goal`: bill them as their goal delivered"
    )


class AdUnitPublic(BaseModel):
    """An ad unit as clients see it."""

    id: str
    show_id: str
    show_name: str
    placement: Placement
    format: AdFormat
    insertion: Insertion
    air_date: date
    duration_s: int
    pricing_model: PricingModel
    cpm_usd: float | None
    impressions_goal: int | None
    flat_usd: float | None
    price_usd: float
    delivered_impressions: int
    delivered_pct: float | None
    status: UnitStatus
    makegood_of: str | None
    billed_usd: float | None


class DeliveryPublic(BaseModel):
    """Delivery of the IO's CPM units against their goal (make-goods count toward it)."""

    impressions_goal: int
    delivered_impressions: int
    delivered_pct: float | None
    under_delivering: bool


class IoPublic(BaseModel):
    """An insertion order with its units, delivery and invoice."""

    id: str
    campaign_id: str
    campaign_name: str
    advertiser_id: str
    advertiser_name: str
    status: IoStatus
    promo_code: str | None
    promo_code_status: str | None
    vanity_url: str | None
    payment_terms_days: int
    underdelivery_policy: UnderdeliveryPolicy
    measurement_window_days: int
    total_usd: float
    next_air_date: date | None
    cancel_reason: str | None
    cancelled_at: datetime | None
    completed_at: datetime | None
    created_at: datetime
    ad_units: list[AdUnitPublic]
    delivery: DeliveryPublic
    invoice: Invoice | None
    workflow_id: str
    temporal_ui_url: str


class IoSummary(BaseModel):
    """An IO in a list."""

    id: str
    campaign_id: str
    advertiser_name: str
    status: IoStatus
    total_usd: float
    promo_code: str | None
    vanity_url: str | None
    units: int
    next_air_date: date | None
    created_at: datetime


def _public(record: IoRecord, tenant_id: uuid.UUID, settings: Settings) -> IoPublic:
    io = record.io
    units: list[AdUnitPublic] = []
    goal, delivered = delivery_progress([u for u, _ in record.units])
    for u, show_name in record.units:
        pct = round(100 * u.delivered_impressions / u.impressions_goal, 1) if u.impressions_goal else None
        units.append(
            AdUnitPublic(
                id=str(u.id),
                show_id=str(u.show_id),
                show_name=show_name,
                placement=Placement(u.placement),
                format=AdFormat(u.format),
                insertion=Insertion(u.insertion),
                air_date=u.air_date,
                duration_s=u.duration_s,
                pricing_model=PricingModel(u.pricing_model),
                cpm_usd=float(u.cpm_usd) if u.cpm_usd is not None else None,
                impressions_goal=u.impressions_goal,
                flat_usd=float(u.flat_usd) if u.flat_usd is not None else None,
                price_usd=float(u.price_usd),
                delivered_impressions=u.delivered_impressions,
                delivered_pct=pct,
                status=UnitStatus(u.status),
                makegood_of=str(u.makegood_of) if u.makegood_of else None,
                billed_usd=float(u.billed_usd) if u.billed_usd is not None else None,
            )
        )
    pending = [u.air_date for u, _ in record.units if u.status == UnitStatus.SCHEDULED.value]
    wid = io_workflow_id(str(tenant_id), str(io.id))
    return IoPublic(
        id=str(io.id),
        campaign_id=str(io.campaign_id),
        campaign_name=record.campaign.name,
        advertiser_id=str(record.advertiser.id),
        advertiser_name=record.advertiser.name,
        status=IoStatus(io.status),
        promo_code=io.promo_code,
        promo_code_status=record.promo_status,
        vanity_url=io.vanity_url,
        payment_terms_days=io.payment_terms_days,
        underdelivery_policy=UnderdeliveryPolicy(io.underdelivery_policy),
        measurement_window_days=io.measurement_window_days,
        total_usd=float(io.total_usd),
        next_air_date=min(pending) if pending else None,
        cancel_reason=io.cancel_reason,
        cancelled_at=io.cancelled_at,
        completed_at=io.completed_at,
        created_at=io.created_at,
        ad_units=units,
        delivery=DeliveryPublic(
            impressions_goal=goal,
            delivered_impressions=delivered,
            delivered_pct=round(100 * delivered / goal, 1) if goal else None,
            under_delivering=delivered < goal,
        ),
        invoice=Invoice.model_validate(io.invoice) if io.invoice else None,
        workflow_id=wid,
        temporal_ui_url=settings.workflow_url(wid),
    )


async def _read(db: TenantDbDep, io_id: uuid.UUID, settings: Settings) -> IoPublic:
    async with db.tx() as session:
        record = await load_io(session, io_id)
    if record is None:
        raise errors.not_found("IO", str(io_id))
    return _public(record, db.tenant_id, settings)


_NOT_APPLIED = "{what} was not applied, and it never will be; retry"


def _not_applied(what: str) -> errors.ApiError:
    return errors.not_applied(_NOT_APPLIED.format(what=what))


def _booking_input(body: IoCreate, idempotency_key: str | None, request_id: str) -> BookIoInput:
    return BookIoInput(
        campaign_id=str(body.campaign_id),
        ad_units=[UnitRequest.model_validate(u.model_dump(mode="json")) for u in body.ad_units],
        promo_code=body.promo_code,
        vanity_path=body.vanity_path,
        payment_terms_days=body.payment_terms_days,
        underdelivery_policy=body.underdelivery_policy,
        measurement_window_days=body.measurement_window_days,
        idempotency_key=idempotency_key,
        request_id=request_id,
    )


def _key_mismatch() -> HTTPException:
    return errors.key_reused("request; use a new key")


async def _begin_keyed(
    db: TenantDbDep, settings: Settings, *, scope: str, key: str, payload: Any, entity_id: str
) -> KeyedRequest:
    """Registers this attempt under its Idempotency-Key, fencing off an earlier pending one.

    A retry means the client stopped listening to the earlier attempt: that one can no longer
    land behind this one's back (db.fences.begin_keyed_request); if it was applied, it answers.
    """
    now = datetime.now(UTC)
    async with db.tx() as session:
        return await begin_keyed_request(
            session=session,
            tenant_id=db.tenant_id,
            idempotency_key=f"{scope}:{key}",
            fingerprint=fingerprint(payload),
            entity_type="io",
            entity_id=entity_id,
            expires_at=now + timedelta(seconds=settings.update_budget_seconds),
            now=now,
        )


async def _give_up(db: TenantDbDep, request_id: str, io_id: uuid.UUID, what: str) -> None:
    """Fences a request the API stops waiting for: 503 when that wins, returns when the write did."""
    outcome = await fence_off(db, request_id=request_id, entity_type="io", entity_id=str(io_id), what=what)
    if outcome == "abandoned":
        log.warning("gave up on request %s of IO %s: fenced off, answering 503", request_id, io_id)
        raise _not_applied(what)
    log.info("request %s of IO %s landed before the API gave up on it", request_id, io_id)


_Answer = TypeVar("_Answer")


async def _send_within_budget(
    send: Callable[[], Awaitable[_Answer]], what: str, budget_s: float
) -> _Answer | None:
    """Sends (and resends, same update id) until answered; None when the budget ran out.

    A Temporal refusal (WorkflowUpdateFailedError) and a non-retryable RPCError propagate.
    """
    deadline = time.monotonic() + budget_s
    attempt = 0
    while (remaining := deadline - time.monotonic()) > 0:
        attempt += 1
        try:
            return await asyncio.wait_for(send(), timeout=min(ATTEMPT_TIMEOUT_S, remaining))
        except (TimeoutError, RPCTimeoutOrCancelledError, RuntimeError):
            # RuntimeError: the process's lazy client could not connect (Temporal down).
            log.warning("%s: no answer from Temporal (attempt %d)", what, attempt)
        except RPCError as exc:
            if exc.status not in RETRYABLE_RPC:
                raise
            log.warning("%s: Temporal answered %s (attempt %d); retrying", what, exc.status.name, attempt)
            await asyncio.sleep(min(0.05 * 2 ** min(attempt, 5), max(remaining - 0.05, 0)))
    return None


def _replayed(response: Response) -> None:
    response.headers["Idempotent-Replayed"] = "true"


_IDEMPOTENCY_KEY = Header(
    alias="Idempotency-Key",
    max_length=200,
    description=(
        "a retry with the same key (and body) is safe: it answers what the first attempt did, "
        "with Idempotent-Replayed: true"
    ),
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=IoPublic,
    operation_id="bookIo",
    responses={
        201: {
            "description": "booked: slots, promo code and vanity URL held, and the IO's workflow running",
            "headers": REPLAYED_HEADER,
        },
        409: booking_conflict(),
        422: invalid(
            "invalid units (pricing fields, a past air date), a deal or show not in this tenant, a vanity "
            "path for an advertiser without domain, or an Idempotency-Key sent again with another booking",
            [
                {
                    "loc": ["body", "ad_units", 0, "show_id"],
                    "msg": "show 5eed0000-0000-4000-8000-000000000000 not found in this tenant",
                    "type": "not_found",
                }
            ],
            key_reused("request; use a new key"),
        ),
        503: not_applied("the booking"),
        504: outcome_unknown("the booking"),
    },
)
async def book_io(
    body: IoCreate,
    db: TenantDbDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, _IDEMPOTENCY_KEY] = None,
) -> IoPublic:
    """Books an IO for a won deal: its workflow's first step, sent with update-with-start.

    The workflow's `book` update books slots, promo code and vanity URL in one transaction of
    its activity (no lock is held across a Temporal call); a refusal ends the run, nothing booked.
    """
    io_id = uuid.uuid4()
    request_id = new_request_id()
    if idempotency_key:
        keyed = await _begin_keyed(
            db,
            settings,
            scope="io-booking",
            key=idempotency_key,
            payload=body.model_dump(mode="json"),
            entity_id=str(io_id),
        )
        if keyed.status == "mismatch":
            raise _key_mismatch()
        assert keyed.request_id is not None
        async with db.tx() as session:
            if keyed.status == "replay":
                booked = await io_of_request(session, keyed.request_id)
            else:
                # Bookings made before the write fence carry their key on the row only.
                booked = await io_with_idempotency_key(session, idempotency_key)
        if booked is not None:
            _replayed(response)
            return await read_back(lambda: _read(db, booked, settings), what="the booking")
        request_id = keyed.request_id
    booking = _booking_input(body, idempotency_key, request_id)
    try:
        async with db.tx() as session:
            facts = await booking_facts(session, booking)
        facts.check(booking)
    except BookingRefused as exc:
        raise errors.booking_refused(exc.kind, exc.detail) from None
    advertiser = facts.advertiser
    assert advertiser is not None
    inp = IoWorkflowInput(
        tenant_id=str(db.tenant_id),
        io_id=str(io_id),
        reports_per_run=settings.io_reports_per_run,
        book_via_update=True,
        delivery_reminder_hours=settings.io_delivery_reminder_hours,
    )
    options = io_start_options(
        inp,
        settings.temporal_task_queue,
        booking=booking,
        advertiser_id=str(advertiser.id),
        advertiser_name=advertiser.name,
    )

    async def send() -> BookIoResult:
        start = WithStartWorkflowOperation(IoBookingWorkflow.run, inp, **options)
        try:
            return await temporal.execute_update_with_start_workflow(
                IoBookingWorkflow.book, booking, start_workflow_operation=start, id=request_id
            )
        except BaseException:
            # An attempt cut short hands its error to the start operation too: take it there,
            # or asyncio logs "Future exception was never retrieved" for every resend.
            taken = asyncio.ensure_future(start.workflow_handle())
            taken.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise

    what = "the booking"
    try:
        answer = await _send_within_budget(send, what, settings.update_budget_seconds)
    except WorkflowUpdateFailedError as exc:
        raise _booking_failed(exc, what) from None
    except (RPCError, WorkflowAlreadyStartedError) as exc:
        log.error("Temporal did not take the booking of IO %s: %s", io_id, exc)
        answer = None
    if answer is None:
        await _give_up(db, request_id, io_id, what)
    return await read_back(lambda: _read(db, io_id, settings), what=what)


def _booking_failed(exc: WorkflowUpdateFailedError, what: str) -> HTTPException:
    """The answer of a booking the workflow refused (a domain refusal) or could not make."""
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        if cause.type in BOOKING_REFUSALS:
            return errors.booking_refused(cause.type, cause.details[0] if cause.details else cause.message)
        if cause.type == REQUEST_ABANDONED:
            return _not_applied(what)
    # The run refused or failed the booking (nothing was written, and the run has ended).
    log.error("booking failed: %s", exc)
    return _not_applied(what)


@router.get("", response_model=Page[IoSummary], operation_id="listIos", responses={422: invalid_cursor()})
async def list_ios(
    db: TenantDbDep,
    campaign_id: Annotated[uuid.UUID | None, Query(description="only this deal's IOs")] = None,
    status_: Annotated[IoStatus | None, Query(alias="status")] = None,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
) -> Page[IoSummary]:
    """Lists this tenant's IOs, newest first."""
    units = (
        select(
            AdUnit.io_id,
            func.count().label("n"),
            func.min(AdUnit.air_date).filter(AdUnit.status == UnitStatus.SCHEDULED.value).label("next_air"),
        )
        .group_by(AdUnit.io_id)
        .subquery()
    )
    stmt = (
        select(IoBooking, Advertiser.name, units.c.n, units.c.next_air)
        .join(Campaign, Campaign.id == IoBooking.campaign_id)
        .join(Advertiser, Advertiser.id == Campaign.advertiser_id)
        .outerjoin(units, units.c.io_id == IoBooking.id)
    )
    if campaign_id is not None:
        stmt = stmt.where(IoBooking.campaign_id == campaign_id)
    if status_ is not None:
        stmt = stmt.where(IoBooking.status == status_.value)
    async with db.tx() as session:
        rows = (await session.execute(newest_first(stmt, IoBooking, cursor, limit))).all()
    items = [
        IoSummary(
            id=str(io.id),
            campaign_id=str(io.campaign_id),
            advertiser_name=name,
            status=IoStatus(io.status),
            total_usd=float(io.total_usd),
            promo_code=io.promo_code,
            vanity_url=io.vanity_url,
            units=n or 0,
            next_air_date=next_air,
            created_at=io.created_at,
        )
        for io, name, n, next_air in rows[:limit]
    ]
    return Page(items=items, next_cursor=newest_next_cursor([r[0] for r in rows], limit))


class DayAvailability(BaseModel):
    """One air date of a show: slots of the placement booked and still free."""

    date: date
    booked: int
    free: int


class Availability(BaseModel):
    """Free-slot hints for booking: a show's placement over the coming days."""

    show_id: str
    placement: Placement
    capacity: int
    days: list[DayAvailability]


@router.get(
    "/availability",
    response_model=Availability,
    operation_id="getIoAvailability",
    responses={404: not_found("show")},
)
async def availability(
    db: TenantDbDep,
    show_id: Annotated[str, Query(max_length=64)],
    placement: Placement,
    start: Annotated[date | None, Query(description="first day (default today, UTC)")] = None,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> Availability:
    """Booked and free slots per day, so a booking form can hint at open air dates.

    A hint, not a hold: the booking itself re-counts under the slot lock.
    """
    sid = parse_id(show_id, "show")
    first = start or datetime.now(UTC).date()
    last = first + timedelta(days=days - 1)
    async with db.tx() as session:
        show = await session.get(Show, sid)
        if show is None:
            raise errors.not_found("show", show_id)
        used = await booked_per_day(session, show_id=sid, placement=placement.value, first=first, last=last)
    capacity = slot_capacity(show.slots, placement.value)
    return Availability(
        show_id=str(sid),
        placement=placement,
        capacity=capacity,
        days=[
            DayAvailability(
                date=first + timedelta(days=i),
                booked=used.get(first + timedelta(days=i), 0),
                free=max(capacity - used.get(first + timedelta(days=i), 0), 0),
            )
            for i in range(days)
        ],
    )


@router.get("/{io_id}", response_model=IoPublic, operation_id="getIo", responses={404: not_found("IO")})
async def read_io(io_id: str, db: TenantDbDep, settings: SettingsDep) -> IoPublic:
    """Returns the IO with its units, delivery against goal and invoice."""
    return await _read(db, parse_id(io_id, "IO"), settings)


async def _update(
    db: TenantDbDep,
    temporal: Client,
    settings: Settings,
    io_id: uuid.UUID,
    update: Any,
    make_arg: Callable[[str], Any],
    *,
    what: str,
    scope: str,
    payload: Any,
    idempotency_key: str | None,
    done_if: IoStatus | None = None,
) -> bool:
    """Sends a fenced update to the IO's workflow and maps its rejection to an HTTP error.

    The update carries a fresh request id (its update id too), resent within the budget; when
    the budget runs out the request is fenced off (503: never applied) unless its write won.
    Returns True when an Idempotency-Key's earlier attempt answers instead (a replay).
    `done_if`: a finished workflow whose IO is already in this status means the request was
    already carried out (a retried cancel), which is answered as success.
    """
    async with db.tx() as session:
        row = (
            await session.execute(select(IoBooking.status, IoBooking.invoice).where(IoBooking.id == io_id))
        ).first()
    if row is None:
        raise errors.not_found("IO", str(io_id))
    request_id = new_request_id()
    if idempotency_key:
        keyed = await _begin_keyed(
            db,
            settings,
            scope=f"{scope}:{io_id}",
            key=idempotency_key,
            payload=payload,
            entity_id=str(io_id),
        )
        if keyed.status == "replay":
            return True
        if keyed.status == "mismatch":
            raise _key_mismatch()
        assert keyed.request_id is not None
        request_id = keyed.request_id
    handle = temporal.get_workflow_handle(io_workflow_id(str(db.tenant_id), str(io_id)))
    try:
        answer = await _send_within_budget(
            lambda: handle.execute_update(update, make_arg(request_id), id=request_id),
            what,
            settings.update_budget_seconds,
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type in errors.IO_UPDATE_REFUSALS:
            raise errors.io_update_refused(cause.type, cause.message) from None
        log.error("update of IO %s failed: %s", io_id, exc)
        raise _not_applied(what) from None
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            log.error("update of IO %s failed: %s", io_id, exc)
            await _give_up(db, request_id, io_id, what)
            return False
        if done_if is not None and row[0] == done_if.value:
            return False
        # The workflow has ended. An earlier attempt of this request may be what ended it (a
        # cancellation with nothing aired): the fence says whether it was applied.
        async with db.tx() as session:
            if await request_state(session=session, request_id=request_id) == "applied":
                return False
        # The workflow has finished: the IO was invoiced (or cancelled with nothing aired).
        raise errors.conflict(
            f"IO {io_id} is {row[0]}; its workflow has finished and takes no more changes",
            code=errors.WORKFLOW_FINISHED,
            io_status=row[0],
        ) from None
    if answer is None:
        await _give_up(db, request_id, io_id, what)
    return False


@router.post(
    "/{io_id}/delivery",
    response_model=IoPublic,
    operation_id="reportIoDelivery",
    responses={
        200: {"description": "applied and in the IO's history", "headers": REPLAYED_HEADER},
        404: not_found("IO"),
        409: problem(
            "the unit is cancelled or has not aired, or the IO is invoiced",
            "ad unit 5eed0000-0000-4000-8000-000000000000 has not aired yet (air date 2031-03-02)",
            code="unit_not_aired",
        ),
        422: invalid(
            "an ad unit not in this IO, a negative count, or an Idempotency-Key sent again with "
            "another report",
            [
                {
                    "loc": ["body", "ad_unit_id"],
                    "msg": "ad_unit_id 5eed0000-0000-4000-8000-000000000000 is not a unit of this IO",
                    "type": "not_found",
                }
            ],
            key_reused("request; use a new key"),
        ),
        503: not_applied("the delivery report"),
        504: outcome_unknown("the delivery report"),
    },
)
async def report_delivery(
    io_id: str,
    body: DeliveryReport,
    db: TenantDbDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, _IDEMPOTENCY_KEY] = None,
) -> IoPublic:
    """Reports an ad unit's delivered impressions to date (an update with a validator)."""
    iid = parse_id(io_id, "IO")
    replayed = await _update(
        db,
        temporal,
        settings,
        iid,
        IoBookingWorkflow.report_delivery,
        lambda request_id: ReportDeliveryInput(
            ad_unit_id=str(body.ad_unit_id),
            impressions=body.impressions,
            source=body.source,
            request_id=request_id,
        ),
        what="the delivery report",
        scope="io-delivery",
        payload=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )
    if replayed:
        _replayed(response)
    return await read_back(lambda: _read(db, iid, settings), what="the change")


@router.post(
    "/{io_id}/cancel",
    response_model=IoPublic,
    operation_id="cancelIo",
    responses={
        200: {
            "description": "cancelled (or already cancelled): what had not aired is released",
            "headers": REPLAYED_HEADER,
        },
        404: not_found("IO"),
        409: problem(
            "the IO is already invoiced",
            "IO c0ffee00-0000-4000-8000-000000000000 is completed; its workflow "
            "has finished and takes no more changes",
            code="workflow_finished",
        ),
        422: invalid(
            "no reason, or an Idempotency-Key sent again with another cancellation",
            key_reused("request; use a new key"),
        ),
        503: not_applied("the cancellation"),
        504: outcome_unknown("the cancellation"),
    },
)
async def cancel_io(
    io_id: str,
    body: IoCancel,
    db: TenantDbDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, _IDEMPOTENCY_KEY] = None,
) -> IoPublic:
    """Cancels what has not aired: slots freed, promo code voided; aired units are still billed."""
    iid = parse_id(io_id, "IO")
    replayed = await _update(
        db,
        temporal,
        settings,
        iid,
        IoBookingWorkflow.cancel,
        lambda request_id: CancelIoInput(reason=body.reason, request_id=request_id),
        what="the cancellation",
        scope="io-cancel",
        payload=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        done_if=IoStatus.CANCELLED,
    )
    if replayed:
        _replayed(response)
    return await read_back(lambda: _read(db, iid, settings), what="the change")


@router.post(
    "/{io_id}/close-delivery",
    response_model=IoPublic,
    operation_id="closeIoDelivery",
    responses={
        200: {
            "description": "closed: the unreported units are billed as asked and the IO reconciled",
            "headers": REPLAYED_HEADER,
        },
        404: not_found("IO"),
        409: problem(
            "the IO is not awaiting a delivery report (or is invoiced)",
            "IO c0ffee00-0000-4000-8000-000000000000 is measuring, not awaiting a delivery report; "
            "nothing to close",
            code="not_awaiting_delivery",
        ),
        422: invalid(
            "bill_as is not zero or goal, or an Idempotency-Key sent again with another close",
            key_reused("request; use a new key"),
        ),
        503: not_applied("closing the delivery"),
        504: outcome_unknown("closing the delivery"),
    },
)
async def close_io_delivery(
    io_id: str,
    body: DeliveryClose,
    db: TenantDbDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, _IDEMPOTENCY_KEY] = None,
) -> IoPublic:
    """Closes the missing delivery of an IO in `awaiting_delivery`: bill the units as 0 or goal.

    The CPM units nobody reported delivery for are billed as `bill_as` says (never made good),
    and the IO reconciles at once: make-goods for other shortfalls, or the invoice.
    """
    iid = parse_id(io_id, "IO")
    replayed = await _update(
        db,
        temporal,
        settings,
        iid,
        IoBookingWorkflow.close_delivery,
        lambda request_id: CloseDeliveryInput(bill_as=body.bill_as, request_id=request_id),
        what="closing the delivery",
        scope="io-close-delivery",
        payload=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )
    if replayed:
        _replayed(response)
    return await read_back(lambda: _read(db, iid, settings), what="the change")


@router.get(
    "/{io_id}/document",
    operation_id="getIoDocument",
    responses={
        200: {
            "content": {
                "application/pdf": {},
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {},
            },
            "description": "the IO document",
        },
        404: not_found("IO"),
    },
)
async def io_document(
    io_id: str,
    db: TenantDbDep,
    format: Annotated[Literal["pdf", "xlsx"], Query(description="pdf or xlsx")] = "pdf",
) -> Response:
    """The IO document a publisher sends: parties, units, prices, totals, promo code, terms."""
    iid = parse_id(io_id, "IO")
    async with db.tx() as session:
        record = await load_io(session, iid)
        publisher = await session.scalar(select(Tenant.name).where(Tenant.id == db.tenant_id))
    if record is None:
        raise errors.not_found("IO", io_id)
    doc = document_of(record, publisher or "")
    if format == "pdf":
        body, media = await asyncio.to_thread(render_pdf, doc), "application/pdf"
    else:
        body = await asyncio.to_thread(render_xlsx, doc)
        media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{doc.number}.{format}"'},
    )


def document_of(record: IoRecord, publisher: str) -> IoDocument:
    """The document model of an IO."""
    io = record.io
    return IoDocument(
        io_id=str(io.id),
        number=f"IO-{io.id.hex[:8].upper()}",
        issued_on=io.created_at.date(),
        publisher=publisher,
        advertiser=record.advertiser.name,
        advertiser_domain=record.advertiser.domain,
        campaign_name=record.campaign.name,
        status=io.status,
        promo_code=io.promo_code,
        vanity_url=io.vanity_url,
        payment_terms_days=io.payment_terms_days,
        underdelivery_policy=io.underdelivery_policy,
        measurement_window_days=io.measurement_window_days,
        units=[
            DocumentUnit(
                id=str(u.id),
                show_name=name,
                placement=u.placement,
                format=u.format,
                insertion=u.insertion,
                air_date=u.air_date,
                duration_s=u.duration_s,
                pricing_model=u.pricing_model,
                cpm_usd=u.cpm_usd,
                impressions_goal=u.impressions_goal,
                flat_usd=u.flat_usd,
                price_usd=u.price_usd,
                status=u.status,
                delivered_impressions=u.delivered_impressions,
                makegood_of=str(u.makegood_of) if u.makegood_of else None,
            )
            for u, name in record.units
        ],
        total_usd=io.total_usd,
        invoice=Invoice.model_validate(io.invoice) if io.invoice else None,
        cancel_reason=io.cancel_reason,
    )
