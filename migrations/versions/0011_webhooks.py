"""webhooks: endpoints (secrets encrypted) and one delivery per endpoint and event

`webhook_endpoints` holds a tenant's subscriber URLs. The signing secret is stored encrypted
(Fernet, key from SPONSORFLOW_WEBHOOK_SECRET_KEY), so a dump of the database alone cannot sign;
the previous secret keeps signing until `previous_secret_expires_at` after a rotation.
`after_event_id` is where the endpoint's outbox cursor starts (the tenant's newest event when the
endpoint was created: events before it are only sent by a replay). `failing_since` is the first
failed attempt since the last success: the endpoint is paused with a
`webhook.disabled` event once it has failed continuously for SPONSORFLOW_WEBHOOK_DISABLE_AFTER_HOURS.

`webhook_deliveries` is the durable queue the endpoint's workflow claims events into:
UNIQUE (endpoint_id, event_id) makes a claim idempotent, so a retried claim never queues an event
twice. `queue_seq` orders the queue (a retry or a replay takes a new one); `give_up_at` is fixed at
the first attempt, so the retry window survives a continue-as-new.
The claim scans events after its cursor on the primary key (recent rows only).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 15:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_EXPR = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"


def _app_role() -> str:
    from alembic import context

    role = str(context.config.attributes.get("app_role") or "sponsorflow_app")
    if not role.replace("_", "").isalnum():
        raise ValueError(f"unsafe application role name: {role!r}")
    return role


def _tenant_table(table: str, role: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} "
        f"USING (tenant_id = {_TENANT_EXPR}) WITH CHECK (tenant_id = {_TENANT_EXPR})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")


def upgrade() -> None:
    role = _app_role()
    op.execute(
        """
        CREATE TABLE webhook_endpoints (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            url varchar(2000) NOT NULL,
            event_types varchar(60)[] NOT NULL,
            format varchar(20) NOT NULL DEFAULT 'standard' CHECK (format IN ('standard', 'slack')),
            status varchar(12) NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
            description varchar(500),
            secret_encrypted text NOT NULL,
            previous_secret_encrypted text,
            previous_secret_expires_at timestamptz,
            after_event_id bigint NOT NULL DEFAULT 0,
            failing_since timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at, id)")
    op.execute("CREATE SEQUENCE webhook_delivery_queue_seq")
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            event_id bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            event_type varchar(60) NOT NULL,
            entity_id varchar(100) NOT NULL,
            status varchar(12) NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'failed')),
            queue_seq bigint NOT NULL DEFAULT nextval('webhook_delivery_queue_seq'),
            attempts integer NOT NULL DEFAULT 0,
            last_status_code integer,
            last_error varchar(500),
            first_attempt_at timestamptz,
            give_up_at timestamptz,
            next_attempt_at timestamptz,
            delivered_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_webhook_deliveries_endpoint_event UNIQUE (endpoint_id, event_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_pending ON webhook_deliveries (endpoint_id, queue_seq) "
        "WHERE status = 'pending'"
    )
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_newest "
        "ON webhook_deliveries (endpoint_id, created_at DESC, id DESC)"
    )
    _tenant_table("webhook_endpoints", role)
    _tenant_table("webhook_deliveries", role)
    op.execute(f"GRANT USAGE, SELECT ON SEQUENCE webhook_delivery_queue_seq TO {role}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS webhook_deliveries")
    op.execute("DROP TABLE IF EXISTS webhook_endpoints")
    op.execute("DROP SEQUENCE IF EXISTS webhook_delivery_queue_seq")
