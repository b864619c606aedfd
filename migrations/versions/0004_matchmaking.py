"""matchmaking: gender targeting, ranked reads, the tenant list for schedules

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _app_role() -> str:
    from alembic import context

    role = str(context.config.attributes.get("app_role") or "sponsorflow_app")
    if not role.replace("_", "").isalnum():
        raise ValueError(f"unsafe application role name: {role!r}")
    return role


def upgrade() -> None:
    op.add_column("advertisers", sa.Column("target_gender", sa.String(length=10), nullable=True))
    op.create_index("ix_matches_ranked", "matches", ["tenant_id", "generation", sa.text("score DESC"), "id"])
    # The worker keeps one match schedule per tenant; listing tenants crosses RLS, so this
    # owner-run function answers only "which tenants exist".
    op.execute(
        """
        CREATE FUNCTION sponsorflow_tenant_ids() RETURNS SETOF uuid
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
          SELECT id FROM tenants ORDER BY created_at
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION sponsorflow_tenant_ids() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION sponsorflow_tenant_ids() TO {_app_role()}")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS sponsorflow_tenant_ids()")
    op.drop_index("ix_matches_ranked", table_name="matches")
    op.drop_column("advertisers", "target_gender")
