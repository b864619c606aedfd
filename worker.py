"""Runs the Temporal worker: every enabled workflow and activity on one task queue."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import MetricMeter, VersioningBehavior, WorkerDeploymentVersion
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import Worker, WorkerDeploymentConfig

import telemetry
from activities import metrics as product_metrics
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
from activities.webhooks import WebhookActivities, ensure_endpoint_workflows, prune_old_deliveries
from db.engine import SessionMaker, make_engine, make_sessionmaker
from settings import Settings, connect_temporal, exit_skipping_teardown, get_settings
from workflows.deals import DealWorkflow
from workflows.imports import ImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.matching import MatchRecalculationWorkflow
from workflows.starters import TASK_PROBLEMS_QUERY, set_current_version, start_maintenance
from workflows.versioning import versioned
from workflows.webhooks import WebhookEndpointWorkflow

# The maintenance singleton runs these (kept importable here for tests and ops scripts).
__all__ = ["reconcile_deal_workflows", "reconcile_match_schedules"]

log = logging.getLogger("sponsorflow.worker")

# sponsorflow_workflow_nondeterminism_total{workflow_type} on the worker's endpoint.
NONDETERMINISM_METRIC = "sponsorflow_workflow_nondeterminism"


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
    if settings.enable_webhooks:
        try:
            hooks = WebhookActivities(sm, settings)
        except ValueError as exc:  # the development secret key outside development
            log.error("webhooks are not delivered by this worker: %s", exc)
        else:
            workflows.append(WebhookEndpointWorkflow)
            activities += [
                hooks.claim_deliveries,
                hooks.deliver_webhook,
                hooks.deliver_webhooks,
                hooks.fail_delivery,
                hooks.disable_endpoint,
                hooks.requeue_deliveries,
                hooks.emit_test_event,
            ]
            plug_check("webhook_workflows", ensure_endpoint_workflows)
            plug_check("webhook_retention", prune_old_deliveries)
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
    everything = [*workflows, *extra_workflows]
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=[versioned(w) for w in everything] if settings.worker_versioning else everything,
        activities=activities,
        deployment_config=deployment_config(settings),
        # SIGTERM (a deploy, `docker compose stop`, Ctrl-C of `up`): stop polling, let running
        # activities finish for this long, then cancel them; the sticky queue is released at once.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_seconds),
        # A SIGKILLed worker cannot release its sticky queue: its cached workflows' next tasks wait
        # this long before another worker replays and runs them (the SDK's default is 10 s).
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.worker_sticky_timeout_seconds),
    )


def deployment_version(settings: Settings) -> WorkerDeploymentVersion:
    """This worker's version: `<SPONSORFLOW_WORKER_DEPLOYMENT>:<build id>`."""
    return WorkerDeploymentVersion(deployment_name=settings.worker_deployment, build_id=settings.build_id)


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """The worker's deployment version, or None for an unversioned worker.

    Every production workflow names its behaviour (workflows/versioning.py); the default covers a
    variant a benchmark or a test registers, and is the one that needs no old build kept alive.
    """
    if not settings.worker_versioning:
        return None
    return WorkerDeploymentConfig(
        version=deployment_version(settings),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.AUTO_UPGRADE,
    )


