"""Imports in SQL: the stored upload, bulk upserts of imported rows by natural key (each reporting
inserts, updates and in-file repeats), and closing an import that will not finish."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Float, Numeric, Table, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import raw_connection
from db.events import emit_event
from db.models import Advertiser, Deal, EtlImport, EtlRowError, EtlUploadChunk, Show
from domain import events
from domain.imports import (
    OPEN_STATUSES,
    ClosedAs,
    EmptyUpload,
    UploadTooLarge,
    closed_import_reason,
    closed_import_status,
    start_refused_reason,
)
from domain.io import DEFAULT_SLOTS
from domain.stages import OPEN_STAGES, Stage, probability

_OPEN_STAGE_VALUES = frozenset(s.value for s in OPEN_STAGES)


@dataclass
class UpsertOutcome:
    """What one chunk's upsert did."""

    inserted: int = 0
    updated: int = 0
    repeated_keys: list[str] = field(default_factory=list)  # written earlier by this same import
    stage_kept: int = 0  # existing deals whose file stage differed (stages move through the pipeline)
    # Existing open deals whose value, advertiser, show or name this chunk changed: their
    # workflows hold those as search attributes and summary, and are told to re-read the row.
    resync: list[uuid.UUID] = field(default_factory=list)


@dataclass
class StagedCatalog:
    """A chunk of shows or advertisers in this connection's staging table, not yet merged."""

    columns: list[str]  # the columns its rows set
    keys: frozenset[str]  # their external ids
    repeated_keys: list[str]  # those an earlier chunk of this import already wrote

    def add_repeats(self, earlier_keys: frozenset[str]) -> None:
        """Adds the keys shared with a chunk not committed yet (the database cannot show them)."""
        known = set(self.repeated_keys)
        self.repeated_keys.extend(sorted((self.keys & earlier_keys) - known))


async def store_upload(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    kind: str,
    filename: str,
    workflow_id: str,
    pieces: AsyncIterator[bytes],
    limit_bytes: int,
) -> int:
    """Stores a new `pending` import and its upload, piece by piece (etl_upload_chunks); returns its size.

    Raises UploadTooLarge once the pieces pass `limit_bytes` and EmptyUpload when there were none:
    raised inside the caller's transaction, they roll the import and its pieces back.
    """
    session.add(
        EtlImport(
            id=import_id,
            tenant_id=tenant_id,
            kind=kind,
            filename=filename,
            status="pending",
            workflow_id=workflow_id,
        )
    )
    await session.flush()
    size = 0
    seq = 0
    async for piece in pieces:
        size += len(piece)
        if size > limit_bytes:
            raise UploadTooLarge
        session.add(EtlUploadChunk(import_id=import_id, seq=seq, tenant_id=tenant_id, data=piece))
        await session.flush()
        session.expunge_all()  # keep the session from holding every piece in memory
        seq += 1
    if size == 0:
        raise EmptyUpload
    imp = await session.get(EtlImport, import_id)
    assert imp is not None
    imp.size_bytes = size
    return size


