"""The `deliveries` kind of bench/import_kinds: delivery reports through the API vs the same signals.

A deliveries import checks each row (io_id, ad_unit_id, impressions to date, source) against
the IO and unit, keeps a unit's last row of each chunk (figures are cumulative), and signals the
IO's workflow, which persists the report by an activity and emits `io.delivery_reported`. The
write path is the Temporal signal, so the anchor that bounds it is the raw SDK signal rate:

  setup    two tenants (anchor, product) of the same shape, booked once and used by both sizes:
           BENCH_DELIVERIES_IOS IOs (default 100) of BENCH_DELIVERIES_UNITS CPM units each
           (default 10), imported shows (4 slots an episode), advertisers and won deals, each IO
           booked through POST /api/v1/io (its workflow) with every unit airing today, so the
           units are aired and a 30-day window keeps them open for reports.
  files    daily cumulative reports, day by day, one row per unit a day (impressions of baked-in
           reads keep accruing for months): 10,000 rows = 1,000 units x 10 days; 100,000 rows =
           100 days (the large file's days follow the small's, so every figure is new to its
           workflow). With chunks of SPONSORFLOW_IMPORT_CHUNK_ROWS (10,000) rows a unit's 10 rows
           of a chunk become one signal: 1 signal per 10 rows. Each signal costs the workflows a
           workflow task, an activity and another task (about 50-80 a second on this machine),
           which is what keeps the default at 1,000 units: 22,000 reports a tenant in all.
  db       asyncpg straight to PostgreSQL as the app role, one transaction: COPY the file into a
           staging table, then the product's effect in one statement: the units' last figures
           (UPDATE ad_units) and one `io.delivery_reported` event per unit and chunk (the rows the
           product signals), with the product's checks (unit of that IO, aired, IO not invoiced).
  raw SDK  the same signals (per-chunk last row per unit, in file order, same input model) sent
           straight with the SDK to the anchor tenant's IO workflows, 16 in flight as the import
           sends them; then wait until the workflows have persisted every report.
  product  POST /api/v1/etl/upload of the same file into the product tenant, then the status
           until final: rows/s of the rows phase (upload to `rows_finished_at`: every signal
           sent), then wait until the workflows have persisted every report.

The ratio the target applies to is product/raw SDK (both are Temporal-bound); product/db shows
what the Temporal path costs against writing the effect straight into PostgreSQL. "Persisted"
is the time until the last report's `io.delivery_reported` event is in PostgreSQL (the
workflows' activities), measured from the first signal; every phase waits for the previous one's
reports to be persisted, so no phase competes with another's backlog.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.import_throughput import MB, PgTarget, Sampler, create_tenant, import_rss_growth, upload_and_wait
from bench.stack import Stack, env_int

# As activities/imports.py `_signal_deliveries` sends them.
SIGNAL_CONCURRENCY = 16
BOOK_ATTEMPTS = 6
BOOK_CONCURRENCY = 8
PLACEMENTS = ("pre_roll", "mid_roll", "mid_roll", "post_roll")  # one episode's default slots
GOAL = 50_000_000  # far above any figure: units stay `aired`, no make-good, no status change
DAILY = 1_000
ADVERTISERS = 50
POLL_S = 0.2
SETUP_TIMEOUT_S = 600.0
FINAL = ("completed", "completed_with_errors", "failed", "cancelled")

Unit = tuple[str, str]  # (io_id, ad_unit_id)
Report = tuple[str, str, int, str]  # (io_id, ad_unit_id, impressions, source)


# ---------------------------------------------------------------------------- the set-up


async def _count(pg: PgTarget, tenant_id: str, sql: str, *args: Any) -> int:
    conn = await pg.connect("sponsorflow_app")
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def _ids(pg: PgTarget, tenant_id: str, table: str) -> dict[str, str]:
    conn = await pg.connect("sponsorflow_app")
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            rows = await conn.fetch(f"SELECT external_id, id FROM {table}")
    finally:
        await conn.close()
    return {r["external_id"]: str(r["id"]) for r in rows}


async def _import(http: httpx.AsyncClient, key: str, tmp: Path, kind: str, text: str, rows: int) -> None:
    path = tmp / f"setup-{kind}-{uuid.uuid4().hex[:8]}.csv"
    path.write_text(text)
    body, _, _ = await upload_and_wait(http, key, path, kind, path.name, SETUP_TIMEOUT_S)
    path.unlink()
    if body["status"] != "completed" or body["rows_inserted"] != rows:
        raise RuntimeError(f"set-up {kind} import: {body}")


async def book_tenant(
    http: httpx.AsyncClient, stack: Stack, pg: PgTarget, tmp: Path, name: str, n_ios: int, per_io: int
) -> tuple[str, str, list[Unit]]:
    """A tenant with `n_ios` booked IOs of `per_io` aired CPM units; returns id, key and units."""
    tid, key = await create_tenant(http, stack.admin_token, name)
    n_units = n_ios * per_io
    n_shows = -(-n_units // len(PLACEMENTS))
    await _import(
        http,
        key,
        tmp,
        "shows",
        "external_id,name,avg_downloads,categories\n"
        + "".join(f"show-{i:05d},Show {i},{20_000 + i},Business\n" for i in range(n_shows)),
        n_shows,
    )
    await _import(
        http,
        key,
        tmp,
        "advertisers",
        "external_id,name,domain\n"
        + "".join(f"adv-{i:05d},Advertiser {i},adv{i}.example\n" for i in range(ADVERTISERS)),
        ADVERTISERS,
    )
    # Won deals: closed, so the import starts no deal workflows.
    await _import(
        http,
        key,
        tmp,
        "campaigns",
        "external_id,advertiser_external_id,name,value_usd,stage\n"
        + "".join(
            f"deal-{i:05d},adv-{i % ADVERTISERS:05d},Deal {i},{25 * per_io * 1000},won\n"
            for i in range(n_ios)
        ),
        n_ios,
    )
    shows, deals = await _ids(pg, tid, "shows"), await _ids(pg, tid, "campaigns")
    auth = {"Authorization": f"Bearer {key}"}
    sem = asyncio.Semaphore(BOOK_CONCURRENCY)
    retries = [0]

    async def book(i: int) -> list[Unit]:
        # Read per IO: a set-up that runs past midnight UTC books the next IOs on the new day.
        today = datetime.now(UTC).date().isoformat()
        units = []
        for j in range(per_io):
            g = i * per_io + j
            units.append(
                {
                    "show_id": shows[f"show-{g // len(PLACEMENTS):05d}"],
                    "placement": PLACEMENTS[g % len(PLACEMENTS)],
                    "format": "host_read",
                    "insertion": "dynamic",
                    "air_date": today,
                    "duration_s": 60,
                    "pricing_model": "cpm",
                    "cpm_usd": 25,
                    "impressions_goal": GOAL,
                }
            )
        body = {"campaign_id": deals[f"deal-{i:05d}"], "ad_units": units, "measurement_window_days": 30}
        # A 503 means "not applied, and never will be; retry" (a busy worker: e.g. right after the
        # campaigns kind started 20,000 deal workflows): retried as a client would, same key.
        headers = {**auth, "Idempotency-Key": f"bench-io-{tid}-{i}"}
        for attempt in range(BOOK_ATTEMPTS):
            async with sem:
                r = await http.post("/api/v1/io", json=body, headers=headers)
            if r.status_code != 503:
                break
            retries[0] += 1
            await asyncio.sleep(min(2.0**attempt, 10.0))
        if r.status_code != 201:
            raise RuntimeError(f"booking IO {i}: {r.status_code} {r.text[:300]}")
        io = r.json()
        return [(io["id"], u["id"]) for u in io["ad_units"]]

    booked = [u for units in await asyncio.gather(*(book(i) for i in range(n_ios))) for u in units]
    if retries[0]:
        print(f"[deliveries] {name}: {retries[0]} booking(s) answered 503 and retried", flush=True)
    # Air date today: each workflow marks its units aired at once (the import refuses unaired ones).
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while await _count(pg, tid, "SELECT count(*) FROM ad_units WHERE status = 'aired'") < n_units:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the booked units did not all air")
        await asyncio.sleep(POLL_S)
    return tid, key, booked


# ---------------------------------------------------------------------------- the files


def write_reports(path: Path, units: list[Unit], rows: int, first_day: int) -> list[Report]:
    """Writes `rows` daily cumulative reports, day by day from `first_day`; returns them in order."""
    reports: list[Report] = []
    day = first_day
    while len(reports) < rows:
        for k, (io_id, unit_id) in enumerate(units):
            if len(reports) == rows:
                break
            reports.append((io_id, unit_id, 5_000 + 37 * k + DAILY * day, f"art19 day {day}"))
        day += 1
    with path.open("w", newline="") as f:
        f.write("io_id,ad_unit_id,impressions,source\n")
        f.writelines(f"{a},{b},{n},{s}\n" for a, b, n, s in reports)
    return reports


def signals_of(reports: list[Report], chunk_rows: int) -> list[Report]:
    """What the import signals: a unit's last row of each chunk (its `_next_batch` dedup), in order."""
    out: list[Report] = []
    for start in range(0, len(reports), chunk_rows):
        last: dict[tuple[str, str], Report] = {}
        for r in reports[start : start + chunk_rows]:
            last[(r[0], r[1])] = r
        out.extend(last.values())
    return out


