"""Both metrics endpoints in the real stack: after a stage move, an import and an IO delivery, the
API's /metrics and the worker's Prometheus endpoint parse with prometheus_client's parser and the
counters moved by exactly what was done (read before, act, read after).

The worker runs on a client connected through a Runtime that serves metrics on a free port (one
Runtime per test session: each holds its own threads and HTTP server)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.conftest import Stack, start_stack
from tests.helpers.factories import ad_unit, book_io, make_advertiser, make_deal, move
from tests.helpers.imports import upload
from tests.helpers.io import TODAY, deliver, io_until
from tests.helpers.receivers import receiver
from tests.helpers.unversioned_incompatible import UnversionedIncompatibleDeal
from worker import NondeterminismWatch, build_worker, registrations, worker_runtime
from workflows.starters import DEAL_RESYNC_SIGNAL

PATCH_ROUTE = "/api/v1/deals/{campaign_id}/stage"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A Runtime serving the SDK's Prometheus endpoint, and where."""

    runtime: Runtime
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    """The worker's Runtime as `sponsorflow worker` builds it, bound to a free port."""
    address = f"127.0.0.1:{_free_port()}"
    yield Served(worker_runtime(logging.getLogger("tests.sdk"), metrics_address=address), address)


@dataclass
class MetricsStack:
    """The in-process API plus a worker whose client runs on the metrics Runtime."""

    stack: Stack
    worker_url: str
    worker_client: Client

    async def api(self) -> Samples:
        r = await self.stack.http.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return Samples(r.text)

    async def worker(self) -> Samples:
        return await scrape(self.worker_url)


class Samples:
    """A scrape, parsed with prometheus_client's parser."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample: str, **labels: str) -> float:
        """The sum of the samples named `sample` whose labels include `labels` (0 when none)."""
        return sum(
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, sample: str, label: str) -> set[str]:
        """Every value `label` takes among the samples named `sample`."""
        return {
            s.labels[label]
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and label in s.labels
        }


@pytest.fixture
async def metrics_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, served: Served
) -> AsyncIterator[MetricsStack]:
    """The API (its own Temporal client, with the metrics interceptor) and a metrics-serving worker."""
    worker_client = await served_client(client, served)
    async for stack in start_stack(database, client, sm, worker=False):
        async with AsyncExitStack() as running:
            await running.enter_async_context(build_worker(worker_client, stack.settings, sm))
            yield MetricsStack(stack, served.url, worker_client)


async def served_client(client: Client, served: Served) -> Client:
    """A client of the session's server on the metrics Runtime (what a worker process connects)."""
    return await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=pydantic_data_converter,
        runtime=served.runtime,
    )