async def row_errors(*, session: AsyncSession, import_id: uuid.UUID, limit: int) -> list[EtlRowError]:
    """An import's first row errors, in row order."""
    stmt = (
        select(EtlRowError)
        .where(EtlRowError.import_id == import_id)
        .order_by(EtlRowError.row_number, EtlRowError.id)
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


async def stage_catalog(
    *,
    session: AsyncSession,
    model: type[Show] | type[Advertiser],
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    records: list[dict[str, Any]],
) -> StagedCatalog | None:
    """COPYs a chunk of parsed shows or advertisers into this connection's staging table.

    Staging touches no catalog row, so the import stages chunk k+1 while chunk k merges and
    commits on another connection; `merge_catalog` then writes it on this connection and
    transaction. The keys committed chunks of this import already wrote (in-file repeats) are
    looked up here too, off the path commits wait on. None: nothing to stage.
    """
    if not records:
        return None
    table: Table = model.__table__  # type: ignore[assignment]
    columns = sorted(
        {k for r in records for k in r} - {"tenant_id", "external_id", "last_import_id", "updated_at"}
    )
    unknown = [c for c in columns if c not in table.c]
    if unknown:
        raise ValueError(f"not columns of {table.name}: {unknown}")
    # Every row carries every column of the chunk; missing optional cells reset the column to
    # its default, as a re-import of the same file should.
    defaults = _defaults(model)
    plan = [(c, _copy_encoder(table.c[c].type), defaults.get(c)) for c in columns]
    rows = [(r["external_id"], *(enc(r.get(c, default)) for c, enc, default in plan)) for r in records]
    stage = _stage_table(table)
    staged = [c.name for c in table.c if c.name not in _NOT_STAGED]
    raw = await raw_connection(session=session)
    await raw.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
        f"SELECT {', '.join(staged)} FROM {table.name} WITH NO DATA"
    )
    await raw.copy_records_to_table(stage, records=rows, columns=["external_id", *columns])
    # LATERAL: one unique-index probe per staged row, whatever the statistics say. A plain
    # join let a planner with a stale row count for the tenant (analysed when it had 100
    # shows, now 90,000) loop over the staging table once per catalog row: 24 s for one chunk.
    repeated = await raw.fetch(
        f"SELECT s.external_id FROM {stage} s CROSS JOIN LATERAL ("
        f"  SELECT 1 FROM {table.name} t WHERE t.tenant_id = $1 "
        "  AND t.external_id = s.external_id AND t.last_import_id = $2 LIMIT 1) AS seen",
        tenant_id,
        import_id,
    )
    return StagedCatalog(
        columns=columns,
        keys=frozenset(str(r["external_id"]) for r in records),
        repeated_keys=[str(r[0]) for r in repeated],
    )


async def merge_catalog(
    *,
    session: AsyncSession,
    model: type[Show] | type[Advertiser],
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    staged: StagedCatalog | None,
    at: datetime,
) -> UpsertOutcome:
    """Inserts or updates the staged shows or advertisers by external_id: one upsert.

    One INSERT ... SELECT ... ON CONFLICT DO UPDATE from the staging table per chunk, whatever
    its size, like `show_downloads`.
    """
    out = UpsertOutcome()
    if staged is None:
        return out
    out.repeated_keys = list(staged.repeated_keys)
    table: Table = model.__table__  # type: ignore[assignment]
    stage = _stage_table(table)
    listed = ", ".join(staged.columns)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in [*staged.columns, "last_import_id", "updated_at"])
    counts = (
        await session.execute(
            text(
                f"""
                WITH up AS (
                  INSERT INTO {table.name} (id, tenant_id, external_id, {listed}, last_import_id, updated_at)
                  SELECT gen_random_uuid(), :tenant_id, external_id, {listed}, :import_id, :at FROM {stage}
                  ON CONFLICT (tenant_id, external_id) DO UPDATE SET {sets}
                  RETURNING (xmax = 0) AS inserted
                )
                SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
                """
            ),
            {"tenant_id": tenant_id, "import_id": import_id, "at": at},
        )
    ).one()
    out.inserted, out.updated = int(counts[0]), int(counts[1])
    return out


def _stage_table(table: Table) -> str:
    return f"sf_{table.name}_stage"


_NOT_STAGED = frozenset({"id", "tenant_id", "created_at", "updated_at", "last_import_id"})


def _copy_encoder(column_type: Any) -> Any:
    """How a parsed value goes into COPY's binary format for a column of this type."""
    if isinstance(column_type, JSONB):
        return lambda v: None if v is None else json.dumps(v)
    if isinstance(column_type, Numeric) and not isinstance(column_type, Float):
        return lambda v: None if v is None else Decimal(str(v))
    return lambda v: v


def _defaults(model: Any) -> dict[str, Any]:
    if model is Show:
        return {
            "categories": [],
            "geo": {},
            "age": {},
            "brand_safety": {},
            "slots": dict(DEFAULT_SLOTS),
        }
    return {"target_categories": [], "target_geo": [], "target_age": [], "brand_safety_tolerance": "medium"}


