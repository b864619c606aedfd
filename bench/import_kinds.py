"""Benchmark: `shows`, `advertisers`, `campaigns` and `deliveries` imports through the API vs their anchors.

For each kind and each size (BENCH_KINDS_SMALL_ROWS, default 10,000, and BENCH_KINDS_ROWS, default
100,000) it starts nothing new: one `sponsorflow up` of its own (fresh data dir, free ports, no
demo data) serves every run, each run in a tenant of its own, and measures:

  anchor   asyncpg straight to the embedded PostgreSQL as the app role, one transaction: COPY the
           CSV into a temp staging table, then the same upsert the import does (campaigns: with
           the advertiser lookup, the first history entry and the `deal.created` event of each
           new deal written in the same statement). For campaigns, the open deals' workflows
           are then started straight with the SDK (64 starts in flight, the same start options
           as the import), which gives the raw SDK start rate of the same server.
  product  POST /api/v1/etl/upload, then GET /api/v1/etl/status every 0.2 s until final: rows/s
           of the rows phase (upload to `rows_finished_at`, when the status says the last row
           committed) and, for campaigns, starts/s of the workflows phase (`rows_finished_at` to
           `finished_at`).

The campaigns file is CRM-shaped: 90% closed deals (won/lost), 10% open (lead..negotiation),
over 200 advertisers loaded first. The stack runs with matchmaking off (a catalog import would
start a match recalculation, measured by bench/match_recalc). A thread samples the API and
worker RSS during product runs; the figure checked is the rows phase's peak (the import's own
memory), and a campaigns run also reports the peak including its workflows phase (10,000 deal
workflows started on the same worker fill its workflow cache, which grows on its own).

`deliveries` (bench/import_deliveries, which says how) books IOs through the API in an anchor
and a product tenant and measures daily cumulative delivery reports against the same signals
sent straight with the SDK (its anchor: the write path is Temporal's) and against COPY + the same
effect written into PostgreSQL (printed, no target).

BENCH_KINDS (default all four, comma-separated) picks the kinds.

Targets (printed PASS/FAIL, informational: the exit code is 0 unless the run fails): rows/s at
the large size >= 0.6x its anchor; time per row at the large size within 1.3x of the small; the
workflows phase >= 0.8x the raw SDK start rate; the worker RSS the import adds (rows phase peak minus
the RSS it started from) grows from small to large by at most 20% of the worker's RSS.

    .venv/bin/python -m bench.import_kinds
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.import_deliveries import measure_deliveries, render_lines
from bench.import_throughput import MB, PgTarget, Sampler, create_tenant, import_rss_growth
from bench.stack import Stack, env_int, results_path

KINDS = ("shows", "advertisers", "campaigns", "deliveries")
ADVERTISERS = 200
POLL_S = 0.2
FINAL = ("completed", "completed_with_errors", "failed", "cancelled")
RATIO_MIN = 0.6
PER_ROW_GROWTH_MAX = 1.3
STARTS_RATIO_MIN = 0.8
RSS_GROWTH_MAX_PCT = 20.0
START_CONCURRENCY = 64
OPEN_STAGES = ("lead", "qualified", "proposal", "negotiation")
PROBABILITY = {"lead": 10, "qualified": 25, "proposal": 50, "negotiation": 75, "won": 100, "lost": 0}


# ---------------------------------------------------------------------------- the files


def write_file(path: Path, kind: str, rows: int) -> int:
    """Writes a CSV of `rows` rows of `kind`; returns how many deals are open (campaigns)."""
    n_open = 0
    with path.open("w", newline="") as f:
        if kind == "shows":
            f.write("external_id,name,avg_downloads,categories\n")
            f.writelines(f"show-{i:07d},Show {i},{1000 + i % 90_000},Business\n" for i in range(rows))
        elif kind == "advertisers":
            f.write("external_id,name,domain\n")
            f.writelines(f"adv-{i:07d},Advertiser {i},adv{i}.example\n" for i in range(rows))
        else:
            f.write("external_id,advertiser_external_id,name,value_usd,stage,lost_reason\n")
            lines = []
            for i in range(rows):
                if i % 10 == 0:
                    stage, reason = OPEN_STAGES[(i // 10) % 4], ""
                    n_open += 1
                elif i % 2:
                    stage, reason = "won", ""
                else:
                    stage, reason = "lost", "Budget cut"
                lines.append(
                    f"crm-{i:07d},adv-{i % ADVERTISERS:07d},Deal {i},{1000 + i % 9000},{stage},{reason}\n"
                )
            f.writelines(lines)
    return n_open


# ---------------------------------------------------------------------------- the anchors

_ANCHOR_SQL = {
    "shows": (
        "CREATE TEMP TABLE staging (external_id text, name text, avg_downloads int, categories text) "
        "ON COMMIT DROP",
        ["external_id", "name", "avg_downloads", "categories"],
        """
        INSERT INTO shows (id, tenant_id, external_id, name, avg_downloads, categories, last_import_id,
                           updated_at)
        SELECT gen_random_uuid(), $1::uuid, external_id, name, avg_downloads, ARRAY[categories],
               $2::uuid, now()
        FROM staging
        ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = EXCLUDED.name,
          avg_downloads = EXCLUDED.avg_downloads, categories = EXCLUDED.categories,
          last_import_id = EXCLUDED.last_import_id, updated_at = EXCLUDED.updated_at
        """,
    ),
    "advertisers": (
        "CREATE TEMP TABLE staging (external_id text, name text, domain text) ON COMMIT DROP",
        ["external_id", "name", "domain"],
        """
        INSERT INTO advertisers (id, tenant_id, external_id, name, domain, last_import_id, updated_at)
        SELECT gen_random_uuid(), $1::uuid, external_id, name, domain, $2::uuid, now() FROM staging
        ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = EXCLUDED.name, domain = EXCLUDED.domain,
          last_import_id = EXCLUDED.last_import_id, updated_at = EXCLUDED.updated_at
        """,
    ),
    "campaigns": (
        "CREATE TEMP TABLE staging (external_id text, advertiser_external_id text, name text, "
        "value_usd numeric(14, 2), stage text, lost_reason text) ON COMMIT DROP",
        ["external_id", "advertiser_external_id", "name", "value_usd", "stage", "lost_reason"],
        """
        WITH up AS (
          INSERT INTO campaigns (id, tenant_id, external_id, advertiser_id, name, value_usd, stage,
                                 stage_changed_at, probability, lost_reason, last_import_id, created_at,
                                 updated_at)
          SELECT gen_random_uuid(), $1::uuid, st.external_id, a.id, st.name, st.value_usd, st.stage, now(),
                 (CASE st.stage WHEN 'lead' THEN 10 WHEN 'qualified' THEN 25 WHEN 'proposal' THEN 50
                   WHEN 'negotiation' THEN 75 WHEN 'won' THEN 100 ELSE 0 END),
                 nullif(st.lost_reason, ''), $2::uuid, now(), now()
          FROM staging st JOIN advertisers a
            ON a.tenant_id = $1::uuid AND a.external_id = st.advertiser_external_id
          ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = EXCLUDED.name,
            value_usd = EXCLUDED.value_usd, last_import_id = EXCLUDED.last_import_id
          RETURNING id, stage, name, value_usd, (xmax = 0) AS inserted
        ), history AS (
          INSERT INTO deal_stage_history (tenant_id, campaign_id, from_stage, to_stage, reason, changed_at,
                                          idempotency_key)
          SELECT $1::uuid, id, NULL, stage, 'imported', now(), 'deal.created/' || id FROM up WHERE inserted
          ON CONFLICT (idempotency_key) DO NOTHING
        ), emitted AS (
          INSERT INTO events (tenant_id, type, entity_type, entity_id, payload, occurred_at, idempotency_key)
          SELECT $1::uuid, 'deal.created', 'deal', id::text,
                 jsonb_build_object('name', name, 'stage', stage, 'value_usd', value_usd::float8,
                                    'import_id', $2::text),
                 now(), 'deal.created/' || id
          FROM up WHERE inserted
          ON CONFLICT (idempotency_key) DO NOTHING
        )
        SELECT count(*) FROM up
        """,
    ),
}


async def run_anchor(pg: PgTarget, tenant_id: str, kind: str, path: Path, rows: int) -> dict[str, Any]:
    create, columns, upsert = _ANCHOR_SQL[kind]
    conn = await pg.connect("sponsorflow_app")
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            await conn.execute(create)
            copied = await conn.copy_to_table(
                "staging", source=path, columns=columns, format="csv", header=True
            )
            result = await conn.execute(upsert, tenant_id, str(uuid.uuid4()))
        elapsed = time.perf_counter() - t0
    finally:
        await conn.close()
    if copied != f"COPY {rows}":
        raise RuntimeError(f"anchor {kind}: {copied!r}, {result!r}; expected {rows} rows")
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


async def raw_sdk_starts(stack: Stack, pg: PgTarget, tenant_id: str) -> dict[str, Any]:
    """Starts the anchor tenant's open deals' workflows straight with the SDK: the raw start rate."""
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from domain.deals import DealWorkflowInput
    from domain.stages import Stage
    from settings import Settings
    from workflows.deals import DealWorkflow
    from workflows.starters import deal_start_options

    conn = await pg.connect("sponsorflow_app")
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            rows = await conn.fetch(
                "SELECT c.id, c.name, c.advertiser_id, a.name AS adv, c.value_usd, c.stage, "
                "c.stage_changed_at FROM campaigns c JOIN advertisers a ON a.id = c.advertiser_id "
                "WHERE c.stage = ANY($1::text[])",
                list(OPEN_STAGES),
            )
    finally:
        await conn.close()
    seeds = [
        DealWorkflowInput(
            tenant_id=tenant_id,
            campaign_id=str(r["id"]),
            name=r["name"],
            advertiser_id=str(r["advertiser_id"]),
            advertiser_name=r["adv"],
            value_usd=float(r["value_usd"]),
            stage=Stage(r["stage"]),
            stage_entered_at=r["stage_changed_at"],
        )
        for r in rows
    ]
    client = await Client.connect(f"127.0.0.1:{stack.temporal_port}", data_converter=pydantic_data_converter)
    task_queue = Settings().temporal_task_queue
    sem = asyncio.Semaphore(START_CONCURRENCY)

    async def start(seed: DealWorkflowInput) -> None:
        async with sem:
            await client.start_workflow(DealWorkflow.run, seed, **deal_start_options(seed, task_queue))

    t0 = time.perf_counter()
    await asyncio.gather(*(start(s) for s in seeds))
    elapsed = time.perf_counter() - t0
    return {
        "starts": len(seeds),
        "seconds": elapsed,
        "starts_per_s": len(seeds) / elapsed if elapsed else 0.0,
    }


# ---------------------------------------------------------------------------- the product


async def run_product(
    http: httpx.AsyncClient, key: str, kind: str, path: Path, rows: int, sampler: Sampler, timeout_s: float
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    # What the worker holds before the upload (earlier runs' deal workflows sit in its workflow
    # cache): the peak minus this is what the import itself added.
    rss_start = sampler.procs["worker"].memory_info().rss / MB
    sampler.start()
    try:
        # The import's own timestamps end the phases (the status says when its last row committed
        # and when it finished), so the 0.2 s polling adds nothing to the figures; the stack runs
        # on this machine, so its clock is ours.
        t0 = time.time()
        with path.open("rb") as f:
            r = await http.post(
                "/api/v1/etl/upload",
                headers=auth,
                data={"kind": kind},
                files={"file": (path.name, f, "text/csv")},
            )
        if r.status_code != 202:
            raise RuntimeError(f"upload of {path.name}: {r.status_code} {r.text[:300]}")
        import_id = r.json()["import_id"]
        rows_peak: dict[str, int] | None = None
        while True:
            r = await http.get(f"/api/v1/etl/status/{import_id}", headers=auth)
            r.raise_for_status()
            body = r.json()
            if rows_peak is None and (body["phase"] != "rows" or body["status"] in FINAL):
                # The import's own memory: a campaigns import's second phase starts deal
                # workflows on the same worker, whose workflow cache grows on its own.
                rows_peak = dict(sampler.peak_rss)
            if body["status"] in FINAL or time.time() - t0 > timeout_s:
                break
            await asyncio.sleep(POLL_S)
    finally:
        sampler.stop()
    if body["status"] != "completed" or body["rows_inserted"] != rows:
        raise RuntimeError(f"product {kind}: {body['status']}, inserted {body['rows_inserted']} of {rows}")
    rows_done = datetime.fromisoformat(body["rows_finished_at"]).timestamp() - t0
    finished = datetime.fromisoformat(body["finished_at"]).timestamp() - t0
    out: dict[str, Any] = {
        "rows": rows,
        "seconds": finished,
        "rows_seconds": rows_done,
        "rows_per_s": rows / rows_done,
        "peak_rss_mb": {k: v / MB for k, v in (rows_peak or sampler.peak_rss).items()},
        "peak_rss_mb_with_workflows": {k: v / MB for k, v in sampler.peak_rss.items()},
        "worker_rss_start_mb": rss_start,
    }
    if kind == "campaigns":
        wf_s = finished - rows_done
        out["workflows_started"] = body["workflows_started"]
        out["workflows_seconds"] = wf_s
        out["starts_per_s"] = body["workflows_started"] / wf_s if wf_s > 0 else 0.0
    return out


async def load_advertisers(http: httpx.AsyncClient, key: str, path: Path) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    with path.open("rb") as f:
        r = await http.post(
            "/api/v1/etl/upload", headers=auth, data={"kind": "advertisers"}, files={"file": ("a.csv", f)}
        )
    r.raise_for_status()
    for _ in range(600):
        body = (await http.get(f"/api/v1/etl/status/{r.json()['import_id']}", headers=auth)).json()
        if body["status"] in FINAL:
            if body["status"] != "completed":
                raise RuntimeError(f"advertisers for campaigns: {body}")
            return
        await asyncio.sleep(POLL_S)
    raise RuntimeError("advertisers for campaigns did not finish")


async def measure(
    kinds: list[str],
    stack: Stack,
    files: dict[tuple[str, str], tuple[int, Path, int]],
    advertisers: Path,
    timeout_s: float,
) -> dict[str, Any]:
    pgdata = stack.tmp / "data" / "pg"
    pg = PgTarget.of(pgdata)
    pids = stack.pids()
    procs = stack.app_processes()
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=600, trust_env=False) as http:
        for kind in kinds:
            if kind == "deliveries":
                sizes = {label: files[(kind, label)][:2] for label in ("small", "large")}
                results[kind] = await measure_deliveries(http, stack, procs, sizes, timeout_s)
                continue
            per_kind: dict[str, Any] = {}
            for label in ("small", "large"):
                rows, path, n_open = files[(kind, label)]
                run: dict[str, Any] = {"rows": rows, "open_deals": n_open}
                tenants = {}
                for role in ("anchor", "product"):
                    tid, key = await create_tenant(http, stack.admin_token, f"Bench {kind} {role} {label}")
                    if kind == "campaigns":
                        await load_advertisers(http, key, advertisers)
                    tenants[role] = (tid, key)
                print(f"[{kind} {label}] anchor: COPY + upsert of {rows:,} rows ...", flush=True)
                run["anchor"] = await run_anchor(pg, tenants["anchor"][0], kind, path, rows)
                print(f"[{kind} {label}] product: upload + import ...", flush=True)
                sampler = Sampler(procs, pgdata)
                run["product"] = await run_product(
                    http, tenants["product"][1], kind, path, rows, sampler, timeout_s
                )
                if kind == "campaigns":
                    # After the product: the workflows it starts run on the same worker, and
                    # would otherwise compete with the product's rows phase.
                    run["raw_sdk"] = await raw_sdk_starts(stack, pg, tenants["anchor"][0])
                run["ratio"] = run["product"]["rows_per_s"] / run["anchor"]["rows_per_s"]
                if kind == "campaigns":
                    raw = run["raw_sdk"]["starts_per_s"]
                    run["starts_ratio"] = run["product"]["starts_per_s"] / raw if raw else 0.0
                print(
                    f"[{kind} {label}] anchor {run['anchor']['rows_per_s']:,.0f} rows/s, product "
                    f"{run['product']['rows_per_s']:,.0f} rows/s ({run['ratio']:.2f}x), worker RSS "
                    f"{run['product']['peak_rss_mb']['worker']:.0f} MB",
                    flush=True,
                )
                per_kind[label] = run
            small, large = per_kind["small"], per_kind["large"]
            per_kind["per_row_growth"] = (large["product"]["rows_seconds"] / large["rows"]) / (
                small["product"]["rows_seconds"] / small["rows"]
            )
            added, growth = import_rss_growth(small, large)
            per_kind["worker_rss_added_mb"], per_kind["worker_rss_growth_pct"] = added, growth
            results[kind] = per_kind
    if stack.pids() != pids:
        raise RuntimeError(f"a child of `up` restarted during the run: {pids} then {stack.pids()}")
    return results


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for kind, r in results.items():
        checks.append(
            {
                "target": f"{kind} rows/s >= {RATIO_MIN}x anchor (large)",
                "value": r["large"]["ratio"],
                "ok": r["large"]["ratio"] >= RATIO_MIN,
            }
        )
        checks.append(
            {
                "target": f"{kind} time per row large/small <= {PER_ROW_GROWTH_MAX}",
                "value": r["per_row_growth"],
                "ok": r["per_row_growth"] <= PER_ROW_GROWTH_MAX,
            }
        )
        checks.append(
            {
                "target": f"{kind} worker RSS the import adds, large - small, <= {RSS_GROWTH_MAX_PCT:.0f}% "
                "of the worker's",
                "value": r["worker_rss_growth_pct"],
                "ok": r["worker_rss_growth_pct"] <= RSS_GROWTH_MAX_PCT,
            }
        )
        if "starts_ratio" in r["large"]:
            checks.append(
                {
                    "target": f"{kind} workflow starts >= {STARTS_RATIO_MIN}x raw SDK (large)",
                    "value": r["large"]["starts_ratio"],
                    "ok": r["large"]["starts_ratio"] >= STARTS_RATIO_MIN,
                }
            )
    return checks


def render(results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    lines = [
        f"{'kind':<12} {'size':<6} {'rows':>9} {'anchor rows/s':>14} {'product rows/s':>15} {'ratio':>7} "
        f"{'worker RSS':>11}"
    ]
    for kind, r in results.items():
        for label in ("small", "large"):
            run = r[label]
            lines.append(
                f"{kind:<12} {label:<6} {run['rows']:>9,} {run['anchor']['rows_per_s']:>14,.0f} "
                f"{run['product']['rows_per_s']:>15,.0f} {run['ratio']:>6.2f}x "
                f"{run['product']['peak_rss_mb']['worker']:>8.0f} MB"
            )
        lines.append(
            f"{kind:<12} ratio product/anchor {r['small']['ratio']:.2f}x {r['large']['ratio']:.2f}x, "
            f"time per row large/small {r['per_row_growth']:.2f}, worker RSS the import added "
            f"{r['worker_rss_added_mb']['small']:+.0f} / {r['worker_rss_added_mb']['large']:+.0f} MB"
        )
        if "starts_ratio" in r["large"]:
            for label in ("small", "large"):
                run = r[label]
                lines.append(
                    f"{kind:<12} {label:<6} workflows phase {run['product']['starts_per_s']:,.0f} starts/s "
                    f"({run['product']['workflows_started']:,}), "
                    f"raw SDK {run['raw_sdk']['starts_per_s']:,.0f} starts/s, worker RSS with the "
                    f"workflows {run['product']['peak_rss_mb_with_workflows']['worker']:.0f} MB"
                )
            lines.append(
                f"{kind:<12} workflows/raw SDK "
                f"{r['small']['starts_ratio']:.2f}x {r['large']['starts_ratio']:.2f}x"
            )
        if kind == "deliveries":
            lines.extend(render_lines(r))
    lines.append("")
    for t in targets:
        lines.append(f"{'PASS' if t['ok'] else 'FAIL'}  {t['target']}: {t['value']:.2f}")
    return "\n".join(lines)


def main() -> int:
    small = env_int("BENCH_KINDS_SMALL_ROWS", 10_000)
    large = env_int("BENCH_KINDS_ROWS", 100_000)
    timeout_s = float(env_int("BENCH_IMPORT_TIMEOUT", 1400))
    kinds = [k for k in os.environ.get("BENCH_KINDS", ",".join(KINDS)).split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        raise SystemExit(f"BENCH_KINDS: a comma-separated subset of {', '.join(KINDS)}")
    tmp = Path(tempfile.mkdtemp(prefix="sponsorflow-bench-kinds-"))
    files: dict[tuple[str, str], tuple[int, Path, int]] = {}
    for kind in kinds:
        for label, rows in (("small", small), ("large", large)):
            path = tmp / f"{kind}-{rows}.csv"
            # A deliveries file names booked IOs: bench/import_deliveries writes it once they are.
            n_open = write_file(path, kind, rows) if kind != "deliveries" else 0
            files[(kind, label)] = (rows, path, n_open)
    advertisers = tmp / "advertisers-for-campaigns.csv"
    write_file(advertisers, "advertisers", ADVERTISERS)
    # Matchmaking off: a shows or advertisers import would start a match recalculation, a
    # workload of its own (bench/match_recalc) that would compete with the next runs.
    stack = Stack({"ENABLE_MATCHMAKING": "false"})
    try:
        results = stack.run(lambda: asyncio.run(measure(kinds, stack, files, advertisers, timeout_s)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "kinds": kinds,
        "rows_small": small,
        "rows_large": large,
        "cpus": os.cpu_count(),
        "memory_mb": psutil.virtual_memory().total // MB,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ".venv/bin/python -m bench.import_kinds",
    }
    targets = evaluate(results)
    print()
    print(render(results, targets))
    results_file = results_path("import_kinds")
    results_file.write_text(
        json.dumps({"meta": meta, "results": results, "targets": targets}, indent=2) + "\n"
    )
    print(f"\nwrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
