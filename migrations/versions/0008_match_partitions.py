"""matches: one partition per ranking generation, typed signal columns, match_generations

A recalculation used to insert half a million rows into one table with three foreign keys,
three indexes and two JSON documents per row: ten seconds of row-by-row work. Now each
ranking generation is a partition of `matches`, filled with COPY while it is still a plain
table, indexed once, then attached (the foreign keys are validated by one query each). The
swap stays atomic: the partition and its match_generations row commit together.

The application role creates and attaches partitions only through the owner-run functions
below, and only for the tenant its transaction is scoped to (app.tenant_id):
  sponsorflow_match_partition_open(generation)    a new, empty partition table; returns its name
  sponsorflow_match_partition_attach(generation)  indexes it, locks it down, attaches it
  sponsorflow_match_partition_prune(keep_from)    drops this tenant's older partitions; one that a
                                                  reader holds is skipped (lock_timeout) and
                                                  dropped by a later run
Partitions are read only through `matches` (its row-level security); the application role
has no privilege on a partition once it is attached.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 23:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_EXPR = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
_SIGNALS = ("geo", "demographic", "topic", "lift", "inventory", "brand_safety")


def _app_role() -> str:
    from alembic import context

    role = str(context.config.attributes.get("app_role") or "sponsorflow_app")
    if not role.replace("_", "").isalnum():
        raise ValueError(f"unsafe application role name: {role!r}")
    return role


# The columns of `matches` and of every partition, in order. A partition's own defaults fill
# tenant_id and generation, so COPY sends only the pair, the score, the signals and the facts.
_COLUMNS = """
    id bigint NOT NULL DEFAULT nextval('matches_id_seq'::regclass),
    tenant_id uuid NOT NULL{tenant_default},
    generation bigint NOT NULL{generation_default},
    advertiser_id uuid NOT NULL,
    show_id uuid NOT NULL,
    score numeric(6,2) NOT NULL,
    geo real NOT NULL,
    demographic real NOT NULL,
    topic real NOT NULL,
    lift real NOT NULL,
    inventory real NOT NULL,
    brand_safety real NOT NULL,
    free_slots integer,
    past_delivery double precision,
    recent_downloads double precision,
    prior_downloads double precision,
    rationale text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
