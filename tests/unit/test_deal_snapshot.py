"""A deal's row read with its history answers one snapshot (db.deals.align): the history wins."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from db.deals import DealRow, HistoryRow, align
from db.models import Deal

T0 = datetime(2031, 3, 2, 9, 0, tzinfo=UTC)


def _row(stage: str, at: datetime, probability: int) -> DealRow:
    c = Deal(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        advertiser_id=uuid.uuid4(),
        name="Q3 flight",
        value_usd=Decimal("1000"),
        stage=stage,
        stage_changed_at=at,
        probability=probability,
        lost_reason=None,
    )
    return DealRow(deal=c, advertiser_name="Acme", show_name=None)


def test_a_move_committed_between_the_two_reads_shows_in_the_row_too() -> None:
    row = _row("lead", T0, 10)
    later = T0 + timedelta(minutes=5)
    align(
        row=row,
        history=[HistoryRow(None, "lead", "created", T0), HistoryRow("lead", "lost", "budget cut", later)],
    )
    c = row.deal
    assert (c.stage, c.stage_changed_at, c.probability, c.lost_reason) == ("lost", later, 0, "budget cut")


def test_a_row_that_agrees_with_its_history_is_left_as_it_is() -> None:
    row = _row("proposal", T0, 60)  # a probability set by hand is kept while the stage is unchanged
    align(row=row, history=[HistoryRow("qualified", "proposal", None, T0)])
    assert (row.deal.stage, row.deal.probability) == ("proposal", 60)


def test_reopening_clears_the_lost_reason() -> None:
    row = _row("lost", T0, 0)
    row.deal.lost_reason = "budget cut"
    align(row=row, history=[HistoryRow("lost", "lead", "reopened", T0 + timedelta(days=1))])
    assert (row.deal.stage, row.deal.probability) == ("lead", 10)
    assert row.deal.lost_reason is None


def test_no_history_changes_nothing() -> None:
    row = _row("qualified", T0, 25)
    align(row=row, history=[])
    assert (row.deal.stage, row.deal.stage_changed_at) == ("qualified", T0)
