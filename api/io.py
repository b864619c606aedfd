"""Insertion orders: book (slots, promo code, vanity URL), read, report delivery, cancel, documents.

The routes are adapters: the fenced writes live in api/io_writes.py (the protocol they share
with deals in api/fenced.py), the schemas in api/io_schemas.py, the rules in domain/io.py.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Response, status

from api import errors, io_writes
from api.deps import SettingsDep, TemporalDep, TenantDbDep, feature_flag, parse_id
from api.fenced import Answer
from api.io_documents import render_pdf, render_xlsx
from api.io_schemas import (
    Availability,
    DeliveryClose,
    DeliveryReport,
    IoCancel,
    IoCreate,
    IoPublic,
    IoSummary,
    document_of,
    summary,
)
from api.io_schemas import (
    availability as availability_of,
)
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
from db.io import booked_per_day, get_show, ios_query, load_io, publisher_name
from db.models import IoBooking
from domain.io import (
    CancelIoInput,
    CloseDeliveryInput,
    IoStatus,
    Placement,
    ReportDeliveryInput,
    slot_capacity,
    slots_by_day,
)
from workflows.io import IoBookingWorkflow

__all__ = ["document_of", "router"]

router = APIRouter(
    prefix="/api/v1/io",
    tags=["io"],
    dependencies=[Depends(feature_flag("enable_io_bookings", "ENABLE_IO_BOOKINGS"))],
)


def _answer(answer: Answer[IoPublic], response: Response) -> IoPublic:
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return answer.body


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
    answer = await io_writes.book(
        db=db, temporal=temporal, settings=settings, body=body, idempotency_key=idempotency_key
    )
    return _answer(answer, response)


@router.get("", response_model=Page[IoSummary], operation_id="listIos", responses={422: invalid_cursor()})
async def list_ios(
    db: TenantDbDep,
    campaign_id: Annotated[uuid.UUID | None, Query(description="only this deal's IOs")] = None,
    status_: Annotated[IoStatus | None, Query(alias="status")] = None,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
) -> Page[IoSummary]:
    """Lists this tenant's IOs, newest first."""
    stmt = ios_query(campaign_id=campaign_id, status=status_)
    async with db.tx() as session:
        rows = (await session.execute(newest_first(stmt, IoBooking, cursor, limit))).all()
    items = [summary(io, name, n, next_air) for io, name, n, next_air in rows[:limit]]
    return Page(items=items, next_cursor=newest_next_cursor([r[0] for r in rows], limit))


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
    async with db.tx() as session:
        show = await get_show(session=session, show_id=sid)
        if show is None:
            raise errors.not_found("show", show_id)
        used = await booked_per_day(
            session=session,
            show_id=sid,
            placement=placement.value,
            first=first,
            last=first + timedelta(days=days - 1),
        )
    capacity = slot_capacity(show.slots, placement.value)
    return availability_of(sid, placement, capacity, slots_by_day(first, days, capacity, used))


@router.get("/{io_id}", response_model=IoPublic, operation_id="getIo", responses={404: not_found("IO")})
async def read_io(io_id: str, db: TenantDbDep, settings: SettingsDep) -> IoPublic:
    """Returns the IO with its units, delivery against goal and invoice."""
    return await io_writes.read_io(db, parse_id(io_id, "IO"), settings)


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
    answer = await io_writes.update(
        db=db,
        temporal=temporal,
        settings=settings,
        io_id=iid,
        update=IoBookingWorkflow.report_delivery,
        make_arg=lambda request_id: ReportDeliveryInput(
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
    return _answer(answer, response)


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
    answer = await io_writes.update(
        db=db,
        temporal=temporal,
        settings=settings,
        io_id=iid,
        update=IoBookingWorkflow.cancel,
        make_arg=lambda request_id: CancelIoInput(reason=body.reason, request_id=request_id),
        what="the cancellation",
        scope="io-cancel",
        payload=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        done_if=IoStatus.CANCELLED,
    )
    return _answer(answer, response)


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
    answer = await io_writes.update(
        db=db,
        temporal=temporal,
        settings=settings,
        io_id=iid,
        update=IoBookingWorkflow.close_delivery,
        make_arg=lambda request_id: CloseDeliveryInput(bill_as=body.bill_as, request_id=request_id),
        what="closing the delivery",
        scope="io-close-delivery",
        payload=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )
    return _answer(answer, response)


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
        record = await load_io(session=session, io_id=iid)
        publisher = await publisher_name(session=session, tenant_id=db.tenant_id)
    if record is None:
        raise errors.not_found("IO", io_id)
    doc = document_of(record, publisher)
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
