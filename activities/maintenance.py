"""Maintenance side effects: schedules, the open-deal sweep, deal drift repair, plugged checks.

Each phase walks the tenants one at a time, heartbeats after each (a retry resumes after the
last tenant done), and catches a tenant's failure so the others are still handled: the
failure is logged and reported in the result, never raised to the workflow.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from db.deals import deal_seed, open_deals_page
from db.engine import SessionMaker, tenant_tx
from db.maintenance import recently_changed_deals
from db.tenants import all_tenant_ids
from domain.maintenance import (
    LoadMaintenanceConfigInput,
    LoadMaintenanceConfigResult,
    MaintenanceConfig,
    PhaseResult,
    PluggedChecksInput,
    PluggedChecksResult,
    ReconcileSchedulesInput,
    ReconcileSchedulesResult,
    RepairDealDriftInput,
    RepairDealDriftResult,
    SweepOpenDealsInput,
    SweepOpenDealsResult,
    TenantFailure,
)
from domain.stages import OPEN_STAGES
from settings import Settings
from workflows import search_attributes as sa
from workflows.starters import DEAL_WORKFLOW, deal_workflow_id, ensure_match_schedule, start_deal_workflows

log = logging.getLogger("sponsorflow.maintenance")

Progress = Callable[[], None]
R = TypeVar("R", bound=PhaseResult)

PluggedCheck = Callable[[Client, Settings, SessionMaker, uuid.UUID], Awaitable[int]]
"""A check run for one tenant each round; returns how many things it repaired."""

PLUGGED_CHECKS: dict[str, PluggedCheck] = {}
"""The hook for checks other features add to every round, by name (e.g. "io_drift",
"stuck_imports"): register with `plug_check`. None is plugged in yet; with none, the workflow
schedules no activity for this phase."""

_RESYNC_SIGNAL = "resync"
_OPEN = frozenset(s.value for s in OPEN_STAGES)
# Deal rows compared per visibility query (`WorkflowId IN (...)`).
_DRIFT_PAGE = 100


def plug_check(name: str, check: PluggedCheck) -> None:
    """Adds a per-tenant check to every maintenance round (phase d)."""
    PLUGGED_CHECKS[name] = check


def _no_progress() -> None:
    return None


async def _tenants(
    sm: SessionMaker, tenant_ids: Sequence[str] | Sequence[uuid.UUID] | None
) -> list[uuid.UUID]:
    ids = await all_tenant_ids(sm=sm) if tenant_ids is None else [uuid.UUID(str(t)) for t in tenant_ids]
    return sorted(ids)


async def reconcile_match_schedules(
    client: Client,
    settings: Settings,
    sm: SessionMaker,
    *,
    tenant_ids: Sequence[str] | None = None,
) -> ReconcileSchedulesResult:
    """Brings every tenant's recalculation schedule to the configured spec (keeping its state)."""
    result = ReconcileSchedulesResult()
    for tenant_id in await _tenants(sm, tenant_ids):
        await _reconcile_tenant_schedule(client, settings, tenant_id, result)
    return result


async def _reconcile_tenant_schedule(
    client: Client, settings: Settings, tenant_id: uuid.UUID, result: ReconcileSchedulesResult
) -> None:
    result.tenants += 1
    if not settings.enable_matchmaking:
        return
    every = timedelta(hours=settings.match_recalc_every_hours)
    change = await ensure_match_schedule(client, str(tenant_id), settings.temporal_task_queue, every)
    if change == "created":
        result.created += 1
    elif change == "updated":
        result.updated += 1
    else:
        result.unchanged += 1
    if change != "unchanged":
        log.info("match schedule of tenant %s %s", tenant_id, change)


async def sweep_tenant_open_deals(
    client: Client,
    settings: Settings,
    sm: SessionMaker,
    tenant_id: uuid.UUID,
    *,
    concurrency: int = 8,
    progress: Progress = _no_progress,
) -> int:
    """Starts the workflow of each of the tenant's open deals that has none running; returns how many.

    POST /deals and imports start a deal's workflow, and a PATCH's update-with-start starts one on
    first touch; a deal whose start failed (Temporal down at the time) would otherwise have no
    stall timer until it is first moved. Visibility names the running ones; the rest go to
    start_deal_workflows, so a workflow started meanwhile (or not yet visible) is found, not counted.
    """
    query = (
        f"WorkflowType = '{DEAL_WORKFLOW}' AND ExecutionStatus = 'Running' "
        f"AND {sa.TENANT_ID.name} = '{tenant_id}'"
    )
    running = set()
    async for wf in client.list_workflows(query, page_size=1000):
        running.add(wf.id)
        if len(running) % 1000 == 0:
            progress()
    started, after = 0, uuid.UUID(int=0)
    while True:
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
            page = await open_deals_page(session=session, after=after, limit=500)
        if not page:
            break
        after = page[-1].deal.id
        seeds = [
            deal_seed(row=row, stall_days=settings.stall_days, moves_per_run=settings.deal_moves_per_run)
            for row in page
        ]
        missing = [s for s in seeds if deal_workflow_id(s.tenant_id, s.campaign_id) not in running]
        started += await start_deal_workflows(
            client, missing, settings.temporal_task_queue, concurrency=concurrency
        )
        progress()
    if started:
        log.info("started %d missing deal workflow(s) of tenant %s", started, tenant_id)
    return started


