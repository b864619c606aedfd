"""DealWorkflow: one deal from creation until it is won or lost.

It decides every stage move (validator first, then again under the lock), has an activity
persist it, keeps the search attributes current, and emits deal.stalled once per stage entry
from a durable timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.deals import DealActivities
    from domain.deals import (
        ChangeStageInput,
        ChangeStageResult,
        DealState,
        DealWorkflowInput,
        DealWorkflowResult,
        LoadDealInput,
        LoadDealResult,
        RecordStageChangeInput,
        RecordStageChangeResult,
        RecordStallInput,
        StageMove,
        deal_summary,
    )
    from domain.stages import (
        Stage,
        TransitionError,
        check_transition,
        is_noop,
        is_open,
        probability,
        stall_limit,
    )
    from workflows import search_attributes as sa

FORBIDDEN_TRANSITION = "ForbiddenTransition"
INVALID_REQUEST = "InvalidStageRequest"
# If-Match named a stage entry the deal has left.
PRECONDITION_FAILED = "PreconditionFailed"
# The API gave up on the request before its write; it is refused, never applied late.
REQUEST_ABANDONED = "RequestAbandoned"

PERSIST_TIMEOUT = timedelta(seconds=10)
_MAX_STALE_ROUNDS = 3
PERSIST_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0, maximum_attempts=8
)
# Reads of the row and the stall event wait out a database outage however long it lasts: failing
# them would fail the whole workflow (they run in the main loop and in signal handlers). The
# stage write stays bounded, so its update fails (and the API asks the fence) instead of hanging.
_PATIENT_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)


def _move_key(campaign_id: str, current: Stage, entered_at: datetime, target: Stage) -> str:
    """Names a move by its content: leaving this stage entry for that stage.

    Not workflow.uuid4(): a local activity can commit inside a workflow task the server then
    drops (updates ride on speculative tasks); replay hands the same uuid to a different
    decision. A content key makes that replay either find its own write or fail the
    compare-and-set and adopt the row.
    """
    return f"deal/{campaign_id}/{current.value}@{entered_at.isoformat()}->{target.value}"


def _rejection(exc: Exception, current: Stage) -> ApplicationError:
    if isinstance(exc, TransitionError):
        return ApplicationError(
            str(exc),
            {"current": current.value, "allowed": [s.value for s in exc.allowed]},
            type=FORBIDDEN_TRANSITION,
            non_retryable=True,
        )
    return ApplicationError(str(exc), type=INVALID_REQUEST, non_retryable=True)


@workflow.defn
class DealWorkflow:
    """A deal moving through the pipeline, alive while the deal is open."""

    @workflow.init
    def __init__(self, inp: DealWorkflowInput) -> None:
        self._inp = inp
        self._stage = inp.stage
        self._entered_at = inp.stage_entered_at
        self._lost_reason = inp.lost_reason
        self._stall_notified = inp.stall_notified
        self._moves = 0
        self._total_moves = inp.total_moves
        self._synced = inp.synced
        self._gone = False
        # While a resync re-reads the row, the validator cannot judge a move (it would judge from
        # the stage the row may have left); the handler decides once the row is adopted.
        self._resyncing = 0
        # Stage updates run one at a time: each is decided against the stage the previous
        # one left, so the persisted history is a single chain.
        self._lock = asyncio.Lock()

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Follows the deal until it closes, continuing as new before the history grows large."""
        self._describe()
        if not self._synced:
            await self.sync_with_record()
        while True:
            if self._gone:
                await workflow.wait_condition(workflow.all_handlers_finished)
                return DealWorkflowResult(
                    campaign_id=inp.campaign_id, stage=self._stage, closed_at=workflow.now()
                )
            if is_open(self._stage):
                await self.wait_for_move_or_stall()
            else:
                # A closed deal ends the run, but only once every accepted update has returned.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not is_open(self._stage):
                    return DealWorkflowResult(
                        campaign_id=inp.campaign_id,
                        stage=self._stage,
                        closed_at=self._entered_at,
                        lost_reason=self._lost_reason,
                    )
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry_over())

    async def sync_with_record(self) -> None:
        """Adopts the row's stage entry: whoever started this run may have read a stale row."""
        async with self._lock:
            await self._adopt_record()
            self._synced = True

    @workflow.signal
    async def resync(self) -> None:
        """Re-reads the row and adopts its stage entry and details.

        Sent by the maintenance workflow when the row and this workflow disagree (a stage write
        that committed inside a workflow task the server then lost), by the API when it finds a
        request applied that it stopped waiting for, and by imports that change a deal's value,
        advertiser, show or name.
        """
        await workflow.wait_condition(lambda: self._synced)
        self._resyncing += 1
        try:
            async with self._lock:
                if self._gone or not is_open(self._stage):
                    return
                await self._adopt_record()
        finally:
            self._resyncing -= 1

    async def _adopt_record(self) -> None:
        row = await workflow.execute_local_activity_method(
            DealActivities.load_deal,
            LoadDealInput(tenant_id=self._inp.tenant_id, campaign_id=self._inp.campaign_id),
            start_to_close_timeout=PERSIST_TIMEOUT,
            retry_policy=_PATIENT_RETRY,
        )
        if not row.exists:
            self._gone = True
            return
        assert row.stage is not None and row.stage_entered_at is not None
        if (row.stage, row.stage_entered_at) != (self._stage, self._entered_at):
            self._enter(row.stage, row.stage_entered_at, row.lost_reason)
        self._stall_notified = row.stall_notified
        if row.has_details:
            self._adopt_details(row)
        self._describe()

    def _adopt_details(self, row: LoadDealResult) -> None:
        """Takes the row's name, value, advertiser and show; the search attributes follow."""
        inp = self._inp
        value = row.value_usd if row.value_usd is not None else inp.value_usd
        advertiser_id = row.advertiser_id or inp.advertiser_id
        wanted: dict[str, Any] = {
            "name": row.name if row.name is not None else inp.name,
            "advertiser_id": advertiser_id,
            "advertiser_name": row.advertiser_name or inp.advertiser_name,
            "show_id": row.show_id,
            "show_name": row.show_name,
            "value_usd": value,
        }
        if all(getattr(inp, k) == v for k, v in wanted.items()):
            return
        updates: list[Any] = []
        if value != inp.value_usd:
            updates.append(sa.DEAL_VALUE.value_set(float(value)))
        if advertiser_id != inp.advertiser_id:
            updates.append(sa.ADVERTISER_ID.value_set(advertiser_id))
        if row.show_id != inp.show_id:
            updates.append(sa.SHOW_ID.value_set(row.show_id) if row.show_id else sa.SHOW_ID.value_unset())
        self._inp = inp.model_copy(update=wanted)
        if updates:
            workflow.upsert_search_attributes(updates)

    async def wait_for_move_or_stall(self) -> None:
        """Waits for the next move; if none comes before the stage's limit, reports a stall."""
        entered = self._entered_at

        def moved_or_rolling() -> bool:
            return self._entered_at != entered or self._gone or self._should_continue_as_new()

        limit = stall_limit(self._stage, self._inp.stall_days)
        if self._stall_notified or limit is None:
            await workflow.wait_condition(moved_or_rolling)
            return
        remaining = (entered + limit) - workflow.now()
        if remaining > timedelta(0):
            try:
                await workflow.wait_condition(
                    moved_or_rolling, timeout=remaining, timeout_summary="stall timer"
                )
                return
            except TimeoutError:
                pass
        await self.on_stall(limit)

    async def on_stall(self, limit: timedelta) -> None:
        """Emits deal.stalled for the current stage entry, unless a move got there first."""
        async with self._lock:
            if self._stall_notified or not is_open(self._stage):
                return
            await workflow.execute_local_activity_method(
                DealActivities.record_stall,
                RecordStallInput(
                    tenant_id=self._inp.tenant_id,
                    campaign_id=self._inp.campaign_id,
                    stage=self._stage,
                    stage_entered_at=self._entered_at,
                    limit_days=limit.total_seconds() / 86400,
                    at=workflow.now(),
                ),
                start_to_close_timeout=PERSIST_TIMEOUT,
                retry_policy=_PATIENT_RETRY,
            )
            self._stall_notified = True
            self._describe()

    @workflow.update
    async def change_stage(self, req: ChangeStageInput) -> ChangeStageResult:
        """Moves the deal: decided here, persisted by an activity in one transaction."""
        await workflow.wait_condition(lambda: self._synced)
        if self._gone:
            raise ApplicationError("this deal no longer exists", type=INVALID_REQUEST)
        async with self._lock:
            # A run seeded from a row that moved meanwhile learns the row's stage from the
            # compare-and-set and decides again; a few rounds suffice since only this run writes.
            for _ in range(_MAX_STALE_ROUNDS):
                current = self._stage
                self._check_precondition(req)
                if is_noop(current, req.stage):
                    return ChangeStageResult(changed=False, state=self.state())
                try:
                    check_transition(current, req.stage, req.reason)
                except ValueError as exc:
                    # The validator accepted this against an earlier stage; a move that ran
                    # first (or the row's true stage) made it invalid.
                    raise _rejection(exc, current) from None
                # Moves handled in one workflow task share workflow.now(); a strictly later
                # timestamp keeps (stage, entered_at) unique, which the compare-and-set relies on.
                now = max(workflow.now(), self._entered_at + timedelta(microseconds=1))
                lost_reason = req.reason if req.stage is Stage.LOST else None
                result = await self._persist(
                    DealActivities.record_stage_change,
                    RecordStageChangeInput(
                        tenant_id=self._inp.tenant_id,
                        campaign_id=self._inp.campaign_id,
                        from_stage=current,
                        from_entered_at=self._entered_at,
                        to_stage=req.stage,
                        reason=req.reason,
                        lost_reason=lost_reason,
                        probability=probability(req.stage),
                        at=now,
                        idempotency_key=_move_key(
                            self._inp.campaign_id, current, self._entered_at, req.stage
                        ),
                        request_id=req.request_id,
                    ),
                )
                if result.outcome == "abandoned":
                    raise ApplicationError(
                        "the API gave up on this request before it was written; nothing was changed",
                        type=REQUEST_ABANDONED,
                        non_retryable=True,
                    )
                if result.outcome == "stale":
                    assert result.stage is not None and result.stage_entered_at is not None
                    self._enter(result.stage, result.stage_entered_at, result.lost_reason)
                    continue
                if result.outcome == "already_applied" and req.request_id is not None:
                    # An earlier attempt of this very request committed inside a workflow task
                    # that was lost: the row is the truth, adopt it.
                    assert result.stage is not None and result.stage_entered_at is not None
                    if (result.stage, result.stage_entered_at) != (self._stage, self._entered_at):
                        self._enter(result.stage, result.stage_entered_at, result.lost_reason)
                    self._moves += 1
                    self._total_moves += 1
                    return ChangeStageResult(changed=True, state=self.state())
                if result.outcome == "already_applied" and result.stage_entered_at is not None:
                    now = result.stage_entered_at
                left = self._entered_at
                self._enter(req.stage, now, lost_reason)
                self._moves += 1
                self._total_moves += 1
                move = StageMove(
                    from_stage=current, from_entered_at=left, to_stage=req.stage, at=now, reason=req.reason
                )
                return ChangeStageResult(changed=True, state=self.state(), move=move)
            raise ApplicationError(
                "the deal kept changing underneath this update; retry", type=INVALID_REQUEST
            )

    async def _persist(
        self,
        fn: Callable[[DealActivities, RecordStageChangeInput], Awaitable[RecordStageChangeResult]],
        arg: RecordStageChangeInput,
    ) -> RecordStageChangeResult:
        """Runs the stage write as a local activity: one short transaction on the update's path.

        bench/persist_activity.py measures it against a regular activity by overriding this method
        in a subclass of its own, so no benchmark switch travels in the production input.
        """
        return await workflow.execute_local_activity_method(
            fn, arg, start_to_close_timeout=PERSIST_TIMEOUT, retry_policy=PERSIST_RETRY
        )

    def _enter(self, stage: Stage, at: datetime, lost_reason: str | None) -> None:
        """Adopts a new stage entry and tells the Temporal UI about it."""
        self._stage = stage
        self._entered_at = at
        self._lost_reason = lost_reason
        self._stall_notified = False
        workflow.upsert_search_attributes(
            [sa.DEAL_STAGE.value_set(stage.value), sa.STAGE_ENTERED_AT.value_set(at)]
        )
        self._describe()

    @change_stage.validator
    def validate_change_stage(self, req: ChangeStageInput) -> None:
        """Rejects a forbidden move before anything is written to history."""
        if not self._synced or self._resyncing:
            # The seed may be stale; the handler decides once the row has been re-read.
            return
        self._check_precondition(req)
        try:
            check_transition(self._stage, req.stage, req.reason)
        except ValueError as exc:
            raise _rejection(exc, self._stage) from None

    def _check_precondition(self, req: ChangeStageInput) -> None:
        """If-Match: the move stands only if the deal is still in the stage entry the client saw."""
        if req.expected_stage is None:
            return
        if (req.expected_stage, req.expected_entered_at) != (self._stage, self._entered_at):
            raise ApplicationError(
                f"the deal moved meanwhile: it is now {self._stage.value} "
                f"(since {self._entered_at.isoformat()})",
                {"current": self._stage.value, "stage_entered_at": self._entered_at.isoformat()},
                type=PRECONDITION_FAILED,
                non_retryable=True,
            )

    @workflow.query
    def state(self) -> DealState:
        """Returns the deal as this workflow sees it."""
        return DealState(
            campaign_id=self._inp.campaign_id,
            stage=self._stage,
            probability=probability(self._stage),
            stage_entered_at=self._entered_at,
            lost_reason=self._lost_reason,
            stalled=self._stall_notified,
            moves_this_run=self._moves,
            total_moves=self._total_moves,
            name=self._inp.name,
            advertiser_id=self._inp.advertiser_id,
            show_id=self._inp.show_id,
            value_usd=self._inp.value_usd,
        )

    def _should_continue_as_new(self) -> bool:
        return self._moves >= self._inp.moves_per_run or workflow.info().is_continue_as_new_suggested()

    def _carry_over(self) -> DealWorkflowInput:
        return self._inp.model_copy(
            update={
                "stage": self._stage,
                "stage_entered_at": self._entered_at,
                "lost_reason": self._lost_reason,
                "stall_notified": self._stall_notified,
                "total_moves": self._total_moves,
                "synced": True,
            }
        )

    def _describe(self) -> None:
        since: datetime = self._entered_at
        stalled = " (stalled)" if self._stall_notified else ""
        inp = self._inp
        workflow.set_current_details(
            f"Stage **{self._stage.value}**{stalled} since {since:%Y-%m-%d %H:%M} UTC, "
            f"{probability(self._stage)}% likely\n\n"
            f"{deal_summary(inp.name, inp.advertiser_name, inp.show_name, inp.value_usd)}"
        )
