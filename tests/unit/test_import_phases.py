"""The two phases of an import (rows committed, then workflows started) in the status and the CLI;
the upload refusals, the progress and the workflow summary the API shows."""

from __future__ import annotations

from cli import _print_import_result, _progress_line
from domain.imports import import_phase, import_progress, import_summary, upload_refusal


def test_phase_follows_rows_then_workflows() -> None:
    assert import_phase("running", "campaigns", None) == "rows"
    assert import_phase("running", "campaigns", 2000) == "workflows"
    assert import_phase("running", "shows", None) == "rows"
    assert import_phase("completed", "campaigns", 2000) == "done"
    assert import_phase("failed", "campaigns", None) == "done"


def _status(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "import_id": "i-1",
        "kind": "campaigns",
        "filename": "deals.csv",
        "status": "running",
        "progress": 0.5,
        "rows_total": None,
        "rows_processed": 10_000,
        "rows_inserted": 10_000,
        "rows_updated": 0,
        "rows_failed": 0,
        "phase": "rows",
        "workflows_started": 0,
        "workflows_to_start": None,
        "warnings": [],
        "errors": [],
    }
    return {**base, **kw}


def test_progress_line_shows_rows_then_workflows() -> None:
    rows = _progress_line(_status(), 2.0)
    assert "10,000 rows" in rows and "rows/s" in rows and "workflows" not in rows
    line = _progress_line(
        _status(
            phase="workflows",
            rows_total=20_000,
            rows_processed=20_000,
            workflows_started=500,
            workflows_to_start=2000,
        ),
        5.0,
    )
    assert "rows 20,000/20,000 committed" in line
    assert "500/2,000 started" in line and "25.0%" in line


def test_result_names_workflows_started_of_to_start() -> None:
    import io

    out = io.StringIO()
    _print_import_result(_status(status="completed", workflows_started=2000, workflows_to_start=2000), out)
    assert "2,000 workflows started of 2,000" in out.getvalue()


def test_an_upload_is_refused_naming_its_field_before_anything_is_stored() -> None:
    assert upload_refusal("podcasts", "a.csv", io_bookings_enabled=True) == (
        "kind",
        "unknown kind 'podcasts'; expected one of shows, advertisers, campaigns, show_downloads, deliveries",
    )
    assert upload_refusal("deliveries", "d.csv", io_bookings_enabled=False) == (
        "kind",
        "deliveries go to IO workflows, and IO bookings are disabled (ENABLE_IO_BOOKINGS=false)",
    )
    assert upload_refusal("deliveries", "d.csv", io_bookings_enabled=True) is None
    assert upload_refusal("shows", "", io_bookings_enabled=True) == ("file", "the file has no name")
    assert upload_refusal("shows", "x" * 500, io_bookings_enabled=True) is None
    assert upload_refusal("shows", "x" * 501, io_bookings_enabled=True) == (
        "file",
        "the file name is longer than 500 characters",
    )


def test_progress_counts_rows_done_over_the_known_total_and_is_one_only_when_completed() -> None:
    assert import_progress("pending", 1, None, 0) == 0.0
    assert import_progress("running", 2501, None, 10_000) == 0.25  # the estimate before the count
    assert import_progress("running", 2501, 5000, 10_000) == 0.5  # the counted total once known
    assert import_progress("running", 5001, 5000, 0) == 0.99  # all rows in, not yet reported
    assert import_progress("completed_with_errors", 1, None, 0) == 1.0
    assert import_progress("failed", 1001, 3000, 0) == 0.3333


def test_the_workflow_summary_names_the_file_its_kind_and_size() -> None:
    summary = import_summary("deals.xlsx", "campaigns", 1_234_567)
    assert summary == "Import: deals.xlsx (campaigns, 1,234,567 bytes)"
