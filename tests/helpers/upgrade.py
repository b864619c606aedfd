"""The release the upgrade rehearsal ships: v2 of DealWorkflow and IoBookingWorkflow, and the same
changes without their patch guards (the incompatible release replay must catch).

v2 is today's workflows plus three real changes, each behind `workflow.patched`:
- DealWorkflow writes a stage notice (a new activity) after every stage write (`_persist`);
- DealWorkflow's stall rule caps every open stage's limit at 7 days (`wait_for_move_or_stall`),
  for runs that reach the stall timer under v2; a run that started its timer under v1 keeps
  v1's rule (the patch was first asked during replay) until it continues as new;
- IoBookingWorkflow tells the host which units aired (a new activity) after each airing
  (`air_due_units`).

The workflow types stay `DealWorkflow` and `IoBookingWorkflow` (only the Python classes differ),
as a real release would ship them. The activities the v2 changes call, and the gate that holds
an import mid-way, are test activities registered only by the rehearsal's workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from activities.deals import DealActivities
    from domain.deals import (
        DealWorkflowInput,
        DealWorkflowResult,
        RecordStageChangeInput,
        RecordStageChangeResult,
    )
    from domain.imports import RunImportInput, RunImportResult
    from domain.io import IoWorkflowInput, IoWorkflowResult, UnitStatus
    from domain.stages import Stage, stall_limit
    from workflows.deals import DealWorkflow
    from workflows.io import IoBookingWorkflow

# The patch ids of v2. A later release that drops the old branch calls workflow.deprecate_patch
# with the same id; the one after that, once no run holds the marker, drops the call.
STAGE_NOTICE_PATCH = "stage-notice-after-write"
STALL_CAP_PATCH = "stall-limit-cap-7d"
AIR_NOTICE_PATCH = "io-air-notice"

# v2's stall rule: no open stage waits longer than this before deal.stalled.
V2_STALL_CAP = timedelta(days=7)

_NOTICE_TIMEOUT = timedelta(seconds=10)
_NOTICE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5)


class StageNoticeInput(BaseModel):
    """A stage write the v2 deal reports after it committed."""

    tenant_id: str
    campaign_id: str
    from_stage: Stage
    to_stage: Stage


class StageNoticeResult(BaseModel):
    """How many notices the probe holds for this deal, this one included."""

    notices: int


class AirNoticeInput(BaseModel):
    """Units the v2 IO just marked aired."""

    tenant_id: str
    io_id: str
    unit_ids: list[str]


class AirNoticeResult(BaseModel):
    """How many air notices the probe holds for this IO, this one included."""

    notices: int


class ReleaseProbe:
    """The activities v2 adds, recording what they were asked (idempotent per attempt's content)."""

    def __init__(self) -> None:
        self.stage_notices: list[StageNoticeInput] = []
        self.air_notices: list[AirNoticeInput] = []

    @activity.defn(name="record_stage_notice")
    async def record_stage_notice(self, inp: StageNoticeInput) -> StageNoticeResult:
        """Records one stage notice (a retry of the same notice is not counted twice)."""
        if inp not in self.stage_notices:
            self.stage_notices.append(inp)
        return StageNoticeResult(
            notices=sum(1 for n in self.stage_notices if n.campaign_id == inp.campaign_id)
        )

    @activity.defn(name="notify_units_aired")
    async def notify_units_aired(self, inp: AirNoticeInput) -> AirNoticeResult:
        """Records one air notice (a retry of the same notice is not counted twice)."""
        if inp not in self.air_notices:
            self.air_notices.append(inp)
        return AirNoticeResult(notices=sum(1 for n in self.air_notices if n.io_id == inp.io_id))


class ImportGate:
    """The production `load_rows`, held until the test opens the gate (registered on v1 only).

    The import's decisions stay the real ImportWorkflow's; only the moment its row load starts
    is the test's, so the import is provably in flight while v2 becomes current.
    """

    def __init__(self, load: Callable[[RunImportInput], Awaitable[RunImportResult]]) -> None:
        self._load = load
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    @activity.defn(name="load_rows")
    async def load_rows(self, inp: RunImportInput) -> RunImportResult:
        """Waits for the gate (heartbeating, so the import's heartbeat timeout holds), then loads."""
        self.entered.set()
        while not self.opened.is_set():
            activity.heartbeat()
            try:
                await asyncio.wait_for(self.opened.wait(), timeout=0.5)
            except TimeoutError:
                pass
        return await self._load(inp)


@workflow.defn(name="DealWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class DealWorkflowV2(DealWorkflow):
    """Release v2 of DealWorkflow: a stage notice after each write, stall limits capped at 7 days."""

    # False in the incompatible variant: the same changes, shipped without their patch guards.
    _guarded = True

    def _takes_new_path(self, patch_id: str) -> bool:
        return workflow.patched(patch_id) if self._guarded else True

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Runs the deal exactly as DealWorkflow does."""
        return await super().run(inp)

    async def _persist(
        self,
        fn: Callable[[DealActivities, RecordStageChangeInput], Awaitable[RecordStageChangeResult]],
        arg: RecordStageChangeInput,
    ) -> RecordStageChangeResult:
        result = await super()._persist(fn, arg)
        if result.outcome == "applied" and self._takes_new_path(STAGE_NOTICE_PATCH):
            await workflow.execute_activity_method(
                ReleaseProbe.record_stage_notice,
                StageNoticeInput(
                    tenant_id=arg.tenant_id,
                    campaign_id=arg.campaign_id,
                    from_stage=arg.from_stage,
                    to_stage=arg.to_stage,
                ),
                start_to_close_timeout=_NOTICE_TIMEOUT,
                retry_policy=_NOTICE_RETRY,
            )
        return result

    async def wait_for_move_or_stall(self) -> None:
        """DealWorkflow's wait, with v2's stall rule for the runs that reach it under v2."""
        capped = self._takes_new_path(STALL_CAP_PATCH)
        entered = self._entered_at

        def moved_or_rolling() -> bool:
            return self._entered_at != entered or self._gone or self._should_continue_as_new()

        limit = stall_limit(self._stage, self._inp.stall_days)
        if capped and limit is not None:
            limit = min(limit, V2_STALL_CAP)
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


@workflow.defn(name="IoBookingWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class IoBookingWorkflowV2(IoBookingWorkflow):
    """Release v2 of IoBookingWorkflow: the host is told which units aired, after each airing."""

    _guarded = True

    def _takes_new_path(self, patch_id: str) -> bool:
        return workflow.patched(patch_id) if self._guarded else True

    @workflow.run
    async def run(self, inp: IoWorkflowInput) -> IoWorkflowResult:
        """Runs the IO exactly as IoBookingWorkflow does."""
        return await super().run(inp)

    async def air_due_units(self) -> None:
        """Airs what is due as v1 does, then sends the new air notice for what just aired."""
        before = {u.id for u in self._snapshot().units if u.status is UnitStatus.SCHEDULED}
        await super().air_due_units()
        io = self._snapshot()
        aired = [
            u.id for u in io.units if u.id in before and u.status in (UnitStatus.AIRED, UnitStatus.DELIVERED)
        ]
        if aired and self._takes_new_path(AIR_NOTICE_PATCH):
            await workflow.execute_activity_method(
                ReleaseProbe.notify_units_aired,
                AirNoticeInput(tenant_id=io.tenant_id, io_id=io.io_id, unit_ids=aired),
                start_to_close_timeout=_NOTICE_TIMEOUT,
                retry_policy=_NOTICE_RETRY,
            )


@workflow.defn(name="DealWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class DealWorkflowV2Unguarded(DealWorkflowV2):
    """The incompatible release: DealWorkflowV2's changes without `workflow.patched`."""

    _guarded = False

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Runs the deal as DealWorkflowV2 does, taking the new paths unconditionally."""
        return await super().run(inp)


@workflow.defn(name="IoBookingWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class IoBookingWorkflowV2Unguarded(IoBookingWorkflowV2):
    """The incompatible release: IoBookingWorkflowV2's air notice without `workflow.patched`."""

    _guarded = False

    @workflow.run
    async def run(self, inp: IoWorkflowInput) -> IoWorkflowResult:
        """Runs the IO as IoBookingWorkflowV2 does, sending the air notice unconditionally."""
        return await super().run(inp)


@workflow.defn(name="DealWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class DealWorkflowV2StallUnguarded(DealWorkflowV2):
    """Only v2's stall rule shipped without its guard: a changed timer duration, same commands."""

    def _takes_new_path(self, patch_id: str) -> bool:
        return True if patch_id == STALL_CAP_PATCH else workflow.patched(patch_id)

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Runs the deal as DealWorkflowV2 does, with the 7-day cap unconditionally."""
        return await super().run(inp)
