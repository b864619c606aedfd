"""Insertion orders: book (slots, promo code, vanity URL), read, report delivery, cancel, documents."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import RETRYABLE_RPC, SettingsDep, TemporalDep, TenantDbDep, feature_flag, parse_id
from api.io_documents import DocumentUnit, IoDocument, render_pdf, render_xlsx
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from db.io import (
    IoRecord,
    booked_per_day,
    claim_promo_code,
    load_io,
    lock_slots,
    lock_vanity_domain,
    slot_usage,
    taken_vanity_paths,
)
from db.models import AdUnit, Advertiser, Campaign, IoBooking, Show, Tenant
from domain.io import (
    PROMO_CODE_PATTERN,
    VANITY_PATH_PATTERN,
    AdFormat,
    CancelIoInput,
    Insertion,
    Invoice,
    IoStatus,
    IoWorkflowInput,
    Placement,
    PricingModel,
    ReportDeliveryInput,
    UnderdeliveryPolicy,
    UnitStatus,
    generate_promo_code,
    io_summary,
    slot_capacity,
    slugify,
    unit_price,
)
from domain.stages import Stage
from settings import Settings
from workflows.io import (
    INVALID_REQUEST,
    IO_ABANDONED,
    IO_CLOSED,
    UNIT_CANCELLED,
    UNIT_NOT_AIRED,
    UNKNOWN_UNIT,
    IoBookingWorkflow,
    io_search_attributes,
    io_workflow_id,
)

log = logging.getLogger("sponsorflow.api.io")

router = APIRouter(
    prefix="/api/v1/io",
    tags=["io"],
    dependencies=[Depends(feature_flag("enable_io_bookings", "ENABLE_IO_BOOKINGS"))],
)

Money = Annotated[Decimal, Field(gt=0, le=Decimal("999999999.99"), decimal_places=2)]


class AdUnitCreate(BaseModel):
    """One placement to book: a show's episode on an air date, and its price."""

    model_config = ConfigDict(extra="forbid")

    show_id: uuid.UUID
    placement: Placement
    format: AdFormat
    insertion: Insertion
    air_date: date
    duration_s: int = Field(ge=15, le=120, multiple_of=15, description="15 to 120 seconds in steps of 15")
    pricing_model: PricingModel
    cpm_usd: Money | None = None
    impressions_goal: int | None = Field(default=None, ge=1, le=10_000_000_000)
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


class IoCreate(BaseModel):
    """An insertion order for a won deal."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    campaign_id: uuid.UUID
    ad_units: list[AdUnitCreate] = Field(min_length=1, max_length=200)
    promo_code: str | None = Field(default=None, pattern=PROMO_CODE_PATTERN)
    vanity_path: str | None = Field(default=None, pattern=VANITY_PATH_PATTERN)
    payment_terms_days: int = Field(default=30, ge=0, le=365)
    underdelivery_policy: UnderdeliveryPolicy = UnderdeliveryPolicy.MAKEGOOD
    measurement_window_days: int = Field(default=30, ge=0, le=365)

    @field_validator("vanity_path", mode="before")
    @classmethod
    def _strip_slash(cls, v: Any) -> Any:
        return v.strip().strip("/") if isinstance(v, str) else v


class DeliveryReport(BaseModel):
    """Delivered impressions of one ad unit to date (cumulative: a later report replaces it)."""

    model_config = ConfigDict(extra="forbid")

    ad_unit_id: uuid.UUID
    impressions: int = Field(ge=0, le=10_000_000_000)
    source: str | None = Field(default=None, max_length=200)


class IoCancel(BaseModel):
    """Why the IO is cancelled."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=2000)


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


def _unprocessable(loc: list[Any], msg: str, kind: str = "value_error") -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": ["body", *loc], "msg": msg, "type": kind}]
    )


