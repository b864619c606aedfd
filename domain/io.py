"""Insertion orders: units, pricing, promo codes, vanity paths, and the reconciliation rules.

Pure: shared by the API (validation, pricing), the activities (rows) and IoBookingWorkflow
(decisions), so every layer prices and reconciles a unit the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel


class Placement(StrEnum):
    """Where in the episode the ad runs."""

    PRE_ROLL = "pre_roll"
    MID_ROLL = "mid_roll"
    POST_ROLL = "post_roll"


class AdFormat(StrEnum):
    """Who voices the ad."""

    HOST_READ = "host_read"
    PRODUCED = "produced"


class Insertion(StrEnum):
    """Baked into the episode audio for good, or stitched in per download."""

    BAKED_IN = "baked_in"
    DYNAMIC = "dynamic"


class PricingModel(StrEnum):
    """Per thousand impressions, or one price for the placement."""

    CPM = "cpm"
    FLAT = "flat"


class UnderdeliveryPolicy(StrEnum):
    """What happens to a CPM unit that delivers less than its goal."""

    MAKEGOOD = "makegood"
    PRORATA = "prorata"


class IoStatus(StrEnum):
    """The IO's lifecycle, mirrored in the IoStatus search attribute."""

    SCHEDULED = "scheduled"  # booked, nothing aired yet
    LIVE = "live"  # some units aired, others still to air
    MEASURING = "measuring"  # every unit aired; waiting out the measurement window
    # The window ended and a CPM unit has no delivery report: no invoice until it has one (or an
    # operator closes it with close_delivery).
    AWAITING_DELIVERY = "awaiting_delivery"
    COMPLETED = "completed"  # reconciled and invoiced
    CANCELLED = "cancelled"  # cancelled; what aired is still reconciled and invoiced
    ABANDONED = "abandoned"  # nothing was booked: never committed, or given up by the API (workflow only)
    BOOKING = "booking"  # the workflow started and its booking is being decided (workflow only)
    REJECTED = (
        "rejected"  # the booking was refused (no slot, code or path taken): nothing booked (workflow only)
    )


class BillAs(StrEnum):
    """How an operator closes a CPM unit nobody reported delivery for."""

    ZERO = "zero"  # billed as 0 impressions delivered
    GOAL = "goal"  # billed as its goal delivered


class UnitStatus(StrEnum):
    """One ad unit's lifecycle."""

    SCHEDULED = "scheduled"
    AIRED = "aired"
    DELIVERED = "delivered"  # met its goal, or reconciled as delivered (flat, prorated)
    MADE_GOOD = "made_good"  # fell short; a make-good unit carries the shortfall
    CANCELLED = "cancelled"


# Slots per episode when a show does not say otherwise (the default inventory).
DEFAULT_SLOTS: dict[str, int] = {"pre_roll": 1, "mid_roll": 2, "post_roll": 1}
# How far ahead a make-good looks for a free slot before falling back to prorating.
MAKEGOOD_HORIZON_DAYS = 90
DURATIONS_S = tuple(range(15, 121, 15))
# Crockford-style: no 0/O, 1/I/L, so a host can read the code aloud and a listener type it.
PROMO_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PROMO_CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{2,39}$"
VANITY_PATH_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,99}(/[A-Za-z0-9._~-]{1,100}){0,3}$"
_CENT = Decimal("0.01")


def cents(amount: Decimal) -> Decimal:
    """Rounds money to cents the way an invoice does (half up)."""
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


def cpm_amount(cpm_usd: Decimal, impressions: int) -> Decimal:
    """Returns what `impressions` cost at `cpm_usd` per thousand."""
    return cents(cpm_usd * impressions / 1000)


