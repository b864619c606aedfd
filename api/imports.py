"""Spreadsheet imports: upload (streamed into PostgreSQL), status, history."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status
from pydantic import BaseModel
from sqlalchemy import select
from temporalio.client import Client

from api import errors
from api.deps import SettingsDep, TemporalDep, TenantDb, TenantDbDep, feature_flag, parse_id
from api.openapi import invalid, invalid_cursor, not_found, problem
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from db.imports import close_after_workflow, fence_unstarted_import, row_errors, store_upload
from db.models import EtlImport, EtlRowError
from domain.imports import (
    MAX_STORED_ROW_ERRORS,
    OPEN_STATUSES,
    EmptyUpload,
    ImportPhase,
    ImportWorkflowInput,
    UploadTooLarge,
    closes_import,
    import_phase,
    import_progress,
    import_summary,
    upload_refusal,
)
from domain.imports import (
    ImportStatus as ImportStatusValue,
)
from settings import Settings
from workflows.starters import (
    TEMPORAL_ERRORS,
    import_workflow_closure,
    import_workflow_id,
    start_import_workflow,
)

log = logging.getLogger("sponsorflow.api.imports")

router = APIRouter(
    prefix="/api/v1/etl",
    tags=["imports"],
    dependencies=[Depends(feature_flag("enable_etl_csv_upload", "ENABLE_ETL_CSV_UPLOAD"))],
)

_PIECE = 1 << 20  # stored upload pieces: 1 MiB rows in etl_upload_chunks


class ImportAccepted(BaseModel):
    """An import that was stored and whose workflow started."""

    import_id: str
    status: ImportStatusValue
    workflow_id: str


class RowErrorPublic(BaseModel):
    """One row that could not be loaded: where and why."""

    row: int
    column: str | None
    value: str | None
    message: str


class ImportStatus(BaseModel):
    """Where an import stands."""

    import_id: str
    kind: str
    filename: str
    status: ImportStatusValue
    rows_total: int | None
    rows_processed: int
    rows_inserted: int
    rows_updated: int
    rows_failed: int
    # Two phases: the rows commit first (rows_processed), then a campaigns import starts its
    # open deals' workflows (bounded by Temporal). `phase` says which one runs;
    # `workflows_to_start` is known once the rows are in (null before, and for other kinds),
    # `workflows_pending` is how many of them are not started yet.
    phase: ImportPhase
    workflows_started: int
    workflows_to_start: int | None
    workflows_pending: int | None
    # Open deals the import changed (value, advertiser, show or name) whose workflow was told
    # to re-read its row, so search attributes and summary follow.
    workflows_resynced: int
    progress: float
    size_bytes: int
    warnings: list[str]
    error: str | None
    errors: list[RowErrorPublic]
    started_at: datetime | None
    # When the last row committed (the rows phase ended): before finished_at by the workflows
    # phase of a campaigns import, and by the closing report otherwise. Null until then.
    rows_finished_at: datetime | None = None
    finished_at: datetime | None
    created_at: datetime
    workflow_id: str


class ImportSummary(BaseModel):
    """An import in the history list."""

    import_id: str
    kind: str
    filename: str
    status: ImportStatusValue
    rows_processed: int
    rows_failed: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


def _when(raw: object) -> datetime | None:
    return datetime.fromisoformat(raw) if isinstance(raw, str) else None


@router.post(
    "/upload",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImportAccepted,
    operation_id="uploadImport",
    responses={
        413: problem(
            "the file is larger than SPONSORFLOW_MAX_UPLOAD_MB (`limit_mb` beside detail)",
            "the file is larger than the 200 MB limit",
            code="file_too_large",
        ),
        422: invalid(
            "an unknown kind, or a file that is empty or has no name",
            [
                {
                    "loc": ["body", "kind"],
                    "msg": "unknown kind 'podcasts'; expected one of shows, advertisers, campaigns, "
                    "show_downloads, deliveries",
                    "type": "value_error",
                }
            ],
        ),
        503: problem(
            "the import could not be started: it is marked failed and never runs; upload again",
            "the import could not be started (Temporal is unavailable); it was marked failed; upload again",
            code="unavailable",
        ),
    },
)
async def upload(
    request: Request,
    db: TenantDbDep,
    client: TemporalDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=".csv or .xlsx")],
    kind: Annotated[str, Form(description="shows | advertisers | campaigns | show_downloads | deliveries")],
) -> ImportAccepted:
    """Stores the upload in PostgreSQL piece by piece and starts its CsvImportWorkflow."""
    filename = (file.filename or "").strip()
    refusal = upload_refusal(kind, filename, io_bookings_enabled=settings.enable_io_bookings)
    if refusal is not None:
        raise errors.unprocessable(["body", refusal[0]], refusal[1])
    import_id = uuid.uuid4()
    wid = import_workflow_id(str(db.tenant_id), str(import_id))
    size = await _store(
        db, settings, file, import_id=import_id, kind=kind, filename=filename, workflow_id=wid
    )
    inp = ImportWorkflowInput(
        tenant_id=str(db.tenant_id),
        import_id=str(import_id),
        kind=kind,  # checked by upload_refusal
        filename=filename,
        chunk_rows=settings.import_chunk_rows,
        heartbeat_seconds=settings.import_heartbeat_seconds,
        trigger_matches=settings.enable_matchmaking,
    )
    verdict, detail = await start_import_workflow(
        client,
        inp,
        task_queue=settings.temporal_task_queue,
        summary=import_summary(filename, kind, size),
        budget=timedelta(seconds=settings.import_start_budget_seconds),
    )
    # Not started, or nobody can tell: fence the import (if a workflow already moved it to
    # running, the start did happen and the answer is 202).
    if verdict != "started" and await _fenced(db, import_id, detail):
        log.error("import %s stored but its workflow did not start (%s): %s", import_id, verdict, detail)
        raise errors.unavailable(
            f"the import could not be started ({detail}); it was marked failed; upload again"
        )
    return ImportAccepted(import_id=str(import_id), status="pending", workflow_id=wid)


async def _store(
    db: TenantDb,
    settings: Settings,
    file: UploadFile,
    *,
    import_id: uuid.UUID,
    kind: str,
    filename: str,
    workflow_id: str,
) -> int:
    """Stores the import and its upload in one transaction (413 or 422 keep nothing); returns its size."""
    try:
        async with db.tx() as session:
            return await store_upload(
                session=session,
                tenant_id=db.tenant_id,
                import_id=import_id,
                kind=kind,
                filename=filename,
                workflow_id=workflow_id,
                pieces=_pieces(file),
                limit_bytes=settings.max_upload_mb * 1024 * 1024,
            )
    except UploadTooLarge:
        raise errors.ApiError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the file is larger than the {settings.max_upload_mb} MB limit",
            code="file_too_large",
            limit_mb=settings.max_upload_mb,
        ) from None
    except EmptyUpload:
        raise errors.unprocessable(["body", "file"], "the file is empty") from None


async def _pieces(file: UploadFile) -> AsyncIterator[bytes]:
    while piece := await file.read(_PIECE):
        yield piece


async def _fenced(db: TenantDb, import_id: uuid.UUID, detail: str) -> bool:
    async with db.tx() as session:
        return await fence_unstarted_import(
            session=session, tenant_id=db.tenant_id, import_id=import_id, detail=detail, at=datetime.now(UTC)
        )


# When this process last described each open import's workflow (see _true_status).
_checked: dict[uuid.UUID, float] = {}
_CHECKED_MAX = 10_000


async def _true_status(imp: EtlImport, db: TenantDbDep, client: Client, settings: Settings) -> EtlImport:
    """An import the row says is open, checked against its workflow once it is old enough.

    A workflow terminated or timed out in Temporal runs no more code, so its import would stay
    `running` forever: when the row is open and older than SPONSORFLOW_IMPORT_STALE_AFTER_SECONDS,
    the workflow is described (at most once per that interval per process) and a closed one
    closes the import (`failed`, or `cancelled`), with the reason and the counts of what
    committed. Temporal not answering decides nothing: the row is returned as it is.
    """
    if imp.status not in OPEN_STATUSES:
        return imp
    age = datetime.now(UTC) - imp.created_at
    stale = settings.import_stale_after_seconds
    now = time.monotonic()
    if age.total_seconds() < stale or now - _checked.get(imp.id, -stale - 1) < stale:
        return imp
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked[imp.id] = now
    wid = imp.workflow_id or import_workflow_id(str(imp.tenant_id), str(imp.id))
    try:
        closure = await import_workflow_closure(client, wid)
    except TEMPORAL_ERRORS as exc:
        log.warning("import %s: describing its workflow failed: %s", imp.id, exc)
        return imp
    if closure is None or not closes_import(closure[0], age):
        return imp
    async with db.tx() as session:
        closed = await close_after_workflow(
            session=session,
            tenant_id=db.tenant_id,
            import_id=imp.id,
            closed_as=closure[0],
            detail=closure[1],
            at=datetime.now(UTC),
        )
    _checked.pop(imp.id, None)
    return closed or imp


@router.get(
    "/status/{import_id}",
    response_model=ImportStatus,
    operation_id="getImportStatus",
    responses={404: not_found("import")},
)
async def import_status(
    import_id: str, db: TenantDbDep, client: TemporalDep, settings: SettingsDep
) -> ImportStatus:
    """Status, counts, progress, warnings and the first row errors of one import."""
    iid = parse_id(import_id, "import")
    async with db.tx() as session:
        imp = await session.get(EtlImport, iid)
        if imp is None:
            raise errors.not_found("import", import_id)
    imp = await _true_status(imp, db, client, settings)
    async with db.tx() as session:
        first_errors = await row_errors(session=session, import_id=iid, limit=MAX_STORED_ROW_ERRORS)
    return _status_public(imp, first_errors)


def _status_public(imp: EtlImport, first_errors: list[EtlRowError]) -> ImportStatus:
    raw_to_start = imp.checkpoint.get("workflows_to_start")
    to_start = None if raw_to_start is None else int(raw_to_start)
    return ImportStatus(
        import_id=str(imp.id),
        kind=imp.kind,
        filename=imp.filename,
        status=imp.status,
        rows_total=imp.rows_total,
        rows_processed=imp.rows_processed,
        rows_inserted=imp.rows_inserted,
        rows_updated=imp.rows_updated,
        rows_failed=imp.rows_failed,
        phase=import_phase(imp.status, imp.kind, to_start),
        workflows_started=imp.workflows_started,
        workflows_to_start=to_start,
        workflows_pending=None if to_start is None else max(0, to_start - imp.workflows_started),
        workflows_resynced=int(imp.checkpoint.get("workflows_resynced", 0)),
        progress=import_progress(
            imp.status,
            int(imp.checkpoint.get("row", 1)),
            imp.rows_total,
            int(imp.checkpoint.get("rows_estimate", 0)),
        ),
        size_bytes=imp.size_bytes,
        warnings=list(imp.warnings),
        error=imp.error,
        errors=[
            RowErrorPublic(row=e.row_number, column=e.column, value=e.value, message=e.message)
            for e in first_errors
        ],
        started_at=imp.started_at,
        rows_finished_at=_when(imp.checkpoint.get("rows_finished_at")),
        finished_at=imp.finished_at,
        created_at=imp.created_at,
        workflow_id=imp.workflow_id or import_workflow_id(str(imp.tenant_id), str(imp.id)),
    )


@router.get(
    "/history",
    response_model=Page[ImportSummary],
    operation_id="listImports",
    responses={422: invalid_cursor()},
)
async def import_history(
    db: TenantDbDep,
    client: TemporalDep,
    settings: SettingsDep,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
) -> Page[ImportSummary]:
    """This tenant's imports, newest first (open ones checked against their workflows)."""
    stmt = newest_first(select(EtlImport), EtlImport, cursor, limit)
    async with db.tx() as session:
        rows = list((await session.scalars(stmt)).all())
    sem = asyncio.Semaphore(8)

    async def checked(r: EtlImport) -> EtlImport:
        async with sem:
            return await _true_status(r, db, client, settings)

    page = await asyncio.gather(*(checked(r) for r in rows[:limit]))
    items = [
        ImportSummary(
            import_id=str(r.id),
            kind=r.kind,
            filename=r.filename,
            status=r.status,
            rows_processed=r.rows_processed,
            rows_failed=r.rows_failed,
            error=r.error,
            created_at=r.created_at,
            finished_at=r.finished_at,
        )
        for r in page
    ]
    return Page(items=items, next_cursor=newest_next_cursor(rows, limit))
