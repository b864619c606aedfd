"""MatchRecalculationWorkflow: one recalculation of a tenant's matches; and its Temporal Schedule."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

with workflow.unsafe.imports_passed_through():
    from temporalio.api.common.v1 import Payload
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


_SCHEDULE_SUMMARY = "Match recalculation (schedule)"
_MAX_JITTER = timedelta(minutes=5)
_CATCHUP_WINDOW = timedelta(hours=1)


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


def schedule_offset(tenant_id: str, every: timedelta) -> timedelta:
    """Where in each interval this tenant's recalculation falls: a stable hash into [0, every).

    An interval spec counts from the epoch, so without an offset every tenant's schedule
    would fire at the same instant (00:00 UTC for a daily one).
    """
    period_s = max(int(every.total_seconds()), 1)
    digest = hashlib.sha256(f"match-recalc/{tenant_id}".encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % period_s)


def schedule_jitter(every: timedelta) -> timedelta:
    """Random delay added to each action: a tenth of the interval, at most five minutes."""
    return min(every / 10, _MAX_JITTER)


def _schedule(tenant_id: str, task_queue: str, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            MatchRecalculationWorkflow.run,
            MatchRecalcInput(tenant_id=tenant_id, trigger="schedule"),
            id=match_workflow_id(tenant_id),
            task_queue=task_queue,
            typed_search_attributes=_search_attributes(tenant_id),
            static_summary=_SCHEDULE_SUMMARY,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=every, offset=schedule_offset(tenant_id, every))],
            jitter=schedule_jitter(every),
        ),
        policy=SchedulePolicy(
            # A recalculation still running when the next is due makes the next one pointless.
            overlap=ScheduleOverlapPolicy.SKIP,
            # After a longer outage, the missed runs are skipped (the next one is due soon
            # enough) instead of every tenant firing its backlog at once when Temporal returns.
            # (Temporal's floor for a catch-up window is 10 s.)
            catchup_window=max(min(every, _CATCHUP_WINDOW), timedelta(seconds=10)),
        ),
        state=ScheduleState(note="Recalculates this tenant's advertiser-show matches (sponsorflow)."),
    )


ScheduleChange = Literal["created", "updated", "unchanged"]


async def _owned(client: Client, schedule: Schedule) -> tuple[Any, ...]:
    """What sponsorflow owns of a schedule (spec, action, policy), in comparable form.

    The state (paused, note, remaining actions) is the operator's and is left out. A described
    schedule carries its workflow input and summary as payloads; they are decoded here.
    """
    action = schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow):
        return ("not a workflow start",)
    args: list[Any] = list(action.args)
    summary: Any = action.static_summary
    try:
        if args and isinstance(args[0], Payload):
            args = await client.data_converter.decode(args, [MatchRecalcInput] * len(args))
        if isinstance(summary, Payload):
            summary = (await client.data_converter.decode([summary], [str]))[0]
    except Exception:  # noqa: BLE001 - an input we cannot read is an input to replace
        args = ["undecodable"]
    spec = schedule.spec
    return (
        action.workflow,
        action.id,
        action.task_queue,
        [a.model_dump() if isinstance(a, MatchRecalcInput) else a for a in args],
        summary,
        sorted((p.key.name, p.value) for p in action.typed_search_attributes),
        (action.execution_timeout, action.run_timeout, action.task_timeout, action.retry_policy),
        [(i.every, i.offset or timedelta(0)) for i in spec.intervals],
        (list(spec.calendars), list(spec.cron_expressions), list(spec.skip)),
        (spec.start_at, spec.end_at, spec.jitter or timedelta(0), spec.time_zone_name or None),
        (schedule.policy.overlap, schedule.policy.catchup_window, schedule.policy.pause_on_failure),
    )


async def ensure_match_schedule(
    client: Client, tenant_id: str, task_queue: str, every: timedelta
) -> ScheduleChange:
    """Creates the tenant's schedule, or brings what we own of an existing one to this config.

    Only the spec, the action and the policy are ours: the state an operator set (paused, its
    note, limited actions) is kept, and when nothing of ours differs nothing is written (one
    describe, no update), so running this on every maintenance round costs a read per tenant.
    """
    wanted = _schedule(tenant_id, task_queue, every)
    try:
        await client.create_schedule(match_schedule_id(tenant_id), wanted)
        return "created"
    except ScheduleAlreadyRunningError:
        pass
    wanted_owned = await _owned(client, wanted)
    changed = False

    async def update(inp: ScheduleUpdateInput) -> ScheduleUpdate | None:
        nonlocal changed
        current = inp.description.schedule
        if await _owned(client, current) == wanted_owned:
            changed = False
            return None
        changed = True
        return ScheduleUpdate(
            schedule=Schedule(
                action=wanted.action, spec=wanted.spec, policy=wanted.policy, state=current.state
            )
        )

    await client.get_schedule_handle(match_schedule_id(tenant_id)).update(update)
    return "updated" if changed else "unchanged"


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
