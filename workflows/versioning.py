"""Each workflow's versioning behaviour, and the classes a versioned worker registers.

A versioned worker (worker.build_worker with SPONSORFLOW_WORKER_VERSIONING on) is one version of
the Worker Deployment: every workflow it runs declares how it moves between versions.

- PINNED, the short ones: an import (hours at most) and a match recalculation (one scoring run,
  continuing as new at most once per change) finish on the build they started on, so changing
  them needs no patch; the previous build keeps running until its pinned runs have drained.
- AUTO_UPGRADE, the long ones: a deal lives for weeks, an IO for months, the maintenance
  singleton forever (pinned, it would keep the build that started it alive for as long, since
  continue-as-new inherits a pinned version). Their next workflow task after a new version
  becomes current runs on the new build, so a change to them must replay their old histories:
  `workflow.patched` / `workflow.deprecate_patch` (README "Releasing a workflow change").

The behaviour lives on these subclasses, not on the classes' own @workflow.defn, because the
server refuses a workflow task completion that names a versioning behaviour from a worker that is
not versioned, and the tests' in-process workers are not. Each subclass registers under its base
class's type name and only delegates `run`, so its commands (and its histories) are the base's.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from domain.deals import DealWorkflowInput, DealWorkflowResult
    from domain.imports import ImportWorkflowInput, ImportWorkflowResult
    from domain.io import IoWorkflowInput, IoWorkflowResult
    from domain.maintenance import MaintenanceInput
    from domain.matching import MatchRecalcInput, MatchRecalcResult
    from domain.webhooks import WebhookEndpointInput, WebhookEndpointResult

from workflows.deals import DealWorkflow
from workflows.imports import ImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.matching import MatchRecalculationWorkflow
from workflows.webhooks import WebhookEndpointWorkflow

AUTO_UPGRADE = VersioningBehavior.AUTO_UPGRADE
PINNED = VersioningBehavior.PINNED


@workflow.defn(name="DealWorkflow", versioning_behavior=AUTO_UPGRADE)
class VersionedDealWorkflow(DealWorkflow):
    """DealWorkflow on a versioned worker: moves to each new current version (weeks-long)."""

    @workflow.run
    async def run(self, inp: DealWorkflowInput) -> DealWorkflowResult:
        """Runs the deal exactly as DealWorkflow does."""
        return await super().run(inp)


@workflow.defn(name="IoBookingWorkflow", versioning_behavior=AUTO_UPGRADE)
class VersionedIoBookingWorkflow(IoBookingWorkflow):
    """IoBookingWorkflow on a versioned worker: moves to each new current version (months-long)."""

    @workflow.run
    async def run(self, inp: IoWorkflowInput) -> IoWorkflowResult:
        """Runs the IO exactly as IoBookingWorkflow does."""
        return await super().run(inp)


@workflow.defn(name="MaintenanceWorkflow", versioning_behavior=AUTO_UPGRADE)
class VersionedMaintenanceWorkflow(MaintenanceWorkflow):
    """MaintenanceWorkflow on a versioned worker: the singleton follows the current version."""

    @workflow.run
    async def run(self, inp: MaintenanceInput) -> None:
        """Runs the rounds exactly as MaintenanceWorkflow does."""
        await super().run(inp)


@workflow.defn(name="CsvImportWorkflow", versioning_behavior=PINNED)
class VersionedImportWorkflow(ImportWorkflow):
    """ImportWorkflow on a versioned worker: an import finishes on the build it started on."""

    @workflow.run
    async def run(self, inp: ImportWorkflowInput) -> ImportWorkflowResult:
        """Runs the import exactly as ImportWorkflow does."""
        return await super().run(inp)


@workflow.defn(name="MatchRecalculationWorkflow", versioning_behavior=PINNED)
class VersionedMatchRecalculationWorkflow(MatchRecalculationWorkflow):
    """MatchRecalculationWorkflow on a versioned worker: a recalculation stays on its build."""

    @workflow.run
    async def run(self, inp: MatchRecalcInput) -> MatchRecalcResult:
        """Runs the recalculation exactly as MatchRecalculationWorkflow does."""
        return await super().run(inp)


@workflow.defn(name="WebhookEndpointWorkflow", versioning_behavior=AUTO_UPGRADE)
class VersionedWebhookEndpointWorkflow(WebhookEndpointWorkflow):
    """WebhookEndpointWorkflow on a versioned worker: an endpoint's loop follows the current version."""

    @workflow.run
    async def run(self, inp: WebhookEndpointInput) -> WebhookEndpointResult:
        """Delivers exactly as WebhookEndpointWorkflow does."""
        return await super().run(inp)


# Each production workflow class -> what a versioned worker registers in its place.
VERSIONED: dict[type, type] = {
    DealWorkflow: VersionedDealWorkflow,
    IoBookingWorkflow: VersionedIoBookingWorkflow,
    MaintenanceWorkflow: VersionedMaintenanceWorkflow,
    ImportWorkflow: VersionedImportWorkflow,
    MatchRecalculationWorkflow: VersionedMatchRecalculationWorkflow,
    WebhookEndpointWorkflow: VersionedWebhookEndpointWorkflow,
}

# The behaviour of each workflow type, as ops see it (TemporalWorkflowVersioningBehavior).
BEHAVIOURS: dict[str, VersioningBehavior] = {
    "DealWorkflow": AUTO_UPGRADE,
    "IoBookingWorkflow": AUTO_UPGRADE,
    "MaintenanceWorkflow": AUTO_UPGRADE,
    "CsvImportWorkflow": PINNED,
    "MatchRecalculationWorkflow": PINNED,
    "WebhookEndpointWorkflow": AUTO_UPGRADE,
}


def versioned(cls: type) -> type:
    """The class a versioned worker registers for `cls` (a class not listed here is kept as is:
    a test's or a release's variant that names its own behaviour)."""
    return VERSIONED.get(cls, cls)
