"""Starting and finding workflows from outside them: ids, start options, Client and Schedule helpers.

Everything here runs in the API, the worker's activities, the CLI or a test, never in a workflow
sandbox: no workflow module imports this one (tests/unit/test_layers.py checks it). Workflows are
named by their type names (and signals or queries by theirs) rather than by their classes, so
that activities can start and signal workflows without importing workflow modules, which import
the activities: the layers stay a graph without cycles. tests/unit/test_layers.py checks each
name against the class it stands for.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import VersionDrainageStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
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
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from domain.deals import DealWorkflowInput, deal_summary
from domain.imports import ClosedAs, ImportWorkflowInput
from domain.io import BookIoInput, IoStatus, IoWorkflowInput, booking_summary
from domain.maintenance import MaintenanceInput
from domain.matching import MatchRecalcInput, MatchRecalcResult
from domain.webhooks import WebhookConfig, WebhookEndpointInput
from domain.webhooks import summary as webhook_summary
from workflows import search_attributes as sa

# Workflow type names (the classes' names, or the `name=` of their @workflow.defn) and the
# messages sent by name. Byte-identical to what running workflows and recorded histories carry.
DEAL_WORKFLOW = "DealWorkflow"
IO_WORKFLOW = "IoBookingWorkflow"
IMPORT_WORKFLOW = "CsvImportWorkflow"
MATCH_WORKFLOW = "MatchRecalculationWorkflow"
MAINTENANCE_WORKFLOW = "MaintenanceWorkflow"
DEAL_RESYNC_SIGNAL = "resync"
IO_DELIVERY_REPORTED_SIGNAL = "delivery_reported"
IO_SNAPSHOT_QUERY = "snapshot"
MATCH_ROWS_CHANGED_SIGNAL = "rows_changed"
WEBHOOK_WORKFLOW = "WebhookEndpointWorkflow"
WEBHOOK_WAKE_SIGNAL = "wake"
WEBHOOK_RETRY_UPDATE = "retry"
WEBHOOK_REPLAY_UPDATE = "replay"
WEBHOOK_TEST_UPDATE = "send_test"
WEBHOOK_STATE_QUERY = "state"


# Deals


def deal_workflow_id(tenant_id: str, campaign_id: str) -> str:
    """Returns the workflow id of a deal; the tenant is part of it so tenants never collide."""
    return f"deal/{tenant_id}/{campaign_id}"


def deal_search_attributes(inp: DealWorkflowInput) -> TypedSearchAttributes:
    """Returns the search attributes a deal's workflow starts with."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.TENANT_ID, inp.tenant_id),
        SearchAttributePair(sa.DEAL_STAGE, inp.stage.value),
        SearchAttributePair(sa.ADVERTISER_ID, inp.advertiser_id),
        SearchAttributePair(sa.DEAL_VALUE, float(inp.value_usd)),
        SearchAttributePair(sa.STAGE_ENTERED_AT, inp.stage_entered_at),
    ]
    if inp.show_id:
        pairs.append(SearchAttributePair(sa.SHOW_ID, inp.show_id))
    return TypedSearchAttributes(pairs)


def deal_start_options(inp: DealWorkflowInput, task_queue: str) -> dict[str, Any]:
    """Start options of a deal's workflow (API create, update-with-start, import): one place."""
    return {
        "id": deal_workflow_id(inp.tenant_id, inp.campaign_id),
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": deal_search_attributes(inp),
        "static_summary": deal_summary(inp.name, inp.advertiser_name, inp.show_name, inp.value_usd),
    }


async def start_deal_workflows(
    client: Client, seeds: list[DealWorkflowInput], task_queue: str, *, concurrency: int
) -> int:
    """Starts each deal's workflow unless one is running; returns how many were new.

    The same start as deal_start_options but with the FAIL conflict policy: the SDK does not say
    publicly whether a USE_EXISTING start found a run, while a FAIL start that finds one raises
    WorkflowAlreadyStartedError, which is the count's "not new" (the SDK's maintainers recommend
    that error for this). What runs afterwards is the same either way: one run per deal. A retry
    of the same start (same request id) that had landed is answered as a success by the server.
    """
    sem = asyncio.Semaphore(concurrency)

    async def start(seed: DealWorkflowInput) -> bool:
        options = deal_start_options(seed, task_queue) | {"id_conflict_policy": WorkflowIDConflictPolicy.FAIL}
        async with sem:
            try:
                await client.start_workflow(DEAL_WORKFLOW, seed, **options)
            except WorkflowAlreadyStartedError:
                return False
        return True

    return sum(await asyncio.gather(*(start(s) for s in seeds)))


