"""The embedded PostgreSQL forgets users that died without detaching (a SIGKILLed `up`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from db.embedded import _forget_dead_users


def test_dead_users_are_forgotten_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    listed = tmp_path / ".handle_pids.json"
    listed.write_text(json.dumps([os.getpid(), dead.pid]))
    _forget_dead_users(tmp_path)
    assert json.loads(listed.read_text()) == [os.getpid()]


def test_no_list_is_fine(tmp_path: Path) -> None:
    _forget_dead_users(tmp_path)
    assert not (tmp_path / ".handle_pids.json").exists()