def _worker_rss_mb(sampler: Sampler) -> float:
    """The worker's RSS now: a phase's peak minus this is what the phase itself added."""
    return float(sampler.procs["worker"].memory_info().rss / MB)


# ---------------------------------------------------------------------------- the anchors

_DB_STAGING = (
    "CREATE TEMP TABLE staging (n bigserial, io_id uuid, ad_unit_id uuid, impressions bigint, source text) "
    "ON COMMIT DROP"
)
_DB_EFFECT = """
WITH per_chunk AS (
  SELECT DISTINCT ON ((n - 1) / $3, ad_unit_id) n, io_id, ad_unit_id, impressions, source
  FROM staging ORDER BY (n - 1) / $3, ad_unit_id, n DESC
), checked AS (
  SELECT p.*, u.impressions_goal AS goal
  FROM per_chunk p
  JOIN ad_units u ON u.id = p.ad_unit_id AND u.io_id = p.io_id
  JOIN io_bookings b ON b.id = p.io_id
  WHERE b.invoice IS NULL AND u.status IN ('aired', 'delivered')
), final AS (
  SELECT DISTINCT ON (ad_unit_id) ad_unit_id, impressions, goal FROM checked ORDER BY ad_unit_id, n DESC
), updated AS (
  UPDATE ad_units u SET delivered_impressions = f.impressions,
    status = CASE WHEN f.goal IS NOT NULL AND f.impressions >= f.goal THEN 'delivered' ELSE 'aired' END
  FROM final f WHERE u.id = f.ad_unit_id
  RETURNING 1
), emitted AS (
  INSERT INTO events (tenant_id, type, entity_type, entity_id, payload, occurred_at, idempotency_key)
  SELECT $1::uuid, 'io.delivery_reported', 'io', io_id::text,
         jsonb_build_object('ad_unit_id', ad_unit_id::text, 'impressions', impressions,
                            'impressions_goal', goal,
                            'delivered_share', round(impressions::numeric / nullif(goal, 0), 4),
                            'source', source),
         now(), 'bench-db-anchor/' || $2 || '/' || ad_unit_id || '/' || n
  FROM checked
  ON CONFLICT (idempotency_key) DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM emitted)
"""


