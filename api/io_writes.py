"""IO writes under the write fence: book an IO, report delivery, cancel, close a missing delivery.

Booking is the IO workflow's first step (`book`, sent with update-with-start); the other writes
are updates of the running workflow. Each carries a request id (its update id too), is resent
within the budget and fenced off when the budget runs out (api/fenced.py: the protocol IOs
share with deals), and is answered by reading the IO back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import errors
from api.deps import TenantDb
from api.fenced import Answer, Backoff, begin_keyed, bounded, fence_or_refuse, read_back, within_budget
from api.io_schemas import IoCreate, IoPublic, public_io
from db.fences import new_request_id, request_state
from db.io import booking_facts, io_of_request, io_status, io_with_idempotency_key, load_io
from domain.io import (
    BOOKING_REFUSALS,
    BookingRefused,
    BookIoInput,
    BookIoResult,
    IoStatus,
    IoWorkflowInput,
    UnitRequest,
)
from settings import Settings
from workflows.io import REQUEST_ABANDONED, IoBookingWorkflow
from workflows.starters import io_start_options, io_workflow_id

log = logging.getLogger("sponsorflow.api.io")

IO_UPDATE_BACKOFF = Backoff(base_s=0.05)
_REUSED = "request; use a new key"


async def read_io(db: TenantDb, io_id: uuid.UUID, settings: Settings) -> IoPublic:
    """The IO as clients see it (404 when this tenant has none)."""
    async with db.tx() as session:
        record = await load_io(session=session, io_id=io_id)
    if record is None:
        raise errors.not_found("IO", str(io_id))
    return public_io(record, db.tenant_id, settings)


def _not_applied(what: str) -> errors.ApiError:
    return errors.not_applied(f"{what} was not applied, and it never will be; retry")


async def _give_up(db: TenantDb, request_id: str, io_id: uuid.UUID, what: str) -> None:
    """Fences a request the API stops waiting for: 503 when that wins, returns when the write did."""
    await fence_or_refuse(
        db,
        request_id=request_id,
        entity_type="io",
        entity_id=str(io_id),
        what=what,
        refusal=_not_applied(what),
    )


def booking_input(body: IoCreate, idempotency_key: str | None, request_id: str) -> BookIoInput:
    """The `book` update's input of a booking request."""
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


async def book(
    *, db: TenantDb, temporal: Client, settings: Settings, body: IoCreate, idempotency_key: str | None
) -> Answer[IoPublic]:
    """Books an IO for a won deal: its workflow's first step, sent with update-with-start."""
    io_id = uuid.uuid4()
    request_id = new_request_id()
    if idempotency_key:
        keyed = await begin_keyed(
            db,
            settings,
            key=f"io-booking:{idempotency_key}",
            payload=body.model_dump(mode="json"),
            entity_type="io",
            entity_id=str(io_id),
            reused=_REUSED,
        )
        assert keyed.request_id is not None
        booked = await _booked_before(
            db, keyed.request_id if keyed.status == "replay" else None, idempotency_key
        )
        if booked is not None:
            return Answer(
                await read_back(lambda: read_io(db, booked, settings), what="the booking"), replayed=True
            )
        request_id = keyed.request_id
    booking = booking_input(body, idempotency_key, request_id)
    inp, options = await _checked_start(db, settings, io_id, booking)
    what = "the booking"
    deadline = time.monotonic() + settings.update_budget_seconds
    try:
        answer = await within_budget(
            lambda: bounded(lambda: _send_booking(temporal, booking, inp, options, request_id), deadline),
            what=what,
            deadline=deadline,
            backoff=IO_UPDATE_BACKOFF,
        )
    except WorkflowUpdateFailedError as exc:
        raise _booking_failed(exc, what) from None
    except (RPCError, WorkflowAlreadyStartedError) as exc:
        log.error("Temporal did not take the booking of IO %s: %s", io_id, exc)
        answer = None
    if answer is None:
        await _give_up(db, request_id, io_id, what)
    return Answer(await read_back(lambda: read_io(db, io_id, settings), what=what))