def _public(record: IoRecord, tenant_id: uuid.UUID, settings: Settings) -> IoPublic:
    io = record.io
    units: list[AdUnitPublic] = []
    goal = delivered = 0
    by_original: dict[uuid.UUID, int] = {}
    for u, _ in record.units:
        if u.makegood_of is not None and u.status != UnitStatus.CANCELLED.value:
            by_original[u.makegood_of] = by_original.get(u.makegood_of, 0) + u.delivered_impressions
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
        aired = u.status not in (UnitStatus.SCHEDULED.value, UnitStatus.CANCELLED.value)
        if u.impressions_goal and u.makegood_of is None and aired:
            goal += u.impressions_goal
            delivered += min(u.impressions_goal, u.delivered_impressions + by_original.get(u.id, 0))
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
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"IO {str(io_id)!r} not found")
    return _public(record, db.tenant_id, settings)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=IoPublic,
    responses={
        409: {"description": "the deal is not won, a slot is full, or the promo code / vanity path is taken"},
        422: {"description": "invalid units, unknown deal or show, or a past air date"},
    },
)
async def book_io(
    body: IoCreate,
    db: TenantDbDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key", max_length=200, description="a retried POST returns the IO it booked"
        ),
    ] = None,
) -> IoPublic:
    """Books an IO for a won deal: slots, promo code and vanity URL in one transaction, then its workflow."""
    if idempotency_key:
        existing = await _by_idempotency_key(db, idempotency_key)
        if existing is not None:
            return await _read(db, existing, settings)
    io_id = uuid.uuid4()
    try:
        async with db.tx() as session:
            record_args = await _reserve(session, db.tenant_id, io_id, body, idempotency_key)
            # Started inside the transaction: if the start fails nothing is booked; if the
            # commit fails after it, the workflow finds no row and ends as abandoned.
            await _start_workflow(temporal, settings, db.tenant_id, io_id, *record_args)
    except IntegrityError as exc:
        if idempotency_key and "uq_io_bookings_idempotency" in str(exc.orig):
            existing = await _by_idempotency_key(db, idempotency_key)
            if existing is not None:
                return await _read(db, existing, settings)
        raise
    except RPCError as exc:
        log.error("could not start the workflow of IO %s: %s", io_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="Temporal did not accept the IO's workflow; nothing was booked, retry",
        ) from None
    return await _read(db, io_id, settings)


async def _by_idempotency_key(db: TenantDbDep, key: str) -> uuid.UUID | None:
    async with db.tx() as session:
        found: uuid.UUID | None = await session.scalar(
            select(IoBooking.id).where(IoBooking.idempotency_key == key)
        )
    return found


