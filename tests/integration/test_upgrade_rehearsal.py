"""A release rehearsed on the real dev server (issue 15 point 3).

v1 (today's workflows) runs as a versioned Worker Deployment; deals in several stages, an IO
mid-flight and an import are started on it. v2 (tests/helpers/upgrade.py: a new activity after
the stage write, a changed stall rule, a new step in the IO, each behind `workflow.patched`)
is deployed beside it and made current. The old deals and the IO move to v2 at their next task
and finish their lives there without a failed workflow task; new workflows take the new paths;
the pinned import finishes on v1, after which no run is left on v1 and it could be retired.
Then the same changes without their patch guards are caught by replay before any release.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.api.deployment.v1 import WorkerDeploymentVersion as WorkerDeploymentVersionProto
from temporalio.api.enums.v1 import EventType, RoutingConfigUpdateState, TaskQueueType
from temporalio.api.enums.v1 import VersioningBehavior as BehaviorProto
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    DescribeWorkerDeploymentVersionRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.common import WorkerDeploymentVersion
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Replayer, Worker, WorkerDeploymentConfig
from temporalio.workflow import NondeterminismError

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from domain.deals import DealWorkflowResult
from domain.io import IoStatus
from domain.stages import Stage
from settings import Settings
from tests.conftest import Stack, start_stack
from tests.helpers.factories import ad_unit, book_io, make_advertiser, make_deal, make_show, move
from tests.helpers.histories import HISTORIES
from tests.helpers.io import deliver, io_until
from tests.helpers.upgrade import (
    V2_STALL_CAP,
    DealWorkflowV2,
    DealWorkflowV2StallUnguarded,
    DealWorkflowV2Unguarded,
    ImportGate,
    IoBookingWorkflowV2,
    IoBookingWorkflowV2Unguarded,
    ReleaseProbe,
)
from worker import registrations
from workflows.deals import DealWorkflow
from workflows.io import IoBookingWorkflow
from workflows.starters import deal_workflow_id, deployment_versions, running_on_version_query
from workflows.versioning import versioned

T = TypeVar("T")

SHOWS_CSV = b"external_id,name,avg_downloads\nrh-1,Rehearsal One,40000\nrh-2,Rehearsal Two,12000\n"


@pytest.fixture
async def api(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API without a worker: the test runs the v1 and v2 workers itself."""
    async for s in start_stack(database, client, sm, worker=False):
        yield s


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 20.0) -> T:
    """Retries `check` (an AssertionError or RPCError means not yet) until it passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, RPCError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.2)


def versioned_worker(
    client: Client,
    settings: Settings,
    sm: SessionMaker,
    version: WorkerDeploymentVersion,
    *,
    replace_workflows: dict[type, type] | None = None,
    replace_activities: dict[str, Callable[..., Any]] | None = None,
    extra_activities: Sequence[Callable[..., Any]] = (),
) -> Worker:
    """One build of the deployment: production's registrations, each workflow with its versioning
    behaviour (workflows/versioning.py), a release's changed classes and activities swapped in."""
    workflows, activities = registrations(settings, sm)
    swap = replace_workflows or {}
    by_name = replace_activities or {}
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[swap.get(w, versioned(w)) for w in workflows],
        activities=[by_name.get(getattr(a, "__name__", ""), a) for a in activities] + list(extra_activities),
        # No default behaviour: the SDK refuses a workflow that names none, so every one is decided.
        deployment_config=WorkerDeploymentConfig(version=version, use_worker_versioning=True),
    )


