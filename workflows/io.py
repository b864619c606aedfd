"""IoBookingWorkflow: one insertion order from booking to invoice.

The booking is the workflow's first step: the API sends the `book` update with update-with-start,
and its activity books slots, promo code and vanity URL in one transaction (a refusal ends the
run with nothing booked). Runs started before that (`book_via_update=False`) load what the API
booked. From there it follows the IO: a durable timer per air date, delivery reports, the
measurement window, make-goods or pro-rata for shortfalls, the invoice. Cancellation stops what
has not aired and still bills what has.

No invoice without a delivery figure: when the window ends and an aired CPM unit has no report,
the IO waits in `awaiting_delivery` (io.delivery_overdue once, io.delivery_reminder every
`delivery_reminder_hours`) until a report arrives (update or signal) or an operator closes it
(`close_delivery`: bill those units as 0 or as their goal). Runs recorded before this reach the
window's end without the `delivery-overdue` patch marker and invoice as before.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.io import IoActivities
    from domain.io import (
        BOOKING_REFUSALS,
        BillAs,
        BookIoInput,
        BookIoResult,
        BookMakegoodInput,
        CancelIoInput,
        CancelUnitsInput,
        CloseDeliveryInput,
        CloseDeliveryUnitsInput,
        CompleteIoInput,
        DeliveryOverdueInput,
        IoSnapshot,
        IoStatus,
        IoWorkflowInput,
        IoWorkflowResult,
        LoadIoInput,
        MarkAiredInput,
        PricingModel,
        RecordDeliveryInput,
        ReportDeliveryInput,
        ReserveIoInput,
        UnitState,
        UnitStatus,
        air_moment,
        build_invoice,
        makegoods_due,
    )
    from workflows import search_attributes as sa

# Rejection types the API maps to HTTP statuses.
UNKNOWN_UNIT = "UnknownAdUnit"
UNIT_CANCELLED = "AdUnitCancelled"
UNIT_NOT_AIRED = "AdUnitNotAired"
IO_CLOSED = "IoClosed"
IO_ABANDONED = "IoAbandoned"
INVALID_REQUEST = "InvalidIoRequest"
# The API gave up on the request (and answered 503) before its write: it was not applied.
REQUEST_ABANDONED = "RequestAbandoned"
# A `book` update for an IO that is booked by another request, or whose run ended unbooked.
IO_ALREADY_BOOKED = "IoAlreadyBooked"
BOOKING_CLOSED = "IoBookingClosed"
# Any other failure of the booking activity: nothing was booked, and the run ends.
BOOKING_FAILED = "IoBookingFailed"
# close_delivery on an IO that is not awaiting a delivery report.
NOT_AWAITING_DELIVERY = "IoNotAwaitingDelivery"

# Runs recorded before it invoiced an unreported CPM unit as 0 at the window's end; with it the
# IO waits in awaiting_delivery (io.delivery_overdue, then reminders) until a report or a close.
DELIVERY_OVERDUE_PATCH = "delivery-overdue"

_WRITE_TIMEOUT = timedelta(seconds=30)
# Writes retry until the database answers: an IO must never skip a step because of an outage.
_WRITE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60))


def _reject(message: str, kind: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def _request_key(req: BookIoInput) -> str:
    return req.request_id or "-"


def _not_applied(what: str) -> ApplicationError:
    """The update's failure when its API had given up first: the write fence refused it."""
    return _reject(f"{what} was not applied, and it never will be; retry", REQUEST_ABANDONED)