async def _reserve(
    session: Any, tenant_id: uuid.UUID, io_id: uuid.UUID, body: IoCreate, idempotency_key: str | None
) -> tuple[str, str, list[str], Decimal, date]:
    """Checks the deal, locks and counts the slots, claims the codes, writes the rows."""
    campaign = await session.get(Campaign, body.campaign_id)
    if campaign is None:
        raise _unprocessable(
            ["campaign_id"], f"deal {body.campaign_id} not found in this tenant", "not_found"
        )
    if campaign.stage != Stage.WON.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail={
                "message": (
                    f"deal {campaign.id} is in stage {campaign.stage!r}; only a won deal can be booked"
                ),
                "stage": campaign.stage,
            },
        )
    advertiser = await session.get(Advertiser, campaign.advertiser_id)
    show_ids = {u.show_id for u in body.ad_units}
    shows = {s.id: s for s in (await session.scalars(select(Show).where(Show.id.in_(show_ids))))}
    for i, u in enumerate(body.ad_units):
        if u.show_id not in shows:
            raise _unprocessable(
                ["ad_units", i, "show_id"], f"show {u.show_id} not found in this tenant", "not_found"
            )

    await lock_slots(session, tenant_id, [(u.show_id, u.air_date) for u in body.ad_units])
    usage = await slot_usage(session, [(u.show_id, u.air_date, u.placement.value) for u in body.ad_units])
    wanted: Counter[tuple[uuid.UUID, date, str]] = Counter()
    conflicts: list[dict[str, Any]] = []
    for i, u in enumerate(body.ad_units):
        key = (u.show_id, u.air_date, u.placement.value)
        wanted[key] += 1
        show = shows[u.show_id]
        capacity = slot_capacity(show.slots, u.placement)
        booked = usage.get(key, 0)
        if booked + wanted[key] > capacity:
            conflicts.append(
                {
                    "ad_unit": i,
                    "show_id": str(u.show_id),
                    "show_name": show.name,
                    "air_date": u.air_date.isoformat(),
                    "placement": u.placement.value,
                    "capacity": capacity,
                    "booked": booked,
                }
            )
    if conflicts:
        first = conflicts[0]
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail={
                "message": (
                    f"ad_units[{first['ad_unit']}]: {first['show_name']} has no free "
                    f"{first['placement']} slot on {first['air_date']} "
                    f"({first['booked']} of {first['capacity']} booked)"
                ),
                "conflicts": conflicts,
            },
        )

    vanity_domain = advertiser.domain
    vanity_path: str | None = None
    if vanity_domain:
        await lock_vanity_domain(session, tenant_id, vanity_domain)
        if body.vanity_path:
            taken = await taken_vanity_paths(session, domain=vanity_domain, prefix=body.vanity_path)
            if body.vanity_path.lower() in taken:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    detail=(
                        f"vanity URL https://{vanity_domain}/{body.vanity_path} is already used by another IO"
                    ),
                )
            vanity_path = body.vanity_path
        else:
            base = slugify(shows[body.ad_units[0].show_id].name)
            taken = await taken_vanity_paths(session, domain=vanity_domain, prefix=base)
            vanity_path = base
            n = 2
            while vanity_path in taken:
                vanity_path, n = f"{base}-{n}", n + 1
    elif body.vanity_path:
        raise _unprocessable(
            ["vanity_path"], f"advertiser {advertiser.name!r} has no domain; set one to use a vanity URL"
        )

    prices = [
        unit_price(
            u.pricing_model, cpm_usd=u.cpm_usd, impressions_goal=u.impressions_goal, flat_usd=u.flat_usd
        )
        for u in body.ad_units
    ]
    total = sum(prices, Decimal("0"))
    io = IoBooking(
        id=io_id,
        tenant_id=tenant_id,
        campaign_id=campaign.id,
        status=IoStatus.SCHEDULED.value,
        payment_terms_days=body.payment_terms_days,
        underdelivery_policy=body.underdelivery_policy.value,
        measurement_window_days=body.measurement_window_days,
        total_usd=total,
        idempotency_key=idempotency_key,
        vanity_domain=vanity_domain if vanity_path else None,
        vanity_path=vanity_path,
        vanity_url=f"https://{vanity_domain}/{vanity_path}" if vanity_path else None,
    )
    session.add(io)
    await session.flush()

    if body.promo_code:
        if not await claim_promo_code(session, tenant_id=tenant_id, code=body.promo_code, io_id=io_id):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=(
                    f"promo code {body.promo_code!r} is already in use in this network (codes ignore case)"
                ),
            )
        io.promo_code = body.promo_code
    else:
        for _ in range(50):
            code = generate_promo_code(advertiser.name, secrets.choice)
            if await claim_promo_code(session, tenant_id=tenant_id, code=code, io_id=io_id):
                io.promo_code = code
                break
        else:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="could not find a free promo code; retry"
            )

    for u, price in zip(body.ad_units, prices, strict=True):
        session.add(
            AdUnit(
                tenant_id=tenant_id,
                io_id=io_id,
                show_id=u.show_id,
                placement=u.placement.value,
                format=u.format.value,
                insertion=u.insertion.value,
                air_date=u.air_date,
                duration_s=u.duration_s,
                pricing_model=u.pricing_model.value,
                cpm_usd=u.cpm_usd,
                impressions_goal=u.impressions_goal,
                flat_usd=u.flat_usd,
                price_usd=price,
                status=UnitStatus.SCHEDULED.value,
            )
        )
    await session.flush()
    ordered = sorted(body.ad_units, key=lambda u: u.air_date)
    distinct_shows = list(dict.fromkeys(str(u.show_id) for u in ordered))
    return advertiser.name, str(advertiser.id), distinct_shows, total, ordered[0].air_date


async def _start_workflow(
    temporal: Client,
    settings: Settings,
    tenant_id: uuid.UUID,
    io_id: uuid.UUID,
    advertiser_name: str,
    advertiser_id: str,
    show_ids: list[str],
    total: Decimal,
    first_air: date,
) -> None:
    await temporal.start_workflow(
        IoBookingWorkflow.run,
        IoWorkflowInput(
            tenant_id=str(tenant_id), io_id=str(io_id), reports_per_run=settings.io_reports_per_run
        ),
        id=io_workflow_id(str(tenant_id), str(io_id)),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        search_attributes=io_search_attributes(
            str(tenant_id), advertiser_id, show_ids[0], IoStatus.SCHEDULED
        ),
        static_summary=io_summary(advertiser_name, len(show_ids), total, first_air),
    )


@router.get("", response_model=Page[IoSummary])
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


@router.get("/availability", response_model=Availability, responses={404: {"description": "unknown show"}})
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
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"show {show_id!r} not found")
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


