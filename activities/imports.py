"""Import side effects: stream the stored upload, upsert chunk by chunk with a checkpoint, report."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities import metrics
from activities.heartbeat import Heartbeat
from db.deals import deal_seed, open_deals_page
from db.engine import SessionMaker, set_tenant, tenant_tx
from db.events import emit_event
from db.imports import (
    StagedCatalog,
    UpsertOutcome,
    close_open_import,
    count_open_deals_written,
    ids_by_external_id,
    merge_catalog,
    merge_downloads,
    open_imports,
    stage_campaigns,
    stage_catalog,
    stage_downloads,
    upsert_campaigns,
)
from db.models import AdUnit, Advertiser, EtlImport, EtlRowError, EtlUploadChunk, IoBooking, Show
from domain import events
from domain.deals import DealWorkflowInput
from domain.imports import (
    FILE_ERROR,
    FINAL_STATUSES,
    IMPORT_CLOSED,
    MAX_STORED_ROW_ERRORS,
    FileError,
    Header,
    MarkImportInput,
    MarkImportResult,
    RepairStuckImportsInput,
    RepairStuckImportsResult,
    RowError,
    RunImportInput,
    RunImportResult,
    StartDealWorkflowsInput,
    StartDealWorkflowsResult,
    TriggerMatchesInput,
    closes_import,
    download_fast_path,
    iter_csv_rows,
    iter_xlsx_rows,
    natural_key,
    parse_row,
    read_header,
    sniff_format,
    with_normalised_warning,
)
from domain.io import ReportDeliveryInput, UnitStatus
from workflows.starters import (
    DEAL_RESYNC_SIGNAL,
    IO_DELIVERY_REPORTED_SIGNAL,
    TEMPORAL_ERRORS,
    deal_workflow_id,
    import_workflow_closure,
    import_workflow_id,
    io_workflow_id,
    recalculate_after_change,
    start_deal_workflows,
)

FINAL = FINAL_STATUSES
MAX_WARNINGS = 50
_READ_BLOCK = 1 << 20
# Deal workflows told to re-read their row at once (signals are cheap; the server is shared).
_RESYNC_CONCURRENCY = 20
# Open deals read per page by the workflows phase (the next page is read during the starts).
_START_PAGE = 1000


def _file_error(message: str) -> ApplicationError:
    return ApplicationError(message, type=FILE_ERROR, non_retryable=True)


def _closed_error(imp: EtlImport) -> ApplicationError:
    """The import was closed from outside (fenced start, repair, cancel): write nothing more."""
    return ApplicationError(
        imp.error or f"the import is {imp.status}", imp.status, type=IMPORT_CLOSED, non_retryable=True
    )


class ImportActivities:
    """Activities of spreadsheet imports, bound to the worker's session factory."""

    def __init__(
        self,
        sessionmaker: SessionMaker,
        *,
        stall_days: dict[str, int] | None = None,
        moves_per_run: int = 200,
    ) -> None:
        self._sm = sessionmaker
        self._stall_days = stall_days or {}
        self._moves_per_run = moves_per_run

    @activity.defn(name="mark_import")
    async def mark_import(self, inp: MarkImportInput) -> MarkImportResult:
        """Moves the import to running or to its final status; the final one emits its event."""
        now = datetime.now(UTC)
        iid = uuid.UUID(inp.import_id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            row = await session.get(EtlImport, iid, with_for_update=True)
            if row is None:
                raise ApplicationError(f"import {inp.import_id} not found", non_retryable=True)
            if row.status in FINAL or row.status == inp.status:
                return MarkImportResult.model_validate(
                    {"changed": False, "status": row.status, "error": row.error}
                )
            if inp.status == "cancelled":
                closed = await close_open_import(
                    session=session,
                    tenant_id=uuid.UUID(inp.tenant_id),
                    import_id=iid,
                    closed_as="cancelled",
                    at=now,
                )
                assert closed is not None  # locked above and open
                return MarkImportResult(changed=True, status="cancelled", error=closed.error)
            row.status = inp.status
            if inp.status == "running":
                row.started_at = row.started_at or now
                return MarkImportResult(changed=True, status="running")
            row.finished_at = now
            row.error = inp.error
            if inp.status == "failed":
                row.rows_total = row.rows_total if row.rows_total is not None else 0
                await emit_event(
                    session=session,
                    tenant_id=inp.tenant_id,
                    type=events.ETL_ERROR,
                    entity_type="import",
                    entity_id=inp.import_id,
                    payload={"kind": row.kind, "filename": row.filename, "reason": inp.error},
                    occurred_at=now,
                    idempotency_key=f"etl/{inp.import_id}/failed",
                )
            else:
                await emit_event(
                    session=session,
                    tenant_id=inp.tenant_id,
                    type=events.ETL_IMPORT_COMPLETED,
                    entity_type="import",
                    entity_id=inp.import_id,
                    payload={
                        "kind": row.kind,
                        "filename": row.filename,
                        "status": inp.status,
                        "rows_total": row.rows_total,
                        "rows_inserted": row.rows_inserted,
                        "rows_updated": row.rows_updated,
                        "rows_failed": row.rows_failed,
                        "workflows_started": row.workflows_started,
                        # The two phases: rows committed (inserted or updated), then the open
                        # deals' workflows started (campaigns; 0 for the other kinds).
                        "rows_committed": row.rows_inserted + row.rows_updated,
                        "workflows_to_start": int(row.checkpoint.get("workflows_to_start", 0)),
                    },
                    occurred_at=now,
                    idempotency_key=f"etl/{inp.import_id}/completed",
                )
        return MarkImportResult(changed=True, status=inp.status, error=inp.error)

    @activity.defn(name="load_rows")
    async def load_rows(self, inp: RunImportInput) -> RunImportResult:
        """Parses and upserts the stored file in chunks; each chunk commits with its checkpoint.

        It heartbeats in the background through every phase (the download of the stored
        upload, opening the file, each chunk's staging and commit), with the last committed
        row as details; a chunk commits only while the import is still `running`.
        """
        async with Heartbeat() as beat:
            return await self._load_rows(inp, beat)

    async def _load_rows(self, inp: RunImportInput, beat: Heartbeat) -> RunImportResult:
        iid = uuid.UUID(inp.import_id)
        tid = uuid.UUID(inp.tenant_id)
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            imp = await session.get(EtlImport, iid)
            if imp is None:
                raise ApplicationError(f"import {inp.import_id} not found", non_retryable=True)
            if imp.status in FINAL:
                raise _closed_error(imp)
            checkpoint = dict(imp.checkpoint)
            filename = imp.filename
        if checkpoint.get("resync"):
            # An earlier attempt committed a chunk and may have died before telling its deals.
            await self._resync(tid, iid, [uuid.UUID(c) for c in checkpoint["resync"]])
        fd, tmp = tempfile.mkstemp(prefix="sf-import-")
        os.close(fd)
        path = Path(tmp)
        try:
            estimate = await self._download(tid, iid, path)
            try:
                header, rows, warnings = await asyncio.to_thread(_open_rows, path, filename)
                parsed_header = read_header(inp.kind, header)
            except FileError as exc:
                raise _file_error(str(exc)) from None
            done = int(checkpoint.get("row", 1))
            if "row" not in checkpoint:
                await self._save_warnings(tid, iid, [*warnings, *parsed_header.warnings])
            reported = len(warnings)
            seen_any = bool(checkpoint.get("seen_data"))

            def parse_after(row: int) -> asyncio.Task[_Batch]:
                return asyncio.create_task(
                    asyncio.to_thread(_next_batch, rows, inp.kind, parsed_header, inp.chunk_rows, row)
                )

            # A three-stage pipeline: chunk k+2 is parsed in a thread, chunk k+1 is staged (its
            # references resolved, downloads COPYed) on one connection while chunk k merges and
            # commits with its checkpoint on another. Commits stay in file order.
            pending = parse_after(done)
            staged: _Staged | None = None
            try:
                while True:
                    try:
                        batch = await pending
                    except FileError as exc:
                        raise _file_error(str(exc)) from None
                    if batch.last_row is None:
                        break
                    pending = parse_after(batch.last_row)
                    seen_any = seen_any or batch.rows > 0
                    if staged is None:
                        staged = await self._stage(tid, iid, inp.kind, batch, seen_any, None)
                        continue
                    finishing = asyncio.create_task(self._finish(tid, iid, inp.kind, staged, estimate))
                    try:
                        following = await self._stage(tid, iid, inp.kind, batch, seen_any, staged)
                    except BaseException:
                        await asyncio.gather(finishing, return_exceptions=True)
                        staged = None
                        raise
                    previous, staged = staged, None
                    try:
                        await finishing
                    except BaseException:
                        await following.session.close()
                        raise
                    beat.set(previous.batch.last_row)
                    staged = following
                if staged is not None:
                    previous, staged = staged, None
                    await self._finish(tid, iid, inp.kind, previous, estimate)
                    beat.set(previous.batch.last_row)
            finally:
                if staged is not None:
                    await staged.session.close()
                if not pending.done():
                    await asyncio.gather(pending, return_exceptions=True)
            if not seen_any:
                raise _file_error("the file has a header but no data rows")
            # The reader may learn mid-file that it must fall back to Windows-1252.
            await self._save_warnings(tid, iid, warnings[reported:])
        finally:
            path.unlink(missing_ok=True)
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            imp = await session.get(EtlImport, iid, with_for_update=True)
            assert imp is not None
            if imp.status in FINAL:
                raise _closed_error(imp)
            imp.rows_total = imp.rows_processed
            # The rows phase is over: the status says when, and then reports the workflows phase.
            finished: dict[str, object] = {"rows_finished_at": datetime.now(UTC).isoformat()}
            to_start = 0
            if inp.count_workflows_to_start:
                to_start = await count_open_deals_written(session=session, import_id=iid)
                finished["workflows_to_start"] = to_start
            imp.checkpoint = {**imp.checkpoint, **finished}
            return RunImportResult(
                workflows_to_start=to_start,
                rows_processed=imp.rows_processed,
                rows_inserted=imp.rows_inserted,
                rows_updated=imp.rows_updated,
                rows_failed=imp.rows_failed,
                workflows_resynced=int(imp.checkpoint.get("workflows_resynced", 0)),
            )

    async def _download(self, tid: uuid.UUID, iid: uuid.UUID, path: Path) -> int:
        """Copies the upload to a temporary file piece by piece; returns a row estimate (line count)."""
        seq = 0
        lines = 0
        with path.open("wb") as out:
            while True:
                async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
                    data = await session.scalar(
                        select(EtlUploadChunk.data).where(
                            EtlUploadChunk.import_id == iid, EtlUploadChunk.seq == seq
                        )
                    )
                if data is None:
                    return max(0, lines - 1)
                out.write(data)
                lines += data.count(b"\n")
                seq += 1

    async def _save_warnings(self, tid: uuid.UUID, iid: uuid.UUID, warnings: list[str]) -> None:
        if not warnings:
            return
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            imp = await session.get(EtlImport, iid, with_for_update=True)
            assert imp is not None
            imp.warnings = [*imp.warnings, *warnings][:MAX_WARNINGS]

    async def _stage(
        self,
        tid: uuid.UUID,
        iid: uuid.UUID,
        kind: str,
        batch: _Batch,
        seen_any: bool,
        previous: _Staged | None,
    ) -> _Staged:
        """Opens the chunk's transaction, resolves its references and stages its rows by COPY.

        `previous` is the chunk merging meanwhile (not yet committed): for shows and
        advertisers the keys it shares with this one are in-file repeats the database cannot
        show yet; the earlier chunks' are found in the database while staging, off the path
        the commits wait on.
        """
        session = self._sm()
        try:
            await session.begin()
            await set_tenant(session=session, tenant_id=tid)
            errors = list(batch.errors)
            records = await _resolve(session, kind, batch.records, errors)
            catalog = None
            if kind == "show_downloads":
                await stage_downloads(session=session, records=records)
            elif kind == "campaigns":
                await stage_campaigns(session=session, records=records)
            elif kind in _CATALOG:
                catalog = await stage_catalog(
                    session=session, model=_CATALOG[kind], tenant_id=tid, import_id=iid, records=records
                )
                if catalog is not None and previous is not None and previous.catalog is not None:
                    catalog.add_repeats(previous.catalog.keys)
        except BaseException:
            await session.close()
            raise
        return _Staged(
            session=session,
            batch=batch,
            seen_any=seen_any,
            records=records,
            errors=errors,
            catalog=catalog,
        )

    async def _finish(
        self, tid: uuid.UUID, iid: uuid.UUID, kind: str, staged: _Staged, estimate: int
    ) -> None:
        """Writes the staged chunk with its counts, errors and checkpoint, and commits: all or nothing."""
        now = datetime.now(UTC)
        session, batch, errors = staged.session, staged.batch, staged.errors
        try:
            imp = await session.get(EtlImport, iid, with_for_update=True)
            assert imp is not None
            if imp.status in FINAL:
                # Closed from outside while this chunk was on its way (cancelled, or failed by
                # a repair after Temporal terminated the workflow): the counts stay as they are.
                raise _closed_error(imp)
            if int(imp.checkpoint.get("row", 1)) >= (batch.last_row or 0):
                return  # an earlier attempt committed this chunk
            if kind == "show_downloads":
                outcome = await merge_downloads(session=session, tenant_id=tid, import_id=iid)
            elif kind == "deliveries":
                # Signalled before the commit: a retry re-sends figures the workflows already
                # have, which they ignore (a report is cumulative and the same figure is a no-op).
                outcome = await _signal_deliveries(tid, iid, staged.records, errors)
            elif kind in _CATALOG:
                outcome = await merge_catalog(
                    session=session,
                    model=_CATALOG[kind],
                    tenant_id=tid,
                    import_id=iid,
                    staged=staged.catalog,
                    at=now,
                )
            else:
                # Staged by COPY in `_stage`, on this same connection and transaction.
                outcome = await upsert_campaigns(session=session, tenant_id=tid, import_id=iid, at=now)
            failed_rows = {e.row_number for e in errors}
            stored = int(imp.checkpoint.get("errors_stored", 0))
            room = max(0, MAX_STORED_ROW_ERRORS - stored)
            if room and errors:
                session.add_all(
                    EtlRowError(
                        tenant_id=tid,
                        import_id=iid,
                        row_number=e.row_number,
                        column=e.column,
                        value=e.value,
                        message=e.message,
                    )
                    for e in sorted(errors, key=lambda e: e.row_number)[:room]
                )
            warnings = list(imp.warnings)
            for key in [*batch.in_chunk_repeats, *outcome.repeated_keys]:
                if len(warnings) < MAX_WARNINGS:
                    warnings.append(f"{key!s} appears more than once in the file: the last row wins")
            if outcome.stage_kept and len(warnings) < MAX_WARNINGS:
                warnings.append(
                    f"{outcome.stage_kept} existing deal(s) kept their stage: stages change through "
                    "the pipeline (PATCH /api/v1/deals/{id}/stage), not by import"
                )
            normalised = int(imp.checkpoint.get("rows_normalised", 0)) + batch.normalised
            imp.warnings = with_normalised_warning(warnings, normalised)
            imp.rows_processed += batch.rows
            imp.rows_inserted += outcome.inserted
            imp.rows_updated += outcome.updated
            imp.rows_failed += len(failed_rows)
            imp.checkpoint = {
                "row": batch.last_row,
                "errors_stored": stored + min(room, len(errors)),
                "seen_data": staged.seen_any,
                "rows_estimate": estimate,
                "workflows_resynced": int(imp.checkpoint.get("workflows_resynced", 0)),
                "rows_normalised": normalised,
                # Deals to tell after the commit; kept until they are told, so a retry does it.
                "resync": [str(c) for c in outcome.resync],
            }
            await session.commit()
        finally:
            await session.close()  # rolls back whatever did not commit
        metrics.import_chunk_committed(kind, batch.rows, Counter(e.column for e in errors))
        if outcome.resync:
            await self._resync(tid, iid, outcome.resync)

    async def _resync(self, tid: uuid.UUID, iid: uuid.UUID, deal_ids: list[uuid.UUID]) -> None:
        """Signals `resync` to the deals a committed chunk changed, then counts them once.

        A retry may signal some twice, which is harmless (the workflow re-reads its row).
        """
        told = await resync_deal_workflows(activity.client(), tid, deal_ids)
        pending = [str(c) for c in deal_ids]
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            imp = await session.get(EtlImport, iid, with_for_update=True)
            if imp is None or imp.checkpoint.get("resync") != pending:
                return  # another attempt counted them already
            imp.checkpoint = {
                **imp.checkpoint,
                "resync": [],
                "workflows_resynced": int(imp.checkpoint.get("workflows_resynced", 0)) + told,
            }

    @activity.defn(name="trigger_match_recalculation")
    async def trigger_match_recalculation(self, inp: TriggerMatchesInput) -> str:
        """Starts the tenant's match recalculation, or has the running one score again; returns its id."""
        handle = await recalculate_after_change(activity.client(), inp.tenant_id, inp.task_queue, "import")
        return str(handle.id)

    @activity.defn(name="start_deal_workflows")
    async def start_deal_workflows(self, inp: StartDealWorkflowsInput) -> StartDealWorkflowsResult:
        """Starts (or finds running) the DealWorkflow of every open deal this import wrote."""

        client = activity.client()
        iid = uuid.UUID(inp.import_id)
        after = activity.info().heartbeat_details[0] if activity.info().heartbeat_details else None
        started = int(after["started"]) if after else 0
        last_id = uuid.UUID(after["last_id"]) if after else uuid.UUID(int=0)
        async with Heartbeat(*([after] if after else [])) as beat:
            return await self._start_deal_workflows(inp, client, iid, started, last_id, beat)

    async def _start_deal_workflows(
        self,
        inp: StartDealWorkflowsInput,
        client: Client,
        iid: uuid.UUID,
        started: int,
        last_id: uuid.UUID,
        beat: Heartbeat,
    ) -> StartDealWorkflowsResult:
        async def page_after(after: uuid.UUID) -> list[DealWorkflowInput]:
            async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
                page = await open_deals_page(session=session, after=after, limit=_START_PAGE, import_id=iid)
            return [
                deal_seed(row=row, stall_days=self._stall_days, moves_per_run=self._moves_per_run)
                for row in page
            ]

        # The next page is read while this one's starts are in flight, so Temporal is the bound.
        seeds = await page_after(last_id)
        while seeds:
            following = asyncio.create_task(page_after(uuid.UUID(seeds[-1].campaign_id)))
            try:
                await start_deal_workflows(client, seeds, inp.task_queue, concurrency=inp.concurrency)
            except BaseException:
                await asyncio.gather(following, return_exceptions=True)
                raise
            started += len(seeds)
            last_id = uuid.UUID(seeds[-1].campaign_id)
            async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
                await session.execute(
                    update(EtlImport).where(EtlImport.id == iid).values(workflows_started=started)
                )
            beat.set({"started": started, "last_id": str(last_id)})
            seeds = await following
        return StartDealWorkflowsResult(started=started)

    @activity.defn(name="repair_stuck_imports")
    async def repair_stuck_imports(self, inp: RepairStuckImportsInput) -> RepairStuckImportsResult:
        """Closes the tenant's open imports whose workflow ended without closing them."""
        return await repair_stuck_imports(
            sm=self._sm,
            client=activity.client(),
            tenant_id=uuid.UUID(inp.tenant_id),
            older_than=timedelta(seconds=inp.older_than_seconds),
            limit=inp.limit,
        )


async def resync_deal_workflows(client: Client, tenant_id: uuid.UUID, deal_ids: list[uuid.UUID]) -> int:
    """Sends `resync` to each deal's workflow, a bounded number at a time; returns how many got it.

    A deal without a running workflow (NOT_FOUND) is fine: whatever starts it next (the
    maintenance sweep, an update-with-start) seeds it from the row.
    """
    sem = asyncio.Semaphore(_RESYNC_CONCURRENCY)

    async def tell(deal_id: uuid.UUID) -> bool:
        async with sem:
            try:
                await client.get_workflow_handle(deal_workflow_id(str(tenant_id), str(deal_id))).signal(
                    DEAL_RESYNC_SIGNAL
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                return False
        return True

    return sum(await asyncio.gather(*(tell(d) for d in deal_ids)))


async def close_if_workflow_closed(
    *, sm: SessionMaker, client: Client, tenant_id: uuid.UUID, import_id: uuid.UUID, age: timedelta
) -> EtlImport | None:
    """Describes an open import's workflow; if it closed without closing the import, closes it.

    Returns the closed row, or None (still running, completed, or Temporal did not answer: then
    nothing is decided). A workflow that is not found closes the import only once the import is
    older than the start grace (the API may still be starting it).
    """
    try:
        closure = await import_workflow_closure(client, import_workflow_id(str(tenant_id), str(import_id)))
    except TEMPORAL_ERRORS:
        return None
    if closure is None:
        return None
    closed_as, detail = closure
    if not closes_import(closed_as, age):
        return None
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
        return await close_open_import(
            session=session,
            tenant_id=tenant_id,
            import_id=import_id,
            closed_as=closed_as,
            detail=detail,
            at=datetime.now(UTC),
        )


async def repair_stuck_imports(
    *, sm: SessionMaker, client: Client, tenant_id: uuid.UUID, older_than: timedelta, limit: int = 500
) -> RepairStuckImportsResult:
    """Checks every pending/running import of a tenant created more than `older_than` ago.

    An import whose workflow was terminated, timed out, failed or was cancelled without running
    its cleanup is marked `failed` (`cancelled`) with a reason naming what happened and the rows
    that committed before; an import with no workflow at all, once past the start grace, is
    marked `failed`. Idempotent: run it as often as you like (the maintenance round does).
    """
    now = datetime.now(UTC)
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
        candidates = await open_imports(session=session, created_before=now - older_than, limit=limit)
    sem = asyncio.Semaphore(_RESYNC_CONCURRENCY)

    async def check(iid: uuid.UUID, created: datetime) -> bool:
        async with sem:
            closed = await close_if_workflow_closed(
                sm=sm, client=client, tenant_id=tenant_id, import_id=iid, age=now - created
            )
        return closed is not None

    closed = sum(await asyncio.gather(*(check(iid, created) for iid, created in candidates)))
    return RepairStuckImportsResult(checked=len(candidates), closed=closed)


class _Batch:
    """Up to chunk_rows parsed rows: good records with their row numbers, and row errors."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, Any]]] = []
        self.errors: list[RowError] = []
        self.rows = 0
        self.last_row: int | None = None
        self.in_chunk_repeats: list[str] = []
        # Good rows whose geo/age shares were scaled to 1 from rounding (one warning per file).
        self.normalised = 0


@dataclass
class _Staged:
    """A chunk whose transaction is open: references resolved, rows staged, not yet written."""

    session: AsyncSession
    batch: _Batch
    seen_any: bool
    records: list[dict[str, Any]]
    errors: list[RowError]
    # shows and advertisers: what was staged (None: nothing).
    catalog: StagedCatalog | None = None


def _open_rows(path: Path, filename: str) -> tuple[list[Any], Iterator[tuple[int, list[Any]]], list[str]]:
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        raise FileError("the file is empty")
    if sniff_format(head, filename) == "xlsx":
        return iter_xlsx_rows(path.open("rb"), owns_stream=True)
    return iter_csv_rows(_blocks(path))


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(_READ_BLOCK):
            yield block


def _next_batch(
    rows: Iterator[tuple[int, list[Any]]], kind: str, header: Header, size: int, done: int
) -> _Batch:
    batch = _Batch()
    by_key: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
    fast = download_fast_path(header) if kind == "show_downloads" else None
    for row_number, cells in itertools.islice(((n, c) for n, c in rows if n > done), size):
        batch.last_row = row_number
        record = fast(cells) if fast is not None else None
        errors: list[RowError] = []
        normalised: list[str] = []
        if record is None:
            record, errors = parse_row(kind, header, cells, row_number, normalised)
        if normalised:
            batch.normalised += 1
        if record is None and not errors:
            continue  # a blank line
        batch.rows += 1
        if errors:
            batch.errors.extend(errors)
            continue
        assert record is not None
        key = natural_key(kind, record)
        if key in by_key:
            # The last row wins; the earlier one is dropped from this chunk.
            batch.in_chunk_repeats.append(" ".join(str(k) for k in key))
        by_key[key] = (row_number, record)
    batch.records = list(by_key.values())
    return batch


async def _resolve(
    session: AsyncSession, kind: str, records: list[tuple[int, dict[str, Any]]], errors: list[RowError]
) -> list[dict[str, Any]]:
    """Turns external ids of referenced rows into ids; unknown references become row errors."""
    if kind == "deliveries":
        return await _resolve_deliveries(session, records, errors)
    if kind not in ("campaigns", "show_downloads"):
        return [r for _, r in records]
    shows = await ids_by_external_id(
        session=session,
        model=Show,
        keys={str(r["show_external_id"]) for _, r in records if r.get("show_external_id")},
    )
    advertisers = (
        await ids_by_external_id(
            session=session, model=Advertiser, keys={str(r["advertiser_external_id"]) for _, r in records}
        )
        if kind == "campaigns"
        else {}
    )
    out = []
    for n, r in records:
        problems = []
        if kind == "campaigns" and r["advertiser_external_id"] not in advertisers:
            problems.append(
                ("advertiser_external_id", r["advertiser_external_id"], "no advertiser with this external_id")
            )
        if r.get("show_external_id") and r["show_external_id"] not in shows:
            problems.append(("show_external_id", r["show_external_id"], "no show with this external_id"))
        if problems:
            errors.extend(RowError(row_number=n, column=c, value=str(v), message=m) for c, v, m in problems)
            continue
        # The parsed record is this chunk's own: resolved in place (a million rows, no copies).
        if kind == "campaigns":
            r["advertiser_id"] = advertisers[r.pop("advertiser_external_id")]
        if r.get("show_external_id"):
            r["show_id"] = shows[r["show_external_id"]]
        r.pop("show_external_id", None)
        out.append(r)
    return out


_CATALOG: dict[str, type[Show] | type[Advertiser]] = {"shows": Show, "advertisers": Advertiser}


async def _resolve_deliveries(
    session: AsyncSession, records: list[tuple[int, dict[str, Any]]], errors: list[RowError]
) -> list[dict[str, Any]]:
    """Checks each row's IO and unit as the workflow would, so a bad row gets a named row error."""
    io_ids = {uuid.UUID(str(r["io_id"])) for _, r in records}
    unit_ids = {uuid.UUID(str(r["ad_unit_id"])) for _, r in records}
    ios = {
        row[0]: (row[1], row[2])
        for row in await session.execute(
            select(IoBooking.id, IoBooking.status, IoBooking.invoice.is_not(None)).where(
                IoBooking.id.in_(io_ids)
            )
        )
    }
    units = {
        row[0]: (row[1], row[2])
        for row in await session.execute(
            select(AdUnit.id, AdUnit.io_id, AdUnit.status).where(AdUnit.id.in_(unit_ids))
        )
    }
    out = []
    for n, r in records:
        io_id, unit_id = uuid.UUID(str(r["io_id"])), uuid.UUID(str(r["ad_unit_id"]))
        problem: tuple[str, str] | None = None
        if io_id not in ios:
            problem = ("io_id", "no IO with this id")
        elif ios[io_id][1]:
            problem = ("io_id", f"the IO is {ios[io_id][0]} and invoiced; it takes no more delivery")
        elif unit_id not in units or units[unit_id][0] != io_id:
            problem = ("ad_unit_id", "not an ad unit of this IO")
        elif units[unit_id][1] == UnitStatus.CANCELLED.value:
            problem = ("ad_unit_id", "the ad unit was cancelled; it takes no delivery")
        elif units[unit_id][1] == UnitStatus.SCHEDULED.value:
            problem = ("ad_unit_id", "the ad unit has not aired yet")
        if problem is not None:
            errors.append(
                RowError(row_number=n, column=problem[0], value=str(r[problem[0]]), message=problem[1])
            )
            continue
        r["_row"] = n
        out.append(r)
    return out


async def _signal_deliveries(
    tid: uuid.UUID, iid: uuid.UUID, records: list[dict[str, Any]], errors: list[RowError]
) -> UpsertOutcome:
    """Sends each delivery to its IO's workflow (a signal: fire-and-forget, cheap in bulk)."""
    client = activity.client()
    sem = asyncio.Semaphore(16)
    sent = 0

    async def send(r: dict[str, Any]) -> None:
        nonlocal sent
        report = ReportDeliveryInput(
            ad_unit_id=str(r["ad_unit_id"]),
            impressions=int(r["impressions"]),
            source=str(r.get("source") or f"import {iid}"),
        )
        async with sem:
            handle = client.get_workflow_handle(io_workflow_id(str(tid), str(r["io_id"])))
            try:
                await handle.signal(IO_DELIVERY_REPORTED_SIGNAL, report)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                errors.append(
                    RowError(
                        row_number=int(r["_row"]),
                        column="io_id",
                        value=str(r["io_id"]),
                        message="the IO's workflow has finished; it takes no more delivery",
                    )
                )
                return
        sent += 1

    await asyncio.gather(*(send(r) for r in records))
    return UpsertOutcome(updated=sent)
