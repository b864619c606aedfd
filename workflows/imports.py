"""ImportWorkflow: one spreadsheet import (CSV or XLSX), from the stored upload to its final counts.

Its workflow type is still `CsvImportWorkflow`, the name recorded histories, the Temporal UI and
`temporal workflow list` queries carry (ARCHITECTURE section 6); only the Python class is named
for what it does.

The file never passes through the workflow: it holds the import's id, and the activity streams
the upload out of PostgreSQL, committing each chunk together with its checkpoint.

Every import ends with a true status: a cancelled workflow marks its import `cancelled` before
it closes; a terminated or timed-out one cannot run code, so whoever looks next (the status
API, the maintenance round's `repair_stuck_imports`) sees the closed workflow and marks the
import `failed`. An import closed from outside is a fence: a workflow that meets it imports
nothing more.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.imports import ImportActivities
    from domain.imports import (
        FILE_ERROR,
        IMPORT_CLOSED,
        ImportWorkflowInput,
        ImportWorkflowResult,
        MarkImportInput,
        RunImportInput,
        StartDealWorkflowsInput,
        TriggerMatchesInput,
    )

_SHORT = timedelta(seconds=30)
_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


# Imports that change what matchmaking scores.
_MATCH_FEATURE_KINDS = ("shows", "advertisers", "show_downloads")


def _file_error(exc: ActivityError) -> str | None:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == FILE_ERROR:
        return cause.message
    return None


def _closed_from_outside(exc: ActivityError) -> ImportWorkflowResult | None:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == IMPORT_CLOSED:
        status = cause.details[0] if cause.details else "failed"
        return ImportWorkflowResult.model_validate({"status": status, "error": cause.message})
    return None


@workflow.defn(name="CsvImportWorkflow")
class ImportWorkflow:
    """Runs one import: mark running, load in chunks, start deal workflows, report."""

    @workflow.run
    async def run(self, inp: ImportWorkflowInput) -> ImportWorkflowResult:
        """The happy path reads top to bottom; a file-level problem ends in `failed`.

        Cancelled (at any step): the import is marked `cancelled` with what committed before,
        by an activity that runs after the cancellation, and the workflow closes as cancelled.
        """
        try:
            return await self._run(inp)
        except BaseException as exc:
            if not is_cancelled_exception(exc):
                raise
            await workflow.execute_activity_method(
                ImportActivities.mark_import,
                MarkImportInput(tenant_id=inp.tenant_id, import_id=inp.import_id, status="cancelled"),
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
            )
            raise

    async def _run(self, inp: ImportWorkflowInput) -> ImportWorkflowResult:
        mark = MarkImportInput(tenant_id=inp.tenant_id, import_id=inp.import_id, status="running")
        marked = await workflow.execute_activity_method(
            ImportActivities.mark_import, mark, start_to_close_timeout=_SHORT, retry_policy=_RETRY
        )
        if marked.status in ("failed", "cancelled"):
            # Closed before this run began (the API fenced an ambiguous start it answered 503
            # for, or a repair closed it): nothing is imported.
            return ImportWorkflowResult(status=marked.status, error=marked.error)
        try:
            counts = await workflow.execute_activity_method(
                ImportActivities.load_rows,
                RunImportInput(
                    tenant_id=inp.tenant_id,
                    import_id=inp.import_id,
                    kind=inp.kind,
                    chunk_rows=inp.chunk_rows,
                    count_workflows_to_start=inp.kind == "campaigns" and inp.start_deal_workflows,
                ),
                start_to_close_timeout=timedelta(hours=6),
                # A killed worker is noticed within the heartbeat timeout; the retry resumes
                # from the last committed chunk.
                heartbeat_timeout=timedelta(seconds=inp.heartbeat_seconds),
                retry_policy=_RETRY,
            )
        except ActivityError as exc:
            closed = _closed_from_outside(exc)
            if closed is not None:
                return closed
            reason = _file_error(exc)
            if reason is None:
                raise
            await workflow.execute_activity_method(
                ImportActivities.mark_import,
                mark.model_copy(update={"status": "failed", "error": reason}),
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
            )
            return ImportWorkflowResult(status="failed", error=reason)

        started = 0
        if inp.kind == "campaigns" and inp.start_deal_workflows:
            result = await workflow.execute_activity_method(
                ImportActivities.start_deal_workflows,
                StartDealWorkflowsInput(
                    tenant_id=inp.tenant_id,
                    import_id=inp.import_id,
                    task_queue=workflow.info().task_queue,
                ),
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=_RETRY,
            )
            started = result.started
        status = "completed_with_errors" if counts.rows_failed else "completed"
        done = await workflow.execute_activity_method(
            ImportActivities.mark_import,
            mark.model_copy(update={"status": status}),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )
        if done.status in ("failed", "cancelled"):
            return ImportWorkflowResult(status=done.status, error=done.error)
        changed = counts.rows_inserted + counts.rows_updated
        if (
            inp.trigger_matches
            and inp.kind in _MATCH_FEATURE_KINDS
            and changed
            and workflow.patched("match-recalculation-after-import")
        ):
            await workflow.execute_activity_method(
                ImportActivities.trigger_match_recalculation,
                TriggerMatchesInput(tenant_id=inp.tenant_id, task_queue=workflow.info().task_queue),
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
            )
        return ImportWorkflowResult(
            status=status,
            rows_processed=counts.rows_processed,
            rows_inserted=counts.rows_inserted,
            rows_updated=counts.rows_updated,
            rows_failed=counts.rows_failed,
            workflows_started=started,
            workflows_resynced=counts.workflows_resynced,
        )
