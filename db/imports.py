"""Bulk upserts of imported rows by natural key, each reporting inserts, updates and in-file repeats."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import literal_column, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import raw_connection
from db.events import emit_event
from db.models import Advertiser, Campaign, DealStageHistory, EtlImport, Show
from domain import events
from domain.etl import OPEN_STATUSES, ClosedAs, closed_import_reason, closed_import_status
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


_INSERTED: Any = literal_column("(xmax = 0)").label("inserted")
# PostgreSQL's wire protocol caps a statement at 32767 bind parameters; multi-row inserts are
# split so rows x columns stays under it whatever the chunk size.
_MAX_PARAMS = 30_000


def _slices(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    width = max(1, len(rows[0])) if rows else 1
    step = max(1, _MAX_PARAMS // width)
    return [rows[i : i + step] for i in range(0, len(rows), step)]


async def _repeats(session: AsyncSession, model: Any, import_id: uuid.UUID, keys: Sequence[str]) -> list[str]:
    rows = await session.execute(
        select(model.external_id).where(model.external_id.in_(keys), model.last_import_id == import_id)
    )
    return [r[0] for r in rows]


async def upsert_catalog(
    *,
    session: AsyncSession,
    model: type[Show] | type[Advertiser],
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    records: list[dict[str, Any]],
    at: datetime,
) -> UpsertOutcome:
    """Inserts or updates shows or advertisers by external_id."""
    out = UpsertOutcome()
    if not records:
        return out
    out.repeated_keys = await _repeats(session, model, import_id, [r["external_id"] for r in records])
    values = [{**r, "tenant_id": tenant_id, "last_import_id": import_id, "updated_at": at} for r in records]
    columns = sorted({k for v in values for k in v} - {"tenant_id", "external_id"})
    # Every row carries every column so the statement is uniform; missing optional cells reset
    # the column to its default, as a re-import of the same file should.
    defaults = _defaults(model)
    rows = [{c: v.get(c, defaults.get(c)) for c in [*columns, "tenant_id", "external_id"]} for v in values]
    for part in _slices(rows):
        stmt = insert(model).values(part)
        upsert = stmt.on_conflict_do_update(
            index_elements=[model.tenant_id, model.external_id],
            set_={c: stmt.excluded[c] for c in columns},
        ).returning(_INSERTED)
        for (inserted,) in await session.execute(upsert):
            if inserted:
                out.inserted += 1
            else:
                out.updated += 1
    return out


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
    session: AsyncSession, model: type[Show] | type[Advertiser], keys: set[str]
) -> dict[str, uuid.UUID]:
    """Maps external ids of this tenant to row ids (RLS scopes the lookup)."""
    if not keys:
        return {}
    rows = await session.execute(select(model.external_id, model.id).where(model.external_id.in_(keys)))
    return {str(r[0]): r[1] for r in rows}


async def upsert_campaigns(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    records: list[dict[str, Any]],
    at: datetime,
) -> UpsertOutcome:
    """Inserts new deals (with their first history entry and deal.created) or updates existing ones.

    An existing deal keeps its stage: stages move through DealWorkflow, never behind its back.
    """
    out = UpsertOutcome()
    if not records:
        return out
    out.repeated_keys = await _repeats(session, Campaign, import_id, [r["external_id"] for r in records])
    existing = {
        r[0]: r[1:]
        for r in await session.execute(
            select(
                Campaign.external_id,
                Campaign.stage,
                Campaign.id,
                Campaign.advertiser_id,
                Campaign.show_id,
                Campaign.name,
                Campaign.value_usd,
            ).where(Campaign.external_id.in_([r["external_id"] for r in records]))
        )
    }
    rows = []
    for r in records:
        stage = Stage(r.get("stage") or Stage.LEAD.value)
        before = existing.get(r["external_id"])
        if before is not None:
            old_stage, cid, advertiser_id, show_id, name, value = before
            if old_stage != stage.value:
                out.stage_kept += 1
            if old_stage in _OPEN_STAGE_VALUES and (
                advertiser_id != r["advertiser_id"]
                or show_id != r.get("show_id")
                or name != r["name"]
                or Decimal(value) != Decimal(str(r["value_usd"]))
            ):
                out.resync.append(cid)
        rows.append(
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "external_id": r["external_id"],
                "advertiser_id": r["advertiser_id"],
                "show_id": r.get("show_id"),
                "name": r["name"],
                "value_usd": r["value_usd"],
                "stage": stage.value,
                "stage_changed_at": at,
                "probability": probability(stage),
                "lost_reason": r.get("lost_reason") if stage is Stage.LOST else None,
                "expected_close": r.get("expected_close"),
                "owner_email": r.get("owner_email"),
                "last_import_id": import_id,
                "created_at": at,
                "updated_at": at,
            }
        )
    mutable = ["advertiser_id", "show_id", "name", "value_usd", "expected_close", "owner_email"]
    created = []
    for part in _slices(rows):
        stmt = insert(Campaign).values(part)
        upsert = stmt.on_conflict_do_update(
            index_elements=[Campaign.tenant_id, Campaign.external_id],
            set_={**{c: stmt.excluded[c] for c in mutable}, "last_import_id": import_id, "updated_at": at},
        ).returning(Campaign.id, Campaign.stage, Campaign.name, Campaign.value_usd, _INSERTED)
        for cid, stage, name, value, inserted in await session.execute(upsert):
            if inserted:
                out.inserted += 1
                created.append((cid, stage, name, value))
            else:
                out.updated += 1
    history = [
        {
            "tenant_id": tenant_id,
            "campaign_id": cid,
            "from_stage": None,
            "to_stage": stage,
            "reason": "imported",
            "changed_at": at,
            "idempotency_key": f"deal.created/{cid}",
        }
        for cid, stage, _, _ in created
    ]
    for part in _slices(history):
        await session.execute(
            insert(DealStageHistory).values(part).on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        for cid, stage, name, value in created:
            await emit_event(
                session=session,
                tenant_id=tenant_id,
                type=events.DEAL_CREATED,
                entity_type="deal",
                entity_id=str(cid),
                payload={
                    "name": name,
                    "stage": stage,
                    "value_usd": float(value),
                    "import_id": str(import_id),
                },
                occurred_at=at,
                idempotency_key=f"deal.created/{cid}",
            )
    return out


async def stage_downloads(*, session: AsyncSession, records: list[dict[str, Any]]) -> None:
    """COPYs a chunk of downloads into this connection's staging table (no locks, no RLS).

    Downloads are the million-row kind: staging by COPY and merging with one statement is what
    makes them fast. The staging table is per connection and empties itself at commit.
    """
    raw = await raw_connection(session)
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
