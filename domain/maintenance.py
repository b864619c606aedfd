"""Inputs and results of MaintenanceWorkflow and its activities (part of its history contract)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class MaintenanceConfig(BaseModel):
    """The worker's maintenance settings, read once per round so a deploy changes them."""

    every_seconds: float = 30.0
    rounds_per_run: int = 100
    schedules_every_rounds: int = 10
    sweep_every_rounds: int = 20
    drift_settle_seconds: float = 5.0
    drift_overlap_seconds: float = 120.0
    drift_max_lookback_seconds: float = 86_400.0
    # Names of the checks plugged into `run_plugged_checks` (none yet: IO drift, stuck imports).
    plugged_checks: list[str] = Field(default_factory=list)


class MaintenanceInput(BaseModel):
    """Starts (or continues) the deployment's one maintenance workflow."""

    # None: every tenant. A list narrows every round to those tenants (tests, or ops
    # running a one-off maintenance of a few tenants under another workflow id).
    tenant_ids: list[str] | None = None
    # Rounds done by earlier runs of this workflow id (continue-as-new carries it).
    rounds_done: int = 0
    # Deal rows changed before this instant were compared already (None: never yet).
    drift_checked_until: datetime | None = None
    # False after continue-as-new: the first round then waits its interval like any other.
    round_at_start: bool = True
    # The settings the last run followed (continue-as-new carries them to its first wait).
    config: MaintenanceConfig | None = None


class LoadMaintenanceConfigInput(BaseModel):
    """Asks the worker for its maintenance settings."""

    round: int


class LoadMaintenanceConfigResult(BaseModel):
    """The settings the next round follows."""

    config: MaintenanceConfig


class TenantFailure(BaseModel):
    """One tenant a phase could not handle this round (the others were handled)."""

    tenant_id: str
    error: str


class PhaseResult(BaseModel):
    """What every phase reports besides its counts: the tenants it could not handle."""

    failed: list[TenantFailure] = Field(default_factory=list)


class ReconcileSchedulesInput(BaseModel):
    """Phase (a): every tenant's match schedule brought to the configured spec."""

    tenant_ids: list[str] | None = None


class ReconcileSchedulesResult(PhaseResult):
    """What phase (a) did."""

    tenants: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        """Schedules written this round (created or updated)."""
        return self.created + self.updated


class SweepOpenDealsInput(BaseModel):
    """Phase (b): start the workflow of each open deal that has none running."""

    tenant_ids: list[str] | None = None


class SweepOpenDealsResult(PhaseResult):
    """What phase (b) did."""

    tenants: int = 0
    started: int = 0


class RepairDealDriftInput(BaseModel):
    """Phase (c): deal rows changed in [since, until) compared with their workflows."""

    tenant_ids: list[str] | None = None
    since: datetime
    until: datetime


class RepairDealDriftResult(PhaseResult):
    """What phase (c) did: `resynced` workflows were sent the `resync` signal."""

    tenants: int = 0
    checked: int = 0
    without_workflow: int = 0
    resynced: int = 0
    resynced_ids: list[str] = Field(default_factory=list)


class PluggedChecksInput(BaseModel):
    """Phase (d): the checks other features plug in, by name."""

    tenant_ids: list[str] | None = None
    checks: list[str]
    round: int


class PluggedChecksResult(PhaseResult):
    """Per check, how many things it repaired; and the tenants or checks that failed."""

    repaired: dict[str, int] = Field(default_factory=dict)


class MaintenanceRound(BaseModel):
    """One round's report: what each phase did (None: not run this round) and what failed."""

    round: int
    started_at: datetime
    schedules: ReconcileSchedulesResult | None = None
    sweep: SweepOpenDealsResult | None = None
    drift: RepairDealDriftResult | None = None
    plugged: PluggedChecksResult | None = None
    # Phases whose activity failed outright (after its retries); the next round tries again.
    errors: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """The line the Temporal UI shows as the workflow's current details."""
        parts = []
        if self.schedules is not None:
            parts.append(_count(self.schedules.changed, "schedule changed", "schedules changed"))
        if self.sweep is not None:
            parts.append(_count(self.sweep.started, "deal workflow started", "deal workflows started"))
        if self.drift is not None:
            parts.append(_count(self.drift.resynced, "drifted deal resynced", "drifted deals resynced"))
        if self.plugged is not None:
            parts += [f"{n} repaired by {name}" for name, n in sorted(self.plugged.repaired.items())]
        failed = sum(
            len(p.failed) for p in (self.schedules, self.sweep, self.drift, self.plugged) if p is not None
        )
        if failed:
            parts.append(_count(failed, "tenant failed", "tenant failures"))
        parts += [f"{e} failed" for e in self.errors]
        return f"round {self.round}: " + ", ".join(parts)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class RunNowInput(BaseModel):
    """Asks for a full round (every phase) at once, e.g. from ops or a test."""

    reason: str = "requested"


class MaintenanceStatus(BaseModel):
    """The workflow's `status` query: rounds done and the last round's report."""

    rounds_done: int
    last_round: MaintenanceRound | None
    next_round_at: datetime | None
