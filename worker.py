"""Runs the Temporal worker: every enabled workflow and activity on one task queue."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.deals import DealActivities
from activities.imports import ImportActivities, repair_stuck_imports
from activities.io import IoActivities, io_drift
from activities.maintenance import (
    MaintenanceActivities,
    plug_check,
    reconcile_deal_workflows,
    reconcile_match_schedules,
)
from activities.matching import MatchActivities
from db.engine import SessionMaker, make_engine, make_sessionmaker
from settings import Settings, connect_temporal, exit_skipping_teardown, get_settings
from workflows.deals import DealWorkflow
from workflows.imports import ImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.matching import MatchRecalculationWorkflow
from workflows.starters import start_maintenance

# The maintenance singleton runs these (kept importable here for tests and ops scripts).
__all__ = ["reconcile_deal_workflows", "reconcile_match_schedules"]

log = logging.getLogger("sponsorflow.worker")


async def _close_stuck_imports(
    client: Client, settings: Settings, sm: SessionMaker, tenant_id: uuid.UUID
) -> int:
    """Maintenance check: imports whose workflow ended without closing them are closed with a reason."""
    found = await repair_stuck_imports(
        sm=sm, client=client, tenant_id=tenant_id, older_than=timedelta(seconds=60)
    )
    return found.closed


async def _report_io_drift(client: Client, settings: Settings, sm: SessionMaker, tenant_id: uuid.UUID) -> int:
    """Maintenance check: IOs whose row, workflow and IoStatus disagree (logged for ops; IO writes are
    regular activities, so this is expected to stay at 0)."""
    drifted = await io_drift(client, sm, tenant_id)
    for d in drifted:
        log.warning("IO %s drifted: %s", d.workflow_id, d.reason)
    return len(drifted)


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
            io.reserve_io,
            io.load_io,
            io.mark_aired,
            io.record_delivery,
            io.book_makegood,
            io.cancel_io,
            io.record_delivery_overdue,
            io.close_delivery,
            io.complete_io,
        ]
        plug_check("io_drift", _report_io_drift)
    if settings.enable_matchmaking:
        matching = MatchActivities(sm)
        workflows.append(MatchRecalculationWorkflow)
        activities.append(matching.recalculate_matches)
    if settings.enable_etl_csv_upload:
        imports = ImportActivities(
            sm, stall_days=settings.stall_days, moves_per_run=settings.deal_moves_per_run
        )
        workflows.append(ImportWorkflow)
        activities += [
            imports.mark_import,
            imports.load_rows,
            imports.start_deal_workflows,
            imports.trigger_match_recalculation,
            imports.repair_stuck_imports,
        ]
        plug_check("stuck_imports", _close_stuck_imports)
    # Whatever the flags: its phases skip the features that are off.
    maintenance = MaintenanceActivities(sm, settings)
    workflows.append(MaintenanceWorkflow)
    activities += [
        maintenance.load_maintenance_config,
        maintenance.reconcile_schedules,
        maintenance.sweep_open_deals,
        maintenance.repair_deal_drift,
        maintenance.run_plugged_checks,
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
        # SIGTERM (a deploy, `docker compose stop`, Ctrl-C of `up`): stop polling, let running
        # activities finish for this long, then cancel them; the sticky queue is released at once.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_seconds),
        # A SIGKILLed worker cannot release its sticky queue: its cached workflows' next tasks wait
        # this long before another worker replays and runs them (the SDK's default is 10 s).
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.worker_sticky_timeout_seconds),
    )


async def keep_maintenance_running(client: Client, settings: Settings) -> None:
    """Makes sure the deployment's maintenance singleton runs, from every worker, in the background.

    USE_EXISTING: the first worker starts it, every other one finds it. A failure (Temporal
    unreachable) is logged and retried with backoff; it never stops the worker. Once running,
    it is checked again now and then, so a terminated singleton comes back.
    """
    failures, seen_run = 0, None
    while True:
        try:
            handle = await start_maintenance(client, settings.temporal_task_queue)
        except Exception:  # noqa: BLE001 - the worker polls on; the next attempt comes soon
            failures += 1
            delay = min(2.0**failures, settings.maintenance_ensure_seconds)
            log.warning("maintenance workflow not started; retrying in %gs", delay, exc_info=True)
        else:
            if handle.result_run_id != seen_run:
                log.info("maintenance workflow %s running (run %s)", handle.id, handle.result_run_id)
                seen_run = handle.result_run_id
            failures, delay = 0, settings.maintenance_ensure_seconds
        await asyncio.sleep(delay)


def tune_gc(threshold: int) -> None:
    """Freezes the start-up heap out of the cyclic collector and raises its young threshold.

    A running import keeps about three chunks of parsed rows alive (30,000 dicts and lists).
    With CPython's default threshold (700 allocations) the collector ran ~600 times during a
    100,000-row `shows` file and traversed the worker's start-up heap (150,000 objects) in every
    full pass: 0.7 s of the worker's 1.6 s of CPU (bench/import_kinds). Frozen objects are never
    traversed; the higher threshold makes the young collections fewer and larger. 0 keeps
    CPython's defaults.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 20, 20)


async def run_worker(settings: Settings | None = None) -> None:
    """Connects, runs until SIGINT/SIGTERM, then drains and disposes the engine."""
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("SPONSORFLOW_DATABASE_URL is not set (use `sponsorflow up` for a dev stack)")
    engine = make_engine(url=settings.database_url, pool_size=settings.db_pool_size)
    client = await connect_temporal(settings)
    sm = make_sessionmaker(engine=engine)
    worker = build_worker(client, settings, sm)
    tune_gc(settings.worker_gc_threshold)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    drain_s = settings.worker_shutdown_seconds

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s: already draining", sig.name)
            return
        log.info(
            "%s: draining; running activities get up to %gs to finish",
            sig.name,
            drain_s,
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    log.info("worker polling task queue %s", settings.temporal_task_queue)
    async with worker:
        # In the background: the worker polls at once; schedules and the open-deal sweep are the
        # singleton's rounds, not this start's.
        maintenance = asyncio.create_task(keep_maintenance_running(client, settings))
        await stop.wait()
        maintenance.cancel()
    # Only now: the activities that drained above still needed the engine.
    await engine.dispose()
    log.info("worker stopped")


def main() -> None:
    """Entry point of `python worker.py` and `sponsorflow worker`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
    exit_skipping_teardown(0)