# IOs


def io_workflow_id(tenant_id: str, io_id: str) -> str:
    """Returns the workflow id of an IO; the tenant is part of it so tenants never collide."""
    return f"io/{tenant_id}/{io_id}"


def io_search_attributes(
    tenant_id: str, advertiser_id: str, first_show_id: str | None, status: IoStatus
) -> TypedSearchAttributes:
    """Returns the search attributes an IO's workflow starts with."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.TENANT_ID, tenant_id),
        SearchAttributePair(sa.IO_STATUS, status.value),
        SearchAttributePair(sa.ADVERTISER_ID, advertiser_id),
    ]
    if first_show_id:
        pairs.append(SearchAttributePair(sa.SHOW_ID, first_show_id))
    return TypedSearchAttributes(pairs)


def io_start_options(
    inp: IoWorkflowInput, task_queue: str, *, booking: BookIoInput, advertiser_id: str, advertiser_name: str
) -> dict[str, Any]:
    """Start options of an IO's workflow, started by its booking (update-with-start): one place."""
    first = min(booking.ad_units, key=lambda u: u.air_date)
    return {
        "id": io_workflow_id(inp.tenant_id, inp.io_id),
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        # One run per IO id: a resend after the run ended unbooked must not start another.
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": io_search_attributes(
            inp.tenant_id, advertiser_id, first.show_id, IoStatus.BOOKING
        ),
        "static_summary": booking_summary(advertiser_name, booking.ad_units),
    }


# Imports


def import_workflow_id(tenant_id: str, import_id: str) -> str:
    """Returns the workflow id of an import (the tenant is part of it)."""
    return f"import/{tenant_id}/{import_id}"


def import_start_options(inp: ImportWorkflowInput, task_queue: str, summary: str) -> dict[str, Any]:
    """Start options of an import's workflow: every attempt of one start is the same start.

    `USE_EXISTING`: a running workflow from an earlier attempt is the answer; `REJECT_DUPLICATE`:
    one that already finished raises WorkflowAlreadyStarted, which also means it started.
    """
    return {
        "id": import_workflow_id(inp.tenant_id, inp.import_id),
        "task_queue": task_queue,
        "static_summary": summary,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
    }


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
    inp: ImportWorkflowInput,
    *,
    task_queue: str,
    summary: str,
    budget: timedelta,
    attempt_timeout: timedelta = timedelta(seconds=5),
) -> tuple[StartVerdict, str]:
    """Starts an import's workflow, retrying an ambiguous start within `budget`; says what is true.

    Every attempt is the same start (import_start_options), so retrying never starts two runs.
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
                    IMPORT_WORKFLOW,
                    inp,
                    **import_start_options(inp, task_queue, summary),
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


# Matching

_SCHEDULE_SUMMARY = "Match recalculation (schedule)"
_MAX_JITTER = timedelta(minutes=5)
_CATCHUP_WINDOW = timedelta(hours=1)


def match_workflow_id(tenant_id: str) -> str:
    """The id of a tenant's recalculation: one at a time, so concurrent requests join it."""
    return f"match/{tenant_id}"


def match_schedule_id(tenant_id: str) -> str:
    """The id of a tenant's recalculation schedule (the UI's Schedules tab lists it)."""
    return f"match-recalc/{tenant_id}"