async def run_db_anchor(
    pg: PgTarget, tenant_id: str, label: str, path: Path, rows: int, chunk_rows: int
) -> dict[str, Any]:
    """COPY + the effect of the import (last figures on ad_units, one event per signal), one commit."""
    conn = await pg.connect("sponsorflow_app")
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            await conn.execute(_DB_STAGING)
            copied = await conn.copy_to_table(
                "staging",
                source=path,
                columns=["io_id", "ad_unit_id", "impressions", "source"],
                format="csv",
                header=True,
            )
            updated, emitted = await conn.fetchrow(_DB_EFFECT, tenant_id, label, chunk_rows)
        elapsed = time.perf_counter() - t0
    finally:
        await conn.close()
    if copied != f"COPY {rows}":
        raise RuntimeError(f"db anchor deliveries: {copied!r}; expected {rows} rows")
    return {
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "units_updated": updated,
        "events": emitted,
    }


async def wait_persisted(pg: PgTarget, tenant_id: str, expected: int, t0: float, timeout_s: float) -> float:
    """Seconds from `t0` until the tenant's workflows have emitted `expected` delivery events in all."""
    while True:
        got = await _count(
            pg,
            tenant_id,
            "SELECT count(*) FROM events WHERE type = 'io.delivery_reported' "
            "AND idempotency_key LIKE 'io.delivery_reported/%'",
        )
        now = time.perf_counter()
        if got >= expected:
            return now - t0
        if now - t0 > timeout_s:
            raise RuntimeError(
                f"only {got:,} of {expected:,} delivery reports persisted after {timeout_s:.0f} s"
            )
        await asyncio.sleep(POLL_S)