async def make_current(client: Client, version: WorkerDeploymentVersion, task_queue: str) -> None:
    """Rollout's last step (and rollback's only one): route new and auto-upgrade tasks to `version`.

    First the check: the version's workers poll both the workflow and the activity side of the
    task queue (the server refuses a current version that would leave a queue unversioned).
    """

    async def polled() -> None:
        got = await client.workflow_service.describe_worker_deployment_version(
            DescribeWorkerDeploymentVersionRequest(
                namespace=client.namespace,
                deployment_version=WorkerDeploymentVersionProto(
                    deployment_name=version.deployment_name, build_id=version.build_id
                ),
            )
        )
        kinds = {q.type for q in got.worker_deployment_version_info.task_queue_infos if q.name == task_queue}
        assert kinds == {TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY}, (
            kinds
        )

    async def switch() -> None:
        got = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(
                namespace=client.namespace, deployment_name=version.deployment_name
            )
        )
        await client.workflow_service.set_worker_deployment_current_version(
            SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace,
                deployment_name=version.deployment_name,
                build_id=version.build_id,
                conflict_token=got.conflict_token,
                identity="upgrade-rehearsal",
            )
        )

    await eventually(polled)
    await eventually(switch)

    async def propagated() -> None:
        # The answer comes before every task queue partition knows: until then tasks still go
        # to the old current version.
        got = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(
                namespace=client.namespace, deployment_name=version.deployment_name
            )
        )
        info = got.worker_deployment_info
        assert info.routing_config.current_deployment_version.build_id == version.build_id
        assert (
            info.routing_config_update_state == RoutingConfigUpdateState.ROUTING_CONFIG_UPDATE_STATE_COMPLETED
        ), RoutingConfigUpdateState.Name(info.routing_config_update_state)

    await eventually(propagated)


async def versioning(handle: WorkflowHandle[Any, Any]) -> tuple[str, str]:
    """(behaviour, build id) the server holds for a workflow: what `temporal workflow describe` shows.

    Waits for the first workflow task to complete: the server learns both from it.
    """

    async def known() -> tuple[str, str]:
        info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
        assert info.behavior, "no workflow task completed yet"
        return BehaviorProto.Name(info.behavior), info.deployment_version.build_id

    return await eventually(known)


def events_of(history: WorkflowHistory, kind: int) -> list[HistoryEvent]:
    return [e for e in history.events if e.event_type == kind]


