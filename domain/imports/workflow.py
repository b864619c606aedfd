"""The import workflow's contract: statuses, inputs and results of it and its activities.

Also the rules that close an import whose workflow ended without finishing it. The models are
part of the workflow's history contract (ARCHITECTURE section 13): change them compatibly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field

from domain.imports.base import KINDS

ImportKind = Literal["shows", "advertisers", "campaigns", "show_downloads", "deliveries"]
ImportStatus = Literal["pending", "running", "completed", "completed_with_errors", "failed", "cancelled"]
# Statuses an import never leaves; `pending` and `running` are the open ones.
FINAL_STATUSES: tuple[str, ...] = ("completed", "completed_with_errors", "failed", "cancelled")
OPEN_STATUSES: tuple[str, ...] = ("pending", "running")

# Errors kept per import (all are counted); the status shows them, first ones first.
MAX_STORED_ROW_ERRORS = 1000
FILE_ERROR = "ImportFileError"
# Raised by an import activity that finds its import already closed (failed or cancelled from
# outside the workflow): nothing more is written, and the workflow ends without marking anything.
IMPORT_CLOSED = "ImportClosed"

# An open import whose workflow Temporal does not know is closed only after this long: the API
# may still be starting it (its start budget, SPONSORFLOW_IMPORT_START_BUDGET_SECONDS, is at most
# 60 s). Closing one too early is still safe: a workflow that starts later finds its import
# closed and imports nothing.
UNSTARTED_GRACE = timedelta(minutes=2)

# How a closed Temporal execution ends an import that was still open in PostgreSQL.
ClosedAs = Literal["terminated", "timed_out", "cancelled", "failed", "not_found"]


def closes_import(closed_as: ClosedAs, age: timedelta) -> bool:
    """Whether an open import of this age is closed because its workflow ended this way."""
    return closed_as != "not_found" or age >= UNSTARTED_GRACE


def closed_import_status(closed_as: ClosedAs) -> ImportStatus:
    """The import status for a workflow that closed without marking its import: cancelled or failed."""
    return "cancelled" if closed_as == "cancelled" else "failed"


def closed_import_reason(closed_as: ClosedAs, rows_committed: int, detail: str | None = None) -> str:
    """The sentence a person reads on an import whose workflow ended without finishing it.

    It says what happened, that nothing more will be imported, and how much committed before
    (committed chunks stay: every chunk is a complete, consistent upsert).
    """
    what = {
        "terminated": "the import workflow was terminated in Temporal",
        "timed_out": "the import workflow timed out in Temporal",
        "cancelled": "the import was cancelled",
        "failed": "the import workflow failed in Temporal",
        "not_found": "the import workflow never started (or no longer exists in Temporal)",
    }[closed_as]
    if detail:
        what = f"{what} ({detail})"
    rows = "1 row was" if rows_committed == 1 else f"{rows_committed:,} rows were"
    return f"{what}; nothing more will be imported; {rows} committed before"


def start_refused_reason(detail: str) -> str:
    """The reason on an import whose workflow could not be started (the API answered 503)."""
    return f"the import could not be started ({detail}); nothing was imported; upload it again"


class ImportWorkflowInput(BaseModel):
    """One import to run: the file itself stays in PostgreSQL, the workflow holds a reference."""

    tenant_id: str
    import_id: str
    kind: ImportKind
    filename: str
    chunk_rows: int = Field(default=10_000, ge=1, le=100_000)
    # How soon a killed worker is noticed; the retry resumes from the last committed chunk.
    heartbeat_seconds: int = Field(default=30, ge=1, le=600)
    start_deal_workflows: bool = True
    # A completed import of shows, advertisers or downloads starts (or joins) a match recalculation.
    trigger_matches: bool = False


class ImportWorkflowResult(BaseModel):
    """How an import ended."""

    status: ImportStatus
    rows_processed: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_failed: int = 0
    workflows_started: int = 0
    # Open deals whose value, advertiser, show or name the import changed, whose running
    # workflow was told to re-read its row (the `resync` signal).
    workflows_resynced: int = 0
    error: str | None = None


class RunImportInput(BaseModel):
    """Parse, validate and upsert the stored file in chunks, from the last checkpoint."""

    tenant_id: str
    import_id: str
    kind: ImportKind
    chunk_rows: int
    # Whether the workflow starts the open deals' workflows after the rows (campaigns): then
    # the rows phase ends by counting them, so the status can say how many are still to start.
    count_workflows_to_start: bool = False


class RunImportResult(BaseModel):
    """Counts after the last chunk."""

    rows_processed: int
    rows_inserted: int
    rows_updated: int
    rows_failed: int
    workflows_resynced: int = 0
    workflows_to_start: int = 0


class MarkImportInput(BaseModel):
    """A status change of an import (running, or the final one)."""

    tenant_id: str
    import_id: str
    status: ImportStatus
    error: str | None = None


class MarkImportResult(BaseModel):
    """Whether this call changed the row (false: an earlier attempt already had, or it was closed)."""

    changed: bool
    # The row's status after the call (None in results recorded before it was reported): a
    # `failed` or `cancelled` here when marking `running` means the import was closed from
    # outside (an ambiguous start the API fenced, a repair) and the workflow must not import.
    status: ImportStatus | None = None
    error: str | None = None


class StartDealWorkflowsInput(BaseModel):
    """Open deals this import wrote, whose workflows should be running."""

    tenant_id: str
    import_id: str
    task_queue: str
    # Starts in flight at once: enough to keep the Temporal frontend busy (measured: 64 reaches
    # the raw SDK start rate of the same server), few enough not to trip its rate limits.
    concurrency: int = Field(default=64, ge=1, le=200)


class StartDealWorkflowsResult(BaseModel):
    """How many deal workflows were started (or found running)."""

    started: int


class TriggerMatchesInput(BaseModel):
    """Starts (or joins) the tenant's match recalculation after an import changed its features."""

    tenant_id: str
    task_queue: str