def unit_price(
    pricing_model: PricingModel,
    *,
    cpm_usd: Decimal | None,
    impressions_goal: int | None,
    flat_usd: Decimal | None,
) -> Decimal:
    """Returns the booked price of a unit: the goal at its CPM, or the flat fee."""
    if pricing_model is PricingModel.CPM:
        assert cpm_usd is not None and impressions_goal is not None
        return cpm_amount(cpm_usd, impressions_goal)
    assert flat_usd is not None
    return cents(flat_usd)


def air_moment(air_date: date) -> datetime:
    """When a unit counts as aired: the start of its air date, UTC (episodes drop overnight)."""
    return datetime.combine(air_date, time(0), tzinfo=UTC)


def slot_capacity(slots: dict[str, int] | None, placement: Placement | str) -> int:
    """Returns how many units of `placement` one episode of a show carries."""
    key = str(placement)
    if slots and key in slots:
        return int(slots[key])
    return DEFAULT_SLOTS[key]


def slugify(text: str) -> str:
    """Returns a URL path segment for a show name: `The Daily Grind!` -> `the-daily-grind`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:80].strip("-") or "listen"


def promo_prefix(advertiser_name: str) -> str:
    """The readable part of a generated code: the advertiser's first word, letters only."""
    ascii_name = unicodedata.normalize("NFKD", advertiser_name).encode("ascii", "ignore").decode().upper()
    words = re.findall(r"[A-Z0-9]+", ascii_name)
    word = next((w for w in words if w not in {"THE", "A", "AN"}), words[0] if words else "")
    # Ambiguous letters are dropped from the prefix too: the whole code must read aloud cleanly.
    return "".join(ch for ch in word if ch in PROMO_ALPHABET)[:8] or "AD"


def generate_promo_code(advertiser_name: str, choice: Callable[[str], str]) -> str:
    """Returns a human-friendly code such as `ACME7K3Q` (`choice` picks one character)."""
    return promo_prefix(advertiser_name) + "".join(choice(PROMO_ALPHABET) for _ in range(4))


# ---------------------------------------------------------------------------------------------
# What IoBookingWorkflow tracks, and what its activities exchange.


class UnitState(BaseModel):
    """One ad unit as the workflow follows it."""

    id: str
    show_id: str
    show_name: str
    placement: Placement
    format: AdFormat
    insertion: Insertion
    air_date: date
    duration_s: int
    pricing_model: PricingModel
    cpm_usd: Decimal | None = None
    impressions_goal: int | None = None
    flat_usd: Decimal | None = None
    price_usd: Decimal
    delivered_impressions: int = 0
    status: UnitStatus = UnitStatus.SCHEDULED
    makegood_of: str | None = None
    # Reports received so far: numbers each io.delivery_reported event of this unit.
    delivery_reports: int = 0
    # Set when a make-good was due but no slot was free within the horizon: prorated instead.
    makegood_unavailable: bool = False
    # Set when an operator closed the unit's missing delivery (close_delivery): billed this way,
    # never made good.
    billed_as: BillAs | None = None

    @property
    def awaits_report(self) -> bool:
        """True for an aired CPM unit nobody reported delivery for (no invoice until it has one)."""
        return (
            self.pricing_model is PricingModel.CPM
            and self.status in (UnitStatus.AIRED, UnitStatus.DELIVERED)
            and self.delivery_reports == 0
            and self.billed_as is None
        )

    @property
    def is_makegood(self) -> bool:
        """True for a unit booked to make good another unit's shortfall."""
        return self.makegood_of is not None


class IoSnapshot(BaseModel):
    """The IO as the workflow knows it: loaded once, then carried across continue-as-new."""

    tenant_id: str
    io_id: str
    campaign_id: str
    advertiser_id: str
    advertiser_name: str
    status: IoStatus
    underdelivery_policy: UnderdeliveryPolicy
    measurement_window_days: int
    payment_terms_days: int
    promo_code: str | None = None
    vanity_url: str | None = None
    total_usd: Decimal
    units: list[UnitState]
    cancel_reason: str | None = None
    # True once the make-good round ran: make-goods are booked once, never for a make-good.
    makegoods_booked: bool = False
    invoice: Invoice | None = None
    # When the measurement window ended with a CPM unit unreported (io.delivery_overdue), and how
    # many reminders went out since; cleared once the IO reconciles.
    delivery_overdue_at: datetime | None = None
    delivery_reminders: int = 0

    def units_awaiting_report(self) -> list[UnitState]:
        """The aired CPM units without a delivery figure."""
        return [u for u in self.units if u.awaits_report]


