"""MaintenanceWorkflow: the deployment's one housekeeping loop (schedules, sweep, drift repair).

Every worker starts it at start-up with USE_EXISTING, so exactly one runs per task queue and
namespace however many replicas there are; the work it does is no longer on any worker's
start path. Each round (a durable timer apart) runs its phases as activities that never fail it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.maintenance import MaintenanceActivities
    from domain.maintenance import (
        LoadMaintenanceConfigInput,
        MaintenanceConfig,
        MaintenanceInput,
        MaintenanceRound,
        MaintenanceStatus,
        PluggedChecksInput,
        ReconcileSchedulesInput,
        RepairDealDriftInput,
        RunNowInput,
        SweepOpenDealsInput,
    )

# A phase walks every tenant; a worker that dies mid-phase is noticed within the heartbeat
# timeout and the retry resumes after the last tenant done. After its retries a phase is
# reported as failed and the next round tries again: the loop itself never fails.
_PHASE_TIMEOUT = timedelta(minutes=30)
_PHASE_HEARTBEAT = timedelta(minutes=2)
_PHASE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3)
_CONFIG_TIMEOUT = timedelta(seconds=10)


@workflow.defn
class MaintenanceWorkflow:
    """Runs a maintenance round every few seconds, forever, continuing as new every N rounds."""

    @workflow.init
    def __init__(self, inp: MaintenanceInput) -> None:
        self._inp = inp
        self._config = inp.config or MaintenanceConfig()
        self._rounds_done = inp.rounds_done
        self._rounds_this_run = 0
        self._checked_until = inp.drift_checked_until
        self._in_round = False
        self._run_now = False
        self._last: MaintenanceRound | None = None
        self._next_round_at: datetime | None = None

    @workflow.run
    async def run(self, inp: MaintenanceInput) -> None:
        """Round, wait, round...; continue-as-new once the run has done its share of rounds."""
        workflow.set_current_details("starting: the first round runs at once")
        due = inp.round_at_start
        while True:
            if not due:
                await self.wait_for_next_round()
            due = False
            await self.run_round(full=self._run_now or (inp.round_at_start and self._rounds_this_run == 0))
            if (
                self._rounds_this_run >= self._config.rounds_per_run
                or workflow.info().is_continue_as_new_suggested()
            ):
                # A run_now that arrived meanwhile is answered by one more round first.
                await workflow.wait_condition(lambda: workflow.all_handlers_finished() or self._run_now)
                if not self._run_now:
                    workflow.continue_as_new(self._carry_over())

    async def wait_for_next_round(self) -> None:
        """A durable timer of `every_seconds`, cut short by run_now."""
        every = timedelta(seconds=self._config.every_seconds)
        self._next_round_at = workflow.now() + every
        try:
            await workflow.wait_condition(lambda: self._run_now, timeout=every, timeout_summary="next round")
        except TimeoutError:
            pass

    async def run_round(self, *, full: bool) -> None:
        """One round: config, then (a) schedules, (b) sweep, (c) drift, (d) plugged checks."""
        self._in_round, self._run_now = True, False
        number = self._rounds_done + 1
        report = MaintenanceRound(round=number, started_at=workflow.now())
        config = await self.load_config(number)
        if config is not None:
            self._config = config
        c = self._config
        tenants = self._inp.tenant_ids
        if full or number % max(c.schedules_every_rounds, 1) == 0:
            report.schedules = await self._phase(
                "schedules",
                report,
                MaintenanceActivities.reconcile_schedules,
                ReconcileSchedulesInput(tenant_ids=tenants),
            )
        if full or number % max(c.sweep_every_rounds, 1) == 0:
            report.sweep = await self._phase(
                "sweep",
                report,
                MaintenanceActivities.sweep_open_deals,
                SweepOpenDealsInput(tenant_ids=tenants),
            )
        until = workflow.now() - timedelta(seconds=c.drift_settle_seconds)
        oldest = until - timedelta(seconds=c.drift_max_lookback_seconds)
        since = oldest
        if self._checked_until is not None:
            # Overlap the last window: a stage write is stamped when its workflow task began
            # and may commit a little later.
            since = max(oldest, self._checked_until - timedelta(seconds=c.drift_overlap_seconds))
        report.drift = await self._phase(
            "drift",
            report,
            MaintenanceActivities.repair_deal_drift,
            RepairDealDriftInput(tenant_ids=tenants, since=since, until=until),
        )
        if report.drift is not None:
            self._checked_until = until
        if c.plugged_checks:
            report.plugged = await self._phase(
                "plugged checks",
                report,
                MaintenanceActivities.run_plugged_checks,
                PluggedChecksInput(tenant_ids=tenants, checks=c.plugged_checks, round=number),
            )
        self._last = report
        self._rounds_done = number
        self._rounds_this_run += 1
        self._in_round = False
        workflow.set_current_details(report.summary())

    async def load_config(self, number: int) -> MaintenanceConfig | None:
        """The worker's settings for this round (None: keep the last ones)."""
        try:
            result = await workflow.execute_local_activity_method(
                MaintenanceActivities.load_maintenance_config,
                LoadMaintenanceConfigInput(round=number),
                start_to_close_timeout=_CONFIG_TIMEOUT,
                retry_policy=_PHASE_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("maintenance config could not be loaded; keeping the last one")
            return None
        return result.config

    async def _phase(self, name: str, report: MaintenanceRound, fn: Any, arg: Any) -> Any:
        """Runs one phase's activity; a failure after its retries is reported, not raised."""
        try:
            return await workflow.execute_activity_method(
                fn,
                arg,
                start_to_close_timeout=_PHASE_TIMEOUT,
                heartbeat_timeout=_PHASE_HEARTBEAT,
                retry_policy=_PHASE_RETRY,
            )
        except ActivityError as exc:
            workflow.logger.warning("maintenance phase %s failed: %s", name, exc.cause or exc)
            report.errors.append(name)
            return None

    @workflow.update
    async def run_now(self, inp: RunNowInput) -> MaintenanceRound:
        """Runs a full round (every phase) at once and returns its report."""
        # A round already under way may have skipped phases: wait for the one after it.
        target = self._rounds_done + (2 if self._in_round else 1)
        self._run_now = True
        await workflow.wait_condition(lambda: self._rounds_done >= target)
        assert self._last is not None
        return self._last

    @workflow.query
    def status(self) -> MaintenanceStatus:
        """Rounds done, the last round's report, and when the next round is due."""
        return MaintenanceStatus(
            rounds_done=self._rounds_done, last_round=self._last, next_round_at=self._next_round_at
        )

    def _carry_over(self) -> MaintenanceInput:
        return self._inp.model_copy(
            update={
                "rounds_done": self._rounds_done,
                "drift_checked_until": self._checked_until,
                "round_at_start": False,
                "config": self._config,
            }
        )
