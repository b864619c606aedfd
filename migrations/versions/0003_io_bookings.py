"""io bookings: idempotency, vanity uniqueness, lifecycle timestamps, unit prices

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 18:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("io_bookings", sa.Column("idempotency_key", sa.String(length=200), nullable=True))
    op.add_column("io_bookings", sa.Column("vanity_domain", sa.String(length=253), nullable=True))
    op.add_column("io_bookings", sa.Column("vanity_path", sa.String(length=500), nullable=True))
    op.add_column("io_bookings", sa.Column("cancel_reason", sa.Text(), nullable=True))
    op.add_column("io_bookings", sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("io_bookings", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "uq_io_bookings_idempotency",
        "io_bookings",
        ["tenant_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "uq_io_bookings_vanity",
        "io_bookings",
        ["tenant_id", sa.literal_column("lower(vanity_domain)"), sa.literal_column("lower(vanity_path)")],
        unique=True,
        postgresql_where=sa.text("vanity_domain IS NOT NULL"),
    )
    op.add_column(
        "ad_units",
        sa.Column("price_usd", sa.Numeric(precision=14, scale=2), server_default="0", nullable=False),
    )
    op.add_column("ad_units", sa.Column("billed_usd", sa.Numeric(precision=14, scale=2), nullable=True))
    op.add_column("ad_units", sa.Column("aired_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_ad_units_io", "ad_units", ["io_id"])
    op.add_column("promo_codes", sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("promo_codes", "voided_at")
    op.drop_index("ix_ad_units_io", table_name="ad_units")
    op.drop_column("ad_units", "aired_at")
    op.drop_column("ad_units", "billed_usd")
    op.drop_column("ad_units", "price_usd")
    op.drop_index("uq_io_bookings_vanity", table_name="io_bookings")
    op.drop_index("uq_io_bookings_idempotency", table_name="io_bookings")
    op.drop_column("io_bookings", "completed_at")
    op.drop_column("io_bookings", "cancelled_at")
    op.drop_column("io_bookings", "cancel_reason")
    op.drop_column("io_bookings", "vanity_path")
    op.drop_column("io_bookings", "vanity_domain")
    op.drop_column("io_bookings", "idempotency_key")