"""


def upgrade() -> None:
    role = _app_role()
    # The ranking generations of each tenant: when, with which weights, what it wrote.
    op.execute(
        """
        CREATE TABLE match_generations (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            generation bigint NOT NULL,
            computed_on date NOT NULL,
            weights jsonb NOT NULL DEFAULT '{}'::jsonb,
            trigger varchar(20) NOT NULL DEFAULT '',
            pairs_scored bigint NOT NULL DEFAULT 0,
            matches_written bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, generation)
        )
        """
    )
    op.execute("ALTER TABLE match_generations ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON match_generations "
        f"USING (tenant_id = {_TENANT_EXPR}) WITH CHECK (tenant_id = {_TENANT_EXPR})"
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON match_generations TO {role}")

    # The flat table steps aside; its rows move into partitions below.
    op.execute("ALTER TABLE matches RENAME TO matches_flat")
    op.execute("ALTER INDEX ix_matches_ranked RENAME TO ix_matches_flat_ranked")
    op.execute("ALTER SEQUENCE matches_id_seq OWNED BY NONE")
    columns = _COLUMNS.format(tenant_default="", generation_default="")
    op.execute(
        f"""
        CREATE TABLE matches (
            {columns},
            CONSTRAINT matches_tenant_id_fkey FOREIGN KEY (tenant_id)
              REFERENCES tenants (id) ON DELETE CASCADE,
            CONSTRAINT matches_advertiser_id_fkey FOREIGN KEY (advertiser_id)
              REFERENCES advertisers (id) ON DELETE CASCADE,
            CONSTRAINT matches_show_id_fkey FOREIGN KEY (show_id)
              REFERENCES shows (id) ON DELETE CASCADE
        ) PARTITION BY RANGE (tenant_id, generation)
        """
    )
    op.execute("ALTER SEQUENCE matches_id_seq OWNED BY matches.id")
    # Within a partition (one tenant, one generation): best first, and one show's best first.
    op.execute("CREATE INDEX ix_matches_ranked ON matches (score DESC, id)")
    op.execute("CREATE INDEX ix_matches_show ON matches (show_id, score DESC, id)")
    op.execute("ALTER TABLE matches ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON matches "
        f"USING (tenant_id = {_TENANT_EXPR}) WITH CHECK (tenant_id = {_TENANT_EXPR})"
    )
    op.execute(f"GRANT SELECT ON matches TO {role}")

    # The tenant the calling transaction is scoped to; the functions below act on it alone.
    op.execute(
        f"""
        CREATE FUNCTION sponsorflow_required_tenant() RETURNS uuid
        LANGUAGE plpgsql STABLE AS $fn$
        DECLARE
          t uuid := {_TENANT_EXPR};
        BEGIN
          IF t IS NULL THEN
            RAISE EXCEPTION 'no tenant is set for this transaction (app.tenant_id)';
          END IF;
          RETURN t;
        END
        $fn$
        """
    )
    op.execute(
        """
        CREATE FUNCTION sponsorflow_match_partition_name(p_tenant uuid, p_generation bigint)
        RETURNS text LANGUAGE sql IMMUTABLE AS $$
          SELECT 'matches_' || replace(p_tenant::text, '-', '') || '_' || p_generation
        $$
        """
    )
    # Inside the format() string literal of the function body: quotes doubled.
    partition_columns = _COLUMNS.format(
        tenant_default=" DEFAULT %L", generation_default=" DEFAULT %s"
    ).replace("'", "''")
    op.execute(
        f"""
        CREATE FUNCTION sponsorflow_match_partition_open(p_generation bigint) RETURNS text
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $fn$
        DECLARE
          t uuid := sponsorflow_required_tenant();
          part text;
        BEGIN
          IF p_generation IS NULL OR p_generation < 1 THEN
            RAISE EXCEPTION 'a ranking generation is a positive number, not %', p_generation;
          END IF;
          IF EXISTS (SELECT 1 FROM match_generations WHERE tenant_id = t AND generation >= p_generation) THEN
            RAISE EXCEPTION 'ranking generation % is not newer than the current one', p_generation;
          END IF;
          part := sponsorflow_match_partition_name(t, p_generation);
          EXECUTE format('CREATE TABLE public.%I ({partition_columns},
              CONSTRAINT partition_bound CHECK (tenant_id = %L AND generation = %s))',
            part, t, p_generation, t, p_generation);
          EXECUTE format('GRANT INSERT ON public.%I TO {role}', part);
          RETURN part;
        END
        $fn$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION sponsorflow_match_partition_attach(p_generation bigint) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $fn$
        DECLARE
          t uuid := sponsorflow_required_tenant();
          part text;
          rel regclass;
        BEGIN
          part := sponsorflow_match_partition_name(t, p_generation);
          rel := to_regclass(format('public.%I', part));
          IF rel IS NULL THEN
            RAISE EXCEPTION 'ranking generation % is not being written', p_generation;
          END IF;
          IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = rel) THEN
            RAISE EXCEPTION 'ranking generation % is already attached', p_generation;
          END IF;
          EXECUTE format('REVOKE ALL ON public.%I FROM {role}', part);
          -- Built once over the loaded rows (a sorted build), not row by row.
          EXECUTE format('CREATE UNIQUE INDEX ON public.%I (advertiser_id, show_id)', part);
          EXECUTE format('CREATE INDEX ON public.%I (score DESC, id)', part);
          EXECUTE format('CREATE INDEX ON public.%I (show_id, score DESC, id)', part);
          -- Statistics now, not when autovacuum gets to it: the first read plans with them.
          EXECUTE format('ANALYZE public.%I', part);
          -- Read only through matches; direct access is denied to everyone but the owner.
          EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', part);
          EXECUTE format(
            'ALTER TABLE public.matches ATTACH PARTITION public.%I FOR VALUES FROM (%L, %s) TO (%L, %s)',
            part, t, p_generation, t, p_generation + 1);
        END
        $fn$
        """
    )
    op.execute(
        """
        CREATE FUNCTION sponsorflow_match_partition_prune(p_keep_from bigint) RETURNS integer
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
              AND left(c.relname, length(prefix)) = prefix
              AND substr(c.relname, length(prefix) + 1)::bigint < p_keep_from
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
    )
    for fn in (
        "sponsorflow_match_partition_open(bigint)",
        "sponsorflow_match_partition_attach(bigint)",
        "sponsorflow_match_partition_prune(bigint)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {role}")

    # Existing rankings move into partitions; rows from before 0005 keep their worded rationale.
    signal_columns = ", ".join(_SIGNALS)
    # Inside the format() string literal of the DO block: quotes doubled.
    signal_values = ", ".join(f"coalesce((signals->>''{s}'')::real, 0)" for s in _SIGNALS)
    names = ", ".join(f"'{s}'" for s in _SIGNALS)
    op.execute(
        f"""
        DO $mig$
        DECLARE
          g record;
          part text;
        BEGIN
          FOR g IN
            SELECT tenant_id, generation, min(created_at) AS created_at,
                   (array_agg(facts) FILTER (WHERE facts IS NOT NULL))[1] AS facts,
                   count(*) AS n
            FROM matches_flat GROUP BY tenant_id, generation ORDER BY tenant_id, generation
          LOOP
            PERFORM set_config('app.tenant_id', g.tenant_id::text, true);
            part := sponsorflow_match_partition_open(g.generation);
            EXECUTE format(
              'INSERT INTO public.%I (id, advertiser_id, show_id, score, {signal_columns},
                 free_slots, past_delivery, recent_downloads, prior_downloads, rationale, created_at)
               SELECT id, advertiser_id, show_id, score, {signal_values},
                 (facts->>''f'')::integer, (facts->>''d'')::double precision,
                 (facts->>''r'')::double precision, (facts->>''p'')::double precision,
                 rationale, created_at
               FROM matches_flat WHERE tenant_id = %L AND generation = %s',
              part, g.tenant_id, g.generation);
            PERFORM sponsorflow_match_partition_attach(g.generation);
            INSERT INTO match_generations
              (tenant_id, generation, computed_on, weights, trigger, matches_written, created_at)
            VALUES (
              g.tenant_id, g.generation,
              coalesce((g.facts->>'t')::date, g.created_at::date),
              coalesce(
                (SELECT jsonb_object_agg(k, g.facts->'w'->(i::int - 1))
                 FROM unnest(ARRAY[{names}]) WITH ORDINALITY AS u(k, i)
                 WHERE g.facts->'w' IS NOT NULL),
                '{{}}'::jsonb),
              'migrated', g.n, g.created_at);
          END LOOP;
          PERFORM set_config('app.tenant_id', '', true);
        END
        $mig$
        """
    )
    op.execute("DROP TABLE matches_flat")