class InvoiceLine(BaseModel):
    """One billed ad unit."""

    ad_unit_id: str
    show_name: str
    placement: Placement
    air_date: date
    pricing_model: PricingModel
    # Impressions billed (CPM) or 1 (flat).
    quantity: int
    rate_usd: Decimal
    amount_usd: Decimal
    note: str = ""


class Invoice(BaseModel):
    """The invoice an IO ends with."""

    number: str
    issued_at: datetime
    due_date: date
    payment_terms_days: int
    currency: str = "USD"
    lines: list[InvoiceLine]
    total_usd: Decimal


class Makegood(BaseModel):
    """A make-good the reconciliation asks for: the unit that fell short, and by how much."""

    unit_id: str
    shortfall: int


class IoWorkflowInput(BaseModel):
    """Starts IoBookingWorkflow; continue-as-new carries the snapshot forward."""

    tenant_id: str
    io_id: str
    snapshot: IoSnapshot | None = None
    # Delivery reports one run accepts before continuing as new.
    reports_per_run: int = 500
    # How many times the first load retries before deciding the booking never committed.
    load_attempts: int = 6
    # True: the booking is this workflow's first step, its `book` update (update-with-start).
    # False (runs started before that, and their histories): the API booked, the run loads it.
    book_via_update: bool = False
    # How long a run started for a booking waits for its `book` update before it ends unbooked.
    booking_wait_seconds: float = 300.0
    # The request that booked the IO (carried across continue-as-new for the `book` validator).
    booked_by: str | None = None
    # Hours between io.delivery_reminder events while the IO awaits a delivery report
    # (SPONSORFLOW_IO_DELIVERY_REMINDER_HOURS, fixed at booking so the timeline is deterministic).
    delivery_reminder_hours: float = 72.0


class IoWorkflowResult(BaseModel):
    """How an IO's workflow ended."""

    io_id: str
    status: IoStatus
    invoice_total_usd: Decimal | None = None


class ReportDeliveryInput(BaseModel):
    """Delivered impressions of one unit to date (a cumulative figure: the latest report wins)."""

    ad_unit_id: str
    # Checked by the workflow's validator (not here) so a bad count gets a named rejection.
    impressions: int
    source: str | None = None
    # The API's request id (also the update id), fenced by the write; None for the import's signals.
    request_id: str | None = None


class CancelIoInput(BaseModel):
    """Cancels what has not aired."""

    reason: str
    # The API's request id (also the update id), fenced by the write; None in older histories.
    request_id: str | None = None


class CloseDeliveryInput(BaseModel):
    """An operator closes the missing delivery of an IO awaiting it: bill those units as 0 or goal."""

    bill_as: BillAs
    # The API's request id (also the update id), fenced by the write.
    request_id: str | None = None


class UnitRequest(BaseModel):
    """One ad unit a booking asks for, as the API validated it."""

    show_id: str
    placement: Placement
    format: AdFormat
    insertion: Insertion
    air_date: date
    duration_s: int
    pricing_model: PricingModel
    cpm_usd: Decimal | None = None
    impressions_goal: int | None = None
    flat_usd: Decimal | None = None

    @property
    def price(self) -> Decimal:
        """The unit's booked price."""
        return unit_price(
            self.pricing_model,
            cpm_usd=self.cpm_usd,
            impressions_goal=self.impressions_goal,
            flat_usd=self.flat_usd,
        )


