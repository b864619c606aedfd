"""A benchmark's own `sponsorflow up` on free ports with a fresh data dir (shared by bench/)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def results_path(name: str) -> Path:
    """Where a benchmark writes its figures: bench/results/<name>.json, or under BENCH_RESULTS_DIR.

    The smoke tests point BENCH_RESULTS_DIR elsewhere so a tiny run never overwrites real figures.
    """
    base = os.environ.get("BENCH_RESULTS_DIR")
    directory = Path(base) if base else ROOT / "bench" / "results"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.json"


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    value = int(raw)
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {raw!r}")
    return value


def free_ports(n: int) -> list[int]:
    """Returns n ports that were free a moment ago (also used by the fault suite's processes)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_ready(api_url: str, *, exited: Callable[[], int | None], timeout: float) -> None:
    """Waits for the API's /readyz to answer 200 (PostgreSQL and Temporal answer it).

    `exited` tells whether `sponsorflow up` has exited (its return code, or None while it runs):
    then there is nothing to wait for.
    """
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=2, trust_env=False) as http:
        while time.monotonic() < deadline:
            if (code := exited()) is not None:
                raise RuntimeError(f"`sponsorflow up` exited with code {code}")
            try:
                r = http.get(f"{api_url}/readyz")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.3)
    raise RuntimeError(f"the API was not ready within {timeout:.0f}s: {last}")


# ---------------------------------------------------------------------------- the stack


class Stack:
    """One `python -m cli up` in its own session, data dir and ports."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.extra_env = extra_env or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="sponsorflow-bench-"))
        self.api_port, self.temporal_port, self.ui_port = free_ports(3)
        self.admin_token = secrets.token_urlsafe(24)
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.log_path = self.tmp / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Nothing from the caller's SPONSORFLOW_* may point the stack elsewhere (external
        # database or Temporal, TLS, another namespace): the bench measures its own stack.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPONSORFLOW_")}
        env.update(
            SPONSORFLOW_DATA_DIR=str(self.tmp / "data"),
            SPONSORFLOW_API_PORT=str(self.api_port),
            SPONSORFLOW_TEMPORAL_PORT=str(self.temporal_port),
            SPONSORFLOW_TEMPORAL_UI_PORT=str(self.ui_port),
            SPONSORFLOW_DEMO="false",
            SPONSORFLOW_ADMIN_TOKEN=self.admin_token,
            ENABLE_DEAL_PIPELINE="true",
            ENABLE_ETL_CSV_UPLOAD="true",
            ENABLE_IO_BOOKINGS="true",
            ENABLE_MATCHMAKING="true",
        )
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            env=env,
            cwd=ROOT,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None
        wait_for_ready(self.api_url, exited=proc.poll, timeout=READY_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGINT to `up` (it stops its children and PostgreSQL); kills the group after 30 s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"`cli up` did not stop within {STOP_TIMEOUT_S:.0f}s; killing it", flush=True)
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        return self.proc.returncode

    def run(self, measure: Callable[[], T]) -> T:
        """Starts the stack, runs `measure` against it, and stops it.

        After a success its data dir is removed; after a failure (or Ctrl-C) the logs' tails are
        printed and its data and logs are kept, their path printed, for a look.
        """
        ok = False
        try:
            print(f"starting the stack (data in {self.tmp}) ...", flush=True)
            self.start()
            self.wait_ready()
            result = measure()
            ok = True
            return result
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                print(f"\nbenchmark failed: {exc!r}\n{self.log_tail()}", file=sys.stderr, flush=True)
            raise
        finally:
            print("stopping the stack ...", flush=True)
            code = self.stop()
            if ok:
                self.discard()
            else:
                print(f"stack exited with {code}; its data and logs are kept in {self.tmp}", file=sys.stderr)

    def discard(self) -> None:
        """Removes the stack's data dir and logs (after a run that succeeded; a failed one keeps them)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        """`{child name: pid}` as `up` last wrote them to <data_dir>/pids.json (rewritten on restarts)."""
        path = self.tmp / "data" / "pids.json"
        try:
            return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"`up` has not written {path} ({exc})") from exc

    def app_processes(self) -> dict[str, psutil.Process]:
        """The API and worker processes of this stack, by `up`'s pids.json: {"api": ..., "worker": ...}.

        A benchmark that samples one worker needs exactly one; each pid is checked to still be a
        `python -m cli api|worker` (a pid reused after a restart would measure something else).
        """
        pids = self.pids()
        workers = sorted(name for name in pids if name.startswith("worker-"))
        if "api" not in pids or workers != ["worker-1"]:
            raise RuntimeError(f"expected an api and one worker-1 in pids.json, found {sorted(pids)}")
        found: dict[str, psutil.Process] = {}
        for role, name in (("api", "api"), ("worker", "worker-1")):
            try:
                proc = psutil.Process(pids[name])
                cmd = proc.cmdline()
            except psutil.Error as exc:
                raise RuntimeError(f"{name} (pid {pids[name]}) is not running: {exc}") from exc
            if cmd[1:4] != ["-m", "cli", role]:
                raise RuntimeError(f"pid {pids[name]} of {name} runs {cmd!r}, not `python -m cli {role}`")
            found[role] = proc
        return found

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in [self.log_path, *sorted((self.tmp / "data" / "logs").glob("*.log"))]:
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)
