"""Inputs and results of the import workflow and its activities."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ImportKind = Literal["shows", "advertisers", "campaigns", "show_downloads", "deliveries"]
ImportStatus = Literal["pending", "running", "completed", "completed_with_errors", "failed"]

# Errors kept per import (all are counted); the status shows them, first ones first.
MAX_STORED_ROW_ERRORS = 1000
FILE_ERROR = "ImportFileError"


class CsvImportInput(BaseModel):
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


class CsvImportResult(BaseModel):
    """How an import ended."""

    status: ImportStatus
    rows_processed: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_failed: int = 0
    workflows_started: int = 0
    error: str | None = None


class RunImportInput(BaseModel):
    """Parse, validate and upsert the stored file in chunks, from the last checkpoint."""

    tenant_id: str
    import_id: str
    kind: ImportKind
    chunk_rows: int


class RunImportResult(BaseModel):
    """Counts after the last chunk."""

    rows_processed: int
    rows_inserted: int
    rows_updated: int
    rows_failed: int


class MarkImportInput(BaseModel):
    """A status change of an import (running, or the final one)."""

    tenant_id: str
    import_id: str
    status: ImportStatus
    error: str | None = None


class MarkImportResult(BaseModel):
    """Whether this call changed the row (false: an earlier attempt already had)."""

    changed: bool


class StartDealWorkflowsInput(BaseModel):
    """Open deals this import wrote, whose workflows should be running."""

    tenant_id: str
    import_id: str
    task_queue: str
    concurrency: int = Field(default=20, ge=1, le=200)


class StartDealWorkflowsResult(BaseModel):
    """How many deal workflows were started (or found running)."""

    started: int


class TriggerMatchesInput(BaseModel):
    """Starts (or joins) the tenant's match recalculation after an import changed its features."""

    tenant_id: str
    task_queue: str
