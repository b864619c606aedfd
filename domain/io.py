"""Insertion orders: units, pricing, promo codes, vanity paths, and the reconciliation rules.

Pure: shared by the API (validation, pricing), the activities (rows) and IoBookingWorkflow
(decisions), so every layer prices and reconciles a unit the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

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
    COMPLETED = "completed"  # reconciled and invoiced
    CANCELLED = "cancelled"  # cancelled; what aired is still reconciled and invoiced
    ABANDONED = "abandoned"  # the booking transaction never committed (workflow only)


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


class CancelIoInput(BaseModel):
    """Cancels what has not aired."""

    reason: str


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
        if u.status is UnitStatus.SCHEDULED:
            continue
        goal = u.impressions_goal or 0
        if u.delivered_impressions < goal:
            due.append(Makegood(unit_id=u.id, shortfall=goal - u.delivered_impressions))
    return due


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
        made_good = [m for m in by_original.get(u.id, []) if m.status is not UnitStatus.CANCELLED]
        counted = u.delivered_impressions + sum(m.delivered_impressions for m in made_good)
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


def io_summary(advertiser: str, show_count: int, total_usd: Decimal, next_air: date | None) -> str:
    """The one line ops read in the Temporal UI: `IO: Acme x 3 shows, $18,400, next air 2026-12-03`."""
    shows = "1 show" if show_count == 1 else f"{show_count} shows"
    tail = f", next air {next_air.isoformat()}" if next_air else ""
    return f"IO: {advertiser} x {shows}, ${total_usd:,.0f}{tail}"


IoSnapshot.model_rebuild()
