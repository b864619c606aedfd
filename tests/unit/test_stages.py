"""The stage machine of ARCHITECTURE section 7, rule by rule."""

from __future__ import annotations

import itertools

import pytest

from domain.stages import (
    ALL_STAGES,
    OPEN_STAGES,
    Stage,
    TransitionError,
    allowed_targets,
    check_transition,
    probability,
    stall_limit,
    weighted_value,
)


def expected_allowed(current: Stage, target: Stage) -> bool:
    """The rules restated independently of the implementation."""
    if current is target:
        return True
    if current in OPEN_STAGES and target in OPEN_STAGES:
        return True
    if current in OPEN_STAGES and target is Stage.LOST:
        return True
    if current in (Stage.PROPOSAL, Stage.NEGOTIATION) and target is Stage.WON:
        return True
    return current is Stage.LOST and target is Stage.LEAD


@pytest.mark.parametrize(("current", "target"), list(itertools.product(ALL_STAGES, ALL_STAGES)))
def test_every_pair(current: Stage, target: Stage) -> None:
    reason = "budget cut" if target is Stage.LOST else None
    if expected_allowed(current, target):
        check_transition(current, target, reason)
    else:
        with pytest.raises(TransitionError) as err:
            check_transition(current, target, reason)
        assert err.value.allowed == allowed_targets(current)
        for allowed in err.value.allowed:
            assert allowed.value in str(err.value)


def test_lost_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        check_transition(Stage.LEAD, Stage.LOST, "  ")


def test_won_is_final() -> None:
    assert allowed_targets(Stage.WON) == []
    with pytest.raises(TransitionError, match="won is final"):
        check_transition(Stage.WON, Stage.LEAD, None)


def test_probabilities_and_weighting() -> None:
    assert [probability(s) for s in ALL_STAGES] == [10, 25, 50, 75, 100, 0]
    assert weighted_value(12000, 75) == 9000


def test_stall_limits() -> None:
    assert stall_limit(Stage.PROPOSAL) is not None and stall_limit(Stage.PROPOSAL).days == 21
    assert stall_limit(Stage.LEAD, {"lead": 3}).days == 3  # type: ignore[union-attr]
    assert stall_limit(Stage.WON) is None