class BookIoInput(BaseModel):
    """The `book` update of IoBookingWorkflow: what the IO books, as the API validated it."""

    campaign_id: str
    ad_units: list[UnitRequest]
    promo_code: str | None = None
    vanity_path: str | None = None
    payment_terms_days: int = 30
    underdelivery_policy: UnderdeliveryPolicy = UnderdeliveryPolicy.MAKEGOOD
    measurement_window_days: int = 30
    # The client's Idempotency-Key, kept on the IO row.
    idempotency_key: str | None = None
    # The API's request id (also the update id), fenced by the booking's write.
    request_id: str | None = None


class BookIoResult(BaseModel):
    """A booked IO: its id and status (scheduled)."""

    io_id: str
    status: IoStatus


class ReserveIoInput(BaseModel):
    """Books an IO's rows: slots counted under their locks, promo code, vanity path, io.scheduled."""

    tenant_id: str
    io_id: str
    booking: BookIoInput
    at: datetime


class ReserveIoResult(BaseModel):
    """The booked IO, or `applied=False` when the API had given up on the request (nothing written)."""

    applied: bool
    snapshot: IoSnapshot | None = None


class RecordDeliveryResult(BaseModel):
    """Whether a delivery report was written (False: the API had given up on it, nothing written)."""

    applied: bool = True


class CancelIoResult(BaseModel):
    """Whether a cancellation was written (False: the API had given up on it, nothing written)."""

    applied: bool = True


class LoadIoInput(BaseModel):
    """Loads a booked IO and emits io.scheduled."""

    tenant_id: str
    io_id: str
    at: datetime
    # Attempts that may find no row before the booking counts as never committed.
    give_up_after_attempts: int = 6


class MarkAiredInput(BaseModel):
    """Marks units aired (one io.ad_aired each) and moves the IO's status."""

    tenant_id: str
    io_id: str
    unit_ids: list[str]
    io_status: IoStatus
    at: datetime


class RecordDeliveryInput(BaseModel):
    """Persists one delivery report and its io.delivery_reported event."""

    tenant_id: str
    io_id: str
    ad_unit_id: str
    impressions: int
    impressions_goal: int | None
    unit_status: UnitStatus
    source: str | None
    seq: int
    at: datetime
    # Claimed in the write's transaction (the write fence); None skips the fence.
    request_id: str | None = None


class BookMakegoodInput(BaseModel):
    """Books a make-good unit for a shortfall in the show's next free slot after `after`."""

    tenant_id: str
    io_id: str
    unit: UnitState
    shortfall: int
    after: date
    horizon_days: int = MAKEGOOD_HORIZON_DAYS
    at: datetime


class BookMakegoodResult(BaseModel):
    """The make-good unit, or None when no slot was free within the horizon."""

    unit: UnitState | None = None


class CancelUnitsInput(BaseModel):
    """Cancels units, frees their slots, voids the promo code, emits io.cancelled."""

    tenant_id: str
    io_id: str
    unit_ids: list[str]
    reason: str
    at: datetime
    # Claimed in the write's transaction (the write fence); None skips the fence.
    request_id: str | None = None


class DeliveryOverdueInput(BaseModel):
    """Moves the IO to awaiting_delivery and emits io.delivery_overdue (reminder 0) or a reminder."""

    tenant_id: str
    io_id: str
    unit_ids: list[str]
    # When the measurement window ended: names this overdue round in the event keys.
    due_at: datetime
    # 0: the first notice (io.delivery_overdue); n: the n-th io.delivery_reminder.
    reminder: int = 0
    reminder_hours: float
    # awaiting_delivery (a cancelled IO stays cancelled).
    io_status: IoStatus
    at: datetime