async def ids_by_external_id(
    *, session: AsyncSession, model: type[Show] | type[Advertiser], keys: set[str]
) -> dict[str, uuid.UUID]:
    """Maps external ids of this tenant to row ids (RLS scopes the lookup)."""
    if not keys:
        return {}
    rows = await session.execute(select(model.external_id, model.id).where(model.external_id.in_(keys)))
    return {str(r[0]): r[1] for r in rows}


async def stage_campaigns(*, session: AsyncSession, records: list[dict[str, Any]]) -> None:
    """COPYs a chunk of resolved campaign rows into this connection's staging table.

    The chunk's deals, their first history entries and their `deal.created` events are then
    written by a fixed number of set-based statements (`upsert_campaigns`), whatever the chunk
    size: one COPY, one read of the deals that exist, one upsert with history and events.
    """
    raw = await raw_connection(session=session)
    await raw.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sf_campaign_stage (ord int, external_id text, advertiser_id uuid, "
        "show_id uuid, name text, value_usd numeric(14, 2), stage text, probability int, lost_reason text, "
        "expected_close date, owner_email text) ON COMMIT DELETE ROWS"
    )
    if not records:
        return
    rows = []
    for i, r in enumerate(records):
        stage = Stage(r.get("stage") or Stage.LEAD.value)
        rows.append(
            (
                i,
                r["external_id"],
                r["advertiser_id"],
                r.get("show_id"),
                r["name"],
                Decimal(str(r["value_usd"])),
                stage.value,
                probability(stage),
                r.get("lost_reason") if stage is Stage.LOST else None,
                r.get("expected_close"),
                r.get("owner_email"),
            )
        )
    await raw.copy_records_to_table("sf_campaign_stage", records=rows, columns=_CAMPAIGN_STAGE_COLUMNS)


_CAMPAIGN_STAGE_COLUMNS = [
    "ord",
    "external_id",
    "advertiser_id",
    "show_id",
    "name",
    "value_usd",
    "stage",
    "probability",
    "lost_reason",
    "expected_close",
    "owner_email",
]

# The staged rows that meet an existing deal: written earlier by this import (an in-file
# repeat), a stage the file disagrees with (kept), or an open deal whose workflow must re-read.
_CAMPAIGNS_EXISTING = text(
    """
    SELECT s.external_id, c.id, c.last_import_id IS NOT DISTINCT FROM :import_id AS repeated,
           c.stage <> s.stage AS stage_differs,
           c.stage = ANY(:open_stages) AND (
             c.advertiser_id IS DISTINCT FROM s.advertiser_id OR c.show_id IS DISTINCT FROM s.show_id
             OR c.name IS DISTINCT FROM s.name OR c.value_usd IS DISTINCT FROM s.value_usd
           ) AS resync
    FROM sf_campaign_stage s
    -- LATERAL: one probe of the (tenant_id, external_id) index per staged row, whatever the
    -- planner believes of a table this import (or another tenant's) has just grown.
    JOIN LATERAL (
      SELECT id, stage, last_import_id, advertiser_id, show_id, name, value_usd FROM campaigns
      WHERE tenant_id = :tenant_id AND external_id = s.external_id
    ) c ON true
    ORDER BY s.ord
    """
)

# deal.created's payload as SQL over the upsert's RETURNING: the same fields as
# events.deal_created_payload (checked at import time), so an imported deal's event reads like
# one created through the API.
_DEAL_CREATED_SQL = {
    "name": "name",
    "stage": "stage",
    "value_usd": "value_usd::float8",
    "advertiser_id": "advertiser_id::text",
    "show_id": "show_id::text",
    "import_id": "CAST(:import_text AS text)",
}
assert tuple(_DEAL_CREATED_SQL) == events.DEAL_CREATED_FIELDS