def task_builds(history: WorkflowHistory) -> list[str]:
    """The build id of the worker that completed each workflow task, in order."""
    return [
        e.workflow_task_completed_event_attributes.deployment_version.build_id
        for e in events_of(history, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    ]


def stall_timers(history: WorkflowHistory) -> list[tuple[str, timedelta]]:
    """(build id of the task that started it, start_to_fire_timeout) of every stall timer."""
    by_id = {e.event_id: e for e in history.events}
    timers = []
    for e in events_of(history, EventType.EVENT_TYPE_TIMER_STARTED):
        attrs = e.timer_started_event_attributes
        task = by_id[attrs.workflow_task_completed_event_id].workflow_task_completed_event_attributes
        timers.append((task.deployment_version.build_id, attrs.start_to_fire_timeout.ToTimedelta()))
    return timers


def about(limit_days: float) -> Callable[[timedelta], bool]:
    """A stall timer for a stage entered moments ago: the limit minus the seconds since entry."""
    return lambda t: timedelta(days=limit_days) - timedelta(minutes=1) < t <= timedelta(days=limit_days)


def healthy(history: WorkflowHistory) -> None:
    """No workflow task failed (a non-determinism error fails the task, and retries it forever)."""
    failed = events_of(history, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    assert not failed, [e.workflow_task_failed_event_attributes.failure.message for e in failed]


def recorded(workflow_type: str) -> list[WorkflowHistory]:
    """Every recorded history of `workflow_type` under tests/histories/, wherever the corpus keeps it."""
    found = []
    for path in sorted(Path(HISTORIES).rglob("*.json")):
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        if history.events[0].workflow_execution_started_event_attributes.workflow_type.name == workflow_type:
            found.append(history)
    return found


async def replay_failures(workflow: type, histories: Sequence[WorkflowHistory]) -> list[BaseException | None]:
    """The replay failure of each history against `workflow`, in order (None: it replays clean)."""
    replayer = Replayer(workflows=[workflow], data_converter=pydantic_data_converter)
    failures: list[BaseException | None] = []
    for history in histories:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        failures.append(result.replay_failure)
    return failures


async def running_on(client: Client, query: str) -> set[str]:
    """The workflow ids a visibility query lists (what `temporal workflow list --query` shows)."""
    return {w.id async for w in client.list_workflows(query)}


async def expect(got: Awaitable[set[str]], wanted: set[str]) -> None:
    """Awaits `got` and asserts it equals `wanted` (for eventually: visibility lags)."""
    value = await got
    assert value == wanted, value


def nondeterministic(failure: BaseException | None) -> bool:
    """Whether a replay failed with a non-determinism error (a None failure replayed clean)."""
    return isinstance(failure, NondeterminismError)


async def test_a_release_rehearsed_on_the_dev_server(api: Stack, client: Client, sm: SessionMaker) -> None:
    stack = api
    tq = stack.settings.temporal_task_queue
    deployment = f"sponsorflow-rehearsal-{uuid.uuid4().hex[:8]}"
    v1 = WorkerDeploymentVersion(deployment_name=deployment, build_id="v1")
    v2 = WorkerDeploymentVersion(deployment_name=deployment, build_id="v2")
    probe = ReleaseProbe()
    # v1's own load_rows behind a gate: the import is provably in flight during the rollout.
    real_load = next(
        a for a in registrations(stack.settings, sm)[1] if getattr(a, "__name__", "") == "load_rows"
    )
    gate = ImportGate(real_load)
    tenant = await stack.new_tenant("Rehearsal")
    h = stack.auth(tenant)

    def deal_handle(deal: dict[str, Any]) -> WorkflowHandle[Any, DealWorkflowResult]:
        return client.get_workflow_handle_for(DealWorkflow.run, deal_workflow_id(str(tenant.id), deal["id"]))

    async with versioned_worker(
        client,
        stack.settings,
        sm,
        v1,
        replace_activities={"load_rows": gate.load_rows},
    ):
        await make_current(client, v1, tq)

        # ---- v1: deals in several stages with stall timers pending, an IO mid-flight, an import.
        advertiser = await make_advertiser(stack.http, h, name="Acme Mattress")
        shows = [await make_show(stack.http, h, name=f"Rehearsal Show {i}") for i in range(4)]

        async def deal(name: str, *moves: str, **fields: Any) -> dict[str, Any]:
            d = await make_deal(stack.http, h, advertiser=advertiser, show=shows[0], name=name, **fields)
            for stage in moves:
                assert (await move(stack.http, h, d["id"], stage)).status_code == 200
            return d

        at_lead = await deal("Lead")
        at_qualified = await deal("Qualified", "qualified")
        at_proposal = await deal("Proposal", "qualified", "proposal")
        idle = await deal("Idle", stage="negotiation")
        old_deals = [at_lead, at_qualified, at_proposal, idle]

        today = datetime.now(UTC).date()
        won = await make_deal(stack.http, h, advertiser=advertiser, show=shows[1], stage="won")
        units = [ad_unit(shows[1]["id"], today), ad_unit(shows[2]["id"], today + timedelta(days=5))]
        r = await book_io(stack.http, h, won["id"], units, measurement_window_days=0)
        assert r.status_code == 201, r.text
        old_io = r.json()
        aired = old_io["ad_units"][0]["id"]
        await io_until(stack, h, old_io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
        await deliver(stack, h, old_io["id"], aired, 10_000)
        old_io_handle = client.get_workflow_handle_for(IoBookingWorkflow.run, old_io["workflow_id"])

        r = await stack.http.post(
            "/api/v1/etl/upload", files={"file": ("shows.csv", SHOWS_CSV)}, data={"kind": "shows"}, headers=h
        )
        assert r.status_code == 202, r.text
        upload = r.json()
        import_handle = client.get_workflow_handle(upload["workflow_id"])
        await asyncio.wait_for(gate.entered.wait(), timeout=20)

        for d in old_deals:
            assert await versioning(deal_handle(d)) == ("VERSIONING_BEHAVIOR_AUTO_UPGRADE", "v1")
        assert await versioning(old_io_handle) == ("VERSIONING_BEHAVIOR_AUTO_UPGRADE", "v1")
        assert await versioning(import_handle) == ("VERSIONING_BEHAVIOR_PINNED", "v1")
        # What v1 wrote: replay must accept these before v2 may ship (checked at the end).
        v1_deals = [await deal_handle(d).fetch_history() for d in old_deals]
        v1_io = await old_io_handle.fetch_history()
        for hist in v1_deals:
            assert {build for build, _ in stall_timers(hist)} == {"v1"}

        # ---- Roll out: v2's workers start beside v1's, register, and v2 becomes current.
        async with versioned_worker(
            client,
            stack.settings,
            sm,
            v2,
            replace_workflows={DealWorkflow: DealWorkflowV2, IoBookingWorkflow: IoBookingWorkflowV2},
            extra_activities=[probe.record_stage_notice, probe.notify_units_aired],
        ):
            await make_current(client, v2, tq)

            # Old deals live on under v2 (auto-upgrade at their next task): moves, won, lost.
            assert (await move(stack.http, h, at_lead["id"], "qualified")).status_code == 200
            for stage in ("proposal", "won"):
                assert (await move(stack.http, h, at_qualified["id"], stage)).status_code == 200
            assert (await move(stack.http, h, at_proposal["id"], "negotiation")).status_code == 200
            r = await move(stack.http, h, at_proposal["id"], "lost", reason="budget moved to Q3")
            assert r.status_code == 200 and r.json()["lost_reason"] == "budget moved to Q3", r.text
            assert (await deal_handle(at_qualified).result()).stage is Stage.WON
            assert (await deal_handle(at_proposal).result()).stage is Stage.LOST

            # The old IO, cancelled under v2: the unaired unit is cancelled, what aired is billed.
            r = await stack.http.post(
                f"/api/v1/io/{old_io['id']}/cancel", json={"reason": "budget cut"}, headers=h
            )
            assert r.status_code == 200, r.text
            assert [u["status"] for u in r.json()["ad_units"]] == ["delivered", "cancelled"]
            old_result = await old_io_handle.result()
            assert (
                old_result.status is IoStatus.CANCELLED and float(old_result.invoice_total_usd or 0) == 250.0
            )

            # New workflows take v2's paths.
            fresh = await deal("Fresh", "qualified")
            won2 = await make_deal(stack.http, h, advertiser=advertiser, show=shows[3], stage="won")
            r = await book_io(
                stack.http, h, won2["id"], [ad_unit(shows[3]["id"], today)], measurement_window_days=0
            )
            assert r.status_code == 201, r.text
            new_io = r.json()
            await io_until(stack, h, new_io["id"], lambda x: x["status"] == "awaiting_delivery")
            await deliver(stack, h, new_io["id"], new_io["ad_units"][0]["id"], 12_000)
            new_io_handle = client.get_workflow_handle_for(IoBookingWorkflow.run, new_io["workflow_id"])
            assert (await new_io_handle.result()).status is IoStatus.COMPLETED

            # ---- Roll back and forward again: the current version is the only switch.
            await make_current(client, v1, tq)
            during_rollback = await deal("During rollback")
            assert await versioning(deal_handle(during_rollback)) == (
                "VERSIONING_BEHAVIOR_AUTO_UPGRADE",
                "v1",
            )
            await make_current(client, v2, tq)
            assert (await move(stack.http, h, during_rollback["id"], "qualified")).status_code == 200
            assert await versioning(deal_handle(during_rollback)) == (
                "VERSIONING_BEHAVIOR_AUTO_UPGRADE",
                "v2",
            )

            # ---- Retire v1 once nothing runs on it. A pinned run stays until it ends; an
            # auto-upgrade run is listed under v1 until its next task moves it.
            on_v1 = running_on_version_query(deployment, "v1")
            pinned_on_v1 = f'{on_v1} AND TemporalWorkflowVersioningBehavior="Pinned"'
            await eventually(
                lambda: expect(running_on(client, on_v1), {import_handle.id, deal_handle(idle).id})
            )
            await eventually(lambda: expect(running_on(client, pinned_on_v1), {import_handle.id}))

            gate.opened.set()
            assert (await import_handle.result())["status"] == "completed"
            status = (await stack.http.get(f"/api/v1/etl/status/{upload['import_id']}", headers=h)).json()
            assert (status["status"], status["rows_inserted"]) == ("completed", 2)
            assert await versioning(import_handle) == ("VERSIONING_BEHAVIOR_PINNED", "v1")
            import_history = await import_handle.fetch_history()
            assert set(task_builds(import_history)) == {"v1"}
            healthy(import_history)
            await eventually(lambda: expect(running_on(client, pinned_on_v1), set()))

            assert (await move(stack.http, h, idle["id"], "won")).status_code == 200
            assert (await deal_handle(idle).result()).stage is Stage.WON
            r = await move(stack.http, h, at_lead["id"], "lost", reason="went with a network buy")
            assert r.status_code == 200, r.text
            assert (await deal_handle(at_lead).result()).stage is Stage.LOST
            await eventually(lambda: expect(running_on(client, on_v1), set()))
            # The server's own view lags: v1 stays "draining" (not "drained") for its visibility
            # grace period (minutes), and it cannot be deleted while its workers poll. Retiring
            # means: the query above is empty, then stop v1's workers; deleting the version is later.
            versions = await deployment_versions(client, deployment)
            assert versions is not None and versions.current_build_id == "v2"
            assert versions.versions["v1"] == "draining"

            # ---- What the histories show.
            finals = {d["id"]: await deal_handle(d).fetch_history() for d in [*old_deals, fresh]}
            old_io_final = await old_io_handle.fetch_history()
            new_io_final = await new_io_handle.fetch_history()
            for d in old_deals:
                builds = task_builds(finals[d["id"]])
                assert builds[0] == "v1" and builds[-1] == "v2", builds
                healthy(finals[d["id"]])
            assert task_builds(old_io_final)[0] == "v1" and task_builds(old_io_final)[-1] == "v2"
            healthy(old_io_final)
            healthy(finals[fresh["id"]])
            healthy(new_io_final)

    # The stall rule: a run whose timer started under v1 keeps v1's limits (14 days for lead and
    # qualified) for the rest of its run; a run started under v2 waits 7 days in every stage.
    assert [(b, about(14)(t)) for b, t in stall_timers(finals[at_lead["id"]])] == [("v1", True), ("v2", True)]
    capped = about(V2_STALL_CAP.days)
    assert [(b, capped(t)) for b, t in stall_timers(finals[fresh["id"]])] == [("v2", True), ("v2", True)]

    # The stage notice: the patch is decided once per run. Runs whose first stage write came under
    # v2 send it for every write; a run that had written a stage under v1 keeps v1's path.
    notices = {(n.campaign_id, n.from_stage.value, n.to_stage.value) for n in probe.stage_notices}
    assert notices == {
        (at_lead["id"], "lead", "qualified"),
        (at_lead["id"], "qualified", "lost"),
        (idle["id"], "negotiation", "won"),
        (fresh["id"], "lead", "qualified"),
        (during_rollback["id"], "lead", "qualified"),
    }
    # The air notice: only for units that aired under v2.
    assert [(n.io_id, n.unit_ids) for n in probe.air_notices] == [
        (new_io["id"], [new_io["ad_units"][0]["id"]])
    ]

    # ---- Caught before release: the same changes without their patch guards fail replay of what
    # v1 wrote (and of the recorded corpus); the guarded v2 replays all of it clean.
    deal_corpus, io_corpus = recorded("DealWorkflow"), recorded("IoBookingWorkflow")
    assert deal_corpus and io_corpus
    assert await replay_failures(DealWorkflowV2, [*v1_deals, *deal_corpus]) == [None] * (
        len(v1_deals) + len(deal_corpus)
    )
    assert await replay_failures(IoBookingWorkflowV2, [v1_io, *io_corpus]) == [None] * (1 + len(io_corpus))
    unguarded = await replay_failures(DealWorkflowV2Unguarded, v1_deals)
    # The deals that wrote a stage under v1 (qualified, proposal) fail; the two that had not yet
    # replay clean, which is why a corpus needs a history through every path.
    assert [nondeterministic(f) for f in unguarded] == [False, True, True, False]
    assert any(nondeterministic(f) for f in await replay_failures(DealWorkflowV2Unguarded, deal_corpus))
    assert [nondeterministic(f) for f in await replay_failures(IoBookingWorkflowV2Unguarded, [v1_io])] == [
        True
    ]
    assert any(nondeterministic(f) for f in await replay_failures(IoBookingWorkflowV2Unguarded, io_corpus))

    # Replay compares the command sequence, not the arguments: a changed timer duration alone
    # replays clean, so such a change needs its patch even though replay cannot catch it.
    assert await replay_failures(DealWorkflowV2StallUnguarded, [*v1_deals, *deal_corpus]) == [None] * (
        len(v1_deals) + len(deal_corpus)
    )

    # ---- Why a rollback is only safe before runs take v2's paths: v1 cannot replay a run that
    # ran v2's new activity (it would fail that run's next task on v1).
    rolled = await replay_failures(DealWorkflow, [finals[at_lead["id"]], finals[at_qualified["id"]]])
    assert [nondeterministic(f) for f in rolled] == [True, False]
    assert [nondeterministic(f) for f in await replay_failures(IoBookingWorkflow, [new_io_final])] == [True]
