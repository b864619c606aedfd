"""The deal stage machine: which moves are allowed, probabilities and stall limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Stage(StrEnum):
    """A stage of the deal pipeline, in pipeline order."""

    LEAD = "lead"
    QUALIFIED = "qualified"
    PROPOSAL = "proposal"
    NEGOTIATION = "negotiation"
    WON = "won"
    LOST = "lost"


OPEN_STAGES: tuple[Stage, ...] = (Stage.LEAD, Stage.QUALIFIED, Stage.PROPOSAL, Stage.NEGOTIATION)
CLOSED_STAGES: tuple[Stage, ...] = (Stage.WON, Stage.LOST)
ALL_STAGES: tuple[Stage, ...] = OPEN_STAGES + CLOSED_STAGES
STAGE_NAMES: tuple[str, ...] = tuple(s.value for s in ALL_STAGES)

DEFAULT_PROBABILITY: dict[Stage, int] = {
    Stage.LEAD: 10,
    Stage.QUALIFIED: 25,
    Stage.PROPOSAL: 50,
    Stage.NEGOTIATION: 75,
    Stage.WON: 100,
    Stage.LOST: 0,
}

DEFAULT_STALL_DAYS: dict[Stage, int] = {
    Stage.LEAD: 14,
    Stage.QUALIFIED: 14,
    Stage.PROPOSAL: 21,
    Stage.NEGOTIATION: 14,
}

# Stages from which a deal may be marked won: a deal needs a proposal on the table first.
WINNABLE_FROM: frozenset[Stage] = frozenset({Stage.PROPOSAL, Stage.NEGOTIATION})


class TransitionError(ValueError):
    """A move the pipeline rules forbid; carries the targets that would have been allowed."""

    def __init__(self, current: Stage, target: Stage, allowed: list[Stage], message: str) -> None:
        super().__init__(message)
        self.current = current
        self.target = target
        self.allowed = allowed


def is_open(stage: Stage) -> bool:
    """Returns whether a deal in this stage is still being worked."""
    return stage in OPEN_STAGES


def allowed_targets(current: Stage) -> list[Stage]:
    """Returns the stages a deal may move to from `current`, in pipeline order (no-op excluded)."""
    if current is Stage.WON:
        return []
    if current is Stage.LOST:
        return [Stage.LEAD]
    targets = [s for s in OPEN_STAGES if s is not current]
    if current in WINNABLE_FROM:
        targets.append(Stage.WON)
    targets.append(Stage.LOST)
    return targets


def is_noop(current: Stage, target: Stage) -> bool:
    """Returns whether moving to `target` leaves the deal where it is (an idempotent no-op)."""
    return current is target


def check_transition(current: Stage, target: Stage, reason: str | None) -> None:
    """Raises TransitionError when the move is forbidden; returns quietly when it is allowed."""
    if is_noop(current, target):
        return
    allowed = allowed_targets(current)
    if target not in allowed:
        names = ", ".join(s.value for s in allowed) or "none (won is final)"
        raise TransitionError(
            current,
            target,
            allowed,
            f"cannot move a deal from {current.value} to {target.value}; allowed: {names}",
        )
    if target is Stage.LOST and not (reason and reason.strip()):
        raise ValueError("a reason is required to mark a deal lost")


def stall_limit(stage: Stage, overrides: dict[str, int] | None = None) -> timedelta | None:
    """Returns how long a deal may sit in `stage` before it counts as stalled (None: never)."""
    if not is_open(stage):
        return None
    days = (overrides or {}).get(stage.value, DEFAULT_STALL_DAYS[stage])
    return timedelta(days=days)


def probability(stage: Stage) -> int:
    """Returns the default win probability, in percent, of a deal in `stage`."""
    return DEFAULT_PROBABILITY[stage]


def weighted_value(value_usd: float, probability_pct: int) -> float:
    """Returns the deal value weighted by its win probability."""
    return round(value_usd * probability_pct / 100.0, 2)


def judged_without_workflow(current: Stage, target: Stage) -> bool:
    """Whether a move of a deal at `current` is judged by the rules alone, with no Temporal trip.

    A closed deal has no running workflow: a no-op is answered as it is and anything but
    reopening a lost deal is refused, so only LOST -> LEAD (which starts a new run) needs one.
    """
    return not is_open(current) and not (current is Stage.LOST and target is Stage.LEAD)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def etag(stage: Stage, entered_at: datetime) -> str:
    """The deal's current stage entry as an entity tag: `"<stage>.<microseconds since epoch>"`."""
    return f'"{stage.value}.{(entered_at - _EPOCH) // timedelta(microseconds=1)}"'


@dataclass(frozen=True)
class Precondition:
    """What If-Match asked for: any entry (`*`), one entry, or something no entry matches."""

    stage: Stage | None = None
    entered_at: datetime | None = None
    unmatchable: bool = False

    def holds(self, stage: Stage, entered_at: datetime) -> bool:
        """Whether the deal's current entry satisfies it."""
        if self.unmatchable:
            return False
        return self.stage is None or (self.stage, self.entered_at) == (stage, entered_at)


def parse_if_match(value: str | None) -> Precondition | None:
    """Parses If-Match (one of our ETags, a list of them, or `*`); None when absent or `*`."""
    if value is None or value.strip() == "*":
        return None
    tags = [t.strip().removeprefix("W/") for t in value.split(",") if t.strip()]
    if len(tags) != 1:
        # Several tags: only one can be the current entry; a list is honoured as its first element
        # would be ambiguous, so it is refused as unmatchable unless it is exactly one tag.
        return Precondition(unmatchable=True)
    tag = tags[0].strip('"')
    stage_name, _, micros = tag.rpartition(".")
    try:
        return Precondition(stage=Stage(stage_name), entered_at=_EPOCH + timedelta(microseconds=int(micros)))
    except (ValueError, OverflowError):
        return Precondition(unmatchable=True)