class CloseDeliveryUnitsInput(BaseModel):
    """Writes the operator's figure (0 or the goal) for each unreported unit, fenced by its request."""

    tenant_id: str
    io_id: str
    bill_as: BillAs
    # Unit id -> (impressions written, the unit's new status, the report's sequence number).
    units: dict[str, tuple[int, UnitStatus, int]]
    at: datetime
    request_id: str | None = None


class CloseDeliveryResult(BaseModel):
    """Whether the close was written (False: the API had given up on it, nothing written)."""

    applied: bool = True


class CompleteIoInput(BaseModel):
    """Writes the invoice and final unit statuses; emits io.completed."""

    tenant_id: str
    io_id: str
    invoice: Invoice
    unit_statuses: dict[str, UnitStatus]
    io_status: IoStatus
    at: datetime


# ---------------------------------------------------------------------------------------------
# Reconciliation


def makegoods_due(units: Sequence[UnitState], policy: UnderdeliveryPolicy) -> list[Makegood]:
    """Returns the make-goods the first reconciliation books (only under the makegood policy)."""
    if policy is not UnderdeliveryPolicy.MAKEGOOD:
        return []
    due: list[Makegood] = []
    for u in units:
        if u.is_makegood or u.pricing_model is not PricingModel.CPM or u.status is UnitStatus.CANCELLED:
            continue
        if u.billed_as is not None:
            continue  # an operator closed it: billed as they said, never made good
        if u.status is UnitStatus.SCHEDULED:
            continue
        goal = u.impressions_goal or 0
        if u.delivered_impressions < goal:
            due.append(Makegood(unit_id=u.id, shortfall=goal - u.delivered_impressions))
    return due


_BILLED_AS = {BillAs.ZERO: "0 delivered", BillAs.GOAL: "the goal delivered"}


def _line(u: UnitState, *, quantity: int, rate: Decimal, amount: Decimal, note: str) -> InvoiceLine:
    return InvoiceLine(
        ad_unit_id=u.id,
        show_name=u.show_name,
        placement=u.placement,
        air_date=u.air_date,
        pricing_model=u.pricing_model,
        quantity=quantity,
        rate_usd=rate,
        amount_usd=amount,
        note=note,
    )


class DeliveredUnit(Protocol):
    """What counting delivery needs of a unit: a UnitState, or an ad_units row."""

    @property
    def id(self) -> Any: ...
    @property
    def status(self) -> str: ...
    @property
    def impressions_goal(self) -> int | None: ...
    @property
    def delivered_impressions(self) -> int: ...
    @property
    def makegood_of(self) -> Any: ...


def impressions_with_makegoods(units: Sequence[DeliveredUnit]) -> dict[Any, int]:
    """Each original unit's impressions to date plus its make-goods' (a cancelled one counts nothing).

    The one rule behind an invoice line and an IO's delivery progress alike, before the cap at
    the unit's goal. Keyed by unit id.
    """
    counted = {u.id: u.delivered_impressions for u in units if u.makegood_of is None}
    for u in units:
        if u.makegood_of is not None and u.status != UnitStatus.CANCELLED:
            counted[u.makegood_of] = counted.get(u.makegood_of, 0) + u.delivered_impressions
    return counted


def delivery_progress(units: Sequence[DeliveredUnit]) -> tuple[int, int]:
    """(goal, delivered) over the original CPM units that aired, each unit's count capped at its goal."""
    counted = impressions_with_makegoods(units)
    goal = delivered = 0
    for u in units:
        aired = u.status not in (UnitStatus.SCHEDULED, UnitStatus.CANCELLED)
        if u.impressions_goal and u.makegood_of is None and aired:
            goal += u.impressions_goal
            delivered += min(u.impressions_goal, counted.get(u.id, 0))
    return goal, delivered


def delivered_pct(delivered: int, goal: int | None) -> float | None:
    """Delivered impressions as a percentage of the goal, to one decimal (None without a goal)."""
    return round(100 * delivered / goal, 1) if goal else None


