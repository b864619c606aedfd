"""The incompatible DealWorkflow release (tests/helpers/nondeterministic.py) for an unversioned worker.

The tests' in-process workers are unversioned and the server refuses a versioning behaviour from
one, so this variant names none. Its own module: the sandbox imports a workflow's module, and a
test module's imports (httpx, prometheus_client) are not sandbox-safe.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.deals import DealWorkflowInput, DealWorkflowResult
    from tests.helpers.nondeterministic import IncompatibleDealWorkflow


@workflow.defn(name="DealWorkflow")
class UnversionedIncompatibleDeal(IncompatibleDealWorkflow):
    """DealWorkflow with an unpatched timer before each stage write, no versioning behaviour."""

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """As the incompatible release runs it."""
        return await super().run(inp)
