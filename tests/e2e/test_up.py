"""`sponsorflow up` as a real process: start, drive over HTTP, stop, start again, find the data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.up import Up, free_port

pytestmark = pytest.mark.timeout(300)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _printed(text: str, label: str) -> str:
    found = re.findall(rf"{label}\s+(\S+)", text)
    assert found, f"{label!r} not printed"
    return found[-1]


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Not under pytest's basetemp: a concurrent pytest run resets /tmp/pytest-of-<user> to 0700,
    and the embedded PostgreSQL's server user could then no longer reach its data to stop it."""
    path = Path(tempfile.mkdtemp(prefix="sf-e2e-up-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_stop_up_keeps_deals_and_workflows(tmp_path: Path) -> None:
    ports = {k: str(free_port()) for k in ("API", "TEMPORAL", "TEMPORAL_UI")}
    env = dict(os.environ)
    env.update(
        SPONSORFLOW_DATA_DIR=str(tmp_path / "data"),
        SPONSORFLOW_API_PORT=ports["API"],
        SPONSORFLOW_TEMPORAL_PORT=ports["TEMPORAL"],
        SPONSORFLOW_TEMPORAL_UI_PORT=ports["TEMPORAL_UI"],
        SPONSORFLOW_DEMO="true",
    )
    env.pop("SPONSORFLOW_ADMIN_TOKEN", None)
    env.pop("SPONSORFLOW_DATABASE_URL", None)
    log = tmp_path / "up.log"
    api = f"http://127.0.0.1:{ports['API']}"

    first = Up(env, log)
    try:
        text = first.wait_until_up()
        # One worker by default, named like the first of many; its log keeps the old name.
        pids = json.loads((tmp_path / "data" / "pids.json").read_text())
        assert set(pids) == {"temporal", "api", "worker-1"}
        assert (tmp_path / "data" / "logs" / "worker.log").stat().st_size > 0
        assert f"{api}/docs" in text and f"http://127.0.0.1:{ports['TEMPORAL_UI']}" in text
        key = _printed(text, "demo API key")
        admin = _printed(text, "admin token")
        h = {"Authorization": f"Bearer {key}"}
        deals = httpx.get(f"{api}/api/v1/deals?limit=200", headers=h).json()["items"]
        assert len(deals) >= 30
        assert {d["stage"] for d in deals} == {"lead", "qualified", "proposal", "negotiation", "won", "lost"}
        assert len(httpx.get(f"{api}/api/v1/shows?limit=200", headers=h).json()["items"]) >= 12
        ios = httpx.get(f"{api}/api/v1/io", headers=h).json()["items"]
        assert ios and all(io["status"] == "scheduled" and io["promo_code"] for io in ios)
        lead = next(d for d in deals if d["stage"] == "lead")
        r = httpx.patch(f"{api}/api/v1/deals/{lead['id']}/stage", json={"stage": "qualified"}, headers=h)
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{api}/api/v1/tenants", json={"name": "Second"}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 201
        # The CLI reaches the same embedded database while the stack runs.
        out = _cli(env, "tenant", "create", "Gamma Audio")
        created = json.loads(out.stdout.strip().splitlines()[-1])
        assert created["name"] == "Gamma Audio"
        gamma = {"Authorization": f"Bearer {created['api_key']}"}
        assert httpx.get(f"{api}/api/v1/shows", headers=gamma).json()["items"] == []
    finally:
        assert first.stop() == 0
    # SQLite's header names the journal mode in its read/write version bytes: 1 rollback, 2 WAL.
    temporal_db = tmp_path / "data" / "temporal.db"
    assert temporal_db.read_bytes()[18:20] == b"\x01\x01"
    # The second run switches the dev server's file to WAL (SPONSORFLOW_TEMPORAL_DEV_WAL) and
    # still finds everything.
    env["SPONSORFLOW_TEMPORAL_DEV_WAL"] = "true"

    second = Up(env, log)
    try:
        text = second.wait_until_up()
        assert _printed(text, "demo API key") == key, "the demo tenant was seeded twice"
        r = httpx.get(f"{api}/api/v1/deals/{lead['id']}", headers=h)
        assert r.status_code == 200 and r.json()["stage"] == "qualified"
        # The workflow survived the restart: it answers the next move from its own state.
        r = httpx.patch(f"{api}/api/v1/deals/{lead['id']}/stage", json={"stage": "won"}, headers=h)
        assert r.status_code == 409 and r.json()["current_stage"] == "qualified"
        r = httpx.patch(f"{api}/api/v1/deals/{lead['id']}/stage", json={"stage": "proposal"}, headers=h)
        assert r.status_code == 200 and [x["to"] for x in r.json()["history"]] == [
            "lead",
            "qualified",
            "proposal",
        ]
        listed = httpx.get(f"{api}/api/v1/deals?limit=200", headers=h).json()["items"]
        assert len(listed) == len(deals)
        # The IOs' workflows survived too: a cancel goes through the running workflow.
        r = httpx.post(f"{api}/api/v1/io/{ios[0]['id']}/cancel", json={"reason": "demo"}, headers=h)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    finally:
        assert second.stop() == 0
    assert temporal_db.read_bytes()[18:20] == b"\x02\x02"
    assert not (tmp_path / "data" / "pids.json").exists()
    out = _cli(env, "migrate")
    assert "latest migration" in out.stdout
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True, check=False
    ).stdout.split()
    survivors = subprocess.run(
        ["ps", "-o", "pid,args", "-p", ",".join(leftovers or ["1"])],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert leftovers == [], f"processes of the stack survived Ctrl-C:\n{survivors}"
