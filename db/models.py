"""SQLAlchemy models: the system of record. Every tenant table carries tenant_id under RLS."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every table."""


def _pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _tenant() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Tenant(Base):
    """A podcast network using sponsorflow."""

    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = _pk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    settings: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = _created()


class ApiKey(Base):
    """A tenant's API key, stored as a SHA-256 hash of a high-entropy secret."""

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, server_default="default")
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Show(Base):
    """A podcast the network sells ads on."""

    __tablename__ = "shows"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    categories: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default="{}")
    avg_downloads: Mapped[int] = mapped_column(Integer, nullable=False)
    episodes_per_month: Mapped[int | None] = mapped_column(Integer)
    cpm_usd: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    geo: Mapped[dict[str, float]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    age: Mapped[dict[str, float]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    female_share: Mapped[float | None] = mapped_column(Numeric(5, 4))
    brand_safety: Mapped[dict[str, str]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    rss_url: Mapped[str | None] = mapped_column(String(2000))
    # Ad slots per episode by placement; issue "IO bookings" books against these.
    slots: Mapped[dict[str, int]] = mapped_column(
        JSONB,
        nullable=False,
        server_default=text("""'{"pre_roll": 1, "mid_roll": 2, "post_roll": 1}'::jsonb"""),
    )
    # The import that last wrote this row: re-imports count updates, in-file duplicates show.
    last_import_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class Advertiser(Base):
    """A brand that buys podcast ads."""

    __tablename__ = "advertisers"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    domain: Mapped[str | None] = mapped_column(String(253))
    target_categories: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default="{}")
    target_geo: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default="{}")
    target_age: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default="{}")
    brand_safety_tolerance: Mapped[str] = mapped_column(String(10), nullable=False, server_default="medium")
    # "female" or "male" when the campaign targets one; matchmaking weighs the show's female_share.
    target_gender: Mapped[str | None] = mapped_column(String(10))
    budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    flight_start: Mapped[date | None] = mapped_column(Date)
    flight_end: Mapped[date | None] = mapped_column(Date)
    # The import that last wrote this row: re-imports count updates, in-file duplicates show.
    last_import_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class Deal(Base):
    """A deal: an advertiser's sponsorship moving through the pipeline.

    "Deal" is its name in the code and wherever a person looks; the stored names stay those of
    the contract (ARCHITECTURE section 4): the table `campaigns`, the columns `campaign_id`, the
    import kind `campaigns`, and `campaign_id` in workflow inputs (recorded histories carry it).
    """

    __tablename__ = "campaigns"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        Index(
            "ix_campaigns_dashboard",
            "tenant_id",
            "stage",
            "stage_changed_at",
            postgresql_include=["value_usd", "probability", "created_at"],
        ),
        Index(
            "uq_campaigns_idempotency",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(200))
    advertiser_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("advertisers.id"), nullable=False, index=True
    )
    show_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("shows.id"), index=True)
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    value_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="USD")
    stage: Mapped[str] = mapped_column(String(20), nullable=False)
    stage_changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    probability: Mapped[int] = mapped_column(Integer, nullable=False)
    lost_reason: Mapped[str | None] = mapped_column(Text)
    expected_close: Mapped[date | None] = mapped_column(Date)
    owner_email: Mapped[str | None] = mapped_column(String(320))
    # The import that last wrote this row: re-imports count updates, in-file duplicates show.
    last_import_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The Idempotency-Key of the POST that created it: a retried POST answers this deal.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class DealStageHistory(Base):
    """One accepted stage move of a deal (from is null for the deal's creation)."""

    __tablename__ = "deal_stage_history"
    __table_args__ = (
        Index(
            "ix_deal_stage_history_tenant_changed",
            "tenant_id",
            "changed_at",
            postgresql_include=["from_stage", "to_stage"],
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("campaigns.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    idempotency_key: Mapped[str] = mapped_column(String(300), nullable=False, unique=True)


class IoBooking(Base):
    """An insertion order booked for a won deal."""

    __tablename__ = "io_bookings"
    __table_args__ = (
        Index(
            "uq_io_bookings_idempotency",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # A vanity URL attributes traffic to one IO: unique per advertiser domain, any case.
        Index(
            "uq_io_bookings_vanity",
            "tenant_id",
            text("lower(vanity_domain)"),
            text("lower(vanity_path)"),
            unique=True,
            postgresql_where=text("vanity_domain IS NOT NULL"),
        ),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("campaigns.id"), nullable=False, index=True
    )
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="scheduled")
    promo_code: Mapped[str | None] = mapped_column(String(40))
    vanity_url: Mapped[str | None] = mapped_column(String(2000))
    payment_terms_days: Mapped[int] = mapped_column(Integer, nullable=False, server_default="30")
    underdelivery_policy: Mapped[str] = mapped_column(String(20), nullable=False, server_default="makegood")
    measurement_window_days: Mapped[int] = mapped_column(Integer, nullable=False, server_default="30")
    total_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2), nullable=False, server_default="0")
    invoice: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The client's Idempotency-Key header: a retried POST returns the IO it booked.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    vanity_domain: Mapped[str | None] = mapped_column(String(253))
    vanity_path: Mapped[str | None] = mapped_column(String(500))
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class AdUnit(Base):
    """One placement of an IO on one show's episode on one air date."""

    __tablename__ = "ad_units"
    __table_args__ = (
        Index("ix_ad_units_slot", "tenant_id", "show_id", "air_date", "placement"),
        Index("ix_ad_units_io", "io_id"),
        Index("ix_ad_units_upcoming", "tenant_id", "air_date", postgresql_where=text("status = 'scheduled'")),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    io_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("io_bookings.id", ondelete="CASCADE"), nullable=False
    )
    show_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("shows.id"), nullable=False)
    placement: Mapped[str] = mapped_column(String(20), nullable=False)
    format: Mapped[str] = mapped_column(String(20), nullable=False)
    insertion: Mapped[str] = mapped_column(String(20), nullable=False)
    air_date: Mapped[date] = mapped_column(Date, nullable=False)
    duration_s: Mapped[int] = mapped_column(Integer, nullable=False)
    pricing_model: Mapped[str] = mapped_column(String(10), nullable=False)
    cpm_usd: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    impressions_goal: Mapped[int | None] = mapped_column(BigInteger)
    flat_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    price_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2), nullable=False, server_default="0")
    delivered_impressions: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="scheduled")
    makegood_of: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("ad_units.id"))
    aired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    billed_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    created_at: Mapped[datetime] = _created()


