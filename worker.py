"""Runs the Temporal worker: every enabled workflow and activity on one task queue."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.deals import DealActivities
from activities.imports import ImportActivities
from activities.io import IoActivities
from activities.matching import MatchActivities
from db.engine import SessionMaker, make_engine, make_sessionmaker
from db.tenants import all_tenant_ids
from settings import Settings, connect_temporal, get_settings
from workflows.deals import DealWorkflow
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
        await stop.wait()
    await engine.dispose()


def main() -> None:
    """Entry point of `python worker.py` and `sponsorflow worker`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