async def _booked_before(
    db: TenantDb, replayed_request: str | None, idempotency_key: str
) -> uuid.UUID | None:
    """The IO an earlier attempt with this key booked, if it was applied."""
    async with db.tx() as session:
        if replayed_request is not None:
            return await io_of_request(session=session, request_id=replayed_request)
        # Bookings made before the write fence carry their key on the row only.
        return await io_with_idempotency_key(session=session, key=idempotency_key)


async def _checked_start(
    db: TenantDb, settings: Settings, io_id: uuid.UUID, booking: BookIoInput
) -> tuple[IoWorkflowInput, dict[str, Any]]:
    """Checks the booking against its deal and shows (a refusal before anything is sent), and
    returns the IO workflow's input and start options."""
    try:
        async with db.tx() as session:
            facts = await booking_facts(session=session, booking=booking)
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
    return inp, options


async def _send_booking(
    temporal: Client, booking: BookIoInput, inp: IoWorkflowInput, options: dict[str, Any], request_id: str
) -> BookIoResult:
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


async def update(
    *,
    db: TenantDb,
    temporal: Client,
    settings: Settings,
    io_id: uuid.UUID,
    update: Any,
    make_arg: Callable[[str], Any],
    what: str,
    scope: str,
    payload: Any,
    idempotency_key: str | None,
    done_if: IoStatus | None = None,
) -> Answer[IoPublic]:
    """Sends a fenced update to the IO's workflow and answers the IO read back.

    The update carries a fresh request id (its update id too), resent within the budget; when
    the budget runs out the request is fenced off (503: never applied) unless its write won. An
    Idempotency-Key's earlier attempt that was applied answers instead (a replay). `done_if`: a
    finished workflow whose IO is already in this status means the request was already carried
    out (a retried cancel), which is answered as success.
    """
    async with db.tx() as session:
        found = await io_status(session=session, io_id=io_id)
    if found is None:
        raise errors.not_found("IO", str(io_id))
    request_id = new_request_id()
    replayed = False
    if idempotency_key:
        keyed = await begin_keyed(
            db,
            settings,
            key=f"{scope}:{io_id}:{idempotency_key}",
            payload=payload,
            entity_type="io",
            entity_id=str(io_id),
            reused=_REUSED,
        )
        replayed = keyed.status == "replay"
        assert keyed.request_id is not None
        request_id = keyed.request_id
    if not replayed:
        handle = temporal.get_workflow_handle(io_workflow_id(str(db.tenant_id), str(io_id)))
        await _send_update(
            db,
            lambda: handle.execute_update(update, make_arg(request_id), id=request_id),
            budget_s=settings.update_budget_seconds,
            io_id=io_id,
            request_id=request_id,
            what=what,
            finished=found == done_if.value if done_if is not None else False,
            status=found,
        )
    return Answer(await read_back(lambda: read_io(db, io_id, settings), what="the change"), replayed=replayed)


async def _send_update(
    db: TenantDb,
    send: Callable[[], Awaitable[Any]],
    *,
    budget_s: float,
    io_id: uuid.UUID,
    request_id: str,
    what: str,
    finished: bool,
    status: str,
) -> None:
    """Sends within the budget; returns when applied, raises the refusal (or the fence's 503)."""
    deadline = time.monotonic() + budget_s
    try:
        answer = await within_budget(
            lambda: bounded(send, deadline), what=what, deadline=deadline, backoff=IO_UPDATE_BACKOFF
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
            return
        if finished:
            return
        # The workflow has ended. An earlier attempt of this request may be what ended it (a
        # cancellation with nothing aired): the fence says whether it was applied.
        async with db.tx() as session:
            if await request_state(session=session, request_id=request_id) == "applied":
                return
        # The workflow has finished: the IO was invoiced (or cancelled with nothing aired).
        raise errors.conflict(
            f"IO {io_id} is {status}; its workflow has finished and takes no more changes",
            code=errors.WORKFLOW_FINISHED,
            io_status=status,
        ) from None
    if answer is None:
        await _give_up(db, request_id, io_id, what)
