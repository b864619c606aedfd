"""Inputs and results of the deal workflow and its activities (shared by API, worker, workflow)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from domain.stages import Stage


class DealWorkflowInput(BaseModel):
    """Everything a DealWorkflow run needs; continue-as-new carries the state forward in it."""

    tenant_id: str
    campaign_id: str
    name: str
    advertiser_id: str
    advertiser_name: str
    show_id: str | None = None
    show_name: str | None = None
    value_usd: float
    stage: Stage
    stage_entered_at: datetime
    lost_reason: str | None = None
    # True once deal.stalled was emitted for the current stage entry.
    stall_notified: bool = False
    stall_days: dict[str, int] = Field(default_factory=dict)
    moves_per_run: int = 200
    # Moves accepted across every run of this deal, for the record.
    total_moves: int = 0
    # False when seeded from a row read by a caller (which may be stale): the run first
    # re-reads the row. Continue-as-new carries authoritative state and sets it True.
    synced: bool = False
    # Histories recorded before 2026-12 carry `persist_locally` (a benchmark switch, now a
    # subclass in bench/regular_write.py): the model ignores unknown fields, so they replay.


class DealWorkflowResult(BaseModel):
    """How a deal's workflow ended: won or lost, and when."""

    campaign_id: str
    stage: Stage
    closed_at: datetime
    lost_reason: str | None = None


class DealState(BaseModel):
    """The deal as its workflow sees it: the answer of the query and of every stage update."""

    campaign_id: str
    stage: Stage
    probability: int
    stage_entered_at: datetime
    lost_reason: str | None = None
    stalled: bool = False
    moves_this_run: int = 0
    total_moves: int = 0
    # The details search attributes and the live details are built from (they follow the row).
    name: str | None = None
    advertiser_id: str | None = None
    show_id: str | None = None
    value_usd: float | None = None


class ChangeStageInput(BaseModel):
    """A request to move a deal to another stage.

    `request_id` names the request (it is also the update's id): the stage write claims it in the
    write fence, so a request the API gave up on is refused instead of applied late.
    `expected_stage`/`expected_entered_at` (If-Match): move only if the deal is still in that
    stage entry.
    """

    stage: Stage
    reason: str | None = None
    request_id: str | None = None
    expected_stage: Stage | None = None
    expected_entered_at: datetime | None = None


class StageMove(BaseModel):
    """One move as it was written: the stage entry it left and the one it made."""

    from_stage: Stage
    from_entered_at: datetime
    to_stage: Stage
    at: datetime
    reason: str | None = None


class ChangeStageResult(BaseModel):
    """The deal after an accepted stage update; `changed` is false for a no-op."""

    changed: bool
    state: DealState
    move: StageMove | None = None


class RecordStageChangeInput(BaseModel):
    """What the workflow decided about one move, for the activity to persist."""

    tenant_id: str
    campaign_id: str
    from_stage: Stage
    # The stage entry the decision was made against; the write only lands if the row
    # still shows it (optimistic concurrency against a run seeded from a stale row).
    from_entered_at: datetime
    to_stage: Stage
    reason: str | None = None
    lost_reason: str | None = None
    probability: int
    at: datetime
    idempotency_key: str
    # The request this move answers (the write fence); None for writes no client waits for.
    request_id: str | None = None


class RecordStageChangeResult(BaseModel):
    """What happened to the move: written now, written by an earlier attempt, refused as stale, or
    refused because the API gave up on its request (abandoned).

    When stale (and when already applied by an earlier attempt of the same request), the row's
    actual stage entry is returned so the workflow can adopt it.
    """

    outcome: Literal["applied", "already_applied", "stale", "abandoned"]
    stage: Stage | None = None
    stage_entered_at: datetime | None = None
    lost_reason: str | None = None


class RecordStallInput(BaseModel):
    """A deal that sat in one stage past its limit (emitted only if the row still shows that entry)."""

    tenant_id: str
    campaign_id: str
    stage: Stage
    stage_entered_at: datetime
    limit_days: float
    at: datetime


class RecordStallResult(BaseModel):
    """Whether this attempt emitted the deal.stalled event."""

    emitted: bool


class LoadDealInput(BaseModel):
    """Which deal's row a fresh run should re-read."""

    tenant_id: str
    campaign_id: str


class LoadDealResult(BaseModel):
    """The deal's stage entry as the row records it (exists=False: the row is gone)."""

    exists: bool
    stage: Stage | None = None
    stage_entered_at: datetime | None = None
    lost_reason: str | None = None
    stall_notified: bool = False
    # The deal's details as the row has them (has_details is False in histories recorded before
    # load_deal read them).
    has_details: bool = False
    name: str | None = None
    advertiser_id: str | None = None
    advertiser_name: str | None = None
    show_id: str | None = None
    show_name: str | None = None
    value_usd: float | None = None


def deal_summary(name: str, advertiser: str, show: str | None, value_usd: float) -> str:
    """Returns the one-line summary ops read in the Temporal UI (a run's summary and details)."""
    target = show or name
    return f"Deal: {advertiser} x {target}, ${value_usd:,.0f}"
