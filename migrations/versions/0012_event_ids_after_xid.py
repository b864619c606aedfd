"""events: a transaction has its transaction id before it takes an event id

`events.id` comes from a sequence, and ids commit out of order: a transaction can take id N, stay
open, and commit after a later id was seen. The webhook outbox cursor used to bet that such a
transaction commits within SPONSORFLOW_WEBHOOK_OUTBOX_SETTLE_SECONDS. With this default,
`sponsorflow_next_event_id()` assigns the writing transaction its xid (pg_current_xact_id())
before nextval(), so "every transaction that may still write an id below M has ended" becomes a
question the snapshot answers (db/webhooks.claim_events): no time bet.

The function is SECURITY INVOKER: the inserting role needs USAGE on the sequence, which it already
has for the old default.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _app_role() -> str:
    from alembic import context

    role = str(context.config.attributes.get("app_role") or "sponsorflow_app")
    if not role.replace("_", "").isalnum():
        raise ValueError(f"unsafe application role name: {role!r}")
    return role


def _sequence() -> str:
    """The sequence behind events.id (events_id_seq when 0001 created it), schema-qualified."""
    seq = op.get_bind().execute(text("SELECT pg_get_serial_sequence('public.events', 'id')")).scalar()
    if not seq:
        raise RuntimeError("events.id has no sequence")
    return str(seq)


def upgrade() -> None:
    role = _app_role()
    seq = _sequence()
    # The sequence name is quoted as a literal for regclass (it comes from the catalog).
    literal = seq.replace("'", "''")
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION sponsorflow_next_event_id() RETURNS bigint
        LANGUAGE plpgsql VOLATILE SET search_path = public AS $$
        BEGIN
          -- The xid first: any snapshot taken after this id is taken finds the writer running
          -- below its own xid horizon, or finished.
          PERFORM pg_current_xact_id();
          RETURN nextval('{literal}'::regclass);
        END
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION sponsorflow_next_event_id() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION sponsorflow_next_event_id() TO {role}")
    op.execute("ALTER TABLE events ALTER COLUMN id SET DEFAULT sponsorflow_next_event_id()")


def downgrade() -> None:
    seq = _sequence()
    literal = seq.replace("'", "''")
    op.execute(f"ALTER TABLE events ALTER COLUMN id SET DEFAULT nextval('{literal}'::regclass)")
    op.execute("DROP FUNCTION IF EXISTS sponsorflow_next_event_id()")
