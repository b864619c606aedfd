"""Test helpers shared by several test modules (moved from tests/e2e/test_up.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Up:
    """One `sponsorflow up` process and what it printed."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_up(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[self.offset :].decode(errors="replace")
            if "Press Ctrl-C" in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"sponsorflow up exited early:\n{text}")
            time.sleep(0.5)
        raise AssertionError(f"sponsorflow up not ready:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> int:
        """Ctrl-C; every child must end cleanly (`up` names any that crashed or hung)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        text = self.log.read_bytes()[self.offset :].decode(errors="replace")
        assert "while stopping" not in text and "killing it" not in text, text
        return code