class PromoCode(Base):
    """An attribution code, unique per tenant regardless of case."""

    __tablename__ = "promo_codes"
    __table_args__ = (Index("uq_promo_codes_tenant_code", "tenant_id", text("lower(code)"), unique=True),)
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    code: Mapped[str] = mapped_column(String(40), nullable=False)
    io_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("io_bookings.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="active")
    # Voided codes stay reserved: baked-in reads keep playing in the back catalogue.
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()


class EtlImport(Base):
    """One spreadsheet import and its counts."""

    __tablename__ = "etl_imports"
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    kind: Mapped[str] = mapped_column(String(30), nullable=False)
    filename: Mapped[str] = mapped_column(String(500), nullable=False)
    status: Mapped[str] = mapped_column(String(30), nullable=False, server_default="pending")
    rows_total: Mapped[int | None] = mapped_column(BigInteger)
    rows_processed: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rows_inserted: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rows_updated: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rows_failed: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    workflows_started: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    warnings: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    checkpoint: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    workflow_id: Mapped[str | None] = mapped_column(String(300))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()


class EtlUploadChunk(Base):
    """A piece of a stored upload, so files never travel through workflow payloads."""

    __tablename__ = "etl_upload_chunks"
    import_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("etl_imports.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant()
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class EtlRowError(Base):
    """A row of an import that could not be loaded, and why."""

    __tablename__ = "etl_row_errors"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = _tenant()
    import_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("etl_imports.id", ondelete="CASCADE"), index=True
    )
    row_number: Mapped[int] = mapped_column(BigInteger, nullable=False)
    column: Mapped[str | None] = mapped_column(String(200))
    value: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text, nullable=False)


