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
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleState,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )

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
    """Starts the tenant's recalculation, or returns the handle of the one already running."""
    return await client.start_workflow(
        MatchRecalculationWorkflow.run,
        MatchRecalcInput(tenant_id=tenant_id, trigger=trigger),
        **match_start_options(tenant_id, task_queue, trigger),
    )


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
    """Scores every advertiser-show pair of one tenant and swaps in the new ranking."""

    @workflow.run
    async def run(self, inp: MatchRecalcInput) -> MatchRecalcResult:
        """One heartbeating activity does the work; its result is the run's result."""
        info = workflow.info()
        workflow.set_current_details(f"Scoring every advertiser-show pair ({inp.trigger})")
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
        return result