class RepairStuckImportsInput(BaseModel):
    """A tenant's open imports to check against Temporal (the maintenance round calls it)."""

    tenant_id: str
    # Only imports created at least this long ago: younger ones may still be starting.
    older_than_seconds: float = Field(default=60.0, ge=0)
    limit: int = Field(default=500, ge=1, le=10_000)


class RepairStuckImportsResult(BaseModel):
    """How many open imports were checked, and how many were closed (failed or cancelled)."""

    checked: int
    closed: int


ImportPhase = Literal["rows", "workflows", "done"]


def import_phase(status: str, kind: str, workflows_to_start: int | None) -> ImportPhase:
    """Which of an import's two phases it is in: committing rows, or starting deal workflows.

    Rows commit at full speed; the open deals' workflows are started afterwards (bounded by
    Temporal), so a campaigns import shows `workflows` from its last row's commit until it is final.
    """
    if status not in OPEN_STATUSES:
        return "done"
    if kind != "campaigns" or workflows_to_start is None:
        return "rows"
    return "workflows"


# Uploads (POST /api/v1/etl/upload): what is refused before anything is stored.

MAX_FILENAME_CHARS = 500


class UploadTooLarge(Exception):
    """The upload passed the size limit while it was stored (nothing of it is kept)."""


class EmptyUpload(Exception):
    """The upload held no bytes (nothing of it is kept)."""


def upload_refusal(kind: str, filename: str, *, io_bookings_enabled: bool) -> tuple[str, str] | None:
    """Why an upload is refused before it is stored, as (the form field, a sentence); None: accepted.

    `filename` is the name as sent, stripped.
    """
    if kind not in KINDS:
        return ("kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "deliveries" and not io_bookings_enabled:
        return (
            "kind",
            "deliveries go to IO workflows, and IO bookings are disabled (ENABLE_IO_BOOKINGS=false)",
        )
    if not filename:
        return ("file", "the file has no name")
    if len(filename) > MAX_FILENAME_CHARS:
        return ("file", f"the file name is longer than {MAX_FILENAME_CHARS} characters")
    return None


def import_summary(filename: str, kind: str, size_bytes: int) -> str:
    """The import workflow's static summary (the Temporal UI's list shows it)."""
    return f"Import: {filename} ({kind}, {size_bytes:,} bytes)"


def import_progress(status: str, row: int, rows_total: int | None, rows_estimate: int) -> float:
    """How far an import is, in [0, 1]: 1 once completed, else the rows done over the total known.

    `row` is the checkpoint's next row (1 before the first chunk); the total is the counted one
    once known, the estimate before; at most 0.99 until the import completes.
    """
    if status in ("completed", "completed_with_errors"):
        return 1.0
    done = row - 1
    total = rows_total or rows_estimate
    return round(min(0.99, done / total), 4) if total > 0 else 0.0