async def reconcile_deal_workflows(
    client: Client,
    settings: Settings,
    sm: SessionMaker,
    *,
    tenant_ids: Sequence[uuid.UUID] | None = None,
    concurrency: int = 8,
) -> dict[uuid.UUID, int]:
    """The open-deal sweep over every tenant (or these); returns how many were started per tenant."""
    if not settings.enable_deal_pipeline:
        return {}
    out: dict[uuid.UUID, int] = {}
    for tenant_id in await _tenants(sm, tenant_ids):
        started = await sweep_tenant_open_deals(client, settings, sm, tenant_id, concurrency=concurrency)
        if started:
            out[tenant_id] = started
    return out


async def repair_tenant_drift(
    client: Client,
    sm: SessionMaker,
    tenant_id: uuid.UUID,
    *,
    since: datetime,
    until: datetime,
    result: RepairDealDriftResult,
    progress: Progress = _no_progress,
) -> None:
    """Sends `resync` to each running deal workflow whose search attributes disagree with its row.

    Only rows changed in [since, until) are compared (the stage write and the workflow's own
    upsert land together, so a settled row and its workflow agree unless a move was orphaned).
    Their workflows are read from visibility, a page of ids per `WorkflowId IN (...)` query.
    An open deal with no running workflow is the sweep's job; it is only counted here.
    """
    after = uuid.UUID(int=0)
    while True:
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
            page = await recently_changed_deals(
                session=session, since=since, until=until, after=after, limit=_DRIFT_PAGE
            )
        if not page:
            return
        after = page[-1].id
        rows = {deal_workflow_id(str(tenant_id), str(r.id)): r for r in page}
        ids = ", ".join(f"'{wid}'" for wid in rows)
        query = f"WorkflowType = '{DEAL_WORKFLOW}' AND ExecutionStatus = 'Running' AND WorkflowId IN ({ids})"
        running = {wf.id: wf async for wf in client.list_workflows(query, page_size=_DRIFT_PAGE)}
        for wid, row in rows.items():
            result.checked += 1
            wf = running.get(wid)
            if wf is None:
                result.without_workflow += row.stage in _OPEN
                continue
            attrs = wf.typed_search_attributes
            if (
                attrs.get(sa.DEAL_STAGE) == row.stage
                and attrs.get(sa.STAGE_ENTERED_AT) == row.stage_changed_at
            ):
                continue
            log.warning(
                "deal workflow %s drifted: row %s since %s, workflow %s since %s; sending resync",
                wid,
                row.stage,
                row.stage_changed_at.isoformat(),
                attrs.get(sa.DEAL_STAGE),
                attrs.get(sa.STAGE_ENTERED_AT),
            )
            try:
                await client.get_workflow_handle(wid).signal(_RESYNC_SIGNAL)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    continue  # it closed meanwhile: nothing left to disagree
                raise
            result.resynced += 1
            result.resynced_ids.append(wid)
        progress()


