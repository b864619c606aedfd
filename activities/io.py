"""IO side effects: each persists what IoBookingWorkflow decided, in one idempotent transaction.

Every event key names the decision it reports (`io.ad_aired/{unit}`), so an activity that runs
twice finds its own event and writes nothing new. The writes an API request asked for (booking,
delivery, cancel) also claim the request in the write fence (db/fences.py) in their transaction:
a request the API gave up on (and answered 503) is never written.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities import metrics
from db.engine import SessionMaker, tenant_tx
from db.events import emit_event
from db.fences import claim_request
from db.io import IoRecord, io_statuses, load_io, next_free_day, reserve_booking
from db.models import AdUnit, IoBooking, PromoCode, Show
from domain import events
from domain.io import (
    BOOKING_CONFLICT,
    AdFormat,
    BookingRefused,
    BookMakegoodInput,
    BookMakegoodResult,
    CancelIoResult,
    CancelUnitsInput,
    CloseDeliveryResult,
    CloseDeliveryUnitsInput,
    CompleteIoInput,
    DeliveryOverdueInput,
    Insertion,
    IoDrift,
    IoSnapshot,
    IoStatus,
    LoadIoInput,
    MarkAiredInput,
    Placement,
    PricingModel,
    RecordDeliveryInput,
    RecordDeliveryResult,
    ReserveIoInput,
    ReserveIoResult,
    UnderdeliveryPolicy,
    UnitState,
    UnitStatus,
)
from workflows.search_attributes import IO_STATUS
from workflows.starters import IO_SNAPSHOT_QUERY, IO_WORKFLOW, io_workflow_id

IO_NOT_COMMITTED = "IoNotCommitted"
# Make-good units get ids derived from the unit they make good: one make-good per unit, and a
# retried booking finds the unit it already wrote.
_MAKEGOOD_NS = uuid.UUID("6f1c2f0e-3a55-4d8e-9a51-2b7f3c1de0a4")


def makegood_unit_id(unit_id: str) -> uuid.UUID:
    """The id of the make-good unit of `unit_id`."""
    return uuid.uuid5(_MAKEGOOD_NS, unit_id)


def unit_state(unit: AdUnit, show_name: str) -> UnitState:
    """The workflow's view of an ad unit row."""
    return UnitState(
        id=str(unit.id),
        show_id=str(unit.show_id),
        show_name=show_name,
        placement=Placement(unit.placement),
        format=AdFormat(unit.format),
        insertion=Insertion(unit.insertion),
        air_date=unit.air_date,
        duration_s=unit.duration_s,
        pricing_model=PricingModel(unit.pricing_model),
        cpm_usd=unit.cpm_usd,
        impressions_goal=unit.impressions_goal,
        flat_usd=unit.flat_usd,
        price_usd=unit.price_usd,
        delivered_impressions=unit.delivered_impressions,
        status=UnitStatus(unit.status),
        makegood_of=str(unit.makegood_of) if unit.makegood_of else None,
    )


def snapshot_of(record: IoRecord, tenant_id: str) -> IoSnapshot:
    """The workflow's starting state, read from the booked rows."""
    io = record.io
    return IoSnapshot(
        tenant_id=tenant_id,
        io_id=str(io.id),
        campaign_id=str(io.campaign_id),
        advertiser_id=str(record.advertiser.id),
        advertiser_name=record.advertiser.name,
        status=IoStatus(io.status),
        underdelivery_policy=UnderdeliveryPolicy(io.underdelivery_policy),
        measurement_window_days=io.measurement_window_days,
        payment_terms_days=io.payment_terms_days,
        promo_code=io.promo_code,
        vanity_url=io.vanity_url,
        total_usd=io.total_usd,
        units=[unit_state(u, name) for u, name in record.units],
        cancel_reason=io.cancel_reason,
    )


async def _claim(session: AsyncSession, tenant_id: str, request_id: str | None, io_id: str) -> str:
    """The fence's answer for this write: `claimed` (write it), `applied` (written) or `abandoned`."""
    if request_id is None:
        return "claimed"  # the import's signals and older histories carry no request
    claim = await claim_request(
        session=session, tenant_id=tenant_id, request_id=request_id, entity_type="io", entity_id=io_id
    )
    return claim.outcome