async def scrape(url: str) -> Samples:
    """The worker endpoint's samples."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    return Samples(r.text)


def _tq(ms: MetricsStack) -> dict[str, str]:
    return {"task_queue": ms.stack.settings.temporal_task_queue}


async def test_a_stage_move_moves_the_counters_by_one(metrics_stack: MetricsStack) -> None:
    ms, stack = metrics_stack, metrics_stack.stack
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    api0, worker0 = await ms.api(), await ms.worker()

    r = await move(stack.http, h, deal["id"], "qualified")
    assert r.status_code == 200, r.text
    again = await move(stack.http, h, deal["id"], "qualified")  # a no-op: 200, nothing written
    assert again.status_code == 200, again.text
    api1, worker1 = await ms.api(), await ms.worker()
    refused = await move(stack.http, h, deal["id"], "won")  # the validator refuses: 409
    assert refused.status_code == 409, refused.text
    api2, worker2 = await ms.api(), await ms.worker()

    requests = "sponsorflow_http_requests_total"
    patch = {"method": "PATCH", "route": PATCH_ROUTE}
    assert api1.value(requests, status="200", **patch) - api0.value(requests, status="200", **patch) == 2
    assert api2.value(requests, status="409", **patch) - api1.value(requests, status="409", **patch) == 1
    latency = "sponsorflow_http_request_duration_seconds_count"
    assert api2.value(latency, **patch) - api0.value(latency, **patch) == 3
    # The template, never the raw path; the scrape itself is the one request in flight.
    assert not any(deal["id"] in r for r in api2.label_values(requests, "route"))
    assert api2.value("sponsorflow_http_requests_in_flight") == 1
    # A move is one update-with-start of a DealWorkflow; a refusal is an answer, not a client error
    # (the fence confirms it with a second call).
    calls = {"operation": "update_with_start", "workflow_type": "DealWorkflow"}
    took = "sponsorflow_temporal_client_request_duration_seconds_count"
    assert api1.value(took, **calls) - api0.value(took, **calls) == 2
    assert api2.value(took, **calls) - api1.value(took, **calls) >= 1
    assert api2.value("sponsorflow_temporal_client_errors_total") == api0.value(
        "sponsorflow_temporal_client_errors_total"
    )
    # The pool, read at scrape time.
    assert api2.value("sponsorflow_db_pool_size") == stack.settings.db_pool_size
    assert api2.value("sponsorflow_db_pool_checked_out") >= 0

    # The worker: one move written (the no-op and the refusal write nothing) ...
    moves = "sponsorflow_deal_stage_moves_total"
    labels = {"from": "lead", "to": "qualified", **_tq(ms)}
    assert worker1.value(moves, **labels) - worker0.value(moves, **labels) == 1
    assert worker2.value(moves, **_tq(ms)) - worker0.value(moves, **_tq(ms)) == 1
    # ... out of the same endpoint as the SDK's own metrics, in Prometheus units.
    tasks = "temporal_workflow_task_execution_latency_seconds_count"
    dealt = {"workflow_type": "DealWorkflow", **_tq(ms)}
    assert worker2.value(tasks, **dealt) > worker0.value(tasks, **dealt)
    labels_seen = {label for f in worker2.families.values() for s in f.samples for label in s.labels}
    assert not any("tenant" in label for label in labels_seen), labels_seen


async def test_an_import_counts_its_rows_and_row_errors(metrics_stack: MetricsStack) -> None:
    ms, stack = metrics_stack, metrics_stack.stack
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    api0, worker0 = await ms.api(), await ms.worker()

    csv = (
        b"external_id,name,avg_downloads\n"
        b"s-1,Alpha Cast,1000\n"
        b"s-2,Beta Hour,lots\n"
        b"s-3,Gamma Talk,3000\n"
        b"s-4,,4000\n"
    )
    status = await upload(stack, h, "shows", "shows.csv", csv)
    assert status["status"] == "completed_with_errors", status
    assert (status["rows_processed"], status["rows_failed"]) == (4, 2)

    api1, worker1 = await ms.api(), await ms.worker()
    rows = "sponsorflow_import_rows_total"
    assert worker1.value(rows, kind="shows", **_tq(ms)) - worker0.value(rows, kind="shows", **_tq(ms)) == 4
    errors = "sponsorflow_import_row_errors_total"
    for column in ("avg_downloads", "name"):
        got = worker1.value(errors, kind="shows", column=column, **_tq(ms))
        assert got - worker0.value(errors, kind="shows", column=column, **_tq(ms)) == 1, column
    upload_ok = {"method": "POST", "route": "/api/v1/etl/upload", "status": "202"}
    took = api1.value("sponsorflow_http_requests_total", **upload_ok)
    assert took - api0.value("sponsorflow_http_requests_total", **upload_ok) == 1
    start = {"operation": "start", "workflow_type": "CsvImportWorkflow"}
    took = "sponsorflow_temporal_client_request_duration_seconds_count"
    assert api1.value(took, **start) - api0.value(took, **start) == 1
    # The SDK's activity metrics for the import's activities, on the same endpoint.
    acts = "temporal_activity_execution_latency_seconds_count"
    assert (
        worker1.value(acts, activity_type="load_rows", **_tq(ms))
        - worker0.value(acts, activity_type="load_rows", **_tq(ms))
        == 1
    )


async def test_an_io_delivery_report_counts_once(metrics_stack: MetricsStack) -> None:
    ms, stack = metrics_stack, metrics_stack.stack
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    advertiser = await make_advertiser(stack.http, h)
    deal = await make_deal(stack.http, h, advertiser=advertiser, stage="won")
    r = await book_io(
        stack.http,
        h,
        deal["id"],
        [ad_unit(deal["show_id"], TODAY, impressions_goal=10000)],
        measurement_window_days=7,
    )
    assert r.status_code == 201, r.text
    io = r.json()
    unit = io["ad_units"][0]["id"]
    await io_until(stack, h, io["id"], lambda x: x["ad_units"][0]["status"] == "aired")
    api0, worker0 = await ms.api(), await ms.worker()

    await deliver(stack, h, io["id"], unit, 4000)
    await deliver(stack, h, io["id"], unit, 6000)

    api1, worker1 = await ms.api(), await ms.worker()
    reported = "sponsorflow_io_deliveries_reported_total"
    assert worker1.value(reported, via="api", **_tq(ms)) - worker0.value(reported, via="api", **_tq(ms)) == 2
    route = {"method": "POST", "route": "/api/v1/io/{io_id}/delivery", "status": "200"}
    took = api1.value("sponsorflow_http_requests_total", **route)
    assert took - api0.value("sponsorflow_http_requests_total", **route) == 2
    update = {"operation": "update", "workflow_type": "IoBookingWorkflow"}
    took = "sponsorflow_temporal_client_request_duration_seconds_count"
    assert api1.value(took, **update) - api0.value(took, **update) == 2


async def test_webhook_attempts_are_counted_by_result(metrics_stack: MetricsStack) -> None:
    ms, stack = metrics_stack, metrics_stack.stack
    h = stack.auth(await stack.new_tenant())
    async with receiver("error", "ok") as r:
        created = await stack.http.post(
            "/api/v1/webhooks", json={"url": r.url, "event_types": ["deal.stalled"]}, headers=h
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        worker0 = await ms.worker()
        sent = await stack.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)
        assert sent.status_code == 202, sent.text
        await r.wait_for(2, timeout=30)

        attempts = "sponsorflow_webhook_attempts_total"

        async def counted() -> bool:
            worker1 = await ms.worker()
            moved = {
                result: worker1.value(attempts, result=result, format="standard", **_tq(ms))
                - worker0.value(attempts, result=result, format="standard", **_tq(ms))
                for result in ("http_5xx", "delivered")
            }
            return moved == {"http_5xx": 1, "delivered": 1}

        for _ in range(50):  # the second attempt's row commits a moment after the receiver saw it
            if await counted():
                break
            await asyncio.sleep(0.1)
        assert await counted()


async def test_a_metrics_path_that_is_off_or_moved(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, worker=False, api_metrics_path=""):
        assert (await stack.http.get("/metrics")).status_code == 404
        assert (await stack.http.get("/healthz")).status_code == 200
    async for stack in start_stack(database, client, sm, worker=False, api_metrics_path="/ops/metrics"):
        assert (await stack.http.get("/metrics")).status_code == 404
        r = await stack.http.get("/ops/metrics")
        assert r.status_code == 200 and "sponsorflow_http_requests_total" in r.text
        # The scrape route is no API operation.
        assert "/ops/metrics" not in (await stack.http.get("/openapi.json")).json()["paths"]


def test_a_taken_metrics_port_leaves_the_worker_running_without_metrics(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="sponsorflow.worker"):
        runtime = worker_runtime(logging.getLogger("tests.sdk"), metrics_address=served.address)
    assert isinstance(runtime, Runtime)
    assert any("worker metrics NOT served" in r.getMessage() for r in caplog.records)


async def test_a_nondeterminism_error_is_counted_once_per_workflow(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, served: Served
) -> None:
    worker_client = await served_client(client, served)
    # The SDK core's logs of the session Runtime reach the watch, as in `sponsorflow worker`.
    core_log = logging.getLogger("tests.sdk")
    watch = NondeterminismWatch(worker_client, meter=served.runtime.metric_meter)
    core_log.addHandler(watch)
    watching = asyncio.create_task(watch.run())
    counted = "sponsorflow_workflow_nondeterminism_total"
    try:
        async for stack in start_stack(database, client, sm, worker=False):
            h = stack.auth(await stack.new_tenant())
            async with build_worker(worker_client, stack.settings, sm):
                deal = await make_deal(stack.http, h)
                assert (await move(stack.http, h, deal["id"], "qualified")).status_code == 200
            before = (await scrape(served.url)).value(counted, workflow_type="DealWorkflow")
            # A release that changed DealWorkflow's commands unpatched replays the deal and fails.
            _, activities = registrations(stack.settings, sm)
            bad = Worker(
                worker_client,
                task_queue=stack.settings.temporal_task_queue,
                workflows=[UnversionedIncompatibleDeal],
                activities=activities,
            )
            async with bad:
                await worker_client.get_workflow_handle(deal["workflow_id"]).signal(DEAL_RESYNC_SIGNAL)
                for _ in range(150):
                    now = (await scrape(served.url)).value(counted, workflow_type="DealWorkflow")
                    if now > before:
                        break
                    await asyncio.sleep(0.2)
                # Retried tasks fail again; the counter follows the ERROR line: once per run and minute.
                await asyncio.sleep(2)
                now = (await scrape(served.url)).value(counted, workflow_type="DealWorkflow")
                assert now - before == 1
    finally:
        watching.cancel()
        core_log.removeHandler(watch)