# One statement: the upsert, then for the rows it inserted their history entry and event. A
# chunk retried after a rollback writes them again from scratch; the idempotency keys make a
# duplicate impossible even if a chunk were ever written twice.
_CAMPAIGNS_UPSERT = text(
    """
    WITH up AS (
      INSERT INTO campaigns (id, tenant_id, external_id, advertiser_id, show_id, name, value_usd, stage,
                             stage_changed_at, probability, lost_reason, expected_close, owner_email,
                             last_import_id, created_at, updated_at)
      SELECT gen_random_uuid(), :tenant_id, external_id, advertiser_id, show_id, name, value_usd, stage,
             :at, probability, lost_reason, expected_close, owner_email, :import_id, :at, :at
      FROM sf_campaign_stage ORDER BY ord
      ON CONFLICT (tenant_id, external_id) DO UPDATE SET
        advertiser_id = EXCLUDED.advertiser_id, show_id = EXCLUDED.show_id, name = EXCLUDED.name,
        value_usd = EXCLUDED.value_usd, expected_close = EXCLUDED.expected_close,
        owner_email = EXCLUDED.owner_email, last_import_id = EXCLUDED.last_import_id,
        updated_at = EXCLUDED.updated_at
      RETURNING id, external_id, stage, name, value_usd, advertiser_id, show_id, (xmax = 0) AS inserted
    ),
    created AS (
      SELECT up.*, s.ord FROM up JOIN sf_campaign_stage s USING (external_id) WHERE up.inserted
    ),
    history AS (
      INSERT INTO deal_stage_history (tenant_id, campaign_id, from_stage, to_stage, reason, changed_at,
                                      idempotency_key)
      SELECT :tenant_id, id, NULL, stage, 'imported', :at, CAST(:key_prefix AS text) || id
      FROM created ORDER BY ord
      ON CONFLICT (idempotency_key) DO NOTHING
    ),
    emitted AS (
      INSERT INTO events (tenant_id, type, entity_type, entity_id, payload, occurred_at, idempotency_key)
      SELECT :tenant_id, :event_type, 'deal', id::text, jsonb_build_object(__DEAL_CREATED_PAYLOAD__),
             :at, CAST(:key_prefix AS text) || id
      FROM created ORDER BY ord
      ON CONFLICT (idempotency_key) DO NOTHING
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
    """.replace("__DEAL_CREATED_PAYLOAD__", ", ".join(f"'{k}', {v}" for k, v in _DEAL_CREATED_SQL.items()))
)


async def upsert_campaigns(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    at: datetime,
) -> UpsertOutcome:
    """Inserts the staged deals (with their first history entry and deal.created) or updates them.

    An existing deal keeps its stage: stages move through DealWorkflow, never behind its back.
    Reads the rows `stage_campaigns` put in this connection's staging table.
    """
    out = UpsertOutcome()
    params = {"tenant_id": tenant_id, "import_id": import_id}
    for external_id, cid, repeated, stage_differs, resync in await session.execute(
        _CAMPAIGNS_EXISTING, {**params, "open_stages": sorted(_OPEN_STAGE_VALUES)}
    ):
        if repeated:
            out.repeated_keys.append(str(external_id))
        if stage_differs:
            out.stage_kept += 1
        if resync:
            out.resync.append(cid)
    counts = (
        await session.execute(
            _CAMPAIGNS_UPSERT,
            {
                **params,
                "at": at,
                "event_type": events.DEAL_CREATED,
                "import_text": str(import_id),
                "key_prefix": events.DEAL_CREATED_KEY_PREFIX,
            },
        )
    ).one()
    out.inserted, out.updated = int(counts[0]), int(counts[1])
    return out


async def count_open_deals_written(*, session: AsyncSession, import_id: uuid.UUID) -> int:
    """How many open deals this import wrote: the deal workflows its second phase starts."""
    count = await session.scalar(
        select(func.count())
        .select_from(Deal)
        .where(Deal.last_import_id == import_id, Deal.stage.in_(sorted(_OPEN_STAGE_VALUES)))
    )
    return int(count or 0)


async def stage_downloads(*, session: AsyncSession, records: list[dict[str, Any]]) -> None:
    """COPYs a chunk of downloads into this connection's staging table (no locks, no RLS).

    Downloads are the million-row kind: staging by COPY and merging with one statement is what
    makes them fast. The staging table is per connection and empties itself at commit.
    """
    raw = await raw_connection(session=session)
    await raw.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sf_download_stage "
        "(show_id uuid, date date, country text, downloads bigint) ON COMMIT DELETE ROWS"
    )
    if records:
        await raw.copy_records_to_table(
            "sf_download_stage",
            records=[(r["show_id"], r["date"], r.get("country") or "", r["downloads"]) for r in records],
            columns=["show_id", "date", "country", "downloads"],
        )