async def _emit_scheduled(session: AsyncSession, snap: IoSnapshot, at: Any) -> None:
    await emit_event(
        session=session,
        tenant_id=snap.tenant_id,
        type=events.IO_SCHEDULED,
        entity_type="io",
        entity_id=snap.io_id,
        payload={
            "campaign_id": snap.campaign_id,
            "advertiser_id": snap.advertiser_id,
            "total_usd": str(snap.total_usd),
            "units": len(snap.units),
            "promo_code": snap.promo_code,
            "vanity_url": snap.vanity_url,
            "first_air_date": min(u.air_date for u in snap.units).isoformat(),
        },
        occurred_at=at,
        idempotency_key=f"io.scheduled/{snap.io_id}",
    )


class IoActivities:
    """Activities of IoBookingWorkflow, bound to the worker's session factory."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sm = sessionmaker

    @activity.defn(name="reserve_io")
    async def reserve_io(self, inp: ReserveIoInput) -> ReserveIoResult:
        """Books the IO's rows in one transaction with its fence claim, and emits io.scheduled.

        A refusal (no free slot, promo code or vanity path taken, ...) is a non-retryable
        ApplicationError carrying the HTTP detail, with nothing written; a database outage retries.
        """
        io_id = uuid.UUID(inp.io_id)
        try:
            async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
                claim = await _claim(session, inp.tenant_id, inp.booking.request_id, inp.io_id)
                if claim == "abandoned":
                    return ReserveIoResult(applied=False)
                existing = await load_io(session=session, io_id=io_id)
                if existing is None:
                    if claim == "applied":
                        # Claimed by an attempt whose rows are gone: nothing to follow, say so.
                        raise ApplicationError(
                            f"IO {inp.io_id} was claimed but has no rows",
                            type="IoBookingLost",
                            non_retryable=True,
                        )
                    await reserve_booking(
                        session=session,
                        tenant_id=inp.tenant_id,
                        io_id=io_id,
                        booking=inp.booking,
                        choice=secrets.choice,
                    )
                    existing = await load_io(session=session, io_id=io_id)
                    assert existing is not None
                snap = snapshot_of(existing, inp.tenant_id)
                await _emit_scheduled(session, snap, inp.at)
        except BookingRefused as exc:
            raise ApplicationError(exc.message, exc.detail, type=exc.kind, non_retryable=True) from None
        except IntegrityError as exc:
            # The locks and checks above make this unreachable; should a unique key still say
            # no, retrying would only say it again: refuse the booking (nothing was written).
            constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", None)
            message = f"the booking conflicts with another IO ({constraint or 'a unique key'}); retry"
            raise ApplicationError(message, message, type=BOOKING_CONFLICT, non_retryable=True) from None
        return ReserveIoResult(applied=True, snapshot=snap)

    @activity.defn(name="load_io")
    async def load_io(self, inp: LoadIoInput) -> IoSnapshot:
        """Reads the booked IO and emits io.scheduled; retryable until the booking commits."""
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            record = await load_io(session=session, io_id=uuid.UUID(inp.io_id))
            if record is None:
                # The API starts the workflow inside its booking transaction: the row may not be
                # visible yet, or the transaction rolled back. Only this case gives up; a
                # database outage keeps retrying.
                attempt = activity.info().attempt
                raise ApplicationError(
                    f"IO {inp.io_id} is not committed (attempt {attempt})",
                    type=IO_NOT_COMMITTED,
                    non_retryable=attempt >= inp.give_up_after_attempts,
                )
            snap = snapshot_of(record, inp.tenant_id)
            await _emit_scheduled(session, snap, inp.at)
        return snap

    @activity.defn(name="mark_aired")
    async def mark_aired(self, inp: MarkAiredInput) -> None:
        """Marks units aired, one io.ad_aired each, and moves the IO to live or measuring."""
        ids = [uuid.UUID(u) for u in inp.unit_ids]
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            await session.execute(
                update(AdUnit)
                .where(AdUnit.id.in_(ids), AdUnit.status == UnitStatus.SCHEDULED.value)
                .values(status=UnitStatus.AIRED.value, aired_at=inp.at)
            )
            await session.execute(
                update(IoBooking)
                .where(IoBooking.id == uuid.UUID(inp.io_id), IoBooking.status != IoStatus.CANCELLED.value)
                .values(status=inp.io_status.value, updated_at=inp.at)
            )
            rows = await session.execute(
                select(AdUnit.id, AdUnit.show_id, Show.name, AdUnit.air_date, AdUnit.placement)
                .join(Show, Show.id == AdUnit.show_id)
                .where(AdUnit.id.in_(ids))
            )
            for unit_id, show_id, show_name, air_date, placement in rows:
                await emit_event(
                    session=session,
                    tenant_id=inp.tenant_id,
                    type=events.IO_AD_AIRED,
                    entity_type="io",
                    entity_id=inp.io_id,
                    payload={
                        "ad_unit_id": str(unit_id),
                        "show_id": str(show_id),
                        "show_name": show_name,
                        "air_date": air_date.isoformat(),
                        "placement": placement,
                    },
                    occurred_at=inp.at,
                    idempotency_key=f"io.ad_aired/{unit_id}",
                )

    @activity.defn(name="record_delivery")
    async def record_delivery(self, inp: RecordDeliveryInput) -> RecordDeliveryResult | None:
        """Stores a unit's delivered impressions to date and emits io.delivery_reported.

        Returns `applied=False` (nothing written) when the API had given up on the request.
        """
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            claim = await _claim(session, inp.tenant_id, inp.request_id, inp.io_id)
            if claim != "claimed":
                return RecordDeliveryResult(applied=claim == "applied")
            await session.execute(
                update(AdUnit)
                .where(AdUnit.id == uuid.UUID(inp.ad_unit_id))
                .values(delivered_impressions=inp.impressions, status=inp.unit_status.value)
            )
            share = round(inp.impressions / inp.impressions_goal, 4) if inp.impressions_goal else None
            emitted = await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=events.IO_DELIVERY_REPORTED,
                entity_type="io",
                entity_id=inp.io_id,
                payload={
                    "ad_unit_id": inp.ad_unit_id,
                    "impressions": inp.impressions,
                    "impressions_goal": inp.impressions_goal,
                    "delivered_share": share,
                    "source": inp.source,
                },
                occurred_at=inp.at,
                idempotency_key=f"io.delivery_reported/{inp.ad_unit_id}/{inp.seq}",
            )
        if emitted:  # a retry of an import's report rewrites the unit but emits (and counts) nothing
            metrics.delivery_reported(via="import" if inp.request_id is None else "api")
        return RecordDeliveryResult(applied=True)

    @activity.defn(name="book_makegood")
    async def book_makegood(self, inp: BookMakegoodInput) -> BookMakegoodResult:
        """Books a make-good unit for a shortfall in the show's next free slot (or finds none)."""
        original = inp.unit
        new_id = makegood_unit_id(original.id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            existing = (
                await session.execute(
                    select(AdUnit, Show.name).join(Show, Show.id == AdUnit.show_id).where(AdUnit.id == new_id)
                )
            ).first()
            if existing is not None:
                return BookMakegoodResult(unit=unit_state(existing[0], existing[1]))
            show = await session.get(Show, uuid.UUID(original.show_id))
            if show is None:
                return BookMakegoodResult(unit=None)
            day = await next_free_day(
                session=session,
                tenant_id=inp.tenant_id,
                show=show,
                placement=original.placement.value,
                after=inp.after,
                horizon_days=inp.horizon_days,
            )
            if day is None:
                return BookMakegoodResult(unit=None)
            unit = AdUnit(
                id=new_id,
                tenant_id=uuid.UUID(inp.tenant_id),
                io_id=uuid.UUID(inp.io_id),
                show_id=show.id,
                placement=original.placement.value,
                format=original.format.value,
                insertion=original.insertion.value,
                air_date=day,
                duration_s=original.duration_s,
                pricing_model=PricingModel.CPM.value,
                cpm_usd=original.cpm_usd,
                impressions_goal=inp.shortfall,
                price_usd=Decimal("0.00"),
                status=UnitStatus.SCHEDULED.value,
                makegood_of=uuid.UUID(original.id),
            )
            session.add(unit)
            await session.flush()
            await session.execute(
                update(AdUnit)
                .where(AdUnit.id == uuid.UUID(original.id))
                .values(status=UnitStatus.MADE_GOOD.value)
            )
            await session.execute(
                update(IoBooking)
                .where(IoBooking.id == uuid.UUID(inp.io_id), IoBooking.status != IoStatus.CANCELLED.value)
                .values(status=IoStatus.LIVE.value, updated_at=inp.at)
            )
            await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=events.IO_MAKEGOOD_SCHEDULED,
                entity_type="io",
                entity_id=inp.io_id,
                payload={
                    "ad_unit_id": str(new_id),
                    "makegood_of": original.id,
                    "show_id": original.show_id,
                    "show_name": show.name,
                    "placement": original.placement.value,
                    "air_date": day.isoformat(),
                    "shortfall": inp.shortfall,
                },
                occurred_at=inp.at,
                idempotency_key=f"io.makegood_scheduled/{original.id}",
            )
            booked = BookMakegoodResult(unit=unit_state(unit, show.name))
        metrics.makegood_booked(original.placement.value)
        return booked

    @activity.defn(name="cancel_io")
    async def cancel_io(self, inp: CancelUnitsInput) -> CancelIoResult | None:
        """Cancels units not yet aired (freeing their slots), voids the promo code, emits io.cancelled.

        Returns `applied=False` (nothing written) when the API had given up on the request.
        """
        io_id = uuid.UUID(inp.io_id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            claim = await _claim(session, inp.tenant_id, inp.request_id, inp.io_id)
            if claim != "claimed":
                return CancelIoResult(applied=claim == "applied")
            if inp.unit_ids:
                await session.execute(
                    update(AdUnit)
                    .where(
                        AdUnit.id.in_([uuid.UUID(u) for u in inp.unit_ids]),
                        AdUnit.status == UnitStatus.SCHEDULED.value,
                    )
                    .values(status=UnitStatus.CANCELLED.value)
                )
            await session.execute(
                update(PromoCode)
                .where(PromoCode.io_id == io_id, PromoCode.status == "active")
                .values(status="void", voided_at=inp.at)
            )
            await session.execute(
                update(IoBooking)
                .where(IoBooking.id == io_id, IoBooking.status != IoStatus.CANCELLED.value)
                .values(
                    status=IoStatus.CANCELLED.value,
                    cancel_reason=inp.reason,
                    cancelled_at=inp.at,
                    updated_at=inp.at,
                )
            )
            await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=events.IO_CANCELLED,
                entity_type="io",
                entity_id=inp.io_id,
                payload={"reason": inp.reason, "cancelled_units": inp.unit_ids},
                occurred_at=inp.at,
                idempotency_key=f"io.cancelled/{inp.io_id}",
            )
        return CancelIoResult(applied=True)

    @activity.defn(name="record_delivery_overdue")
    async def record_delivery_overdue(self, inp: DeliveryOverdueInput) -> None:
        """Moves the IO to awaiting_delivery and emits io.delivery_overdue, or the n-th reminder.

        One event per overdue round (keyed by the window's end) and per reminder number, so a
        retried activity writes nothing new.
        """
        io_id = uuid.UUID(inp.io_id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            await session.execute(
                update(IoBooking)
                .where(
                    IoBooking.id == io_id,
                    IoBooking.status != IoStatus.CANCELLED.value,
                    IoBooking.invoice.is_(None),
                )
                .values(status=inp.io_status.value, updated_at=inp.at)
            )
            rows = await session.execute(
                select(AdUnit.id, Show.name, AdUnit.air_date, AdUnit.impressions_goal)
                .join(Show, Show.id == AdUnit.show_id)
                .where(AdUnit.id.in_([uuid.UUID(u) for u in inp.unit_ids]))
                .order_by(AdUnit.air_date, AdUnit.id)
            )
            units = [
                {
                    "ad_unit_id": str(unit_id),
                    "show_name": show_name,
                    "air_date": air_date.isoformat(),
                    "impressions_goal": goal,
                }
                for unit_id, show_name, air_date, goal in rows
            ]
            due = inp.due_at.strftime("%Y%m%dT%H%M%S")
            payload: dict[str, Any] = {
                "units": units,
                "window_ended_at": inp.due_at.isoformat(),
                "reminder_hours": inp.reminder_hours,
            }
            if inp.reminder == 0:
                kind, key = events.IO_DELIVERY_OVERDUE, f"io.delivery_overdue/{inp.io_id}/{due}"
            else:
                payload["reminder"] = inp.reminder
                kind = events.IO_DELIVERY_REMINDER
                key = f"io.delivery_reminder/{inp.io_id}/{due}/{inp.reminder}"
            await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=kind,
                entity_type="io",
                entity_id=inp.io_id,
                payload=payload,
                occurred_at=inp.at,
                idempotency_key=key,
            )

    @activity.defn(name="close_delivery")
    async def close_delivery(self, inp: CloseDeliveryUnitsInput) -> CloseDeliveryResult:
        """Writes an operator's figure for each unreported unit (io.delivery_reported each).

        Returns `applied=False` (nothing written) when the API had given up on the request.
        """
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            claim = await _claim(session, inp.tenant_id, inp.request_id, inp.io_id)
            if claim != "claimed":
                return CloseDeliveryResult(applied=claim == "applied")
            for unit_id, (impressions, unit_status, seq) in inp.units.items():
                goal = await session.scalar(
                    select(AdUnit.impressions_goal).where(AdUnit.id == uuid.UUID(unit_id))
                )
                await session.execute(
                    update(AdUnit)
                    .where(AdUnit.id == uuid.UUID(unit_id))
                    .values(delivered_impressions=impressions, status=unit_status.value)
                )
                await emit_event(
                    session=session,
                    tenant_id=inp.tenant_id,
                    type=events.IO_DELIVERY_REPORTED,
                    entity_type="io",
                    entity_id=inp.io_id,
                    payload={
                        "ad_unit_id": unit_id,
                        "impressions": impressions,
                        "impressions_goal": goal,
                        "delivered_share": round(impressions / goal, 4) if goal else None,
                        "source": f"operator: bill as {inp.bill_as.value}",
                        "billed_as": inp.bill_as.value,
                    },
                    occurred_at=inp.at,
                    idempotency_key=f"io.delivery_reported/{unit_id}/{seq}",
                )
        return CloseDeliveryResult(applied=True)

    @activity.defn(name="complete_io")
    async def complete_io(self, inp: CompleteIoInput) -> None:
        """Writes the invoice and each unit's final status and bill; emits io.completed."""
        io_id = uuid.UUID(inp.io_id)
        billed = {line.ad_unit_id: line.amount_usd for line in inp.invoice.lines}
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            for unit_id, status in inp.unit_statuses.items():
                await session.execute(
                    update(AdUnit)
                    .where(AdUnit.id == uuid.UUID(unit_id))
                    .values(status=status.value, billed_usd=billed.get(unit_id))
                )
            await session.execute(
                update(IoBooking)
                .where(IoBooking.id == io_id)
                .values(
                    status=inp.io_status.value,
                    invoice=inp.invoice.model_dump(mode="json"),
                    completed_at=inp.at,
                    updated_at=inp.at,
                )
            )
            invoiced = await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=events.IO_COMPLETED,
                entity_type="io",
                entity_id=inp.io_id,
                payload={
                    "invoice_number": inp.invoice.number,
                    "total_usd": str(inp.invoice.total_usd),
                    "due_date": inp.invoice.due_date.isoformat(),
                    "lines": len(inp.invoice.lines),
                    "cancelled": inp.io_status is IoStatus.CANCELLED,
                },
                occurred_at=inp.at,
                idempotency_key=f"io.completed/{inp.io_id}",
            )
        if invoiced:
            metrics.invoice_issued(cancelled=inp.io_status is IoStatus.CANCELLED)