class DaySlots(NamedTuple):
    """One air date of a show's placement: slots booked and still free."""

    day: date
    booked: int
    free: int


def slots_by_day(first: date, days: int, capacity: int, booked: Mapping[date, int]) -> list[DaySlots]:
    """Booked and free slots on each of `days` air dates from `first` (overbooked days: 0 free)."""
    out: list[DaySlots] = []
    for i in range(days):
        day = first + timedelta(days=i)
        used = booked.get(day, 0)
        out.append(DaySlots(day, used, max(capacity - used, 0)))
    return out


def invoice_lines(units: Sequence[UnitState]) -> tuple[list[InvoiceLine], dict[str, UnitStatus]]:
    """Bills every unit that aired, and returns each unit's final status.

    CPM: the goal when delivery (with its make-good's) reached it, else the delivered share.
    Flat: in full once aired. A make-good bills nothing: the original unit's line counts its
    impressions, capped at the goal. Cancelled units that never aired bill nothing.
    """
    by_original: dict[str, list[UnitState]] = {}
    for u in units:
        if u.makegood_of is not None:
            by_original.setdefault(u.makegood_of, []).append(u)
    counted_of = impressions_with_makegoods(units)
    lines: list[InvoiceLine] = []
    statuses: dict[str, UnitStatus] = {}
    for u in units:
        if u.status is UnitStatus.CANCELLED or u.status is UnitStatus.SCHEDULED:
            statuses[u.id] = UnitStatus.CANCELLED if u.status is UnitStatus.CANCELLED else u.status
            continue
        if u.is_makegood:
            assert u.cpm_usd is not None
            lines.append(
                _line(
                    u,
                    quantity=u.delivered_impressions,
                    rate=Decimal("0.00"),
                    amount=Decimal("0.00"),
                    note="make-good at no charge; impressions count toward the original unit",
                )
            )
            statuses[u.id] = UnitStatus.DELIVERED
            continue
        if u.pricing_model is PricingModel.FLAT:
            assert u.flat_usd is not None
            lines.append(
                _line(u, quantity=1, rate=cents(u.flat_usd), amount=cents(u.flat_usd), note="flat fee, aired")
            )
            statuses[u.id] = UnitStatus.DELIVERED
            continue
        assert u.cpm_usd is not None and u.impressions_goal is not None
        goal = u.impressions_goal
        if u.billed_as is not None:
            billed = goal if u.billed_as is BillAs.GOAL else 0
            lines.append(
                _line(
                    u,
                    quantity=billed,
                    rate=cents(u.cpm_usd),
                    amount=cpm_amount(u.cpm_usd, billed),
                    note=f"no delivery report; an operator closed it, billed as {_BILLED_AS[u.billed_as]}",
                )
            )
            statuses[u.id] = UnitStatus.DELIVERED
            continue
        made_good = [m for m in by_original.get(u.id, []) if m.status is not UnitStatus.CANCELLED]
        counted = counted_of[u.id]
        billed = min(counted, goal)
        if u.delivered_impressions >= goal:
            note = "goal delivered"
        elif made_good:
            note = (
                f"delivered {u.delivered_impressions:,} + make-good {counted - u.delivered_impressions:,}"
                f" of {goal:,}"
            )
            if counted < goal:
                note += "; remainder prorated"
        elif u.makegood_unavailable:
            note = f"delivered {counted:,} of {goal:,}; no free slot for a make-good, prorated"
        else:
            note = f"delivered {counted:,} of {goal:,}, prorated"
        lines.append(
            _line(u, quantity=billed, rate=cents(u.cpm_usd), amount=cpm_amount(u.cpm_usd, billed), note=note)
        )
        statuses[u.id] = UnitStatus.MADE_GOOD if made_good else UnitStatus.DELIVERED
    return lines, statuses