def _match_search_attributes(tenant_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([SearchAttributePair(sa.TENANT_ID, tenant_id)])


def match_start_options(tenant_id: str, task_queue: str, trigger: str) -> dict[str, Any]:
    """Start options of an on-demand recalculation: joins the running one instead of a second."""
    return {
        "id": match_workflow_id(tenant_id),
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": _match_search_attributes(tenant_id),
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
        MATCH_WORKFLOW,
        MatchRecalcInput(tenant_id=tenant_id, trigger=trigger),
        result_type=MatchRecalcResult,
        **match_start_options(tenant_id, task_queue, trigger),
    )


async def recalculate_after_change(client: Client, tenant_id: str, task_queue: str, trigger: str) -> Any:
    """Rows the scores read have changed (an import completed): makes sure a ranking reflects it.

    Signal-with-start: with no on-demand run going, one starts (the signal changes nothing);
    a run already going is told, and scores once more when it is done if it had begun.
    """
    return await client.start_workflow(
        MATCH_WORKFLOW,
        MatchRecalcInput(tenant_id=tenant_id, trigger=trigger),
        start_signal=MATCH_ROWS_CHANGED_SIGNAL,
        start_signal_args=[trigger],
        result_type=MatchRecalcResult,
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


async def running_on_demand_recalculation(
    client: Client, tenant_id: str
) -> WorkflowExecutionDescription | None:
    """The tenant's on-demand recalculation (`match/{tenant}`) if it is running, else None.

    RPC errors other than NOT_FOUND propagate: then nobody knows.
    """
    try:
        desc = await client.get_workflow_handle(match_workflow_id(tenant_id)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc if desc.status == WorkflowExecutionStatus.RUNNING else None


@dataclass(frozen=True)
class RunningRecalculation:
    """A recalculation of the tenant running now, and who started it."""

    workflow_id: str
    run_id: str | None
    started_by: Literal["schedule", "on demand"]  # on demand: POST /api/match/recalculate or an import
    started_at: datetime | None


@dataclass(frozen=True)
class RecalculationScheduleState:
    """The tenant's recalculation schedule as Temporal describes it."""

    schedule_id: str
    every: timedelta | None
    paused: bool
    next_run_at: datetime | None


async def recalculation_state(
    client: Client, tenant_id: str
) -> tuple[list[RunningRecalculation], RecalculationScheduleState | None]:
    """The tenant's running recalculations (on demand first, then scheduled) and its schedule.

    No schedule: None and only the on-demand run. RPC errors other than NOT_FOUND propagate.
    """
    running: list[RunningRecalculation] = []
    desc = await running_on_demand_recalculation(client, tenant_id)
    if desc is not None:
        running.append(RunningRecalculation(desc.id, desc.run_id, "on demand", desc.start_time))
    try:
        sched = await client.get_schedule_handle(match_schedule_id(tenant_id)).describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return running, None
    intervals = sched.schedule.spec.intervals
    schedule = RecalculationScheduleState(
        schedule_id=sched.id,
        every=intervals[0].every if intervals else None,
        paused=sched.schedule.state.paused,
        next_run_at=min(sched.info.next_action_times, default=None),
    )
    running.extend(
        RunningRecalculation(run.id, run.run_id, "schedule", run.start_time)
        for run in await running_scheduled_runs(client, tenant_id, sched)
    )
    return running, schedule


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
            MATCH_WORKFLOW,
            MatchRecalcInput(tenant_id=tenant_id, trigger="schedule"),
            id=match_workflow_id(tenant_id),
            task_queue=task_queue,
            typed_search_attributes=_match_search_attributes(tenant_id),
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


# Maintenance

MAINTENANCE_SUMMARY = "sponsorflow maintenance (schedules, open-deal sweep, drift repair)"


def maintenance_workflow_id(task_queue: str) -> str:
    """The singleton's id: one per task queue (a deployment) in the namespace."""
    return f"maintenance/{task_queue}"


async def start_maintenance(
    client: Client, task_queue: str, *, tenant_ids: list[str] | None = None, workflow_id: str | None = None
) -> WorkflowHandle[Any, Any]:
    """Starts the maintenance workflow, or returns the one running (USE_EXISTING): never a second."""
    return await client.start_workflow(
        MAINTENANCE_WORKFLOW,
        MaintenanceInput(tenant_ids=tenant_ids),
        id=workflow_id or maintenance_workflow_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=MAINTENANCE_SUMMARY,
    )


# Webhooks


def webhook_workflow_id(tenant_id: str, endpoint_id: str) -> str:
    """The workflow id of an endpoint's deliveries (the tenant is part of it)."""
    return f"webhook/{tenant_id}/{endpoint_id}"


def webhook_start_options(
    tenant_id: str, endpoint_id: str, task_queue: str, *, host: str, description: str | None
) -> dict[str, Any]:
    """Start options of an endpoint's workflow: USE_EXISTING, so every start finds the one running."""
    return {
        "id": webhook_workflow_id(tenant_id, endpoint_id),
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": TypedSearchAttributes(
            [SearchAttributePair(sa.TENANT_ID, tenant_id), SearchAttributePair(sa.WEBHOOK_STATUS, "healthy")]
        ),
        "static_summary": webhook_summary(host, description),
    }


async def wake_webhook_workflow(
    client: Client,
    tenant_id: str,
    endpoint_id: str,
    task_queue: str,
    *,
    host: str,
    description: str | None,
    config: WebhookConfig,
    signal: bool = True,
) -> WorkflowHandle[Any, Any]:
    """Signal-with-start `wake`: the endpoint's workflow runs, and polls at once (`signal`: else
    only makes sure it runs, for an update that wakes it itself)."""
    return await client.start_workflow(
        WEBHOOK_WORKFLOW,
        WebhookEndpointInput(tenant_id=tenant_id, endpoint_id=endpoint_id, config=config),
        start_signal=WEBHOOK_WAKE_SIGNAL if signal else None,
        **webhook_start_options(tenant_id, endpoint_id, task_queue, host=host, description=description),
    )


# Worker deployments (workflows/versioning.py; the README's "Releasing a workflow change")

# Running workflows a task keeps failing on (a non-determinism error, say): the server sets
# TemporalReportedProblems after SPONSORFLOW_TEMPORAL_DEV_TASK_PROBLEMS_THRESHOLD consecutive
# failed or timed-out workflow tasks and clears it on the next successful one.
TASK_PROBLEMS_QUERY = (
    'ExecutionStatus="Running" AND TemporalReportedProblems IN '
    '("category=WorkflowTaskFailed", "category=WorkflowTaskTimedOut")'
)


@dataclass(frozen=True)
class DeploymentVersions:
    """A Worker Deployment's versions as the server knows them."""

    current_build_id: str | None
    ramping_build_id: str | None
    # build id -> drainage status ("draining", "drained", or "" while current or never drained)
    versions: dict[str, str]


def running_on_version_query(deployment: str, build_id: str) -> str:
    """The visibility query of the workflows still running on one version (pinned or not moved yet)."""
    return f'ExecutionStatus="Running" AND TemporalWorkerDeploymentVersion="{deployment}:{build_id}"'


async def deployment_versions(client: Client, deployment: str) -> DeploymentVersions | None:
    """Describes a Worker Deployment; None until a worker of it has polled."""
    try:
        got = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    info = got.worker_deployment_info
    routing = info.routing_config
    prefix = "VERSION_DRAINAGE_STATUS_"
    return DeploymentVersions(
        current_build_id=routing.current_deployment_version.build_id or None,
        ramping_build_id=routing.ramping_deployment_version.build_id or None,
        versions={
            v.deployment_version.build_id: (
                ""
                if v.drainage_status == VersionDrainageStatus.VERSION_DRAINAGE_STATUS_UNSPECIFIED
                else VersionDrainageStatus.Name(v.drainage_status).removeprefix(prefix).lower()
            )
            for v in info.version_summaries
        },
    )


async def set_current_version(client: Client, *, deployment: str, build_id: str, identity: str) -> str | None:
    """Makes `build_id` the deployment's current version (a no-op if it is); returns the previous one.

    New workflows and auto-upgrade ones go to its workers from now on; pinned ones stay where they
    are. The server refuses while the version's workers do not poll every task queue it knows.
    """
    got = await client.workflow_service.set_worker_deployment_current_version(
        SetWorkerDeploymentCurrentVersionRequest(
            namespace=client.namespace, deployment_name=deployment, build_id=build_id, identity=identity
        )
    )
    return got.previous_deployment_version.build_id or None
