"""The `sponsorflow` command: up, worker, api, migrate, tenant create, import, trace."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from settings import Settings, exit_skipping_teardown, get_settings

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Database:
    """Where the app role and the schema owner connect."""

    app_url: str
    owner_url: str
    server: Any = None


def resolve_database(settings: Settings) -> Database:
    """Returns the configured database, or starts (or joins) the embedded one under data_dir."""
    if settings.database_url:
        return Database(
            app_url=settings.database_url,
            owner_url=settings.migration_database_url or settings.database_url,
        )
    from db.embedded import ensure_database, start_server

    server = start_server(pgdata=settings.data_dir.resolve() / "pg")
    db = ensure_database(server=server, name="sponsorflow", app_role=settings.db_app_role)
    return Database(app_url=db.app_url, owner_url=db.owner_url, server=server)


def migrate(settings: Settings) -> Database:
    """Runs the migrations as the schema owner and returns the database."""
    from db.migrate import upgrade

    db = resolve_database(settings)
    upgrade(url=db.owner_url, app_role=settings.db_app_role)
    return db


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found; run `make install` (it comes from the pip package)")
    return found


def _wait_port(host: str, port: int, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see its log under the data dir")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not open {host}:{port} within {timeout:.0f}s")


def _wait_ready(url: str, timeout: float, sup: Supervisor) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        # A child that dies meanwhile (the API too) is restarted like any other.
        sup.tick()
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemExit(f"the API was not ready within {timeout:.0f}s: {last}; see api.log under the data dir")


def _admin_token(settings: Settings, data_dir: Path) -> str:
    if settings.admin_token:
        return settings.admin_token
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = settings.admin_token_or_generate()
    path.write_text(token)
    path.chmod(0o600)
    return token


def exit_description(code: int) -> str:
    """`code 1`, or `code -9 (SIGKILL)` for a child that a signal ended."""
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


@dataclass
class Backoff:
    """Restart delays of one child: `initial` doubling up to `maximum`, reset after a long enough run."""

    initial: float
    maximum: float
    reset_after: float
    _next: float = 0.0

    def after_exit(self, uptime: float) -> float:
        """The delay before the next start of a child that ran `uptime` seconds before it died."""
        if self._next == 0.0 or uptime >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux send the child SIGTERM when `up` dies without stopping it.

    The children run in their own process group (so a terminal's Ctrl-C reaches only `up`,
    which stops them in order); this keeps a SIGKILLed `up` from leaving them running.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # `up` died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
    """One process `up` runs and restarts: its command, its log and its restart state."""

    name: str
    argv: list[str]
    log_path: Path
    backoff: Backoff
    # How long `up` waits after SIGTERM before it kills the child.
    grace: float
    env: dict[str, str] | None = None
    cwd: Path | None = None
    # SPONSORFLOW_LOG_FORMAT=json: `up`'s own lines in the child's log are JSON lines too.
    json_log: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        """Starts the process, appending its output to its log."""
        with self.log_path.open("ab") as log:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                # Out of the terminal's foreground group: a read from it would stop the child.
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                # Only a prctl call runs between fork and exec: no lock a thread could hold.
                preexec_fn=_die_with_parent(),
            )
        self.started_at = time.monotonic()
        self.restart_at = None

    def note(self, line: str) -> None:
        """Prints a line on up's output and appends it to the child's log."""
        print(line, flush=True)
        if self.json_log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entry = {"ts": stamp, "level": "INFO", "logger": "sponsorflow.up", "message": line}
            text = json.dumps({**entry, "service": "sponsorflow-up", "child": self.name}) + "\n"
        else:
            text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} sponsorflow up: {line}\n"
        with self.log_path.open("a") as log:
            log.write(text)


class Supervisor:
    """Runs `up`'s children, restarts any that dies unasked, records their pids, stops them in order."""

    def __init__(self, pids_path: Path) -> None:
        self.children: list[Child] = []
        self.pids_path = pids_path
        self.stopping = False

    def start(self, child: Child) -> Child:
        """Starts a child and supervises it from now on."""
        self.children.append(child)
        child.start()
        self.write_pids()
        return child

    def write_pids(self) -> None:
        """`{name: pid}` of every running child, atomically (a fault injector reads it)."""
        pids = {c.name: c.proc.pid for c in self.children if c.proc is not None}
        tmp = self.pids_path.with_name(f".{self.pids_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(pids) + "\n")
        os.replace(tmp, self.pids_path)

    def tick(self) -> None:
        """Notices children that died and starts those whose backoff has passed."""
        if self.stopping:
            return
        now = time.monotonic()
        changed = False
        for c in self.children:
            if c.proc is not None and c.proc.poll() is not None:
                code = c.proc.returncode
                delay = c.backoff.after_exit(now - c.started_at)
                c.restarts += 1
                c.proc = None
                c.restart_at = now + delay
                c.note(
                    f"{c.name} exited with {exit_description(code)}; "
                    f"restarting in {delay:g} s (restart {c.restarts})"
                )
                changed = True
            elif c.proc is None and c.restart_at is not None and now >= c.restart_at:
                try:
                    c.start()
                except OSError as exc:
                    delay = c.backoff.after_exit(0)
                    c.restart_at = now + delay
                    c.note(f"{c.name} could not be started ({exc}); retrying in {delay:g} s")
                    continue
                assert c.proc is not None
                c.note(f"{c.name} restarted (pid {c.proc.pid})")
                changed = True
        if changed:
            self.write_pids()

    def stop(self) -> None:
        """SIGTERM to the API and the workers, then to Temporal; waits for each, kills stragglers."""
        self.stopping = True
        apps = [c for c in self.children if c.name != "temporal"]
        infra = [c for c in self.children if c.name == "temporal"]
        # The workers drain first: a running activity still needs Temporal to report its result.
        for group in (apps, infra):
            signalled = time.monotonic()
            for c in group:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.terminate()
            for c in group:
                if c.proc is None:
                    continue
                try:
                    code = c.proc.wait(timeout=max(0.0, signalled + c.grace - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"{c.name} did not stop in time; killing it", flush=True)
                    c.proc.kill()
                    c.proc.wait()
                    continue
                if code not in (0, -signal.SIGTERM):
                    print(
                        f"{c.name} exited with code {code} while stopping; see {c.log_path}",
                        flush=True,
                    )
        self.pids_path.unlink(missing_ok=True)


def metrics_lines(settings: Settings, api_url: str) -> list[str]:
    """The metrics URLs `up` prints: the API's and each worker's (none for what is turned off)."""
    lines = [f"{'API metrics':<15}{api_url}{settings.api_metrics_path}"] if settings.api_metrics_path else []
    for n in range(1, settings.workers + 1):
        if address := settings.worker_metrics_address_for(n):
            lines.append(f"worker metrics http://{address}/metrics  (worker-{n})")
    return lines


def up(settings: Settings) -> int:
    """Starts the whole dev stack in the foreground; Ctrl-C stops everything it started."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    sup = Supervisor(data_dir / "pids.json")
    stopped = False

    def backoff() -> Backoff:
        return Backoff(
            settings.up_restart_backoff_seconds,
            settings.up_restart_backoff_max_seconds,
            settings.up_restart_reset_seconds,
        )

    def stop(*_: Any) -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        print("\nstopping ...", flush=True)
        sup.stop()
        if db is not None and db.server is not None:
            db.server.cleanup()

    db: Database | None = None
    signal.signal(signal.SIGINT, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        token = _admin_token(settings, data_dir)
        print(f"starting PostgreSQL (data in {data_dir / 'pg'}) ...", flush=True)
        db = migrate(settings)
        env = dict(os.environ)
        env.update(
            SPONSORFLOW_DATABASE_URL=db.app_url,
            SPONSORFLOW_ADMIN_TOKEN=token,
            SPONSORFLOW_DATA_DIR=str(data_dir),
            # One build id for the stack's life: a worker restarted after a commit is still the
            # version that is current, so no pinned run is left on a build nobody runs.
            SPONSORFLOW_WORKER_BUILD_ID=settings.build_id,
        )
        if settings.trace_file is not None:
            # The children run in the repository: a relative path means the one `up` was given.
            env["SPONSORFLOW_TRACE_FILE"] = str(settings.trace_file.expanduser().resolve())
        if settings.worker_promote is None:
            # The dev stack's workers make their own version current (production: the release does).
            env["SPONSORFLOW_WORKER_PROMOTE"] = "true"
        if not settings.temporal_address:
            print("starting the Temporal dev server ...", flush=True)
            from workflows.search_attributes import cli_flags

            # Restarted like the others if it dies: it reopens the same SQLite file, and the
            # workers and the API reconnect by themselves.
            temporal = sup.start(
                Child(
                    "temporal",
                    [
                        _bin("temporal"),
                        "server",
                        "start-dev",
                        "--db-filename",
                        str(data_dir / "temporal.db"),
                        "--port",
                        str(settings.temporal_port),
                        "--ui-port",
                        str(settings.temporal_ui_port),
                        "--namespace",
                        settings.temporal_namespace,
                        "--log-level",
                        "warn",
                        *(
                            # WAL, still synced at every commit: faster, and as durable.
                            ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=full"]
                            if settings.temporal_dev_wal
                            else []
                        ),
                        *cli_flags(),
                        # TemporalReportedProblems on a workflow whose task keeps failing.
                        *settings.dev_server_flags(),
                    ],
                    logs / "temporal.log",
                    backoff(),
                    grace=15,
                )
            )
            assert temporal.proc is not None
            _wait_port("127.0.0.1", settings.temporal_port, 60, "the Temporal dev server", temporal.proc)
            env["SPONSORFLOW_TEMPORAL_ADDRESS"] = f"127.0.0.1:{settings.temporal_port}"
        for n in range(1, settings.workers + 1):
            # The first worker keeps the log name of the single-worker stack.
            sup.start(
                Child(
                    f"worker-{n}",
                    [sys.executable, "-m", "cli", "worker"],
                    logs / ("worker.log" if n == 1 else f"worker-{n}.log"),
                    backoff(),
                    grace=settings.worker_shutdown_seconds + 10,
                    # Each worker serves its metrics on a port of its own: the address's + n - 1.
                    env={**env, "SPONSORFLOW_WORKER_METRICS_ADDRESS": settings.worker_metrics_address_for(n)},
                    cwd=HERE,
                    json_log=settings.log_format == "json",
                )
            )
        sup.start(
            Child(
                "api",
                [sys.executable, "-m", "cli", "api", "--log-level", "warning"],
                logs / "api.log",
                backoff(),
                grace=settings.api_shutdown_seconds + 5,
                env=env,
                cwd=HERE,
                json_log=settings.log_format == "json",
            )
        )
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        _wait_ready(api_url, 60, sup)
        demo_key = None
        if settings.demo:
            from api.demo_seed import seed_demo

            demo_key = seed_demo(api_url, token, data_dir)
        print(
            "\nsponsorflow is up\n"
            f"  Web app        {api_url}/  (sign in with an API key)\n"
            f"  API            {api_url}\n"
            f"  API docs       {api_url}/docs\n"
            f"  Temporal UI    {settings.ui_base_url}\n"
            + (
                f"  worker version {settings.worker_deployment}:{settings.build_id}\n"
                if settings.worker_versioning
                else ""
            )
            + "".join(f"  {line}\n" for line in metrics_lines(settings, api_url))
            + f"  admin token    {token}\n"
            + (f"  demo API key   {demo_key}\n" if demo_key else "")
            + f"  logs           {logs}\n"
            "Press Ctrl-C to stop everything.",
            flush=True,
        )
        while True:
            sup.tick()
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop()


def tenant_create(settings: Settings, name: str) -> int:
    """Creates a tenant and prints its first API key (shown once)."""
    from db.engine import make_engine, make_sessionmaker
    from db.tenants import create_tenant

    db = resolve_database(settings)

    async def run() -> None:
        engine = make_engine(url=db.app_url, pool_size=1)
        try:
            tenant = await create_tenant(sm=make_sessionmaker(engine=engine), name=name)
        finally:
            await engine.dispose()
        if settings.enable_matchmaking:
            from datetime import timedelta

            from settings import connect_temporal
            from workflows.starters import ensure_match_schedule

            try:
                client = await connect_temporal(settings)
                await ensure_match_schedule(
                    client,
                    str(tenant.id),
                    settings.temporal_task_queue,
                    timedelta(hours=settings.match_recalc_every_hours),
                )
            except Exception as exc:  # noqa: BLE001 - the worker creates it at its next start
                print(
                    f"note: the match schedule will be created when the worker starts ({exc})",
                    file=sys.stderr,
                )
        print(json.dumps({"id": str(tenant.id), "name": tenant.name, "api_key": tenant.api_key}))

    asyncio.run(run())
    return 0


_IMPORT_DONE = ("completed", "completed_with_errors", "failed", "cancelled")
_IMPORT_SHOWN_ERRORS = 20


def _http_detail(r: httpx.Response) -> str:
    """The `detail` of an error answer as one line (FastAPI 422 lists become `field: message`)."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip() or r.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, dict):
                where = ".".join(str(x) for x in d.get("loc", [])[1:])
                parts.append(f"{where}: {d.get('msg')}" if where else str(d.get("msg")))
            else:
                parts.append(str(d))
        return "; ".join(parts)
    return str(detail)


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _progress_line(st: dict[str, Any], elapsed: float) -> str:
    """`[#####-----]  42.0%  4,200/10,000 rows  1,234 rows/s  ETA 0:05` for one status answer."""
    p = min(max(float(st.get("progress") or 0.0), 0.0), 1.0)
    done = int(st.get("rows_processed") or 0)
    total = st.get("rows_total")
    rate = done / elapsed if elapsed > 0 else 0.0
    if p >= 1:
        eta = "0:00"
    elif total and rate > 0:
        eta = _duration(max(int(total) - done, 0) / rate)
    elif p > 0:
        eta = _duration(elapsed * (1 - p) / p)
    else:
        eta = "--:--"
    filled = int(p * 30)
    rows = f"{done:,}/{int(total):,}" if total else f"{done:,}"
    to_start = st.get("workflows_to_start")
    if st.get("phase") == "workflows" and to_start is not None:
        # Second phase: every row is committed; the open deals' workflows are being started.
        started = int(st.get("workflows_started") or 0)
        q = min(started / int(to_start), 1.0) if int(to_start) else 1.0
        bar = int(q * 30)
        return (
            f"rows {rows} committed  workflows [{'#' * bar}{'-' * (30 - bar)}] {q:6.1%}  "
            f"{started:,}/{int(to_start):,} started  ({st.get('status')})"
        )
    return (
        f"[{'#' * filled}{'-' * (30 - filled)}] {p:6.1%}  {rows} rows  {rate:,.0f} rows/s  "
        f"ETA {eta}  ({st.get('status')})"
    )


def _print_import_result(st: dict[str, Any], out: TextIO) -> None:
    """The final status, counts, warnings and the first row errors as a small table."""
    print(f"import {st['import_id']} ({st.get('filename')}, {st.get('kind')}): {st['status']}", file=out)
    print(
        f"{st['rows_processed']:,} rows processed: {st['rows_inserted']:,} inserted, "
        f"{st['rows_updated']:,} updated, {st['rows_failed']:,} failed; "
        f"{st['workflows_started']:,} workflows started"
        + (f" of {st['workflows_to_start']:,}" if st.get("workflows_to_start") is not None else ""),
        file=out,
    )
    if st.get("warnings"):
        print("warnings:", file=out)
        for w in st["warnings"]:
            print(f"  - {w}", file=out)
    errors = st.get("errors") or []
    if errors:
        shown = errors[:_IMPORT_SHOWN_ERRORS]
        failed = max(int(st.get("rows_failed") or 0), len(errors))
        print(f"row errors (first {len(shown)} of {failed:,}):", file=out)

        def cell(v: Any, width: int | None = None) -> str:
            text = "" if v is None else str(v).replace("\r", "\\r").replace("\n", "\\n")
            return text if width is None or len(text) <= width else text[: width - 3] + "..."

        rows = [("row", "column", "value", "message")] + [
            (cell(e.get("row")), cell(e.get("column"), 30), cell(e.get("value"), 30), cell(e.get("message")))
            for e in shown
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            padded = "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True))
            print(f"  {padded}  {r[3]}", file=out)
    if st["status"] in ("failed", "cancelled"):
        print(f"error: {st.get('error') or 'the import ' + st['status']}", file=out)


def import_file(api: str, key: str | None, path: Path, kind: str, out: TextIO, err: TextIO) -> int:
    """Uploads a CSV/XLSX file through the API, follows the import with a progress bar and reports it."""
    from domain.imports import KINDS

    if kind not in KINDS:
        print(f"error: unknown kind {kind!r}; expected one of {', '.join(KINDS)}", file=err)
        return 2
    if not path.is_file():
        print(f"error: {path}: {'not a file' if path.exists() else 'no such file'}", file=err)
        return 2
    if not key:
        print("error: no API key; pass --key KEY or set SPONSORFLOW_API_KEY", file=err)
        return 2
    api = api.rstrip("/")
    tty = err.isatty()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        print(f"uploading {path.name} ({path.stat().st_size:,} bytes) to {api} as {kind} ...", file=err)
        try:
            with path.open("rb") as fh:  # httpx streams an open file instead of reading it into memory
                r = client.post("/api/v1/etl/upload", files={"file": (path.name, fh)}, data={"kind": kind})
        except OSError as exc:
            print(f"error: cannot read {path}: {exc}", file=err)
            return 2
        except httpx.HTTPError as exc:
            print(f"error: the upload to {api} failed: {exc}", file=err)
            return 1
        if 400 <= r.status_code < 500:
            print(f"error: the API refused the upload (HTTP {r.status_code}): {_http_detail(r)}", file=err)
            return 2
        if r.status_code != 202:
            print(f"error: the upload failed (HTTP {r.status_code}): {_http_detail(r)}", file=err)
            return 1
        import_id = r.json()["import_id"]
        status_path = f"/api/v1/etl/status/{import_id}"
        print(f"import {import_id} accepted; following it ...", file=err)
        started = last_line = time.monotonic()
        drawn = False
        misses = 0
        try:
            while True:
                try:
                    resp = client.get(status_path, timeout=10.0)
                    if resp.status_code >= 500:
                        raise httpx.HTTPError(f"HTTP {resp.status_code}: {_http_detail(resp)}")
                except httpx.HTTPError as exc:
                    misses += 1
                    if misses >= 20:  # about ten seconds without an answer
                        if drawn:
                            err.write("\n")
                        print(f"error: lost the API while following import {import_id}: {exc}", file=err)
                        return 1
                    time.sleep(0.5)
                    continue
                if resp.status_code != 200:
                    if drawn:
                        err.write("\n")
                    print(f"error: status of import {import_id}: {_http_detail(resp)}", file=err)
                    return 1
                misses = 0
                st = resp.json()
                now = time.monotonic()
                done = st["status"] in _IMPORT_DONE
                line = _progress_line(st, now - started)
                if tty:
                    err.write(f"\r{line}\x1b[K")
                    err.flush()
                    drawn = True
                elif done or now - last_line >= 5:
                    print(line, file=err, flush=True)
                    last_line = now
                if done:
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            print(
                f"\nstopped following import {import_id}; it goes on in the server (GET {api}{status_path})",
                file=err,
            )
            return 130
        if drawn:
            err.write("\n")
            err.flush()
    _print_import_result(st, out)
    return 0 if st["status"] == "completed" else 1


def print_trace(path: Path, trace_id: str, out: TextIO, err: TextIO) -> int:
    """Prints the spans of one trace (a traceparent or its trace id) as a tree, in start order."""
    from telemetry import read_trace

    parts = trace_id.strip().lower().split("-")
    wanted = parts[1] if len(parts) == 4 else parts[0]
    try:
        spans = read_trace(path, wanted)
    except OSError as exc:
        print(f"cannot read {path}: {exc}", file=err)
        return 2
    if not spans:
        print(f"no span of trace {wanted} in {path}", file=err)
        return 1
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        children.setdefault(s["parent_id"] if s["parent_id"] in ids else None, []).append(s)
    t0 = min(s["start"] for s in spans)

    def show(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s["start"]):
            offset = _offset_ms(t0, s["start"])
            status = "" if s["status"] != "ERROR" else f"  ERROR {s.get('status_description') or ''}"
            out.write(
                f"{offset:>9.1f} ms {s['duration_ms']:>9.2f} ms  {s['service'] or '':<19} "
                f"{'  ' * depth}{s['name']}{status}\n"
            )
            show(s["span_id"], depth + 1)

    out.write(f"trace {wanted}: {len(spans)} spans (start offset, duration, service, span)\n")
    show(None, 0)
    return 0


def _offset_ms(t0: str, t: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(t) - datetime.fromisoformat(t0)).total_seconds() * 1000


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs one command."""
    parser = argparse.ArgumentParser(prog="sponsorflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole dev stack (PostgreSQL, Temporal, worker, API, demo data)")
    sub.add_parser("worker", help="run the Temporal worker")
    api_cmd = sub.add_parser("api", help="run the HTTP API")
    api_cmd.add_argument(
        "--log-level", default=None, help="the API's log level (default: SPONSORFLOW_LOG_LEVEL, info)"
    )
    sub.add_parser("migrate", help="apply database migrations")
    tenant = sub.add_parser("tenant", help="manage tenants")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_sub.add_parser("create", help="create a tenant and print its API key")
    create.add_argument("name")
    imp = sub.add_parser("import", help="upload a CSV/XLSX file through the API and follow the import")
    imp.add_argument("file", type=Path, help="the .csv or .xlsx file")
    imp.add_argument("--kind", required=True, help="shows | advertisers | campaigns | show_downloads")
    imp.add_argument("--api", help="API base URL (default: SPONSORFLOW_API_URL or the configured host:port)")
    imp.add_argument("--key", help="tenant API key (default: SPONSORFLOW_API_KEY)")
    trace_cmd = sub.add_parser("trace", help="print one trace's spans from SPONSORFLOW_TRACE_FILE as a tree")
    trace_cmd.add_argument("trace_id", help="the trace id (the middle part of a response's traceparent)")
    trace_cmd.add_argument("--file", type=Path, help="the trace file (default: SPONSORFLOW_TRACE_FILE)")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "up":
        return up(settings)
    if args.command == "worker":
        import worker

        worker.main()
        exit_skipping_teardown(0)
    if args.command == "api":
        import uvicorn

        import telemetry

        level = args.log_level or settings.log_level
        # Every logger (uvicorn's too) through the one redacting handler, text or JSON.
        telemetry.configure_logging(settings, service="sponsorflow-api", level=level)
        uvicorn.run(
            "api.main:app_factory",
            factory=True,
            host=settings.api_host,
            port=settings.api_port,
            log_level=level,
            log_config=None,
            # JSON mode writes its own access line (route template, tenant, workflow and trace ids).
            access_log=settings.log_format == "text",
            # SIGTERM: stop accepting, finish requests in flight, then end what still runs (the
            # web app's event streams never finish by themselves) and run the lifespan's shutdown.
            timeout_graceful_shutdown=settings.api_shutdown_seconds,
        )
        exit_skipping_teardown(0)
    if args.command == "migrate":
        migrate(settings)
        print("database is at the latest migration")
        return 0
    if args.command == "tenant":
        exit_skipping_teardown(tenant_create(settings, args.name))
    if args.command == "import":
        api = (
            args.api
            or os.environ.get("SPONSORFLOW_API_URL")
            or f"http://{settings.api_host}:{settings.api_port}"
        )
        key = args.key or os.environ.get("SPONSORFLOW_API_KEY")
        return import_file(api, key, args.file, args.kind, sys.stdout, sys.stderr)
    if args.command == "trace":
        path = args.file or settings.trace_file
        if path is None:
            print("no trace file: pass --file or set SPONSORFLOW_TRACE_FILE", file=sys.stderr)
            return 2
        return print_trace(path, args.trace_id, sys.stdout, sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
