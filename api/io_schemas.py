"""The IO API's schemas (IoCreate, DeliveryReport, IoPublic, ...) and their builders."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.bodies import JsonBody
from api.io_documents import DocumentUnit, IoDocument
from db.io import IoRecord
from db.models import IoBooking
from domain.io import (
    PROMO_CODE_PATTERN,
    VANITY_PATH_PATTERN,
    AdFormat,
    BillAs,
    DaySlots,
    Insertion,
    Invoice,
    IoStatus,
    Placement,
    PricingModel,
    UnderdeliveryPolicy,
    UnitStatus,
    delivered_pct,
    delivery_progress,
)
from settings import Settings
from workflows.starters import io_workflow_id

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


def public_io(record: IoRecord, tenant_id: uuid.UUID, settings: Settings) -> IoPublic:
    """An IO as clients see it: units, delivery against goal (make-goods count), invoice."""
    io = record.io
    units: list[AdUnitPublic] = []
    goal, delivered = delivery_progress([u for u, _ in record.units])
    for u, show_name in record.units:
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
                delivered_pct=delivered_pct(u.delivered_impressions, u.impressions_goal),
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
        campaign_name=record.deal.name,
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
            delivered_pct=delivered_pct(delivered, goal),
            under_delivering=delivered < goal,
        ),
        invoice=Invoice.model_validate(io.invoice) if io.invoice else None,
        workflow_id=wid,
        temporal_ui_url=settings.workflow_url(wid),
    )


def summary(io: IoBooking, advertiser_name: str, units: int | None, next_air: date | None) -> IoSummary:
    """An IO in a list, from a row of db.io.ios_query."""
    return IoSummary(
        id=str(io.id),
        campaign_id=str(io.campaign_id),
        advertiser_name=advertiser_name,
        status=IoStatus(io.status),
        total_usd=float(io.total_usd),
        promo_code=io.promo_code,
        vanity_url=io.vanity_url,
        units=units or 0,
        next_air_date=next_air,
        created_at=io.created_at,
    )


def availability(
    show_id: uuid.UUID, placement: Placement, capacity: int, days: list[DaySlots]
) -> Availability:
    """A show placement's free-slot hints, from domain.io.slots_by_day."""
    return Availability(
        show_id=str(show_id),
        placement=placement,
        capacity=capacity,
        days=[DayAvailability(date=d.day, booked=d.booked, free=d.free) for d in days],
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
        campaign_name=record.deal.name,
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