@router.get("/{io_id}", response_model=IoPublic, responses={404: {"description": "unknown IO"}})
async def read_io(io_id: str, db: TenantDbDep, settings: SettingsDep) -> IoPublic:
    """Returns the IO with its units, delivery against goal and invoice."""
    return await _read(db, parse_id(io_id, "IO"), settings)


_UPDATE_STATUS = {
    UNKNOWN_UNIT: status.HTTP_422_UNPROCESSABLE_CONTENT,
    INVALID_REQUEST: status.HTTP_422_UNPROCESSABLE_CONTENT,
    UNIT_CANCELLED: status.HTTP_409_CONFLICT,
    UNIT_NOT_AIRED: status.HTTP_409_CONFLICT,
    IO_CLOSED: status.HTTP_409_CONFLICT,
    IO_ABANDONED: status.HTTP_404_NOT_FOUND,
}


async def _update(
    db: TenantDbDep,
    temporal: Client,
    io_id: uuid.UUID,
    update: Any,
    arg: Any,
    *,
    done_if: IoStatus | None = None,
) -> None:
    """Sends an update to the IO's workflow and maps its rejection to an HTTP error.

    `done_if`: a finished workflow whose IO is already in this status means the request was
    already carried out (a retried cancel), which is answered as success.
    """
    async with db.tx() as session:
        row = (
            await session.execute(select(IoBooking.status, IoBooking.invoice).where(IoBooking.id == io_id))
        ).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"IO {str(io_id)!r} not found")
    handle = temporal.get_workflow_handle(io_workflow_id(str(db.tenant_id), str(io_id)))
    for attempt in range(6):
        try:
            await handle.execute_update(update, arg)
            return
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type in _UPDATE_STATUS:
                if cause.type == UNKNOWN_UNIT:
                    raise _unprocessable(["ad_unit_id"], cause.message, "not_found") from None
                raise HTTPException(_UPDATE_STATUS[cause.type], detail=cause.message) from None
            log.error("update of IO %s failed: %s", io_id, exc)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="the IO could not be updated; retry"
            ) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                if done_if is not None and row[0] == done_if.value:
                    return
                # The workflow has finished: the IO was invoiced (or cancelled with nothing aired).
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    detail=f"IO {io_id} is {row[0]}; its workflow has finished and takes no more changes",
                ) from None
            if exc.status not in RETRYABLE_RPC or attempt == 5:
                log.error("update of IO %s failed: %s", io_id, exc)
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE, detail="Temporal is unavailable; retry"
                ) from None
            await asyncio.sleep(0.05 * 2**attempt)


@router.post(
    "/{io_id}/delivery",
    response_model=IoPublic,
    responses={
        404: {"description": "unknown IO"},
        409: {"description": "the unit is cancelled or has not aired, or the IO is invoiced"},
        422: {"description": "unknown ad unit or a negative count"},
    },
)
async def report_delivery(
    io_id: str, body: DeliveryReport, db: TenantDbDep, temporal: TemporalDep, settings: SettingsDep
) -> IoPublic:
    """Reports an ad unit's delivered impressions to date (an update with a validator)."""
    iid = parse_id(io_id, "IO")
    await _update(
        db,
        temporal,
        iid,
        IoBookingWorkflow.report_delivery,
        ReportDeliveryInput(
            ad_unit_id=str(body.ad_unit_id), impressions=body.impressions, source=body.source
        ),
    )
    return await _read(db, iid, settings)


@router.post(
    "/{io_id}/cancel",
    response_model=IoPublic,
    responses={404: {"description": "unknown IO"}, 409: {"description": "the IO is already invoiced"}},
)
async def cancel_io(
    io_id: str, body: IoCancel, db: TenantDbDep, temporal: TemporalDep, settings: SettingsDep
) -> IoPublic:
    """Cancels what has not aired: slots freed, promo code voided; aired units are still billed."""
    iid = parse_id(io_id, "IO")
    await _update(
        db,
        temporal,
        iid,
        IoBookingWorkflow.cancel,
        CancelIoInput(reason=body.reason),
        done_if=IoStatus.CANCELLED,
    )
    return await _read(db, iid, settings)


@router.get(
    "/{io_id}/document",
    responses={
        200: {
            "content": {
                "application/pdf": {},
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {},
            },
            "description": "the IO document",
        },
        404: {"description": "unknown IO"},
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
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"IO {io_id!r} not found")
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
