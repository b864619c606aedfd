"""deals: Idempotency-Key on POST /api/v1/deals

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("idempotency_key", sa.String(length=200), nullable=True))
    op.create_index(
        "uq_campaigns_idempotency",
        "campaigns",
        ["tenant_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_campaigns_idempotency", table_name="campaigns")
    op.drop_column("campaigns", "idempotency_key")
