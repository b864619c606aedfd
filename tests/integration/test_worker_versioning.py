"""Worker versioning on the real dev server: a worker's deployment version and each workflow's
behaviour, the dev stack's self-promotion across a restart, and a non-determinism error that ops
find at once with the README's query (then a rollback that heals it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.api.enums.v1 import VersioningBehavior as VersioningBehaviorProto
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from settings import Settings
from tests.conftest import Stack, start_stack
from tests.helpers.factories import make_deal, move
from tests.helpers.imports import upload, worker_process
from tests.helpers.nondeterministic import IncompatibleDealWorkflow
from worker import (
    NondeterminismWatch,
    build_worker,
    deployment_config,
    promote_when_polling,
    registrations,
    worker_runtime,
)
from workflows.deals import DealWorkflow
from workflows.starters import (
    DEAL_RESYNC_SIGNAL,
    TASK_PROBLEMS_QUERY,
    deployment_versions,
    running_on_version_query,
    set_current_version,
)
from workflows.versioning import versioned

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Polls `probe` until it returns something other than None (or fails naming `what`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await probe()
        if got is not None:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def headless(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API with the default update budget and no worker: each test runs the workers it needs."""
    async for s in start_stack(database, client, sm, worker=False, update_budget_seconds=5):
        yield s


def versioned_settings(stack: Stack, deployment: str, build_id: str) -> Settings:
    """The stack's settings as one version of a deployment of this test's own."""
    return stack.settings.model_copy(
        update={"worker_versioning": True, "worker_deployment": deployment, "worker_build_id": build_id}
    )


async def versioning_info(client: Client, workflow_id: str) -> Any:
    """The workflow's versioning info (behaviour and deployment version) once its first task is done."""

    async def probe() -> Any:
        info = (await client.get_workflow_handle(workflow_id).describe()).raw_description
        versioning = info.workflow_execution_info.versioning_info
        return versioning if versioning.deployment_version.build_id else None

    return await eventually(probe, 20, f"{workflow_id} has run a task on a versioned worker")


async def test_sponsorflow_worker_promotes_its_version_and_keeps_it_across_a_restart(
    headless: Stack, tmp_path: Path
) -> None:
    stack, client = headless, headless.client
    deployment, build = f"sf-test-{uuid.uuid4().hex[:8]}", "0.1.0+test001"
    env = {
        "SPONSORFLOW_WORKER_DEPLOYMENT": deployment,
        "SPONSORFLOW_WORKER_BUILD_ID": build,
        "SPONSORFLOW_WORKER_PROMOTE": "true",
    }
    t = await stack.new_tenant()
    h = stack.auth(t)
    log = tmp_path / "worker.log"
    first = worker_process(stack, log, **env)
    try:

        async def current() -> str | None:
            state = await deployment_versions(client, deployment)
            return state.current_build_id if state else None

        assert await eventually(current, 30, f"{deployment} has a current version") == build
        assert "is current (was unversioned)" in log.read_text()

        deal = await make_deal(stack.http, h)
        r = await move(stack.http, h, deal["id"], "qualified")
        assert r.status_code == 200, r.text
        deal_version = await versioning_info(client, deal["workflow_id"])
        assert deal_version.behavior == VersioningBehaviorProto.VERSIONING_BEHAVIOR_AUTO_UPGRADE
        assert deal_version.deployment_version.build_id == build

        status = await upload(
            stack, h, "shows", "shows.csv", b"external_id,name,avg_downloads\ns-1,Grind,100\n"
        )
        assert status["status"] == "completed", status
        import_version = await versioning_info(client, status["workflow_id"])
        assert import_version.behavior == VersioningBehaviorProto.VERSIONING_BEHAVIOR_PINNED
        assert import_version.deployment_version.build_id == build

        # The query the README gives for "which runs still hold this version": the open deal, and
        # not the import once its run has closed (its status row commits a moment before the run
        # ends, and visibility follows a moment later).
        async def holding() -> list[str] | None:
            query = running_on_version_query(deployment, build)
            still = [w.id async for w in client.list_workflows(query)]
            return still if deal["workflow_id"] in still and status["workflow_id"] not in still else None

        await eventually(holding, 30, "the deal, and not the finished import, runs on the version")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    # `up` restarts a dead worker with the same build id: it is still current, and serves at once.
    second = worker_process(stack, log, **env)
    try:
        r = await move(stack.http, h, deal["id"], "proposal")
        assert r.status_code == 200, r.text
        state = await deployment_versions(client, deployment)
        assert state is not None and state.current_build_id == build and set(state.versions) == {build}
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)