async def run_raw_sdk(
    stack: Stack,
    pg: PgTarget,
    tenant_id: str,
    signals: list[Report],
    persisted_before: int,
    sampler: Sampler,
    timeout_s: float,
) -> dict[str, Any]:
    """The same signals straight with the SDK, 16 in flight; then until the workflows persisted them.

    The worker's RSS is sampled here too: what the IO workflows' own work costs it, no import running.
    """
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from domain.io import ReportDeliveryInput
    from workflows.starters import IO_DELIVERY_REPORTED_SIGNAL, io_workflow_id

    client = await Client.connect(f"127.0.0.1:{stack.temporal_port}", data_converter=pydantic_data_converter)
    inputs = [
        (io_workflow_id(tenant_id, io_id), ReportDeliveryInput(ad_unit_id=unit, impressions=n, source=src))
        for io_id, unit, n, src in signals
    ]
    sem = asyncio.Semaphore(SIGNAL_CONCURRENCY)

    async def send(wid: str, report: ReportDeliveryInput) -> None:
        async with sem:
            await client.get_workflow_handle(wid).signal(IO_DELIVERY_REPORTED_SIGNAL, report)

    rss_start = _worker_rss_mb(sampler)
    sampler.start()
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(send(w, r) for w, r in inputs))
        sent = time.perf_counter() - t0
        persisted = await wait_persisted(pg, tenant_id, persisted_before + len(signals), t0, timeout_s)
    finally:
        sampler.stop()
    return {
        "signals": len(signals),
        "seconds": sent,
        "persisted_seconds": persisted,
        "worker_rss_start_mb": rss_start,
        "peak_rss_mb": {k: v / MB for k, v in sampler.peak_rss.items()},
    }


# ---------------------------------------------------------------------------- the product


