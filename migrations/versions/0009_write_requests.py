"""write_requests: the fence that makes a 503 final

Every write the API sends through Temporal carries a request id (the update's id). The activity
that persists it claims the id here, in the transaction of the write; an API that gives up on a
request claims it first, as abandoned. Whoever commits first wins, so a request the API answered
503 for can never be applied later, and one the API found applied is answered 200.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_EXPR = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"


def _app_role() -> str:
    from alembic import context

    role = str(context.config.attributes.get("app_role") or "sponsorflow_app")
    if not role.replace("_", "").isalnum():
        raise ValueError(f"unsafe application role name: {role!r}")
    return role


def upgrade() -> None:
    role = _app_role()
    op.execute(
        """
        CREATE TABLE write_requests (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            request_id varchar(120) NOT NULL,
            state varchar(12) NOT NULL CHECK (state IN ('pending', 'applied', 'abandoned')),
            entity_type varchar(40) NOT NULL,
            entity_id varchar(100) NOT NULL,
            idempotency_key varchar(300),
            fingerprint varchar(64),
            expires_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            decided_at timestamptz,
            PRIMARY KEY (tenant_id, request_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_write_requests_key ON write_requests (tenant_id, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute("CREATE INDEX ix_write_requests_created ON write_requests (created_at)")
    op.execute("ALTER TABLE write_requests ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON write_requests "
        f"USING (tenant_id = {_TENANT_EXPR}) WITH CHECK (tenant_id = {_TENANT_EXPR})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON write_requests TO {role}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS write_requests")
