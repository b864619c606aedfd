"""Runs the Temporal worker: every enabled workflow and activity on one task queue."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.deals import DealActivities
from activities.imports import ImportActivities
from activities.io import IoActivities
from activities.matching import MatchActivities
from db.deals import deal_seed, open_deals_page
from db.engine import SessionMaker, make_engine, make_sessionmaker, tenant_tx
from db.tenants import all_tenant_ids
from settings import Settings, connect_temporal, get_settings
from workflows import search_attributes as sa
from workflows.deals import DealWorkflow, deal_workflow_id, start_deal_workflows
from workflows.imports import CsvImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.matching import MatchRecalculationWorkflow, ensure_match_schedule

log = logging.getLogger("sponsorflow.worker")


def registrations(settings: Settings, sm: SessionMaker) -> tuple[list[type], list[Any]]:
    """Returns the workflows and activities this worker runs, honouring the feature flags."""
    workflows: list[type] = []
    activities: list[Any] = []
    if settings.enable_deal_pipeline:
        deals = DealActivities(sm)
        workflows.append(DealWorkflow)
        activities += [deals.record_stage_change, deals.record_stall, deals.load_deal]
    if settings.enable_io_bookings:
        io = IoActivities(sm)
        workflows.append(IoBookingWorkflow)
        activities += [
            io.load_io,
            io.mark_aired,
            io.record_delivery,
            io.book_makegood,
            io.cancel_io,
            io.complete_io,
        ]
    if settings.enable_matchmaking:
        matching = MatchActivities(sm)
        workflows.append(MatchRecalculationWorkflow)
        activities.append(matching.recalculate_matches)
    if settings.enable_etl_csv_upload:
        imports = ImportActivities(
            sm, stall_days=settings.stall_days, moves_per_run=settings.deal_moves_per_run
        )
        workflows.append(CsvImportWorkflow)
        activities += [
            imports.mark_import,
            imports.load_rows,
            imports.start_deal_workflows,
            imports.trigger_match_recalculation,
        ]
    return workflows, activities


def build_worker(
    client: Client,
    settings: Settings,
    sm: SessionMaker,
    *,
    task_queue: str | None = None,
    extra_workflows: Sequence[type] = (),
) -> Worker:
    """Builds the worker for `settings` (tests pass their own task queue)."""
    workflows, activities = registrations(settings, sm)
    if not workflows and not extra_workflows:
        raise SystemExit("every feature flag is off: this worker has nothing to run")
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=[*workflows, *extra_workflows],
        activities=activities,
    )


async def reconcile_deal_workflows(
    client: Client,
    settings: Settings,
    sm: SessionMaker,
    *,
    tenant_ids: Sequence[uuid.UUID] | None = None,
    concurrency: int = 8,
) -> dict[uuid.UUID, int]:
    """Starts the workflow of every open deal that has none running; returns how many per tenant.

    POST /deals and imports start a deal's workflow, and a PATCH's update-with-start starts one on
    first touch; a deal whose start failed (Temporal down at the time) would otherwise have no
    stall timer until it is first moved. Visibility names the running ones; the rest are started
    with USE_EXISTING, so a workflow started meanwhile (or not yet visible) is simply found.
    """
    if not settings.enable_deal_pipeline:
        return {}
    out: dict[uuid.UUID, int] = {}
    for tenant_id in await all_tenant_ids(sm=sm) if tenant_ids is None else tenant_ids:
        query = (
            f"WorkflowType = 'DealWorkflow' AND ExecutionStatus = 'Running' "
            f"AND {sa.TENANT_ID.name} = '{tenant_id}'"
        )
        running = {wf.id async for wf in client.list_workflows(query, page_size=1000)}
        started, after = 0, uuid.UUID(int=0)
        while True:
            async with tenant_tx(sm, tenant_id) as session:
                page = await open_deals_page(session, after=after, limit=500)
            if not page:
                break
            after = page[-1].campaign.id
            seeds = [
                deal_seed(row, stall_days=settings.stall_days, moves_per_run=settings.deal_moves_per_run)
                for row in page
            ]
            missing = [s for s in seeds if deal_workflow_id(s.tenant_id, s.campaign_id) not in running]
            started += await start_deal_workflows(
                client, missing, settings.temporal_task_queue, concurrency=concurrency
            )
        if started:
            out[tenant_id] = started
    return out


async def _reconcile_in_background(client: Client, settings: Settings, sm: SessionMaker) -> None:
    try:
        started = await reconcile_deal_workflows(client, settings, sm)
    except Exception:  # noqa: BLE001 - the worker runs on; the next start tries again
        log.warning("starting the workflows of open deals that had none failed", exc_info=True)
        return
    for tenant_id, n in started.items():
        log.info("started %d missing deal workflow(s) of tenant %s", n, tenant_id)


async def reconcile_match_schedules(client: Client, settings: Settings, sm: SessionMaker) -> int:
    """Makes sure every tenant has its recalculation schedule (once); returns how many were created."""
    if not settings.enable_matchmaking:
        return 0
    created = 0
    every = timedelta(hours=settings.match_recalc_every_hours)
    for tenant_id in await all_tenant_ids(sm=sm):
        if await ensure_match_schedule(client, str(tenant_id), settings.temporal_task_queue, every):
            created += 1
    return created


async def run_worker(settings: Settings | None = None) -> None:
    """Connects, runs until SIGINT/SIGTERM, then drains and disposes the engine."""
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("SPONSORFLOW_DATABASE_URL is not set (use `sponsorflow up` for a dev stack)")
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    client = await connect_temporal(settings)
    sm = make_sessionmaker(engine)
    worker = build_worker(client, settings, sm)
    created = await reconcile_match_schedules(client, settings, sm)
    if created:
        log.info("created %d missing match recalculation schedule(s)", created)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling task queue %s", settings.temporal_task_queue)
    async with worker:
        # In the background: the worker polls at once, however many deals there are.
        sweep = asyncio.create_task(_reconcile_in_background(client, settings, sm))
        await stop.wait()
        sweep.cancel()
    await engine.dispose()


def main() -> None:
    """Entry point of `python worker.py` and `sponsorflow worker`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker())


if __name__ == "__main__":
    from cli import exit_skipping_teardown

    main()
    exit_skipping_teardown(0)
