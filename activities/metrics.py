"""The product's metrics, counted by activities through the Temporal SDK's meter.

They come out of the worker's Prometheus endpoint beside the SDK's own (worker.metrics_config):
each name below gets `_total` (counters) or `_seconds` (durations) appended there, and the
labels the SDK puts on an activity's meter (namespace, task_queue, activity_type) plus the ones
given here. No tenant id is ever a label (the dashboard API counts per tenant).

Every call site counts after its transaction committed and only for a write it made: a retry
that finds its write already done counts nothing, and one whose commit failed counted nothing.
Outside an activity (a unit test calling a helper) these do nothing. Creating an instrument on
the activity's meter is cheap (about 2 us with the add) and the SDK merges same-named ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from temporalio import activity

STAGE_MOVES = "sponsorflow_deal_stage_moves"
STALLS = "sponsorflow_deal_stalls"
IMPORT_ROWS = "sponsorflow_import_rows"
IMPORT_ROW_ERRORS = "sponsorflow_import_row_errors"
IO_DELIVERIES = "sponsorflow_io_deliveries_reported"
IO_MAKEGOODS = "sponsorflow_io_makegoods_booked"
IO_INVOICES = "sponsorflow_io_invoices_issued"
MATCH_PHASE = "sponsorflow_match_recalculation_phase_duration"
WEBHOOK_ATTEMPTS = "sponsorflow_webhook_attempts"
WEBHOOK_FAILED = "sponsorflow_webhook_deliveries_failed"

# Histogram buckets (seconds) for worker.metrics_config: a large tenant's scoring takes minutes.
BUCKETS: dict[str, list[float]] = {
    MATCH_PHASE: [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0],
}

_HELP = {
    STAGE_MOVES: "Deal stage moves written (deal.stage_changed), by from and to stage.",
    STALLS: "deal.stalled events emitted, by the stage the deal sat in.",
    IMPORT_ROWS: "Import rows committed (processed, failed ones included), by import kind.",
    IMPORT_ROW_ERRORS: "Row errors of committed import chunks, by import kind and column (`row`: none).",
    IO_DELIVERIES: "Delivery reports stored (io.delivery_reported), via the API or an import.",
    IO_MAKEGOODS: "Make-good ad units booked for a shortfall, by placement.",
    IO_INVOICES: "Invoices issued when an IO completes (io.completed), cancelled: whether it was.",
    WEBHOOK_ATTEMPTS: "Webhook delivery attempts recorded, by result (delivered, http_3xx/4xx/429/5xx, "
    "timeout, connection, refused) and endpoint format.",
    WEBHOOK_FAILED: "Webhook deliveries given up after their retry window (failed), by endpoint format.",
}


def _count(name: str, value: int, labels: Mapping[str, str]) -> None:
    if value <= 0 or not activity.in_activity():
        return
    activity.metric_meter().create_counter(name, _HELP[name]).add(value, labels)


def stage_moved(from_stage: str, to_stage: str) -> None:
    """One stage move written."""
    _count(STAGE_MOVES, 1, {"from": from_stage, "to": to_stage})


def stall_emitted(stage: str) -> None:
    """One deal.stalled written."""
    _count(STALLS, 1, {"stage": stage})


def import_chunk_committed(kind: str, rows: int, error_columns: Mapping[str | None, int]) -> None:
    """A committed chunk: its rows and its row errors by column."""
    _count(IMPORT_ROWS, rows, {"kind": kind})
    for column, n in error_columns.items():
        _count(IMPORT_ROW_ERRORS, n, {"kind": kind, "column": column or "row"})


def delivery_reported(*, via: str) -> None:
    """One delivery report stored (`via`: api or import)."""
    _count(IO_DELIVERIES, 1, {"via": via})


def makegood_booked(placement: str) -> None:
    """One make-good unit booked."""
    _count(IO_MAKEGOODS, 1, {"placement": placement})


def invoice_issued(*, cancelled: bool) -> None:
    """One invoice written."""
    _count(IO_INVOICES, 1, {"cancelled": "true" if cancelled else "false"})


def match_phases(seconds: Mapping[str, float]) -> None:
    """A committed recalculation's time per phase (load, score, write, swap)."""
    if not activity.in_activity():
        return
    histogram = activity.metric_meter().create_histogram_timedelta(
        MATCH_PHASE, "Time per phase of a committed match recalculation.", "duration"
    )
    for phase, s in seconds.items():
        histogram.record(timedelta(seconds=s), {"phase": phase})


def webhook_attempt(result: str, *, format: str) -> None:
    """One delivery attempt whose outcome was written to its row."""
    _count(WEBHOOK_ATTEMPTS, 1, {"result": result, "format": format})


def webhook_given_up(*, format: str) -> None:
    """One delivery marked failed at the end of its window."""
    _count(WEBHOOK_FAILED, 1, {"format": format})


def webhook_result(status_code: int | None, error: str | None) -> str:
    """The `result` label of an attempt: delivered, http_<class> (429 apart), timeout, connection, refused."""
    if status_code is not None:
        if 200 <= status_code < 300 and error is None:
            return "delivered"
        return "http_429" if status_code == 429 else f"http_{status_code // 100}xx"
    text = (error or "").lower()
    if text.startswith("address refused"):
        return "refused"
    if "no answer within" in text or "timed out" in text or "timeout" in text:
        return "timeout"
    return "connection"