async def promote_when_polling(client: Client, settings: Settings, *, max_delay: float = 5.0) -> str | None:
    """Makes this worker's version the deployment's current one, retrying until the server agrees.

    The dev stack's way (SPONSORFLOW_WORKER_PROMOTE): with versioned workers and no current
    version, nothing would run new workflows. The server learns a version from its workers' polls
    and refuses it as current until they poll every task queue it knows, hence the retries. A
    version that is already current stays so (the stack's restarts: same build id). Returns the
    version that was current before.
    """
    version = deployment_version(settings)
    delay = 0.2
    while True:
        try:
            previous = await set_current_version(
                client,
                deployment=version.deployment_name,
                build_id=version.build_id,
                identity=f"sponsorflow worker {version.build_id} (SPONSORFLOW_WORKER_PROMOTE)",
            )
        except Exception as exc:  # noqa: BLE001 - not polled yet, or Temporal away: try again
            log.debug("version %s not made current yet (%s); retrying in %gs", version.build_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        if previous != version.build_id:
            log.info(
                "worker deployment %s: version %s is current (was %s)",
                version.deployment_name,
                version.build_id,
                previous or "unversioned",
            )
        return previous


def _nondeterminism(record: logging.LogRecord) -> tuple[str, str] | None:
    """(run id, failure) of an SDK core record that fails a workflow task for non-determinism."""
    fields = getattr(getattr(record, "temporal_log", None), "fields", None) or {}
    failure = str(fields.get("failure", ""))
    run_id = fields.get("run_id")
    if not run_id or ("NonDeterministicError" not in failure and "Nondeterminism" not in failure):
        return None
    start = failure.find('message: "')
    message = failure[start + 10 : failure.find('"', start + 10)] if start >= 0 else failure
    return str(run_id), message


class NondeterminismWatch(logging.Handler):
    """Logs an ERROR naming the workflow whose task fails with a non-determinism error.

    The SDK core detects it during replay and logs a WARNING ("Failing workflow task") that names
    only the run; this handler, on the logger the core's logs are forwarded to, hands the run to
    `run()`, which finds the workflow's id and type in visibility and logs one ERROR line per run
    and minute (the task is retried, so the warning repeats). The task keeps failing and being
    retried (the workflow is not failed): a fix or a rollback lets it carry on where it was.
    A failure the server did not record (no retried task a second later: a stale cached copy on a
    worker that resumed after a freeze, which `make faults` shows) is only a WARNING.
    """

    def __init__(
        self,
        client: Client,
        *,
        repeat_after_s: float = 60.0,
        settle_s: float = 1.0,
        meter: MetricMeter | None = None,
    ) -> None:
        super().__init__(level=logging.WARNING)
        self._client = client
        # One per ERROR line below (the SDK's temporal_workflow_task_execution_failed_total with
        # failure_reason="NonDeterminismError" counts every failed attempt, stale copies too).
        self._counter = (
            meter.create_counter(
                NONDETERMINISM_METRIC,
                "Workflows whose task failed for non-determinism (as logged: once per run and minute).",
            )
            if meter is not None
            else None
        )
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._logged: dict[str, float] = {}
        self._repeat_after_s = repeat_after_s
        self._settle_s = settle_s

    def emit(self, record: logging.LogRecord) -> None:
        """Called by the core's log forwarding, possibly from another thread."""
        found = _nondeterminism(record)
        if found is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, found)

    async def run(self) -> None:
        """Reports each run handed over (until cancelled)."""
        while True:
            run_id, message = await self._queue.get()
            now = time.monotonic()
            if now - self._logged.get(run_id, -self._repeat_after_s) < self._repeat_after_s:
                continue
            self._logged[run_id] = now
            workflow_id, workflow_type, attempt = "(unknown)", "workflow", 0
            try:
                async for found in self._client.list_workflows(f'RunId="{run_id}"', limit=1):
                    workflow_id, workflow_type = found.id, found.workflow_type
                if workflow_id != "(unknown)":
                    # The server retries a task it recorded as failed at once: attempt 2 and up.
                    await asyncio.sleep(self._settle_s)
                    desc = await self._client.get_workflow_handle(workflow_id, run_id=run_id).describe()
                    attempt = desc.raw_description.pending_workflow_task.attempt
            except Exception:  # noqa: BLE001 - the run id alone still says what happened
                log.warning("could not look up run %s in Temporal", run_id, exc_info=True)
            if workflow_id != "(unknown)" and attempt < 2:
                # A stale cached copy (a worker resuming after a freeze) the server had moved past:
                # its task was not recorded as failed, and the next one replays from the history.
                log.warning(
                    "non-determinism on a stale cached copy of %s %s (run %s): %s; the server did not "
                    "record it and the workflow carries on (an ERROR follows if it repeats)",
                    workflow_type,
                    workflow_id,
                    run_id,
                    message,
                )
                self._logged.pop(run_id, None)
                continue
            if self._counter is not None:
                self._counter.add(1, {"workflow_type": workflow_type})
            log.error(
                "NON-DETERMINISM: %s %s (run %s) fails its workflow task on this build (attempt %s): "
                "%s. The task is retried until a compatible build runs it: roll back (set the previous "
                "version current) or deploy a fix. All such workflows: temporal workflow list --query '%s'",
                workflow_type,
                workflow_id,
                run_id,
                attempt or "?",
                message,
                TASK_PROBLEMS_QUERY,
            )


