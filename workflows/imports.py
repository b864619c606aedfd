"""CsvImportWorkflow: one spreadsheet import, from the stored upload to its final counts.

The file never passes through the workflow: it holds the import's id, and the activity streams
the upload out of PostgreSQL, committing each chunk together with its checkpoint.

Every import ends with a true status: a cancelled workflow marks its import `cancelled` before
it closes; a terminated or timed-out one cannot run code, so whoever looks next (the status
API, the maintenance round's `repair_stuck_imports`) sees the closed workflow and marks the
import `failed`. An import closed from outside is a fence: a workflow that meets it imports
nothing more.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode

    from activities.imports import ImportActivities
    from domain.etl import (
        FILE_ERROR,
        IMPORT_CLOSED,
        ClosedAs,
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


def _closed_from_outside(exc: ActivityError) -> CsvImportResult | None:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == IMPORT_CLOSED:
        status = cause.details[0] if cause.details else "failed"
        return CsvImportResult.model_validate({"status": status, "error": cause.message})
    return None


@workflow.defn
class CsvImportWorkflow:
    """Runs one import: mark running, load in chunks, start deal workflows, report."""

    @workflow.run
    async def run(self, inp: CsvImportInput) -> CsvImportResult:
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

    async def _run(self, inp: CsvImportInput) -> CsvImportResult:
        mark = MarkImportInput(tenant_id=inp.tenant_id, import_id=inp.import_id, status="running")
        marked = await workflow.execute_activity_method(
            ImportActivities.mark_import, mark, start_to_close_timeout=_SHORT, retry_policy=_RETRY
        )
        if marked.status in ("failed", "cancelled"):
            # Closed before this run began (the API fenced an ambiguous start it answered 503
            # for, or a repair closed it): nothing is imported.
            return CsvImportResult(status=marked.status, error=marked.error)
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
        done = await workflow.execute_activity_method(
            ImportActivities.mark_import,
            mark.model_copy(update={"status": status}),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )
        if done.status in ("failed", "cancelled"):
            return CsvImportResult(status=done.status, error=done.error)
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
            workflows_resynced=counts.workflows_resynced,
        )


# Outside the sandbox: starting an import and learning how its workflow ended.

_DESCRIBE_TIMEOUT = timedelta(seconds=5)
# What a call to an unreachable Temporal raises: an RPC error, or, from a client that connects
# lazily (the API's), a RuntimeError from the connection attempt (then nothing was sent).
TEMPORAL_ERRORS: tuple[type[Exception], ...] = (RPCError, RuntimeError)
_CLOSED_AS: dict[WorkflowExecutionStatus, ClosedAs] = {
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.FAILED: "failed",
}


async def import_workflow_closure(client: Client, workflow_id: str) -> tuple[ClosedAs, str | None] | None:
    """How an import's workflow ended, if it ended without finishing its import; else None.

    None: running, completed (it marked its import itself) or continued. `not_found`: Temporal
    has no such workflow. `failed` comes with the failure's message. RPC errors other than
    NOT_FOUND (and TEMPORAL_ERRORS) propagate: then nobody knows, and nothing may be decided.
    """
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe(rpc_timeout=_DESCRIBE_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return ("not_found", None)
        raise
    closed_as = _CLOSED_AS.get(desc.status) if desc.status is not None else None
    if closed_as is None:
        return None
    detail = None
    if closed_as == "failed":
        try:
            await handle.result(rpc_timeout=_DESCRIBE_TIMEOUT)
        except WorkflowFailureError as exc:
            detail = str(exc.cause or exc)[:300]
        except Exception:  # noqa: BLE001 - the message is a nicety; the status is what counts
            detail = None
    return (closed_as, detail)


# gRPC answers after which the start certainly did not happen, and retrying will not help.
_REFUSED = {
    RPCStatusCode.INVALID_ARGUMENT,
    RPCStatusCode.NOT_FOUND,
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.FAILED_PRECONDITION,
    RPCStatusCode.OUT_OF_RANGE,
    RPCStatusCode.UNIMPLEMENTED,
}
# A definite refusal that may pass: retried within the budget.
_BUSY = {RPCStatusCode.RESOURCE_EXHAUSTED}

StartVerdict = Literal["started", "not_started", "unknown"]


async def start_import_workflow(
    client: Client,
    inp: CsvImportInput,
    *,
    task_queue: str,
    summary: str,
    budget: timedelta,
    attempt_timeout: timedelta = timedelta(seconds=5),
) -> tuple[StartVerdict, str]:
    """Starts an import's workflow, retrying an ambiguous start within `budget`; says what is true.

    Every attempt is the same start: same workflow id, `USE_EXISTING` (a running workflow from
    an earlier attempt is the answer) and `REJECT_DUPLICATE` (one that already finished raises
    WorkflowAlreadyStarted, which also means it started), so retrying never starts two runs.
    A timeout, UNAVAILABLE or a cancelled call may have landed; after such an attempt only a
    describe of the workflow decides. Returns:
    - `started`: an attempt succeeded, or the workflow was found (running or closed);
    - `not_started`: refused outright, or after the budget Temporal does not know the workflow;
    - `unknown`: Temporal did not answer the describe either.
    The caller fences `not_started` and `unknown` alike (marks the import failed unless a
    workflow already moved it to running), which makes "not started" true for good.
    """
    deadline = time.monotonic() + budget.total_seconds()
    delay = 0.2
    ambiguous = False
    last = "no attempt was made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            await asyncio.wait_for(
                client.start_workflow(
                    CsvImportWorkflow.run,
                    inp,
                    id=import_workflow_id(inp.tenant_id, inp.import_id),
                    task_queue=task_queue,
                    static_summary=summary,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    rpc_timeout=min(attempt_timeout, timedelta(seconds=remaining)),
                ),
                timeout=remaining,
            )
            return ("started", "started")
        except WorkflowAlreadyStartedError:
            return ("started", "an earlier attempt started it")
        except RPCError as exc:
            last = f"Temporal answered {exc.status.name if exc.status else 'an error'}: {exc.message}"
            if exc.status in _REFUSED:
                if not ambiguous:
                    return ("not_started", last)
                break
            if exc.status not in _BUSY:
                ambiguous = True
        except TimeoutError:
            ambiguous = True
            last = "Temporal did not answer in time"
        except RuntimeError as exc:  # the lazy client could not connect: nothing was sent
            last = f"Temporal is unreachable: {str(exc)[:200]}"
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)
    try:
        await client.get_workflow_handle(import_workflow_id(inp.tenant_id, inp.import_id)).describe(
            rpc_timeout=_DESCRIBE_TIMEOUT
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return ("not_started", last)
        return ("unknown", f"{last}; describing the workflow failed too")
    except RuntimeError:
        return ("unknown", f"{last}; describing the workflow failed too")
    return ("started", "found after an ambiguous start")