class MaintenanceActivities:
    """The maintenance phases, built in worker.py with the worker's settings and sessionmaker."""

    def __init__(self, sm: SessionMaker, settings: Settings) -> None:
        self._sm = sm
        self._settings = settings

    @activity.defn(name="load_maintenance_config")
    async def load_maintenance_config(self, inp: LoadMaintenanceConfigInput) -> LoadMaintenanceConfigResult:
        """The worker's maintenance settings, so a deploy changes the running singleton's rounds."""
        s = self._settings
        return LoadMaintenanceConfigResult(
            config=MaintenanceConfig(
                every_seconds=s.maintenance_seconds,
                rounds_per_run=s.maintenance_rounds_per_run,
                schedules_every_rounds=s.maintenance_schedules_every_rounds,
                sweep_every_rounds=s.maintenance_sweep_every_rounds,
                drift_settle_seconds=s.maintenance_drift_settle_seconds,
                drift_overlap_seconds=s.maintenance_drift_overlap_seconds,
                drift_max_lookback_seconds=s.maintenance_drift_max_lookback_hours * 3600,
                plugged_checks=sorted(PLUGGED_CHECKS),
            )
        )

    @activity.defn(name="reconcile_match_schedules")
    async def reconcile_schedules(self, inp: ReconcileSchedulesInput) -> ReconcileSchedulesResult:
        """Phase (a): each tenant's match schedule created or brought to the configured spec."""

        async def one(tenant_id: uuid.UUID, result: ReconcileSchedulesResult, progress: Progress) -> None:
            await _reconcile_tenant_schedule(activity.client(), self._settings, tenant_id, result)

        return await self._each_tenant(inp.tenant_ids, ReconcileSchedulesResult(), one)

    @activity.defn(name="sweep_open_deals")
    async def sweep_open_deals(self, inp: SweepOpenDealsInput) -> SweepOpenDealsResult:
        """Phase (b): the workflow of each open deal that has none running is started."""
        if not self._settings.enable_deal_pipeline:
            return SweepOpenDealsResult()

        async def one(tenant_id: uuid.UUID, result: SweepOpenDealsResult, progress: Progress) -> None:
            result.tenants += 1
            result.started += await sweep_tenant_open_deals(
                activity.client(), self._settings, self._sm, tenant_id, progress=progress
            )

        return await self._each_tenant(inp.tenant_ids, SweepOpenDealsResult(), one)

    @activity.defn(name="repair_deal_drift")
    async def repair_deal_drift(self, inp: RepairDealDriftInput) -> RepairDealDriftResult:
        """Phase (c): drifted deal workflows (row moved behind their back) are told to resync."""
        if not self._settings.enable_deal_pipeline:
            return RepairDealDriftResult()

        async def one(tenant_id: uuid.UUID, result: RepairDealDriftResult, progress: Progress) -> None:
            result.tenants += 1
            await self._repair_tenant(tenant_id, inp, result, progress)

        return await self._each_tenant(inp.tenant_ids, RepairDealDriftResult(), one)

    async def _repair_tenant(
        self,
        tenant_id: uuid.UUID,
        inp: RepairDealDriftInput,
        result: RepairDealDriftResult,
        progress: Progress,
    ) -> None:
        await repair_tenant_drift(
            activity.client(),
            self._sm,
            tenant_id,
            since=inp.since,
            until=inp.until,
            result=result,
            progress=progress,
        )

    @activity.defn(name="run_plugged_checks")
    async def run_plugged_checks(self, inp: PluggedChecksInput) -> PluggedChecksResult:
        """Phase (d): the checks plugged into PLUGGED_CHECKS, each per tenant."""

        async def one(tenant_id: uuid.UUID, result: PluggedChecksResult, progress: Progress) -> None:
            for name in inp.checks:
                check = PLUGGED_CHECKS.get(name)
                if check is None:
                    continue  # plugged into another worker's build only: its next round runs it
                try:
                    n = await check(activity.client(), self._settings, self._sm, tenant_id)
                except Exception as exc:  # noqa: BLE001 - one check failing does not stop the others
                    log.warning("maintenance check %s failed for tenant %s", name, tenant_id, exc_info=True)
                    result.failed.append(TenantFailure(tenant_id=str(tenant_id), error=f"{name}: {exc}"))
                    continue
                result.repaired[name] = result.repaired.get(name, 0) + n

        return await self._each_tenant(inp.tenant_ids, PluggedChecksResult(), one)

    async def _each_tenant(
        self,
        tenant_ids: list[str] | None,
        empty: R,
        one: Callable[[uuid.UUID, R, Progress], Awaitable[None]],
    ) -> R:
        """Runs `one` per tenant, heartbeating; a retry resumes after the last tenant done.

        A tenant that fails is logged and reported in the result's `failed`; the rest go on.
        """
        info = activity.info()
        tenants = await _tenants(self._sm, tenant_ids)
        start, result = 0, empty
        if info.heartbeat_details:
            done: dict[str, Any] = info.heartbeat_details[0]
            start, result = int(done["next"]), type(empty).model_validate(done["result"])
        for i in range(start, len(tenants)):
            tenant_id = tenants[i]

            before = result.model_dump(mode="json")

            def progress(i: int = i, before: dict[str, Any] = before) -> None:
                # Mid-tenant: a retry redoes this tenant, so it resumes from the counts before it.
                activity.heartbeat({"next": i, "result": before})

            progress()
            try:
                await one(tenant_id, result, progress)
            except Exception as exc:  # noqa: BLE001 - reported per tenant; the others go on
                log.warning("%s failed for tenant %s", info.activity_type, tenant_id, exc_info=True)
                result.failed.append(
                    TenantFailure(tenant_id=str(tenant_id), error=f"{type(exc).__name__}: {exc}")
                )
            activity.heartbeat({"next": i + 1, "result": result.model_dump(mode="json")})
        return result
