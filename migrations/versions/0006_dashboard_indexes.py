"""dashboard: covering indexes for the stage totals, stalled deals, weekly movement, air dates

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Stage totals and win rate read it index-only; stalled deals are one range per stage.
    op.create_index(
        "ix_campaigns_dashboard",
        "campaigns",
        ["tenant_id", "stage", "stage_changed_at"],
        postgresql_include=["value_usd", "probability", "created_at"],
    )
    op.drop_index("ix_campaigns_tenant_stage", table_name="campaigns")  # a prefix of the one above
    op.create_index(
        "ix_deal_stage_history_tenant_changed",
        "deal_stage_history",
        ["tenant_id", "changed_at"],
        postgresql_include=["from_stage", "to_stage"],
    )
    op.create_index(
        "ix_ad_units_upcoming",
        "ad_units",
        ["tenant_id", "air_date"],
        postgresql_where=sa.text("status = 'scheduled'"),
    )


def downgrade() -> None:
    op.drop_index("ix_ad_units_upcoming", table_name="ad_units")
    op.drop_index("ix_deal_stage_history_tenant_changed", table_name="deal_stage_history")
    op.create_index("ix_campaigns_tenant_stage", "campaigns", ["tenant_id", "stage"])
    op.drop_index("ix_campaigns_dashboard", table_name="campaigns")
