"""MatchRecalculationWorkflow: one recalculation of a tenant's matches; and its Temporal Schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

with workflow.unsafe.imports_passed_through():
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionExecutionStartWorkflow,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleDescription,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleState,
        ScheduleUpdate,
        ScheduleUpdateInput,
        WorkflowExecutionDescription,
        WorkflowExecutionStatus,
    )
    from temporalio.service import RPCError, RPCStatusCode

    from activities.matching import MatchActivities
    from domain.matching import MatchRecalcInput, MatchRecalcResult, RecalculateInput
    from workflows import search_attributes as sa


def match_workflow_id(tenant_id: str) -> str:
    """The id of a tenant's recalculation: one at a time, so concurrent requests join it."""
    return f"match/{tenant_id}"


def match_schedule_id(tenant_id: str) -> str:
    """The id of a tenant's recalculation schedule (the UI's Schedules tab lists it)."""
    return f"match-recalc/{tenant_id}"


def _search_attributes(tenant_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([SearchAttributePair(sa.TENANT_ID, tenant_id)])


def match_start_options(tenant_id: str, task_queue: str, trigger: str) -> dict[str, Any]:
    """Start options of an on-demand recalculation: joins the running one instead of a second."""
    return {
        "id": match_workflow_id(tenant_id),
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": _search_attributes(tenant_id),
        "static_summary": f"Match recalculation ({trigger})",
    }


async def start_recalculation(client: Client, tenant_id: str, task_queue: str, trigger: str) -> Any:
    """Starts the tenant's recalculation, or returns the handle of the one already running.

    Already running means an on-demand run (same id: USE_EXISTING joins it) or one the
    tenant's schedule started (`match/{tenant}-{time}`), so asking never adds a second run.
    """
    scheduled = await running_scheduled_runs(client, tenant_id)
    if scheduled:
        return client.get_workflow_handle(scheduled[0].id, run_id=scheduled[0].run_id)
    return await client.start_workflow(
        MatchRecalculationWorkflow.run,
        MatchRecalcInput(tenant_id=tenant_id, trigger=trigger),
        **match_start_options(tenant_id, task_queue, trigger),
    )


async def recalculate_after_change(client: Client, tenant_id: str, task_queue: str, trigger: str) -> Any:
    """Rows the scores read have changed (an import completed): makes sure a ranking reflects it.

    Signal-with-start: with no on-demand run going, one starts (the signal changes nothing);
    a run already going is told, and scores once more when it is done if it had begun.
    """
    return await client.start_workflow(
        MatchRecalculationWorkflow.run,
        MatchRecalcInput(tenant_id=tenant_id, trigger=trigger),
        start_signal="rows_changed",
        start_signal_args=[trigger],
        **match_start_options(tenant_id, task_queue, trigger),
    )


async def running_scheduled_runs(
    client: Client, tenant_id: str, schedule: ScheduleDescription | None = None
) -> list[WorkflowExecutionDescription]:
    """The runs the tenant's schedule started that are still running (none without a schedule).

    The schedule's own list of running actions learns of a finished run a little late, so each
    is confirmed with a describe. `schedule`: its description, when the caller has it already.
    """
    desc = schedule
    if desc is None:
        try:
            desc = await client.get_schedule_handle(match_schedule_id(tenant_id)).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return []
            raise
    running = []
    for action in desc.info.running_actions:
        if not isinstance(action, ScheduleActionExecutionStartWorkflow):
            continue
        try:
            run = await client.get_workflow_handle(
                action.workflow_id, run_id=action.first_execution_run_id
            ).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        if run.status == WorkflowExecutionStatus.RUNNING:
            running.append(run)
    return running


def _schedule(tenant_id: str, task_queue: str, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            MatchRecalculationWorkflow.run,
            MatchRecalcInput(tenant_id=tenant_id, trigger="schedule"),
            id=match_workflow_id(tenant_id),
            task_queue=task_queue,
            typed_search_attributes=_search_attributes(tenant_id),
            static_summary="Match recalculation (schedule)",
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A recalculation still running when the next is due makes the next one pointless.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note="Recalculates this tenant's advertiser-show matches (sponsorflow)."),
    )


async def ensure_match_schedule(client: Client, tenant_id: str, task_queue: str, every: timedelta) -> bool:
    """Creates the tenant's schedule, or brings an existing one to this spec; True if created."""
    wanted = _schedule(tenant_id, task_queue, every)
    try:
        await client.create_schedule(match_schedule_id(tenant_id), wanted)
        return True
    except ScheduleAlreadyRunningError:

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=wanted)

        await client.get_schedule_handle(match_schedule_id(tenant_id)).update(update)
        return False


@workflow.defn
class MatchRecalculationWorkflow:
    """Scores every advertiser-show pair of one tenant and swaps in the new ranking.

    Rows the scores read may change while a run scores (an import of shows, advertisers or
    downloads completes): the import signals `rows_changed`, and a run that had already begun
    loading runs once more when it is done (continue-as-new), so the ranking ends up reflecting
    the change. Any number of such signals during one run cause one more run, not many.
    """

    def __init__(self) -> None:
        self._loading_began = False
        self._changed_by: str | None = None

    @workflow.signal
    def rows_changed(self, trigger: str) -> None:
        """Shows, advertisers or downloads changed; a run that began before needs another."""
        if self._loading_began and self._changed_by is None:
            self._changed_by = trigger

    @workflow.run
    async def run(self, inp: MatchRecalcInput) -> MatchRecalcResult:
        """One heartbeating activity does the work; its result is the run's result."""
        info = workflow.info()
        workflow.set_current_details(f"Scoring every advertiser-show pair ({inp.trigger})")
        # A signal that started this run (or came with its first task) is already covered.
        self._loading_began = True
        result = await workflow.execute_activity_method(
            MatchActivities.recalculate_matches,
            RecalculateInput(
                tenant_id=inp.tenant_id,
                run_key=f"{info.workflow_id}/{info.run_id}",
                trigger=inp.trigger,
                top_n=inp.top_n,
                chunk_advertisers=inp.chunk_advertisers,
            ),
            start_to_close_timeout=timedelta(hours=2),
            # A worker that dies mid-scoring is noticed within two minutes; the retry starts over.
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=10),
        )
        workflow.set_current_details(
            f"{result.pairs_scored:,} pairs scored, {result.pairs_excluded:,} excluded by brand safety, "
            f"{result.matches_written:,} matches written (generation {result.generation}) "
            f"in {result.duration_s:.1f}s"
        )
        if self._changed_by is not None:
            # The features may predate the change: score once more, in a fresh history.
            workflow.continue_as_new(inp.model_copy(update={"trigger": self._changed_by}))
        return result
