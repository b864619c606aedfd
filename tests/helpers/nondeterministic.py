"""A deliberately incompatible DealWorkflow: the release that should never have shipped.

It waits on a timer before every stage write, unguarded by `workflow.patched`: a deal that moved
under the real DealWorkflow has a local-activity marker where this variant's replay asks for a
timer, so its next workflow task fails with a non-determinism error. Registered under the type
name DealWorkflow, only by tests/integration/test_worker_versioning.py, on its own task queue (as
bench/regular_write.py subclasses DealWorkflow for its benchmark).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from activities.deals import DealActivities
    from domain.deals import (
        DealWorkflowInput,
        DealWorkflowResult,
        RecordStageChangeInput,
        RecordStageChangeResult,
    )
    from workflows.deals import DealWorkflow


@workflow.defn(name="DealWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class IncompatibleDealWorkflow(DealWorkflow):
    """DealWorkflow with an unpatched timer before each stage write."""

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Runs the deal as DealWorkflow does, but for the timer."""
        return await super().run(inp)

    async def _persist(
        self,
        fn: Callable[[DealActivities, RecordStageChangeInput], Awaitable[RecordStageChangeResult]],
        arg: RecordStageChangeInput,
    ) -> RecordStageChangeResult:
        await workflow.sleep(timedelta(milliseconds=10))
        return await super()._persist(fn, arg)
