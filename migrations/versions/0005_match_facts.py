"""matches keep the facts their rationale is worded from, at read time

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The rationale is worded when a match is read, from these facts (db.matching.stored_rationale);
    # rows written before keep their stored rationale and no facts.
    op.add_column("matches", sa.Column("facts", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.alter_column("matches", "rationale", server_default="")
    # Every lookup by tenant goes through ix_matches_ranked (tenant_id first): this one only
    # slowed the half-million-row inserts of each recalculation.
    op.drop_index("ix_matches_tenant_id", table_name="matches")


def downgrade() -> None:
    op.create_index("ix_matches_tenant_id", "matches", ["tenant_id"], unique=False)
    op.alter_column("matches", "rationale", server_default=None)
    # Rows ranked since the upgrade carry no stored rationale: readers of the old schema would
    # show none, so they go; the next recalculation writes them again.
    op.execute("DELETE FROM matches WHERE facts IS NOT NULL")
    op.drop_column("matches", "facts")
