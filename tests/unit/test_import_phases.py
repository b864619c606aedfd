"""The two phases of an import (rows committed, then workflows started) in the status and the CLI."""

from __future__ import annotations

from cli import _print_import_result, _progress_line
from domain.imports import import_phase


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