class ShowDownload(Base):
    """Daily downloads of a show, optionally per country ('' = all countries)."""

    __tablename__ = "show_downloads"
    __table_args__ = (UniqueConstraint("tenant_id", "show_id", "date", "country"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = _tenant()
    show_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("shows.id", ondelete="CASCADE"), nullable=False
    )
    date: Mapped[date] = mapped_column(Date, nullable=False)
    country: Mapped[str] = mapped_column(String(2), nullable=False, server_default="")
    downloads: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_import_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class Match(Base):
    """A scored advertiser-show pair of one ranking generation.

    `matches` is partitioned by (tenant_id, generation), one partition per ranking, written and
    attached by db.matching.GenerationStage (migration 0008). The database has no primary key
    here (a partition's pairs are unique instead); `id` orders ties and is unique by sequence.
    """

    __tablename__ = "matches"
    __table_args__ = (
        Index("ix_matches_ranked", text("score DESC"), "id"),
        Index("ix_matches_show", "show_id", text("score DESC"), "id"),
        {"postgresql_partition_by": "RANGE (tenant_id, generation)"},
    )
    # The ORM's identity only: the table itself has no primary key constraint (see above).
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)
    advertiser_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("advertisers.id", ondelete="CASCADE"), nullable=False
    )
    show_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("shows.id", ondelete="CASCADE"), nullable=False
    )
    score: Mapped[float] = mapped_column(Numeric(6, 2), nullable=False)
    # The six signals, each in [0, 1] (domain.scoring.SIGNALS).
    geo: Mapped[float] = mapped_column(REAL, nullable=False)
    demographic: Mapped[float] = mapped_column(REAL, nullable=False)
    topic: Mapped[float] = mapped_column(REAL, nullable=False)
    lift: Mapped[float] = mapped_column(REAL, nullable=False)
    inventory: Mapped[float] = mapped_column(REAL, nullable=False)
    brand_safety: Mapped[float] = mapped_column(REAL, nullable=False)
    # What the rationale is worded from at read time (db.matching.stored_rationale), with the
    # generation's date and weights; NULL free_slots marks a row from before migration 0005,
    # which keeps its worded `rationale`.
    free_slots: Mapped[int | None] = mapped_column(Integer)
    past_delivery: Mapped[float | None] = mapped_column(Float)
    recent_downloads: Mapped[float | None] = mapped_column(Float)
    prior_downloads: Mapped[float | None] = mapped_column(Float)
    rationale: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    created_at: Mapped[datetime] = _created()


class MatchGeneration(Base):
    """One ranking of a tenant: when it was computed, with which weights, what it wrote.

    Its row commits with its partition of `matches`: the newest row is the current ranking.
    """

    __tablename__ = "match_generations"
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    computed_on: Mapped[date] = mapped_column(Date, nullable=False)
    weights: Mapped[dict[str, float]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    trigger: Mapped[str] = mapped_column(String(20), nullable=False, server_default="")
    pairs_scored: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    matches_written: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _created()


class WriteRequest(Base):
    """The fence of one write sent through Temporal: pending, applied (activity) or abandoned (API)."""

    __tablename__ = "write_requests"
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    request_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    state: Mapped[str] = mapped_column(String(12), nullable=False)
    entity_type: Mapped[str] = mapped_column(String(40), nullable=False)
    entity_id: Mapped[str] = mapped_column(String(100), nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """The outbox: one row per business event, written with the change it reports."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_type", "tenant_id", "type", "id"),
        Index("ix_events_tenant_entity", "tenant_id", "entity_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = _tenant()
    type: Mapped[str] = mapped_column(String(60), nullable=False)
    entity_type: Mapped[str] = mapped_column(String(40), nullable=False)
    entity_id: Mapped[str] = mapped_column(String(100), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    idempotency_key: Mapped[str] = mapped_column(String(300), nullable=False, unique=True)


class WebhookEndpoint(Base):
    """A tenant's webhook subscriber: where to POST which events, signed with its secret."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    url: Mapped[str] = mapped_column(String(2000), nullable=False)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(60)), nullable=False)
    format: Mapped[str] = mapped_column(String(20), nullable=False, server_default="standard")
    status: Mapped[str] = mapped_column(String(12), nullable=False, server_default="active")
    description: Mapped[str | None] = mapped_column(String(500))
    # Fernet tokens (db/webhooks.SecretBox): a database dump alone cannot sign.
    secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    after_event_id: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # The first failed attempt since the last success (None: the last attempt succeeded).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class WebhookDelivery(Base):
    """One event to one endpoint: pending until a 2xx (delivered) or the retry window ends (failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    )
    event_type: Mapped[str] = mapped_column(String(60), nullable=False)
    entity_id: Mapped[str] = mapped_column(String(100), nullable=False)
    status: Mapped[str] = mapped_column(String(12), nullable=False, server_default="pending")
    queue_seq: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("nextval('webhook_delivery_queue_seq')")
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    give_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()


# Every table under row-level security, and the column its policy compares.
TENANT_TABLES: dict[str, str] = {
    "tenants": "id",
    "api_keys": "tenant_id",
    "shows": "tenant_id",
    "advertisers": "tenant_id",
    "campaigns": "tenant_id",
    "deal_stage_history": "tenant_id",
    "io_bookings": "tenant_id",
    "ad_units": "tenant_id",
    "promo_codes": "tenant_id",
    "etl_imports": "tenant_id",
    "etl_upload_chunks": "tenant_id",
    "etl_row_errors": "tenant_id",
    "show_downloads": "tenant_id",
    "matches": "tenant_id",
    "match_generations": "tenant_id",
    "events": "tenant_id",
    "write_requests": "tenant_id",
    "webhook_endpoints": "tenant_id",
    "webhook_deliveries": "tenant_id",
}