async def merge_downloads(
    *, session: AsyncSession, tenant_id: uuid.UUID, import_id: uuid.UUID
) -> UpsertOutcome:
    """Merges the staged downloads into show_downloads by (show, date, country)."""
    counts = (
        await session.execute(
            text(
                """
                WITH merged AS (
                  INSERT INTO show_downloads (tenant_id, show_id, date, country, downloads, last_import_id)
                  SELECT :tenant_id, show_id, date, country, downloads, :import_id FROM sf_download_stage
                  ON CONFLICT (tenant_id, show_id, date, country)
                  DO UPDATE SET downloads = EXCLUDED.downloads, last_import_id = EXCLUDED.last_import_id
                  RETURNING (xmax = 0) AS inserted
                )
                SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
                """
            ),
            {"tenant_id": tenant_id, "import_id": import_id},
        )
    ).one()
    return UpsertOutcome(inserted=int(counts[0]), updated=int(counts[1]))


async def close_open_import(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    closed_as: ClosedAs,
    at: datetime,
    detail: str | None = None,
    reason: str | None = None,
    only_pending: bool = False,
) -> EtlImport | None:
    """Ends an import that is still open (pending/running) as failed or cancelled, with a reason.

    Idempotent: an import that is already final is left alone (None is returned). The row is
    locked first, so the counts named in the reason are exactly what committed: an import
    activity commits a chunk only while holding the same lock and only while the import is
    open, so nothing commits after this. `only_pending` fences a start: it closes the import
    only if no workflow has moved it to `running` yet. Emits `etl.error` once.
    """
    row = await session.get(EtlImport, import_id, with_for_update=True, populate_existing=True)
    allowed = ("pending",) if only_pending else OPEN_STATUSES
    if row is None or row.status not in allowed:
        return None
    row.status = closed_import_status(closed_as)
    row.error = reason or closed_import_reason(closed_as, row.rows_processed, detail)
    row.finished_at = at
    await emit_event(
        session=session,
        tenant_id=tenant_id,
        type=events.ETL_ERROR,
        entity_type="import",
        entity_id=str(import_id),
        payload={"kind": row.kind, "filename": row.filename, "status": row.status, "reason": row.error},
        occurred_at=at,
        idempotency_key=f"etl/{import_id}/{row.status}",
    )
    return row


async def fence_unstarted_import(
    *, session: AsyncSession, tenant_id: uuid.UUID, import_id: uuid.UUID, detail: str, at: datetime
) -> bool:
    """Marks an import whose workflow start was not confirmed failed, unless a workflow already runs it.

    True: fenced (still pending, now failed for good: a workflow that starts late finds it
    failed and imports nothing). False: a workflow moved it to running, so the start happened.
    """
    fenced = await close_open_import(
        session=session,
        tenant_id=tenant_id,
        import_id=import_id,
        closed_as="not_found",
        reason=start_refused_reason(detail),
        at=at,
        only_pending=True,
    )
    return fenced is not None


async def close_after_workflow(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    closed_as: ClosedAs,
    detail: str | None,
    at: datetime,
) -> EtlImport | None:
    """Closes an open import whose workflow ended without finishing it; returns the row as it now is.

    Closed meanwhile by someone else (the workflow's cleanup, the maintenance round): their row.
    """
    closed = await close_open_import(
        session=session, tenant_id=tenant_id, import_id=import_id, closed_as=closed_as, detail=detail, at=at
    )
    if closed is None:
        closed = await session.get(EtlImport, import_id, populate_existing=True)
    return closed


async def open_imports(
    *, session: AsyncSession, created_before: datetime, limit: int
) -> list[tuple[uuid.UUID, datetime]]:
    """This tenant's pending/running imports created before a moment: (id, created_at), oldest first."""
    rows = await session.execute(
        select(EtlImport.id, EtlImport.created_at)
        .where(EtlImport.status.in_(OPEN_STATUSES), EtlImport.created_at < created_before)
        .order_by(EtlImport.created_at)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]
