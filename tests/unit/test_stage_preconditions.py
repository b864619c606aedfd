"""The stage-entry ETag and If-Match precondition, and which moves need no workflow (domain.stages)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.stages import (
    ALL_STAGES,
    Precondition,
    Stage,
    etag,
    judged_without_workflow,
    parse_if_match,
)

ENTERED = datetime(2031, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


def test_an_etag_names_the_stage_and_the_microsecond_it_was_entered() -> None:
    micros = (ENTERED - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert etag(Stage.PROPOSAL, ENTERED) == f'"proposal.{micros}"'
    assert etag(Stage.PROPOSAL, ENTERED) != etag(Stage.PROPOSAL, ENTERED + timedelta(microseconds=1))


@pytest.mark.parametrize("sent", ["{tag}", "W/{tag}", "  {tag}  ", "{tag},"])
def test_if_match_with_our_etag_holds_for_that_entry_only(sent: str) -> None:
    pre = parse_if_match(sent.format(tag=etag(Stage.QUALIFIED, ENTERED)))
    assert pre == Precondition(stage=Stage.QUALIFIED, entered_at=ENTERED)
    assert pre.holds(Stage.QUALIFIED, ENTERED)
    assert not pre.holds(Stage.QUALIFIED, ENTERED + timedelta(microseconds=1))
    assert not pre.holds(Stage.PROPOSAL, ENTERED)


@pytest.mark.parametrize("sent", [None, "*", " * "])
def test_no_if_match_or_a_star_asks_for_nothing(sent: str | None) -> None:
    assert parse_if_match(sent) is None


@pytest.mark.parametrize(
    "sent",
    [
        '"proposal.1", "proposal.2"',  # a list: ambiguous, refused
        '"closing.1"',  # no such stage
        '"proposal.soon"',  # not microseconds
        '"proposal"',
        '"lead.99999999999999999999999"',  # past datetime's range
        "",
    ],
)
def test_an_if_match_no_entry_can_satisfy_is_unmatchable(sent: str) -> None:
    pre = parse_if_match(sent)
    assert pre is not None and pre.unmatchable
    assert not any(pre.holds(s, ENTERED) for s in ALL_STAGES)


def test_the_etag_of_every_stage_parses_back_to_its_entry() -> None:
    for stage in ALL_STAGES:
        pre = parse_if_match(etag(stage, ENTERED))
        assert pre is not None and (pre.stage, pre.entered_at) == (stage, ENTERED)


@pytest.mark.parametrize("current", ALL_STAGES)
@pytest.mark.parametrize("target", ALL_STAGES)
def test_only_moves_of_a_closed_deal_but_reopening_are_judged_without_the_workflow(
    current: Stage, target: Stage
) -> None:
    expected = current in (Stage.WON, Stage.LOST) and not (current is Stage.LOST and target is Stage.LEAD)
    assert judged_without_workflow(current, target) is expected