async def run_product(
    http: httpx.AsyncClient,
    pg: PgTarget,
    tenant: tuple[str, str],
    path: Path,
    rows: int,
    signals: int,
    persisted_before: int,
    sampler: Sampler,
    timeout_s: float,
) -> dict[str, Any]:
    """Uploads the file; rows phase from the import's own timestamps; then until all are persisted."""
    tid, key = tenant
    auth = {"Authorization": f"Bearer {key}"}
    rss_start = _worker_rss_mb(sampler)
    sampler.start()
    try:
        t0_wall, t0 = time.time(), time.perf_counter()
        with path.open("rb") as f:
            r = await http.post(
                "/api/v1/etl/upload",
                headers=auth,
                data={"kind": "deliveries"},
                files={"file": (path.name, f, "text/csv")},
            )
        if r.status_code != 202:
            raise RuntimeError(f"upload of {path.name}: {r.status_code} {r.text[:300]}")
        import_id = r.json()["import_id"]
        while True:
            r = await http.get(f"/api/v1/etl/status/{import_id}", headers=auth)
            r.raise_for_status()
            body = r.json()
            if body["status"] in FINAL or time.perf_counter() - t0 > timeout_s:
                break
            await asyncio.sleep(POLL_S)
        persisted = await wait_persisted(pg, tid, persisted_before + signals, t0, timeout_s)
    finally:
        sampler.stop()
    counts = (body["status"], body["rows_processed"], body["rows_updated"], body["rows_failed"])
    if counts != ("completed", rows, signals, 0):
        raise RuntimeError(
            f"product deliveries: (status, processed, signalled, failed) = {counts}, "
            f"expected {('completed', rows, signals, 0)}; errors {body.get('errors')}"
        )
    rows_done = datetime.fromisoformat(body["rows_finished_at"]).timestamp() - t0_wall
    return {
        "rows": rows,
        "signals": signals,
        "seconds": datetime.fromisoformat(body["finished_at"]).timestamp() - t0_wall,
        "rows_seconds": rows_done,
        "rows_per_s": rows / rows_done,
        "persisted_seconds": persisted,
        "worker_rss_start_mb": rss_start,
        "peak_rss_mb": {k: v / MB for k, v in sampler.peak_rss.items()},
    }


# ---------------------------------------------------------------------------- the measurement


def sizes_of_ios() -> tuple[int, int]:
    """BENCH_DELIVERIES_IOS (100) IOs of BENCH_DELIVERIES_UNITS (10) units each."""
    return env_int("BENCH_DELIVERIES_IOS", 100), env_int("BENCH_DELIVERIES_UNITS", 10)