@workflow.defn
class IoBookingWorkflow:
    """An insertion order, alive until every unit is aired, reconciled and invoiced, or cancelled."""

    @workflow.init
    def __init__(self, inp: IoWorkflowInput) -> None:
        self._inp = inp
        self._io: IoSnapshot | None = inp.snapshot
        self._abandoned = False
        # The booking path: the request whose `book` update is booking this IO, and how a run
        # that booked nothing ended (abandoned or rejected).
        self._booking_request: str | None = inp.booked_by
        self._unbooked: IoStatus | None = None
        # Bumped by a cancellation: the main loop re-plans its next timer.
        self._changes = 0
        self._reports = 0
        # Handlers and the timeline take turns: each decision sees the state the last one left.
        self._lock = asyncio.Lock()

    @workflow.run
    async def run(self, inp: IoWorkflowInput) -> IoWorkflowResult:
        """Follows the IO: air dates, measurement window, make-goods, invoice."""
        if self._io is None:
            if inp.book_via_update:
                if not await self.wait_for_booking():
                    return IoWorkflowResult(io_id=inp.io_id, status=self._unbooked or IoStatus.ABANDONED)
            elif not await self.load_booking():
                return IoWorkflowResult(io_id=inp.io_id, status=IoStatus.ABANDONED)
        self._describe()
        while True:
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    inp.model_copy(update={"snapshot": self._io, "booked_by": self._booking_request})
                )
            step = self._next_step()
            if step is None:
                break
            kind, at = step
            if not await self._sleep_until(at, kind):
                continue
            async with self._lock:
                step = self._next_step()
                if step is None or step[1] > workflow.now():
                    continue
                if step[0] == "air date":
                    await self.air_due_units()
                elif step[0] == "delivery reminder":
                    await self.remind_delivery()
                else:
                    await self.reconcile()
        await workflow.wait_condition(workflow.all_handlers_finished)
        io = self._snapshot()
        return IoWorkflowResult(
            io_id=inp.io_id,
            status=io.status,
            invoice_total_usd=io.invoice.total_usd if io.invoice else None,
        )

    async def load_booking(self) -> bool:
        """Reads the booked IO (emitting io.scheduled); False if the booking never committed."""
        try:
            self._io = await workflow.execute_activity_method(
                IoActivities.load_io,
                LoadIoInput(
                    tenant_id=self._inp.tenant_id,
                    io_id=self._inp.io_id,
                    at=workflow.now(),
                    give_up_after_attempts=self._inp.load_attempts,
                ),
                start_to_close_timeout=_WRITE_TIMEOUT,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
                ),
            )
        except ActivityError:
            self._abandoned = True
            workflow.upsert_search_attributes([sa.IO_STATUS.value_set(IoStatus.ABANDONED.value)])
            workflow.set_current_details("The booking transaction never committed: nothing to follow.")
            return False
        return True

    async def wait_for_booking(self) -> bool:
        """Waits for the `book` update to book the IO; False if the run ends with nothing booked."""
        try:
            await workflow.wait_condition(
                lambda: self._booking_request is not None or self._io is not None,
                timeout=timedelta(seconds=self._inp.booking_wait_seconds),
                timeout_summary="booking request",
            )
        except TimeoutError:
            if self._booking_request is None and self._io is None:
                # The request's API has given up long since: end, and refuse a late `book`.
                self._end_unbooked(IoStatus.ABANDONED, "No booking request arrived: nothing was booked.")
                return False
            # A `book` started in the very task the timer fired in: its outcome decides.
        await workflow.wait_condition(lambda: self._io is not None or self._unbooked is not None)
        if self._io is None:
            await workflow.wait_condition(workflow.all_handlers_finished)
            return False
        return True

    async def air_due_units(self) -> None:
        """Marks every unit whose air date has come as aired (io.ad_aired each)."""
        io = self._snapshot()
        now = workflow.now()
        due = [u for u in io.units if u.status is UnitStatus.SCHEDULED and air_moment(u.air_date) <= now]
        if not due:
            return
        still = any(u.status is UnitStatus.SCHEDULED for u in io.units if u not in due)
        status = io.status
        if status is not IoStatus.CANCELLED:
            status = IoStatus.LIVE if still else IoStatus.MEASURING
        await workflow.execute_activity_method(
            IoActivities.mark_aired,
            MarkAiredInput(
                tenant_id=io.tenant_id, io_id=io.io_id, unit_ids=[u.id for u in due], io_status=status, at=now
            ),
            start_to_close_timeout=_WRITE_TIMEOUT,
            retry_policy=_WRITE_RETRY,
        )
        for u in due:
            u.status = UnitStatus.AIRED
            if u.impressions_goal and u.delivered_impressions >= u.impressions_goal:
                u.status = UnitStatus.DELIVERED
        self._set_status(status)

    async def reconcile(self) -> None:
        """Settles the IO once the measurement window has passed: make-goods first, then the invoice.

        An aired CPM unit without a delivery report holds the invoice: the IO awaits delivery.
        """
        io = self._snapshot()
        now = workflow.now()
        missing = io.units_awaiting_report()
        if missing and (io.delivery_overdue_at is not None or workflow.patched(DELIVERY_OVERDUE_PATCH)):
            if io.delivery_overdue_at is None:
                await self.declare_delivery_overdue()
            return
        io.delivery_overdue_at = None
        io.delivery_reminders = 0
        if not io.makegoods_booked and io.status is not IoStatus.CANCELLED:
            io.makegoods_booked = True
            booked = False
            for need in makegoods_due(io.units, io.underdelivery_policy):
                unit = self._unit(need.unit_id)
                assert unit is not None
                result = await workflow.execute_activity_method(
                    IoActivities.book_makegood,
                    BookMakegoodInput(
                        tenant_id=io.tenant_id,
                        io_id=io.io_id,
                        unit=unit,
                        shortfall=need.shortfall,
                        after=now.date(),
                        at=now,
                    ),
                    start_to_close_timeout=_WRITE_TIMEOUT,
                    retry_policy=_WRITE_RETRY,
                )
                if result.unit is None:
                    unit.makegood_unavailable = True
                    continue
                unit.status = UnitStatus.MADE_GOOD
                io.units.append(result.unit)
                booked = True
            if booked:
                # The make-goods are followed like any unit: air date, window, then the invoice.
                self._set_status(IoStatus.LIVE)
                return
        invoice, statuses = build_invoice(
            io_id=io.io_id, units=io.units, issued_at=now, payment_terms_days=io.payment_terms_days
        )
        final = IoStatus.CANCELLED if io.status is IoStatus.CANCELLED else IoStatus.COMPLETED
        await workflow.execute_activity_method(
            IoActivities.complete_io,
            CompleteIoInput(
                tenant_id=io.tenant_id,
                io_id=io.io_id,
                invoice=invoice,
                unit_statuses=statuses,
                io_status=final,
                at=now,
            ),
            start_to_close_timeout=_WRITE_TIMEOUT,
            retry_policy=_WRITE_RETRY,
        )
        for u in io.units:
            u.status = statuses.get(u.id, u.status)
        io.invoice = invoice
        self._set_status(final)

    async def declare_delivery_overdue(self) -> None:
        """The window ended with CPM units unreported: awaiting_delivery and io.delivery_overdue."""
        io = self._snapshot()
        now = workflow.now()
        status = IoStatus.CANCELLED if io.status is IoStatus.CANCELLED else IoStatus.AWAITING_DELIVERY
        await self._write_overdue(now, 0, status)
        io.delivery_overdue_at = now
        io.delivery_reminders = 0
        self._set_status(status)

    async def remind_delivery(self) -> None:
        """Another interval passed with CPM units unreported: the n-th io.delivery_reminder."""
        io = self._snapshot()
        if io.delivery_overdue_at is None or not io.units_awaiting_report():
            return
        n = io.delivery_reminders + 1
        await self._write_overdue(io.delivery_overdue_at, n, io.status)
        io.delivery_reminders = n
        self._describe()

    async def _write_overdue(self, due_at: datetime, reminder: int, status: IoStatus) -> None:
        io = self._snapshot()
        await workflow.execute_activity_method(
            IoActivities.record_delivery_overdue,
            DeliveryOverdueInput(
                tenant_id=io.tenant_id,
                io_id=io.io_id,
                unit_ids=[u.id for u in io.units_awaiting_report()],
                due_at=due_at,
                reminder=reminder,
                reminder_hours=self._inp.delivery_reminder_hours,
                io_status=status,
                at=workflow.now(),
            ),
            start_to_close_timeout=_WRITE_TIMEOUT,
            retry_policy=_WRITE_RETRY,
        )

    # -----------------------------------------------------------------------------------------
    # Handlers

    @workflow.update
    async def book(self, req: BookIoInput) -> BookIoResult:
        """Books the IO (slots, promo code, vanity URL, units) in one activity: the run's first step."""
        self._check_bookable(req)
        if self._io is not None:
            # This very request, sent again to a later run: it booked the IO.
            return BookIoResult(io_id=self._inp.io_id, status=self._io.status)
        self._booking_request = _request_key(req)
        try:
            result = await workflow.execute_activity_method(
                IoActivities.reserve_io,
                ReserveIoInput(
                    tenant_id=self._inp.tenant_id, io_id=self._inp.io_id, booking=req, at=workflow.now()
                ),
                start_to_close_timeout=_WRITE_TIMEOUT,
                retry_policy=_WRITE_RETRY,
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type in BOOKING_REFUSALS:
                self._end_unbooked(IoStatus.REJECTED, f"Booking refused: {cause.message}")
                raise ApplicationError(
                    cause.message, *cause.details, type=cause.type, non_retryable=True
                ) from None
            self._end_unbooked(IoStatus.REJECTED, "The booking failed: nothing was booked.")
            raise _reject("the booking failed and nothing was booked; retry", BOOKING_FAILED) from None
        if not result.applied or result.snapshot is None:
            self._end_unbooked(
                IoStatus.ABANDONED,
                "The API gave up on this booking before it was written: nothing was booked.",
            )
            raise _not_applied("the booking")
        self._io = result.snapshot
        # Booked: visibility learns it in the task that learns the write.
        workflow.upsert_search_attributes([sa.IO_STATUS.value_set(self._io.status.value)])
        return BookIoResult(io_id=self._inp.io_id, status=self._io.status)

    @book.validator
    def validate_book(self, req: BookIoInput) -> None:
        """Rejects a booking of an IO booked by another request, or whose run ended unbooked."""
        self._check_bookable(req)

    @workflow.update
    async def report_delivery(self, req: ReportDeliveryInput) -> UnitState:
        """Records a unit's delivered impressions to date (the latest report wins)."""
        await self._wait_loaded()
        async with self._lock:
            # Checked again: a cancellation or the invoice may have come first.
            unit = self._check_delivery(req)
            return await self._apply_delivery(unit, req)

    @report_delivery.validator
    def validate_report_delivery(self, req: ReportDeliveryInput) -> None:
        """Rejects an unknown, cancelled or unaired unit, a negative count, or a closed IO."""
        if req.impressions < 0:
            raise _reject(f"impressions must be 0 or more, got {req.impressions}", INVALID_REQUEST)
        if self._io is not None:
            self._check_delivery(req)

    @workflow.signal
    async def delivery_reported(self, req: ReportDeliveryInput) -> None:
        """The import path of report_delivery: fire-and-forget, invalid reports are logged and dropped."""
        await self._wait_loaded()
        async with self._lock:
            try:
                if req.impressions < 0:
                    raise _reject("negative impressions", INVALID_REQUEST)
                unit = self._check_delivery(req)
            except ApplicationError as exc:
                workflow.logger.warning("delivery report dropped: %s", exc.message)
                return
            await self._apply_delivery(unit, req)

    @workflow.update
    async def cancel(self, req: CancelIoInput) -> IoSnapshot:
        """Cancels every unit not yet aired, frees its slot, voids the promo code."""
        await self._wait_loaded()
        async with self._lock:
            io = self._snapshot()
            if io.status is IoStatus.CANCELLED:
                return io
            self._check_open()
            now = workflow.now()
            pending = [u for u in io.units if u.status is UnitStatus.SCHEDULED]
            written = await workflow.execute_activity_method(
                IoActivities.cancel_io,
                CancelUnitsInput(
                    tenant_id=io.tenant_id,
                    io_id=io.io_id,
                    unit_ids=[u.id for u in pending],
                    reason=req.reason,
                    at=now,
                    request_id=req.request_id,
                ),
                start_to_close_timeout=_WRITE_TIMEOUT,
                retry_policy=_WRITE_RETRY,
            )
            if written is not None and not written.applied:
                raise _not_applied("the cancellation")
            for u in pending:
                u.status = UnitStatus.CANCELLED
            io.cancel_reason = req.reason
            self._set_status(IoStatus.CANCELLED)
            self._changes += 1
            return io

    @cancel.validator
    def validate_cancel(self, req: CancelIoInput) -> None:
        """Rejects a cancellation without a reason, or of an IO already invoiced."""
        if not req.reason.strip():
            raise _reject("a reason is required to cancel an IO", INVALID_REQUEST)
        if self._io is not None and self._io.status is not IoStatus.CANCELLED:
            self._check_open()

    @workflow.update
    async def close_delivery(self, req: CloseDeliveryInput) -> IoSnapshot:
        """An operator closes the missing delivery: unreported units billed as 0 or as their goal.

        Then the IO reconciles at once (make-goods for other shortfalls, or the invoice).
        """
        await self._wait_loaded()
        async with self._lock:
            # Checked again: a report or another close may have come first.
            missing = self._check_awaiting()
            io = self._snapshot()
            plan: dict[str, tuple[int, UnitStatus, int]] = {}
            for u in missing:
                goal = u.impressions_goal or 0
                n = goal if req.bill_as is BillAs.GOAL else 0
                status = UnitStatus.DELIVERED if goal and n >= goal else u.status
                plan[u.id] = (n, status, u.delivery_reports + 1)
            written = await workflow.execute_activity_method(
                IoActivities.close_delivery,
                CloseDeliveryUnitsInput(
                    tenant_id=io.tenant_id,
                    io_id=io.io_id,
                    bill_as=req.bill_as,
                    units=plan,
                    at=workflow.now(),
                    request_id=req.request_id,
                ),
                start_to_close_timeout=_WRITE_TIMEOUT,
                retry_policy=_WRITE_RETRY,
            )
            if not written.applied:
                raise _not_applied("closing the delivery")
            for u in missing:
                n, status, seq = plan[u.id]
                u.delivered_impressions, u.status, u.delivery_reports = n, status, seq
                u.billed_as = req.bill_as
            self._changes += 1
            await self.reconcile()
            return io

    @close_delivery.validator
    def validate_close_delivery(self, req: CloseDeliveryInput) -> None:
        """Rejects a close of an IO that is invoiced or not awaiting a delivery report."""
        if self._io is not None:
            self._check_awaiting()

    @workflow.query
    def snapshot(self) -> IoSnapshot | None:
        """Returns the IO as this workflow sees it (None until loaded)."""
        return self._io

    # -----------------------------------------------------------------------------------------
    # Decisions

    def _next_step(self) -> tuple[str, datetime] | None:
        """The next thing on the timeline: an air date, the end of the window, or nothing."""
        io = self._snapshot()
        if io.invoice is not None:
            return None
        pending = [air_moment(u.air_date) for u in io.units if u.status is UnitStatus.SCHEDULED]
        if pending:
            return "air date", min(pending)
        aired = [air_moment(u.air_date) for u in io.units if u.status is not UnitStatus.CANCELLED]
        if not aired:
            return None
        if io.delivery_overdue_at is not None and io.units_awaiting_report():
            every = timedelta(hours=self._inp.delivery_reminder_hours)
            return "delivery reminder", io.delivery_overdue_at + every * (io.delivery_reminders + 1)
        return "measurement window end", max(aired) + timedelta(days=io.measurement_window_days)

    async def _sleep_until(self, at: datetime, kind: str) -> bool:
        """Waits on a durable timer until `at`; False when woken early by a change to re-plan."""
        remaining = at - workflow.now()
        if remaining <= timedelta(0):
            return True
        changes = self._changes
        try:
            await workflow.wait_condition(
                lambda: self._changes != changes or self._should_continue_as_new(),
                timeout=remaining,
                timeout_summary=f"{kind} {at:%Y-%m-%d}",
            )
            return False
        except TimeoutError:
            return True

    def _check_bookable(self, req: BookIoInput) -> None:
        if self._unbooked is not None:
            raise _reject(
                f"IO {self._inp.io_id} ended {self._unbooked.value} with nothing booked; book it again",
                BOOKING_CLOSED,
            )
        if self._booking_request is not None and self._booking_request != _request_key(req):
            raise _reject(f"IO {self._inp.io_id} is booked by another request", IO_ALREADY_BOOKED)
        if self._io is not None and self._booking_request is None:
            raise _reject(f"IO {self._inp.io_id} is booked already", IO_ALREADY_BOOKED)

    def _end_unbooked(self, status: IoStatus, details: str) -> None:
        """Ends the booking path with nothing booked: handlers waiting for the IO are refused."""
        self._unbooked = status
        self._abandoned = True
        workflow.upsert_search_attributes([sa.IO_STATUS.value_set(status.value)])
        workflow.set_current_details(details)

    def _check_open(self) -> None:
        io = self._snapshot()
        if io.invoice is not None:
            raise _reject(
                f"IO {io.io_id} is {io.status.value} and invoiced; it can no longer change", IO_CLOSED
            )

    def _check_awaiting(self) -> list[UnitState]:
        """The units an operator's close bills; refuses when the IO is not awaiting delivery."""
        self._check_open()
        io = self._snapshot()
        missing = io.units_awaiting_report()
        if io.delivery_overdue_at is None or not missing:
            raise _reject(
                f"IO {io.io_id} is {io.status.value}, not awaiting a delivery report; nothing to close",
                NOT_AWAITING_DELIVERY,
            )
        return missing

    def _check_delivery(self, req: ReportDeliveryInput) -> UnitState:
        self._check_open()
        unit = self._unit(req.ad_unit_id)
        if unit is None:
            raise _reject(f"ad_unit_id {req.ad_unit_id} is not a unit of this IO", UNKNOWN_UNIT)
        if unit.status is UnitStatus.CANCELLED:
            raise _reject(f"ad unit {unit.id} was cancelled; it takes no delivery", UNIT_CANCELLED)
        if unit.status is UnitStatus.SCHEDULED:
            raise _reject(
                f"ad unit {unit.id} has not aired yet (air date {unit.air_date.isoformat()})", UNIT_NOT_AIRED
            )
        return unit

    async def _apply_delivery(self, unit: UnitState, req: ReportDeliveryInput) -> UnitState:
        if unit.delivery_reports and unit.delivered_impressions == req.impressions:
            return unit  # the same figure again: nothing new to record
        status = unit.status
        if unit.pricing_model is PricingModel.CPM and unit.impressions_goal:
            if status is UnitStatus.AIRED and req.impressions >= unit.impressions_goal:
                status = UnitStatus.DELIVERED
            elif status is UnitStatus.DELIVERED and req.impressions < unit.impressions_goal:
                status = UnitStatus.AIRED  # a corrected, lower figure
        io = self._snapshot()
        written = await workflow.execute_activity_method(
            IoActivities.record_delivery,
            RecordDeliveryInput(
                tenant_id=io.tenant_id,
                io_id=io.io_id,
                ad_unit_id=unit.id,
                impressions=req.impressions,
                impressions_goal=unit.impressions_goal,
                unit_status=status,
                source=req.source,
                seq=unit.delivery_reports + 1,
                at=workflow.now(),
                request_id=req.request_id,
            ),
            start_to_close_timeout=_WRITE_TIMEOUT,
            retry_policy=_WRITE_RETRY,
        )
        if written is not None and not written.applied:
            raise _not_applied("the delivery report")
        unit.delivery_reports += 1
        unit.delivered_impressions = req.impressions
        unit.status = status
        self._reports += 1
        if io.delivery_overdue_at is not None:
            self._changes += 1  # awaiting delivery: the main loop re-plans (reconciles if complete)
        self._describe()
        return unit

    async def _wait_loaded(self) -> None:
        await workflow.wait_condition(lambda: self._io is not None or self._abandoned)
        if self._abandoned:
            raise _reject("this IO's booking never committed", IO_ABANDONED)

    def _snapshot(self) -> IoSnapshot:
        assert self._io is not None
        return self._io

    def _unit(self, unit_id: str) -> UnitState | None:
        return next((u for u in self._snapshot().units if u.id == unit_id), None)

    def _set_status(self, status: IoStatus) -> None:
        io = self._snapshot()
        if io.status is not status:
            io.status = status
            workflow.upsert_search_attributes([sa.IO_STATUS.value_set(status.value)])
        self._describe()

    def _should_continue_as_new(self) -> bool:
        return self._reports >= self._inp.reports_per_run or workflow.info().is_continue_as_new_suggested()

    def _describe(self) -> None:
        io = self._snapshot()
        live = [u for u in io.units if u.status is not UnitStatus.CANCELLED]
        aired = sum(1 for u in live if u.status is not UnitStatus.SCHEDULED)
        goal = sum(u.impressions_goal or 0 for u in live if not u.is_makegood)
        delivered = sum(u.delivered_impressions for u in live)
        parts = [f"Status **{io.status.value}**", f"{aired}/{len(live)} units aired"]
        if goal:
            parts.append(f"{delivered:,} of {goal:,} impressions")
        if io.delivery_overdue_at is not None and (missing := io.units_awaiting_report()):
            parts.append(
                f"awaiting delivery of {len(missing)} unit{'s' if len(missing) > 1 else ''}"
                f" since {io.delivery_overdue_at:%Y-%m-%d}"
            )
        step = self._next_step()
        if step is not None:
            parts.append(f"next: {step[0]} {step[1]:%Y-%m-%d}")
        if io.invoice is not None:
            parts.append(f"invoiced ${io.invoice.total_usd:,.2f}, due {io.invoice.due_date.isoformat()}")
        workflow.set_current_details(" · ".join(parts))
