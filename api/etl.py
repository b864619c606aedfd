"""Spreadsheet imports: upload (streamed into PostgreSQL), status, history."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status
from pydantic import BaseModel
from sqlalchemy import select
from temporalio.service import RPCError

from api.deps import SettingsDep, TemporalDep, TenantDbDep, feature_flag, parse_id
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from db.models import EtlImport, EtlRowError, EtlUploadChunk
from domain.etl import MAX_STORED_ROW_ERRORS, CsvImportInput
from domain.imports import KINDS
from workflows.imports import CsvImportWorkflow, import_workflow_id

log = logging.getLogger("sponsorflow.api.etl")

router = APIRouter(
    prefix="/api/v1/etl",
    tags=["imports"],
    dependencies=[Depends(feature_flag("enable_etl_csv_upload", "ENABLE_ETL_CSV_UPLOAD"))],
)

_PIECE = 1 << 20  # stored upload pieces: 1 MiB rows in etl_upload_chunks


class ImportAccepted(BaseModel):
    """An import that was stored and whose workflow started."""

    import_id: str
    status: str
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
    status: str
    rows_total: int | None
    rows_processed: int
    rows_inserted: int
    rows_updated: int
    rows_failed: int
    workflows_started: int
    progress: float
    size_bytes: int
    warnings: list[str]
    error: str | None
    errors: list[RowErrorPublic]
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    workflow_id: str


class ImportSummary(BaseModel):
    """An import in the history list."""

    import_id: str
    kind: str
    filename: str
    status: str
    rows_processed: int
    rows_failed: int
    created_at: datetime
    finished_at: datetime | None


def _422(field: str, msg: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}],
    )


@router.post(
    "/upload",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImportAccepted,
    responses={413: {"description": "file larger than SPONSORFLOW_MAX_UPLOAD_MB"}},
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
    limit = settings.max_upload_mb * 1024 * 1024
    if kind not in KINDS:
        raise _422("kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "deliveries" and not settings.enable_io_bookings:
        raise _422(
            "kind",
            "deliveries go to IO workflows, and IO bookings are disabled (ENABLE_IO_BOOKINGS=false)",
        )
    filename = (file.filename or "").strip()
    if not filename:
        raise _422("file", "the file has no name")
    if len(filename) > 500:
        raise _422("file", "the file name is longer than 500 characters")
    import_id = uuid.uuid4()
    wid = import_workflow_id(str(db.tenant_id), str(import_id))
    size = 0
    async with db.tx() as session:
        session.add(
            EtlImport(
                id=import_id,
                tenant_id=db.tenant_id,
                kind=kind,
                filename=filename,
                status="pending",
                workflow_id=wid,
            )
        )
        await session.flush()
        seq = 0
        while piece := await file.read(_PIECE):
            size += len(piece)
            if size > limit:
                # Leaving the block with an exception rolls the import and its pieces back.
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    detail=f"file: larger than the {settings.max_upload_mb} MB limit",
                )
            session.add(EtlUploadChunk(import_id=import_id, seq=seq, tenant_id=db.tenant_id, data=piece))
            await session.flush()
            session.expunge_all()  # keep the session from holding every piece in memory
            seq += 1
        if size == 0:
            raise _422("file", "the file is empty")
        imp = await session.get(EtlImport, import_id)
        assert imp is not None
        imp.size_bytes = size
    try:
        await client.start_workflow(
            CsvImportWorkflow.run,
            CsvImportInput(
                tenant_id=str(db.tenant_id),
                import_id=str(import_id),
                kind=kind,  # checked against KINDS above
                filename=filename,
                chunk_rows=settings.import_chunk_rows,
                heartbeat_seconds=settings.import_heartbeat_seconds,
                trigger_matches=settings.enable_matchmaking,
            ),
            id=wid,
            task_queue=settings.temporal_task_queue,
            static_summary=f"Import: {filename} ({kind}, {size:,} bytes)",
        )
    except RPCError as exc:
        log.error("import %s stored but its workflow did not start: %s", import_id, exc)
        async with db.tx() as session:
            imp = await session.get(EtlImport, import_id)
            if imp is not None:
                imp.status = "failed"
                imp.error = "the import could not be started (Temporal unreachable); upload it again"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="Temporal is unreachable; upload again"
        ) from None
    return ImportAccepted(import_id=str(import_id), status="pending", workflow_id=wid)


def _progress(imp: EtlImport) -> float:
    if imp.status in ("completed", "completed_with_errors"):
        return 1.0
    done = int(imp.checkpoint.get("row", 1)) - 1
    total = imp.rows_total or int(imp.checkpoint.get("rows_estimate", 0))
    return round(min(0.99, done / total), 4) if total > 0 else 0.0


@router.get("/status/{import_id}", response_model=ImportStatus)
async def import_status(import_id: str, db: TenantDbDep) -> ImportStatus:
    """Status, counts, progress, warnings and the first row errors of one import."""
    iid = parse_id(import_id, "import")
    async with db.tx() as session:
        imp = await session.get(EtlImport, iid)
        if imp is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"import {import_id!r} not found")
        errors = (
            await session.scalars(
                select(EtlRowError)
                .where(EtlRowError.import_id == iid)
                .order_by(EtlRowError.row_number, EtlRowError.id)
                .limit(MAX_STORED_ROW_ERRORS)
            )
        ).all()
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
        workflows_started=imp.workflows_started,
        progress=_progress(imp),
        size_bytes=imp.size_bytes,
        warnings=list(imp.warnings),
        error=imp.error,
        errors=[
            RowErrorPublic(row=e.row_number, column=e.column, value=e.value, message=e.message)
            for e in errors
        ],
        started_at=imp.started_at,
        finished_at=imp.finished_at,
        created_at=imp.created_at,
        workflow_id=imp.workflow_id or import_workflow_id(str(imp.tenant_id), str(imp.id)),
    )


@router.get("/history", response_model=Page[ImportSummary])
async def import_history(
    db: TenantDbDep, limit: LimitParam = 50, cursor: CursorParam = None
) -> Page[ImportSummary]:
    """This tenant's imports, newest first."""
    stmt = newest_first(select(EtlImport), EtlImport, cursor, limit)
    async with db.tx() as session:
        rows = list((await session.scalars(stmt)).all())
    items = [
        ImportSummary(
            import_id=str(r.id),
            kind=r.kind,
            filename=r.filename,
            status=r.status,
            rows_processed=r.rows_processed,
            rows_failed=r.rows_failed,
            created_at=r.created_at,
            finished_at=r.finished_at,
        )
        for r in rows[:limit]
    ]
    return Page(items=items, next_cursor=newest_next_cursor(rows, limit))