def metrics_config(address: str) -> PrometheusConfig:
    """The worker's Prometheus endpoint on `address`: the SDK's metrics and the product's.

    Prometheus conventions: counters end in `_total`, durations are seconds and end in
    `_seconds` (the SDK's defaults are bare names and milliseconds).
    """
    return PrometheusConfig(
        bind_address=address,
        counters_total_suffix=True,
        unit_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=product_metrics.BUCKETS,
    )


def worker_runtime(core_logger: logging.Logger, *, metrics_address: str = "") -> Runtime:
    """The worker's SDK runtime: the core's logs (warnings and up) go to `core_logger`, and its
    metrics are served on `metrics_address` (host:port; empty: none).

    An address already taken (another stack's worker on this machine, say) is logged as an ERROR
    and the worker runs without metrics rather than not at all.
    """
    logging_config = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=core_logger),
    )
    if metrics_address:
        try:
            runtime = Runtime(
                telemetry=TelemetryConfig(logging=logging_config, metrics=metrics_config(metrics_address))
            )
        except ValueError as exc:  # the SDK's "Failed starting Prometheus exporter: ..."
            log.error(
                "worker metrics NOT served: %s (SPONSORFLOW_WORKER_METRICS_ADDRESS=%s); set it to a "
                "free host:port, or to empty to turn them off",
                exc,
                metrics_address,
            )
        else:
            log.info("worker metrics on http://%s/metrics", metrics_address)
            return runtime
    return Runtime(telemetry=TelemetryConfig(logging=logging_config))


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
    # Tracing (when asked for) before the client: its plugin needs the process's tracer provider.
    telemetry.tracer_provider(settings, service="sponsorflow-worker")
    engine = make_engine(url=settings.database_url, pool_size=settings.db_pool_size)
    telemetry.instrument_engine(engine, settings)
    core_log = logging.getLogger("sponsorflow.worker.sdk")
    runtime = worker_runtime(core_log, metrics_address=settings.worker_metrics_address)
    client = await connect_temporal(settings, runtime=runtime)
    watch = NondeterminismWatch(client, meter=runtime.metric_meter)
    core_log.addHandler(watch)
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
    if settings.worker_versioning:
        log.info(
            "worker polling task queue %s as version %s of worker deployment %s%s",
            settings.temporal_task_queue,
            settings.build_id,
            settings.worker_deployment,
            " (making it current)" if settings.promotes else "",
        )
    else:
        log.info("worker polling task queue %s (unversioned)", settings.temporal_task_queue)
    async with worker:
        # In the background: the worker polls at once; schedules and the open-deal sweep are the
        # singleton's rounds, not this start's.
        background: list[asyncio.Task[Any]] = [
            asyncio.create_task(keep_maintenance_running(client, settings)),
            asyncio.create_task(watch.run()),
        ]
        if settings.worker_versioning and settings.promotes:
            background.append(asyncio.create_task(promote_when_polling(client, settings)))
        await stop.wait()
        for task in background:
            task.cancel()
    # Only now: the activities that drained above still needed the engine.
    await engine.dispose()
    log.info("worker stopped")


def main() -> None:
    """Entry point of `python worker.py` and `sponsorflow worker`."""
    settings = get_settings()
    # Text (`time LEVEL logger message`) or JSON lines with the workflow/run/trace ids; redacted.
    telemetry.configure_logging(settings, service="sponsorflow-worker")
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
    exit_skipping_teardown(0)
