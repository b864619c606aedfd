"""Local activity vs regular activity for the stage write, measured in one run.

Anchor: the same DealWorkflow moving deals with its write as a regular activity. Product: the
default, a local activity. Prints p50/p95/p99 of the update round trip and the ratio.

    .venv/bin/python -m bench.persist_activity        (BENCH_MOVES=300 by default)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deals import DealActivities
from bench.regular_write import DealWorkflowRegularWrite
from bench.stack import results_path
from db.deals import insert_deal
from db.embedded import ensure_database, start_server
from db.engine import make_engine, make_sessionmaker, tenant_tx
from db.migrate import upgrade
from db.models import Advertiser
from db.tenants import create_tenant
from domain.deals import ChangeStageInput, DealWorkflowInput
from domain.stages import Stage
from workflows.deals import DealWorkflow
from workflows.search_attributes import ALL_KEYS

CYCLE = [Stage.QUALIFIED, Stage.PROPOSAL, Stage.NEGOTIATION, Stage.LEAD]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def main() -> None:
    moves = int(os.environ.get("BENCH_MOVES", "300"))
    root = Path(tempfile.mkdtemp(prefix="sf-bench-"))
    server = start_server(pgdata=root / "pg")
    db = ensure_database(server=server, name="bench", app_role="sponsorflow_app")
    await asyncio.to_thread(upgrade, url=db.owner_url)
    engine = make_engine(url=db.app_url)
    sm = make_sessionmaker(engine=engine)
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=ALL_KEYS,
        dev_server_log_level="error",
    )
    acts = DealActivities(sm)
    tq = f"bench-{uuid.uuid4()}"
    tenant = await create_tenant(sm=sm, name="bench")
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        adv = Advertiser(tenant_id=tenant.id, name="Acme")
        s.add(adv)
        await s.flush()
        adv_id = adv.id

    async def new_deal(local: bool) -> object:
        workflow_run = DealWorkflow.run if local else DealWorkflowRegularWrite.run
        async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
            c = await insert_deal(
                session=s,
                tenant_id=tenant.id,
                advertiser_id=adv_id,
                show_id=None,
                name="bench",
                value_usd=Decimal(1000),
                stage=Stage.LEAD,
                at=datetime.now(UTC),
            )
        return await env.client.start_workflow(
            workflow_run,
            DealWorkflowInput(
                tenant_id=str(tenant.id),
                campaign_id=str(c.id),
                name="bench",
                advertiser_id=str(adv_id),
                advertiser_name="Acme",
                value_usd=1000,
                stage=Stage.LEAD,
                stage_entered_at=c.stage_changed_at,
                synced=True,
                moves_per_run=10_000,
            ),
            id=f"deal/{tenant.id}/{c.id}",
            task_queue=tq,
        )

    timings: dict[str, list[float]] = {"activity": [], "local": []}
    async with Worker(
        env.client,
        task_queue=tq,
        workflows=[DealWorkflow, DealWorkflowRegularWrite],
        activities=[acts.record_stage_change, acts.record_stall, acts.load_deal],
    ):
        handles = {"activity": await new_deal(False), "local": await new_deal(True)}
        for i in range(moves + 20):  # alternate modes move by move, so noise hits both alike
            for mode, handle in handles.items():
                t0 = time.perf_counter()
                await handle.execute_update(  # type: ignore[attr-defined]
                    DealWorkflow.change_stage, ChangeStageInput(stage=CYCLE[i % len(CYCLE)])
                )
                if i >= 20:  # warm-up
                    timings[mode].append((time.perf_counter() - t0) * 1000)
        for handle in handles.values():
            await handle.terminate()  # type: ignore[attr-defined]
    await env.shutdown()
    await engine.dispose()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)

    out: dict[str, Any] = {}
    print(f"stage write: local activity vs regular activity, {moves} sequential updates each")
    print(f"{'mode':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for mode, xs in timings.items():
        row = {"p50": _pct(xs, 50), "p95": _pct(xs, 95), "p99": _pct(xs, 99), "mean": statistics.mean(xs)}
        out[mode] = row
        print(f"{mode:<10}{row['p50']:>9.2f}{row['p95']:>9.2f}{row['p99']:>9.2f}{row['mean']:>9.2f}")
    ratio = out["local"]["p50"] / out["activity"]["p50"]
    out["ratio_p50_local_over_activity"] = ratio
    print(f"ratio p50 local/activity = {ratio:.2f} (below 1 means the local activity is faster)")
    results_path("persist_activity").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