# Queries and describes in flight at once while checking a tenant's IOs for drift.
_DRIFT_CONCURRENCY = 8
_FINAL_ROW_STATUSES = frozenset({IoStatus.COMPLETED.value, IoStatus.CANCELLED.value})


async def io_drift(
    client: Client, sm: SessionMaker, tenant_id: uuid.UUID | str, *, query_running: bool = True
) -> list[IoDrift]:
    """Returns the IOs of a tenant whose row, workflow state and IoStatus search attribute disagree.

    One visibility listing finds each IO's workflow and search attribute; a running workflow is
    also asked for its `snapshot` (`query_running`). Visibility lags, so every IO that looks
    drifted is checked again from the strongly consistent side (the row re-read, `describe`, the
    query) and reported only if it still disagrees. A completed or cancelled IO without a
    workflow is not drift (closed workflows leave with the namespace's retention); an IO in
    `awaiting_delivery` is open (its workflow runs until a report or a close), so without a
    workflow it is drift like `live` or `measuring`. Row statuses
    only (not units): IO writes are regular activities, so the workflow learns each write in the
    task that upserts its status.
    """
    tid = str(tenant_id)
    async with tenant_tx(sm=sm, tenant_id=tid) as session:
        rows = await io_statuses(session=session)
    if not rows:
        return []
    listed: dict[str, tuple[str | None, bool]] = {}
    query = f"WorkflowType = '{IO_WORKFLOW}' AND TenantId = '{tid}'"
    async for wf in client.list_workflows(query, page_size=1000):
        running = wf.status == WorkflowExecutionStatus.RUNNING
        if wf.id in listed and listed[wf.id][1] and not running:
            continue  # a continued-as-new run listed after its running successor
        listed[wf.id] = (wf.typed_search_attributes.get(IO_STATUS), running)
    sem = asyncio.Semaphore(_DRIFT_CONCURRENCY)

    async def observe(io_id: uuid.UUID, confirm: bool) -> IoDrift | None:
        wid = io_workflow_id(tid, str(io_id))
        row_status = rows[io_id]
        sa_status, running = listed.get(wid, (None, False))
        found = wid in listed
        async with sem:
            if confirm:
                async with tenant_tx(sm=sm, tenant_id=tid) as session:
                    row_status = (
                        await session.scalar(select(IoBooking.status).where(IoBooking.id == io_id))
                        or row_status
                    )
                try:
                    desc = await client.get_workflow_handle(wid).describe()
                except RPCError:
                    found, sa_status, running = False, None, False
                else:
                    found = True
                    sa_status = desc.typed_search_attributes.get(IO_STATUS)
                    running = desc.status == WorkflowExecutionStatus.RUNNING
            wf_status: str | None = None
            if found and running and query_running:
                try:
                    snap = await client.get_workflow_handle(wid).query(
                        IO_SNAPSHOT_QUERY, result_type=IoSnapshot
                    )
                except RPCError:
                    snap = None
                wf_status = snap.status.value if snap is not None else None
        if not found and row_status in _FINAL_ROW_STATUSES:
            return None  # a closed workflow past the namespace's retention is gone, rightly
        if not found:
            reason = "no workflow for this IO"
        elif sa_status != row_status:
            reason = f"IoStatus search attribute {sa_status!r} but the row says {row_status!r}"
        elif query_running and running and wf_status != row_status:
            reason = f"the workflow says {wf_status!r} but the row says {row_status!r}"
        else:
            return None
        return IoDrift(
            io_id=str(io_id),
            workflow_id=wid,
            row_status=row_status,
            workflow_status=wf_status,
            search_attribute_status=sa_status,
            running=running,
            reason=reason,
        )

    first = await asyncio.gather(*(observe(i, confirm=False) for i in rows))
    suspects = [uuid.UUID(d.io_id) for d in first if d is not None]
    confirmed = await asyncio.gather(*(observe(i, confirm=True) for i in suspects))
    return [d for d in confirmed if d is not None]
