"""`sponsorflow import` as a real process against `sponsorflow up`: counts, row errors, exit codes."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import import_file

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Press Ctrl-C" in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"sponsorflow up exited early:\n{text}")
        time.sleep(0.5)
    raise AssertionError(f"sponsorflow up not ready:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _printed(text: str, label: str) -> str:
    found = re.findall(rf"{label}\s+(\S+)", text)
    assert found, f"{label!r} not printed"
    return found[-1]


def _import(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "import", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_import_reports_counts_row_errors_and_exit_codes(tmp_path: Path) -> None:
    ports = {k: str(_free_port()) for k in ("API", "TEMPORAL", "TEMPORAL_UI")}
    env = dict(os.environ)
    env.update(
        SPONSORFLOW_DATA_DIR=str(tmp_path / "data"),
        SPONSORFLOW_API_PORT=ports["API"],
        SPONSORFLOW_TEMPORAL_PORT=ports["TEMPORAL"],
        SPONSORFLOW_TEMPORAL_UI_PORT=ports["TEMPORAL_UI"],
        SPONSORFLOW_DEMO="true",
    )
    for name in ("SPONSORFLOW_ADMIN_TOKEN", "SPONSORFLOW_DATABASE_URL", "SPONSORFLOW_API_URL"):
        env.pop(name, None)
    env.pop("SPONSORFLOW_API_KEY", None)
    api = f"http://127.0.0.1:{ports['API']}"
    log = tmp_path / "up.log"

    mixed = tmp_path / "shows.csv"
    mixed.write_text(
        "external_id,name,avg_downloads\n"
        "cli-1,CLI Show One,1000\n"
        "cli-2,CLI Show Two,2000\n"
        "cli-3,CLI Show Three,lots\n"
        "cli-4,CLI Show Four,4000\n"
    )
    good = tmp_path / "good.csv"
    good.write_text("external_id,name,avg_downloads\ncli-5,CLI Show Five,5000\ncli-6,CLI Show Six,6000\n")

    up = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        key = _printed(_wait_until_up(up, log), "demo API key")

        # 3 good rows and 1 bad one: exit 1, counts and the bad cell in a table.
        out = _import(env, str(mixed), "--kind", "shows", "--api", api, "--key", key)
        assert out.returncode == 1, out.stdout + out.stderr
        assert ": completed_with_errors" in out.stdout
        assert "4 rows processed: 3 inserted, 0 updated, 1 failed; 0 workflows started" in out.stdout
        assert re.search(r"^\s+4\s+avg_downloads\s+lots\s+not a whole number", out.stdout, re.M), out.stdout
        assert "100.0%" in out.stderr  # the non-TTY progress line

        # A clean file, with the API and key taken from the environment: exit 0.
        from_env = env | {"SPONSORFLOW_API_URL": api, "SPONSORFLOW_API_KEY": key}
        out = _import(from_env, str(good), "--kind", "shows")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "2 rows processed: 2 inserted, 0 updated, 0 failed" in out.stdout
        assert "row errors" not in out.stdout

        # Usage problems: exit 2 before anything is uploaded, and the API's own 4xx.
        out = _import(env, str(tmp_path / "missing.csv"), "--kind", "shows", "--api", api, "--key", key)
        assert out.returncode == 2 and "no such file" in out.stderr
        out = _import(env, str(good), "--kind", "podcasts", "--api", api, "--key", key)
        assert out.returncode == 2 and "unknown kind 'podcasts'" in out.stderr
        out = _import(env, str(good), "--kind", "shows", "--api", api)
        assert out.returncode == 2 and "SPONSORFLOW_API_KEY" in out.stderr
        out = _import(env, str(good), "--kind", "shows", "--api", api, "--key", "not-a-key")
        assert out.returncode == 2 and "HTTP 401" in out.stderr

        # On a terminal the progress is one line redrawn with \r; re-importing updates the rows.
        stdout, stderr = io.StringIO(), _Tty()
        assert import_file(api, key, good, "shows", stdout, stderr) == 0
        assert "\r[" in stderr.getvalue() and "rows/s" in stderr.getvalue()
        assert "2 rows processed: 0 inserted, 2 updated, 0 failed" in stdout.getvalue()
    finally:
        assert _stop(up) == 0