def downgrade() -> None:
    role = _app_role()
    op.execute("ALTER TABLE matches RENAME TO matches_parted")
    op.execute("ALTER INDEX ix_matches_ranked RENAME TO ix_matches_parted_ranked")
    op.execute("ALTER SEQUENCE matches_id_seq OWNED BY NONE")
    op.execute(
        """
        CREATE TABLE matches (
            id bigint NOT NULL DEFAULT nextval('matches_id_seq'::regclass),
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            generation bigint NOT NULL,
            advertiser_id uuid NOT NULL REFERENCES advertisers (id) ON DELETE CASCADE,
            show_id uuid NOT NULL REFERENCES shows (id) ON DELETE CASCADE,
            score numeric(6,2) NOT NULL,
            signals jsonb NOT NULL,
            rationale text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            facts jsonb,
            PRIMARY KEY (id),
            UNIQUE (tenant_id, generation, advertiser_id, show_id)
        )
        """
    )
    op.execute("ALTER SEQUENCE matches_id_seq OWNED BY matches.id")
    op.execute("CREATE INDEX ix_matches_ranked ON matches (tenant_id, generation, score DESC, id)")
    signals = ", ".join(f"'{s}', m.{s}::numeric" for s in _SIGNALS)
    op.execute(
        f"""
        INSERT INTO matches
          (id, tenant_id, generation, advertiser_id, show_id, score, signals, rationale, created_at, facts)
        SELECT m.id, m.tenant_id, m.generation, m.advertiser_id, m.show_id, m.score,
               jsonb_build_object({signals}), m.rationale, m.created_at,
               CASE WHEN m.free_slots IS NULL THEN NULL ELSE jsonb_build_object(
                 't', g.computed_on, 'w', (
                   SELECT coalesce(jsonb_agg(g.weights->k ORDER BY i), '[]'::jsonb)
                   FROM unnest(ARRAY[{", ".join(f"'{s}'" for s in _SIGNALS)}]) WITH ORDINALITY AS u(k, i)),
                 'r', m.recent_downloads, 'p', m.prior_downloads, 'f', m.free_slots, 'd', m.past_delivery)
               END
        FROM matches_parted m
        LEFT JOIN match_generations g ON g.tenant_id = m.tenant_id AND g.generation = m.generation
        """
    )
    op.execute("DROP TABLE matches_parted")
    op.execute("ALTER TABLE matches ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON matches "
        f"USING (tenant_id = {_TENANT_EXPR}) WITH CHECK (tenant_id = {_TENANT_EXPR})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON matches TO {role}")
    for fn in (
        "sponsorflow_match_partition_open(bigint)",
        "sponsorflow_match_partition_attach(bigint)",
        "sponsorflow_match_partition_prune(bigint)",
        "sponsorflow_match_partition_name(uuid, bigint)",
        "sponsorflow_required_tenant()",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    op.execute("DROP TABLE match_generations")