def build_invoice(
    *, io_id: str, units: Sequence[UnitState], issued_at: datetime, payment_terms_days: int
) -> tuple[Invoice, dict[str, UnitStatus]]:
    """Returns the IO's invoice (due at completion plus the payment terms) and unit statuses."""
    lines, statuses = invoice_lines(units)
    invoice = Invoice(
        number=f"INV-{io_id.replace('-', '')[:10].upper()}",
        issued_at=issued_at,
        due_date=issued_at.date() + timedelta(days=payment_terms_days),
        payment_terms_days=payment_terms_days,
        lines=lines,
        total_usd=cents(sum((line.amount_usd for line in lines), Decimal("0"))),
    )
    return invoice, statuses


# ---------------------------------------------------------------------------------------------
# Booking rules: what refuses a booking, and with which answer. The API checks what it can before
# any Temporal call; the booking activity checks everything again under the slot locks.

BOOKING_CONFLICT = "IoBookingConflict"  # HTTP 409: not won, no free slot, promo code or vanity path taken
BOOKING_INVALID = "IoBookingInvalid"  # HTTP 422: an unknown deal or show, a vanity path without a domain
BOOKING_UNAVAILABLE = "IoBookingUnavailable"  # HTTP 503: no free generated promo code found; retry
BOOKING_REFUSALS = (BOOKING_CONFLICT, BOOKING_INVALID, BOOKING_UNAVAILABLE)
# Generated promo codes tried before the booking gives up (a collision per try is rare).
PROMO_CODE_TRIES = 50


class BookingRefused(Exception):
    """A booking that cannot be made: `kind` is one of BOOKING_REFUSALS, `detail` the HTTP detail."""

    def __init__(self, kind: str, detail: Any) -> None:
        message = detail if isinstance(detail, str) else str(_message_of(detail))
        super().__init__(message)
        self.kind = kind
        self.detail = detail
        self.message = message


def _message_of(detail: Any) -> Any:
    if isinstance(detail, dict):
        return detail.get("message", detail)
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return detail[0].get("msg", detail)
    return detail


def _invalid(loc: list[Any], msg: str, kind: str = "value_error") -> BookingRefused:
    return BookingRefused(BOOKING_INVALID, [{"loc": ["body", *loc], "msg": msg, "type": kind}])


def unknown_deal(campaign_id: str) -> BookingRefused:
    """The deal is not in this tenant."""
    return _invalid(["campaign_id"], f"deal {campaign_id} not found in this tenant", "not_found")


def deal_not_won(campaign_id: str, stage: str) -> BookingRefused:
    """Only a won deal can be booked."""
    return BookingRefused(
        BOOKING_CONFLICT,
        {
            "message": f"deal {campaign_id} is in stage {stage!r}; only a won deal can be booked",
            "stage": stage,
        },
    )


def unknown_show(index: int, show_id: str) -> BookingRefused:
    """A unit's show is not in this tenant."""
    return _invalid(["ad_units", index, "show_id"], f"show {show_id} not found in this tenant", "not_found")


def no_vanity_domain(advertiser_name: str) -> BookingRefused:
    """A vanity path needs the advertiser's domain."""
    return _invalid(
        ["vanity_path"], f"advertiser {advertiser_name!r} has no domain; set one to use a vanity URL"
    )


def vanity_taken(domain: str, path: str) -> BookingRefused:
    """The vanity path is another IO's on this domain."""
    return BookingRefused(
        BOOKING_CONFLICT, f"vanity URL https://{domain}/{path} is already used by another IO"
    )


def promo_taken(code: str) -> BookingRefused:
    """The promo code is in use in this tenant (codes ignore case)."""
    return BookingRefused(
        BOOKING_CONFLICT, f"promo code {code!r} is already in use in this network (codes ignore case)"
    )


def promo_exhausted() -> BookingRefused:
    """No generated promo code was free (retrying draws new ones)."""
    return BookingRefused(BOOKING_UNAVAILABLE, "could not find a free promo code; retry")