async def measure_deliveries(
    http: httpx.AsyncClient,
    stack: Stack,
    procs: dict[str, psutil.Process],
    sizes: dict[str, tuple[int, Path]],
    timeout_s: float,
) -> dict[str, Any]:
    """Books both tenants, then per size: db anchor, raw SDK signals, product (see the docstring)."""
    from settings import Settings

    pgdata = stack.tmp / "data" / "pg"
    pg = PgTarget.of(pgdata)
    chunk_rows = Settings().import_chunk_rows
    n_ios, per_io = sizes_of_ios()
    print(f"[deliveries] booking {n_ios} IOs x {per_io} CPM units in two tenants ...", flush=True)
    t0 = time.perf_counter()
    anchor_t = await book_tenant(http, stack, pg, stack.tmp, "Bench deliveries anchor", n_ios, per_io)
    product_t = await book_tenant(http, stack, pg, stack.tmp, "Bench deliveries product", n_ios, per_io)
    setup_s = time.perf_counter() - t0
    print(f"[deliveries] booked in {setup_s:.1f} s", flush=True)
    # The two tenants' units pair up by position; each file is written once per tenant with
    # the same figures, and the raw SDK sends the anchor tenant's.
    out: dict[str, Any] = {
        "ios": n_ios,
        "units": n_ios * per_io,
        "chunk_rows": chunk_rows,
        "setup_seconds": setup_s,
    }
    persisted = {"anchor": 0, "product": 0}
    first_day = 1
    for label in ("small", "large"):
        rows, path = sizes[label]
        anchor_path = path.with_name(f"{path.stem}-anchor.csv")
        anchor_reports = write_reports(anchor_path, anchor_t[2], rows, first_day)
        product_reports = write_reports(path, product_t[2], rows, first_day)
        first_day += -(-rows // len(anchor_t[2]))
        signals = signals_of(anchor_reports, chunk_rows)
        n_signals = len(signals_of(product_reports, chunk_rows))
        run: dict[str, Any] = {"rows": rows, "signals": len(signals)}
        print(f"[deliveries {label}] db anchor: COPY + the same effect of {rows:,} rows ...", flush=True)
        run["db_anchor"] = await run_db_anchor(pg, anchor_t[0], label, anchor_path, rows, chunk_rows)
        print(f"[deliveries {label}] raw SDK: {len(signals):,} signals ...", flush=True)
        raw = await run_raw_sdk(
            stack, pg, anchor_t[0], signals, persisted["anchor"], Sampler(procs, pgdata), timeout_s
        )
        persisted["anchor"] += len(signals)
        raw["rows"] = rows
        raw["rows_per_s"] = rows / raw["seconds"]
        run["anchor"] = raw
        print(f"[deliveries {label}] product: upload + import ...", flush=True)
        sampler = Sampler(procs, pgdata)
        run["product"] = await run_product(
            http, pg, product_t[:2], path, rows, n_signals, persisted["product"], sampler, timeout_s
        )
        persisted["product"] += n_signals
        run["ratio"] = run["product"]["rows_per_s"] / raw["rows_per_s"]
        run["db_ratio"] = run["product"]["rows_per_s"] / run["db_anchor"]["rows_per_s"]
        run["persisted_ratio"] = raw["persisted_seconds"] / run["product"]["persisted_seconds"]
        print(
            f"[deliveries {label}] db {run['db_anchor']['rows_per_s']:,.0f} rows/s, raw SDK "
            f"{raw['rows_per_s']:,.0f} rows/s, product {run['product']['rows_per_s']:,.0f} rows/s "
            f"({run['ratio']:.2f}x raw SDK, {run['db_ratio']:.3f}x db), worker RSS "
            f"{run['product']['peak_rss_mb']['worker']:.0f} MB",
            flush=True,
        )
        anchor_path.unlink()
        out[label] = run
    small, large = out["small"], out["large"]
    out["per_row_growth"] = (large["product"]["rows_seconds"] / large["rows"]) / (
        small["product"]["rows_seconds"] / small["rows"]
    )
    out["worker_rss_added_mb"], out["worker_rss_growth_pct"] = import_rss_growth(small, large)
    return out


def render_lines(r: dict[str, Any]) -> list[str]:
    """The deliveries lines under the table: signals, the db anchor and the persisted figures."""
    lines = [
        f"{'deliveries':<12} {r['ios']} IOs, {r['units']:,} units, chunks of {r['chunk_rows']:,} rows, "
        f"booked in {r['setup_seconds']:.0f} s; anchor = raw SDK signals"
    ]
    for label in ("small", "large"):
        run = r[label]
        p, a, d = run["product"], run["anchor"], run["db_anchor"]
        lines.append(
            f"{'deliveries':<12} {label:<6} {run['signals']:,} signals: "
            f"raw SDK {a['signals'] / a['seconds']:,.0f}/s, "
            f"product {p['signals'] / p['rows_seconds']:,.0f}/s; persisted in {a['persisted_seconds']:.1f} s "
            f"(raw) vs {p['persisted_seconds']:.1f} s (product); db anchor {d['rows_per_s']:,.0f} rows/s; "
            f"worker RSS {a['worker_rss_start_mb']:.0f} -> {a['peak_rss_mb']['worker']:.0f} MB (raw), "
            f"{p['worker_rss_start_mb']:.0f} -> {p['peak_rss_mb']['worker']:.0f} MB (product)"
        )
    lines.append(
        f"{'deliveries':<12} ratio product/raw SDK {r['small']['ratio']:.2f}x {r['large']['ratio']:.2f}x, "
        f"product/db {r['small']['db_ratio']:.3f}x {r['large']['db_ratio']:.3f}x"
    )
    return lines