async def test_a_nondeterministic_release_is_found_by_the_query_and_healed_by_a_rollback(
    headless: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = headless
    deployment = f"sf-test-{uuid.uuid4().hex[:8]}"
    v1, v2 = versioned_settings(stack, deployment, "1.0"), versioned_settings(stack, deployment, "2.0")
    # The worker's own runtime: the SDK core's logs reach the watch that names the workflow.
    core_log = logging.getLogger(f"sponsorflow.test.sdk.{deployment}")
    client = await Client.connect(
        stack.settings.temporal_target,
        namespace=stack.settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        runtime=worker_runtime(core_log),
    )
    watch = NondeterminismWatch(client)
    core_log.addHandler(watch)
    watching = asyncio.create_task(watch.run())
    t = await stack.new_tenant()
    h = stack.auth(t)
    try:
        async with build_worker(client, v1, stack.sm):
            await promote_when_polling(client, v1)
            deal = await make_deal(stack.http, h)
            r = await move(stack.http, h, deal["id"], "qualified")
            assert r.status_code == 200, r.text
        workflow_id = deal["workflow_id"]

        # Release 2.0 changes DealWorkflow's commands without a patch, and is made current.
        workflows, activities = registrations(v2, stack.sm)
        bad = Worker(
            client,
            task_queue=v2.temporal_task_queue,
            workflows=[IncompatibleDealWorkflow if w is DealWorkflow else versioned(w) for w in workflows],
            activities=activities,
            deployment_config=deployment_config(v2),
        )
        with caplog.at_level(logging.ERROR, logger="sponsorflow.worker"):
            async with bad:
                await promote_when_polling(client, v2)
                # The deal is auto-upgrade: its next task (any signal) runs on 2.0 and replays.
                await client.get_workflow_handle(workflow_id).signal(DEAL_RESYNC_SIGNAL)
                query = f'{TASK_PROBLEMS_QUERY} AND WorkflowId="{workflow_id}"'

                async def flagged() -> list[str] | None:
                    ids = [w.id async for w in client.list_workflows(query)]
                    return ids or None

                assert await eventually(flagged, 30, "the query finds the deal") == [workflow_id]

                def logged() -> list[str]:
                    return [r.getMessage() for r in caplog.records if "NON-DETERMINISM" in r.getMessage()]

                await eventually(lambda: asyncio.sleep(0, logged() or None), 15, "an ERROR line")
                line = logged()[0]
                assert workflow_id in line and "DealWorkflow" in line and "Nondeterminism" in line
                # The task fails and is retried; the deal itself is not failed.
                desc = await client.get_workflow_handle(workflow_id).describe()
                assert desc.status == WorkflowExecutionStatus.RUNNING

            # Rollback: 1.0 runs again and is made current; the deal's retried task succeeds there.
            async with build_worker(client, v1, stack.sm):
                assert (
                    await set_current_version(
                        client, deployment=deployment, build_id="1.0", identity="test rollback"
                    )
                    == "2.0"
                )

                async def healed() -> bool | None:
                    ids = [w.id async for w in client.list_workflows(query)]
                    return True if not ids else None

                await eventually(healed, 90, "the flag clears after the rollback")
                r = await move(stack.http, h, deal["id"], "proposal")
                assert r.status_code == 200, r.text
                assert r.json()["stage"] == "proposal"
    finally:
        watching.cancel()
        core_log.removeHandler(watch)