def check_booking(
    booking: BookIoInput,
    *,
    deal_stage: str | None,
    advertiser_name: str,
    advertiser_domain: str | None,
    known_show_ids: set[str],
) -> None:
    """Refuses a booking for a missing or unwon deal, an unknown show, or a vanity path without domain."""
    if deal_stage is None:
        raise unknown_deal(booking.campaign_id)
    if deal_stage != "won":
        raise deal_not_won(booking.campaign_id, deal_stage)
    for i, u in enumerate(booking.ad_units):
        if u.show_id not in known_show_ids:
            raise unknown_show(i, u.show_id)
    if booking.vanity_path and not advertiser_domain:
        raise no_vanity_domain(advertiser_name)


SlotKey = tuple[str, date, str]


def slot_conflicts(
    units: Sequence[UnitRequest],
    *,
    shows: Mapping[str, tuple[str, dict[str, int] | None]],
    usage: Mapping[SlotKey, int],
) -> list[dict[str, Any]]:
    """Every unit that would overbook its episode: `shows` maps id to (name, slots), `usage` counts."""
    wanted: Counter[SlotKey] = Counter()
    conflicts: list[dict[str, Any]] = []
    for i, u in enumerate(units):
        key = (u.show_id, u.air_date, u.placement.value)
        wanted[key] += 1
        name, slots = shows[u.show_id]
        capacity = slot_capacity(slots, u.placement)
        booked = usage.get(key, 0)
        if booked + wanted[key] > capacity:
            conflicts.append(
                {
                    "ad_unit": i,
                    "show_id": u.show_id,
                    "show_name": name,
                    "air_date": u.air_date.isoformat(),
                    "placement": u.placement.value,
                    "capacity": capacity,
                    "booked": booked,
                }
            )
    return conflicts


def no_free_slot(conflicts: list[dict[str, Any]]) -> BookingRefused:
    """The 409 of a booking that would overbook, naming the first full episode."""
    first = conflicts[0]
    return BookingRefused(
        BOOKING_CONFLICT,
        {
            "message": (
                f"ad_units[{first['ad_unit']}]: {first['show_name']} has no free "
                f"{first['placement']} slot on {first['air_date']} "
                f"({first['booked']} of {first['capacity']} booked)"
            ),
            "conflicts": conflicts,
        },
    )


def next_vanity_path(base: str, taken: set[str]) -> str:
    """The first of `base`, `base-2`, `base-3`, ... not in `taken` (lower-cased paths)."""
    path, n = base, 2
    while path in taken:
        path, n = f"{base}-{n}", n + 1
    return path


def booking_summary(advertiser: str, units: Sequence[UnitRequest]) -> str:
    """The static summary of a booking's workflow (see io_summary)."""
    ordered = sorted(units, key=lambda u: u.air_date)
    shows = list(dict.fromkeys(u.show_id for u in ordered))
    total = sum((u.price for u in units), Decimal("0"))
    return io_summary(advertiser, len(shows), total, ordered[0].air_date)


class IoDrift(BaseModel):
    """An IO whose PostgreSQL row and workflow disagree (found by activities.io.io_drift)."""

    io_id: str
    workflow_id: str
    row_status: str
    # The workflow's `snapshot` query (running workflows only), and its IoStatus search attribute.
    workflow_status: str | None = None
    search_attribute_status: str | None = None
    running: bool = False
    reason: str


def io_summary(advertiser: str, show_count: int, total_usd: Decimal, next_air: date | None) -> str:
    """The one line ops read in the Temporal UI: `IO: Acme x 3 shows, $18,400, next air 2026-12-03`."""
    shows = "1 show" if show_count == 1 else f"{show_count} shows"
    tail = f", next air {next_air.isoformat()}" if next_air else ""
    return f"IO: {advertiser} x {shows}, ${total_usd:,.0f}{tail}"


IoSnapshot.model_rebuild()
