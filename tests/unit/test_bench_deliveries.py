"""The deliveries benchmark's raw SDK anchor sends exactly the reports the import signals.

The anchor is only fair while it sends the same signals as the product: the import keeps a
unit's last row of each chunk (cumulative figures), and bench/import_deliveries mirrors that
rule. If the import's dedup changes, this test says the anchor must follow.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from activities.imports import _next_batch
from bench.import_deliveries import signals_of, write_reports
from domain.imports import iter_csv_rows, read_header


def _what_the_import_signals(path: Path, chunk_rows: int) -> list[tuple[str, str, int, str]]:
    header, rows, _ = iter_csv_rows(iter([path.read_bytes()]))
    parsed = read_header("deliveries", header)
    sent: list[tuple[str, str, int, str]] = []
    done = 1
    while True:
        batch = _next_batch(rows, "deliveries", parsed, chunk_rows, done)
        if batch.last_row is None:
            return sent
        assert not batch.errors
        sent.extend(
            (str(r["io_id"]), str(r["ad_unit_id"]), int(r["impressions"]), str(r["source"]))
            for _, r in batch.records
        )
        done = batch.last_row


def test_the_anchor_sends_the_imports_signals(tmp_path: Path) -> None:
    ios = [str(uuid.uuid4()) for _ in range(3)]
    units = [(io, str(uuid.uuid4())) for io in ios for _ in range(4)]
    path = tmp_path / "deliveries.csv"
    # 12 units, 100 rows (8 days and a part), chunks of 30 rows: 2.5 reports per unit a chunk.
    reports = write_reports(path, units, 100, first_day=3)
    assert len(reports) == 100
    assert reports[0][2] < reports[len(units)][2]  # cumulative: a unit's next day is higher

    sent = _what_the_import_signals(path, 30)

    assert sent == signals_of(reports, 30)
    assert len(sent) == 3 * len(units) + 10  # three full chunks of every unit, then 10 rows
    # Every chunk sends each unit's latest figure in it, never an earlier one.
    assert all(r in reports[60:90] for r in signals_of(reports, 30)[2 * len(units) : 3 * len(units)])
