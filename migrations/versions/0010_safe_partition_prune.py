"""matches: the prune function never casts a name that is not a generation

`sponsorflow_match_partition_prune` cast the suffix of every relation name it looked at to a
generation number. SQL does not promise the order in which a WHERE clause's conditions run: with
other catalog statistics the planner applied the cast to relations that are not partitions of
`matches` (a partition's index, `matches_<tenant>_1_score_id_idx`) and the function failed
("invalid input syntax for type bigint"), so old rankings were never dropped. The cast now sits
behind a CASE that checks the suffix is a number, and only tables are considered.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BODY = """
        CREATE OR REPLACE FUNCTION sponsorflow_match_partition_prune(p_keep_from bigint) RETURNS integer
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public SET lock_timeout = '200ms' AS $fn$
        DECLARE
          t uuid := sponsorflow_required_tenant();
          prefix text;
          r record;
          dropped integer := 0;
        BEGIN
          prefix := 'matches_' || replace(t::text, '-', '') || '_';
          FOR r IN
            SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'public.matches'::regclass
              AND c.relkind IN ('r', 'p')
              AND left(c.relname, length(prefix)) = prefix
              AND CASE WHEN substr(c.relname, length(prefix) + 1) ~ '^[0-9]{1,18}$'
                       THEN substr(c.relname, length(prefix) + 1)::bigint < p_keep_from
                       ELSE false END
            ORDER BY c.relname
          LOOP
            BEGIN
              EXECUTE format('DROP TABLE public.%I', r.relname);
              dropped := dropped + 1;
            EXCEPTION WHEN lock_not_available THEN
              -- A reader holds it right now; a later recalculation drops it.
              RAISE NOTICE 'ranking partition % is in use; left for a later run', r.relname;
            END;
          END LOOP;
          RETURN dropped;
        END
        $fn$
"""

_OLD = _BODY.replace(
    """              AND c.relkind IN ('r', 'p')
""",
    "",
).replace(
    """              AND CASE WHEN substr(c.relname, length(prefix) + 1) ~ '^[0-9]{1,18}$'
                       THEN substr(c.relname, length(prefix) + 1)::bigint < p_keep_from
                       ELSE false END""",
    """              AND substr(c.relname, length(prefix) + 1)::bigint < p_keep_from""",
)


def upgrade() -> None:
    op.execute(_BODY)


def downgrade() -> None:
    op.execute(_OLD)
