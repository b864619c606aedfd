"""CsvImportWorkflow: one spreadsheet import, from the stored upload to its final counts.

The file never passes through the workflow: it holds the import's id, and the activity streams
the upload out of PostgreSQL, committing each chunk together with its checkpoint.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.imports import ImportActivities
    from domain.etl import (
        FILE_ERROR,
        CsvImportInput,
        CsvImportResult,
        MarkImportInput,
        RunImportInput,
        StartDealWorkflowsInput,
        TriggerMatchesInput,
    )

_SHORT = timedelta(seconds=30)
_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


# Imports that change what matchmaking scores.
_MATCH_FEATURE_KINDS = ("shows", "advertisers", "show_downloads")


def import_workflow_id(tenant_id: str, import_id: str) -> str:
    """Returns the workflow id of an import (the tenant is part of it)."""
    return f"import/{tenant_id}/{import_id}"


def _file_error(exc: ActivityError) -> str | None:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == FILE_ERROR:
        return cause.message
    return None


@workflow.defn
class CsvImportWorkflow:
    """Runs one import: mark running, load in chunks, start deal workflows, report."""

    @workflow.run
    async def run(self, inp: CsvImportInput) -> CsvImportResult:
        """The happy path reads top to bottom; a file-level problem ends in `failed`."""
        mark = MarkImportInput(tenant_id=inp.tenant_id, import_id=inp.import_id, status="running")
        await workflow.execute_activity_method(
            ImportActivities.mark_import, mark, start_to_close_timeout=_SHORT, retry_policy=_RETRY
        )
        try:
            counts = await workflow.execute_activity_method(
                ImportActivities.load_rows,
                RunImportInput(
                    tenant_id=inp.tenant_id,
                    import_id=inp.import_id,
                    kind=inp.kind,
                    chunk_rows=inp.chunk_rows,
                ),
                start_to_close_timeout=timedelta(hours=6),
                # A killed worker is noticed within the heartbeat timeout; the retry resumes
                # from the last committed chunk.
                heartbeat_timeout=timedelta(seconds=inp.heartbeat_seconds),
                retry_policy=_RETRY,
            )
        except ActivityError as exc:
            reason = _file_error(exc)
            if reason is None:
                raise
            await workflow.execute_activity_method(
                ImportActivities.mark_import,
                mark.model_copy(update={"status": "failed", "error": reason}),
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
            )
            return CsvImportResult(status="failed", error=reason)

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
        await workflow.execute_activity_method(
            ImportActivities.mark_import,
            mark.model_copy(update={"status": status}),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )
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
        return CsvImportResult(
            status=status,
            rows_processed=counts.rows_processed,
            rows_inserted=counts.rows_inserted,
            rows_updated=counts.rows_updated,
            rows_failed=counts.rows_failed,
            workflows_started=started,
        )
