"""DealWorkflow with its stage write as a regular activity: the anchor of bench/persist_activity.

Production writes the stage as a local activity (workflows/deals.py, `_persist`). This subclass,
registered only by the benchmark and the test that the regular-activity write also writes once,
overrides that one method; everything else (handlers, validator, continue-as-new) is inherited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.deals import DealActivities
    from domain.deals import (
        DealWorkflowInput,
        DealWorkflowResult,
        RecordStageChangeInput,
        RecordStageChangeResult,
    )
    from workflows.deals import PERSIST_RETRY, PERSIST_TIMEOUT, DealWorkflow


@workflow.defn(name="BenchDealWorkflowRegularWrite")
class DealWorkflowRegularWrite(DealWorkflow):
    """A DealWorkflow whose stage write is a regular activity (the round trip through matching)."""

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Runs the deal exactly as DealWorkflow does."""
        return await super().run(inp)

    async def _persist(
        self,
        fn: Callable[[DealActivities, RecordStageChangeInput], Awaitable[RecordStageChangeResult]],
        arg: RecordStageChangeInput,
    ) -> RecordStageChangeResult:
        return await workflow.execute_activity_method(
            fn, arg, start_to_close_timeout=PERSIST_TIMEOUT, retry_policy=PERSIST_RETRY
        )
