"""Spreadsheet imports (ARCHITECTURE section 10): streaming CSV/XLSX reading, cell parsing, row
validation, and the import workflow's statuses, inputs and results.

Pure code: no database, no I/O beyond the bytes or the open workbook stream handed in (the
caller opens files). One module per part, re-exported here:

    workflow  statuses, the ImportWorkflow's and its activities' inputs and results, the rules
              that close an import whose workflow ended (part of the workflow's history contract)
    base      the kinds, limits, RowError, FileError, Header
    cells     spreadsheet safety (neutralise), cell display, one parser per cell type
    columns   the columns of each kind (columns_of) and the header (read_header)
    rows      parse_row, share rounding warnings, natural_key, the show_downloads fast path
    readers   sniff_format, iter_csv_rows (encodings, delimiters), iter_xlsx_rows

A caller does

    fmt = sniff_format(first_bytes, filename)
    header_cells, rows, warnings = iter_csv_rows(chunks)  # or iter_xlsx_rows(stream)
    header = read_header(kind, header_cells)
    for row_number, cells in rows:
        record, errors = parse_row(kind, header, cells, row_number)

Decisions a caller relies on:

* Encoding (CSV). Bytes are decoded as UTF-8 (a UTF-8 BOM is stripped). If the first 64 KiB are not
  valid UTF-8 the whole file is read as Windows-1252 and the warning
  "file is not valid UTF-8 (first bad byte at offset N); read as Windows-1252" is added. A bad byte
  further on still switches to Windows-1252 when everything before it was plain ASCII (ASCII reads the
  same either way, so this equals reading the whole file as Windows-1252); the warning is then appended
  to the same `warnings` list while the rows are iterated, so read that list again after the loop. A bad
  byte after non-ASCII UTF-8 text means a file mixing two encodings: the rows iterator raises FileError
  "file is not valid UTF-8 text: undecodable byte 0x.. at offset N; save it as UTF-8 CSV".
* Empty and header-only files are detected eagerly: `iter_csv_rows` / `iter_xlsx_rows` raise
  FileError("the file is empty") or FileError("the file has a header but no data rows") before they
  return, so callers need no extra check.
* The rows iterators may still raise FileError while iterated (malformed CSV quoting, encoding, a
  corrupt workbook part): everything read before that point was valid and came out in order.
* Row numbers are what a spreadsheet user sees: the header is the first non-empty row (normally row 1)
  and every record counts, blank ones included; a quoted CSV field spanning lines is still one row.
  Completely empty rows are skipped by the iterators (and `parse_row` returns (None, []) for them).
* XLSX: first worksheet, cached formula results (`data_only`), values beyond the header's last column
  are dropped (a stray note in an unlabelled column is ignored like an unknown column). In a CSV such
  values make the row an error instead, because there they usually come from an unquoted delimiter
  (`$12,000` in a comma-separated file). The XLSX rows iterator releases the workbook when exhausted,
  on `close()`, or when dropped.
* Record values are plain types: str, int, float (shares), Decimal (money, 2 places, rounded half-up),
  datetime.date, list[str], dict[str, float] (geo, age), and StrEnum members (stage, tolerance,
  brand_safety levels) that compare equal to their strings. Empty optional cells are left out of the
  record, except `stage` (defaults to "lead") and show_downloads `country` (defaults to "").
"""

from __future__ import annotations

from domain.imports.base import (
    EMPTY_FILE,
    KINDS,
    NO_DATA_ROWS,
    NOT_A_SPREADSHEET,
    SNIFF_BYTES,
    FileError,
    Header,
    RowError,
)
from domain.imports.cells import neutralise
from domain.imports.columns import columns_of, read_header
from domain.imports.readers import iter_csv_rows, iter_xlsx_rows, sniff_format
from domain.imports.rows import (
    DownloadParser,
    download_fast_path,
    natural_key,
    normalised_warning,
    parse_row,
    with_normalised_warning,
)
from domain.imports.workflow import (
    FILE_ERROR,
    FINAL_STATUSES,
    IMPORT_CLOSED,
    MAX_STORED_ROW_ERRORS,
    OPEN_STATUSES,
    UNSTARTED_GRACE,
    ClosedAs,
    EmptyUpload,
    ImportKind,
    ImportPhase,
    ImportStatus,
    ImportWorkflowInput,
    ImportWorkflowResult,
    MarkImportInput,
    MarkImportResult,
    RepairStuckImportsInput,
    RepairStuckImportsResult,
    RunImportInput,
    RunImportResult,
    StartDealWorkflowsInput,
    StartDealWorkflowsResult,
    TriggerMatchesInput,
    UploadTooLarge,
    closed_import_reason,
    closed_import_status,
    closes_import,
    import_phase,
    import_progress,
    import_summary,
    start_refused_reason,
    upload_refusal,
)

__all__ = [
    "ClosedAs",
    "DownloadParser",
    "EmptyUpload",
    "EMPTY_FILE",
    "FILE_ERROR",
    "FINAL_STATUSES",
    "FileError",
    "Header",
    "IMPORT_CLOSED",
    "ImportKind",
    "ImportPhase",
    "ImportStatus",
    "ImportWorkflowInput",
    "ImportWorkflowResult",
    "KINDS",
    "MAX_STORED_ROW_ERRORS",
    "MarkImportInput",
    "MarkImportResult",
    "NOT_A_SPREADSHEET",
    "NO_DATA_ROWS",
    "OPEN_STATUSES",
    "RepairStuckImportsInput",
    "RepairStuckImportsResult",
    "RowError",
    "RunImportInput",
    "RunImportResult",
    "SNIFF_BYTES",
    "StartDealWorkflowsInput",
    "StartDealWorkflowsResult",
    "TriggerMatchesInput",
    "UploadTooLarge",
    "UNSTARTED_GRACE",
    "closed_import_reason",
    "closed_import_status",
    "closes_import",
    "columns_of",
    "download_fast_path",
    "import_phase",
    "import_progress",
    "import_summary",
    "iter_csv_rows",
    "iter_xlsx_rows",
    "natural_key",
    "neutralise",
    "normalised_warning",
    "parse_row",
    "read_header",
    "sniff_format",
    "start_refused_reason",
    "upload_refusal",
    "with_normalised_warning",
]
