"""`sponsorflow up` with two workers heals: a SIGKILLed worker or API comes back, moves go on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from tests.helpers.up import Up, free_port

pytestmark = pytest.mark.timeout(240)

ADMIN = "heal-admin-token"
# Long enough that a move can be shown to go through while the killed child is still down (the
# test checks the child is still gone once the moves are answered; no timing is asserted).
BACKOFF_S = 15


@dataclass
class Stack:
    """A running `up` with two workers, one tenant and a few deals."""

    up: Up
    data: Path
    api: str
    temporal: str
    tenant: str
    key: str
    deals: list[str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def pids(self) -> dict[str, int]:
        return dict(json.loads((self.data / "pids.json").read_text()))

    def output(self) -> str:
        return self.up.log.read_bytes()[self.up.offset :].decode(errors="replace")

    def wait_for(self, what: str, check: Any, timeout: float = 45) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"{what} within {timeout:.0f}s; up printed:\n{self.output()}")


def _leftovers(data: Path) -> str:
    pids = subprocess.run(
        ["pgrep", "-f", str(data)], capture_output=True, text=True, check=False
    ).stdout.split()
    if not pids:
        return ""
    return subprocess.run(
        ["ps", "-o", "pid,args", "-p", ",".join(pids)], capture_output=True, text=True, check=False
    ).stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not under pytest's basetemp: a concurrent pytest run resets /tmp/pytest-of-<user> to 0700,
    # and the embedded PostgreSQL's server user could then no longer reach its data to stop it.
    tmp = Path(tempfile.mkdtemp(prefix="sf-e2e-heal-"))
    ports = {k: str(free_port()) for k in ("API", "TEMPORAL", "TEMPORAL_UI")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPONSORFLOW_")}
    env.update(
        SPONSORFLOW_DATA_DIR=str(tmp / "data"),
        SPONSORFLOW_API_PORT=ports["API"],
        SPONSORFLOW_TEMPORAL_PORT=ports["TEMPORAL"],
        SPONSORFLOW_TEMPORAL_UI_PORT=ports["TEMPORAL_UI"],
        SPONSORFLOW_DEMO="false",
        SPONSORFLOW_ADMIN_TOKEN=ADMIN,
        SPONSORFLOW_WORKERS="2",
        SPONSORFLOW_UP_RESTART_BACKOFF_SECONDS=str(BACKOFF_S),
    )
    api = f"http://127.0.0.1:{ports['API']}"
    up = Up(env, tmp / "up.log")
    data = tmp / "data"
    try:
        up.wait_until_up()
        r = httpx.post(
            f"{api}/api/v1/tenants", json={"name": "Heal"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert r.status_code == 201, r.text
        tenant, key = r.json()["id"], r.json()["api_key"]
        h = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{api}/api/v1/advertisers", json={"name": "Acme"}, headers=h)
        assert r.status_code == 201, r.text
        advertiser = r.json()["id"]
        deals = []
        for i in range(6):
            r = httpx.post(
                f"{api}/api/v1/deals",
                json={"advertiser_id": advertiser, "name": f"Deal {i}", "value_usd": 1000},
                headers=h,
                timeout=30,
            )
            assert r.status_code == 201, r.text
            deals.append(r.json()["id"])
        yield Stack(up, data, api, f"127.0.0.1:{ports['TEMPORAL']}", tenant, key, deals)
    finally:
        code = up.stop()
    assert code == 0
    assert not (data / "pids.json").exists(), "pids.json outlived the stack"
    left = _leftovers(data)
    assert not left, f"processes of the stack survived Ctrl-C:\n{left}"
    shutil.rmtree(tmp, ignore_errors=True)


def _move(s: Stack, deal: str, stage: str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.patch(f"{s.api}/api/v1/deals/{deal}/stage", json={"stage": stage}, headers=s.auth, timeout=60)
    return r, time.monotonic() - t0


async def _last_task_worker_pid(s: Stack, deal: str) -> int:
    """The pid of the worker that completed the deal workflow's last workflow task."""
    client = await Client.connect(s.temporal)
    history = await client.get_workflow_handle(f"deal/{s.tenant}/{deal}").fetch_history()
    identities = [
        e.workflow_task_completed_event_attributes.identity
        for e in history.events
        if e.HasField("workflow_task_completed_event_attributes")
    ]
    # The SDK's default identity: "<pid>@<host>".
    return int(identities[-1].split("@", 1)[0])


async def test_sigkilled_worker_is_restarted_and_moves_go_on(stack: Stack) -> None:
    s = stack
    for deal in s.deals:
        r, _ = _move(s, deal, "qualified")
        assert r.status_code == 200, r.text
    pids = s.pids()
    assert set(pids) == {"temporal", "api", "worker-1", "worker-2"}, s.output()
    # Kill the worker that holds deal 0 in its cache: its next task sits on that worker's sticky
    # queue until Temporal gives it to the survivor.
    holder = await _last_task_worker_pid(s, s.deals[0])
    name = next((n for n, p in pids.items() if p == holder), None)
    assert name, f"deal 0's last task ran on pid {holder}, none of {pids}"
    survivor = next(n for n in ("worker-1", "worker-2") if n != name)
    os.kill(holder, signal.SIGKILL)
    killed_at = time.monotonic()

    r, took = _move(s, s.deals[0], "proposal")
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == "proposal"
    with ThreadPoolExecutor(len(s.deals)) as pool:
        others = list(pool.map(lambda d: _move(s, d, "proposal"), s.deals[1:]))
    assert all(r.status_code == 200 for r, _ in others), [r.text for r, _ in others]
    moved_by = await _last_task_worker_pid(s, s.deals[0])
    # All of it while the killed worker was still down (`up` has not restarted it yet), by the
    # survivor. How long it took is a figure, not a rule (a workflow cached on the dead worker waits
    # out the sticky queue timeout once, about 3 s): printed, never asserted.
    assert name not in s.pids(), (time.monotonic() - killed_at, s.output())
    assert moved_by == pids[survivor], (moved_by, pids, s.output())
    print(
        f"\nmove of a deal cached on the killed worker: {took:.2f}s; others: "
        f"max {max(t for _, t in others):.2f}s"
    )
    assert s.up.proc.poll() is None, "up stopped"
    assert httpx.get(f"{s.api}/healthz").status_code == 200

    line = f"{name} exited with code -9 (SIGKILL); restarting in {BACKOFF_S} s (restart 1)"
    assert line in s.output(), s.output()
    log = s.data / "logs" / ("worker.log" if name == "worker-1" else f"{name}.log")
    assert line in log.read_text(errors="replace")
    new_pid = s.wait_for(f"{name} restarted", lambda: (p := s.pids().get(name)) and p != holder and p)
    assert s.pids()[survivor] == pids[survivor], s.output()
    assert f"{name} restarted (pid {new_pid})" in s.output()
    r, _ = _move(s, s.deals[0], "negotiation")
    assert r.status_code == 200 and r.json()["stage"] == "negotiation", r.text


def test_sigkilled_api_comes_back(stack: Stack) -> None:
    s = stack
    before = s.pids()
    os.kill(before["api"], signal.SIGKILL)
    line = f"api exited with code -9 (SIGKILL); restarting in {BACKOFF_S} s (restart 1)"
    s.wait_for("the API's exit noticed", lambda: line in s.output(), timeout=10)
    assert line in (s.data / "logs" / "api.log").read_text(errors="replace")

    def ready() -> bool:
        try:
            return httpx.get(f"{s.api}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    s.wait_for("the API answering again", ready)
    after = s.pids()
    assert after["api"] != before["api"]
    assert {k: v for k, v in after.items() if k != "api"} == {
        k: v for k, v in before.items() if k != "api"
    }, s.output()
    r = httpx.get(f"{s.api}/api/v1/deals", headers=s.auth)
    assert r.status_code == 200 and len(r.json()["items"]) == len(s.deals)
    assert s.up.proc.poll() is None


def test_sigtermed_worker_drains_exits_zero_and_is_restarted(stack: Stack) -> None:
    s = stack
    before = s.pids()
    # The worker that has not been restarted yet, so its backoff is the first one.
    name = next(n for n in ("worker-1", "worker-2") if f"{n} exited" not in s.output())
    os.kill(before[name], signal.SIGTERM)
    line = f"{name} exited with code 0; restarting in {BACKOFF_S} s (restart 1)"
    s.wait_for(f"{name}'s clean exit noticed", lambda: line in s.output(), timeout=40)
    log = (s.data / "logs" / ("worker.log" if name == "worker-1" else f"{name}.log")).read_text(
        errors="replace"
    )
    assert "SIGTERM: draining" in log and "worker stopped" in log and line in log
    s.wait_for(f"{name} restarted", lambda: s.pids().get(name) not in (None, before[name]))
    r, _ = _move(s, s.deals[1], "negotiation")
    assert r.status_code == 200, r.text


async def _polling_pids(s: Stack) -> set[int]:
    """The pids of the workers polling the task queue for workflow tasks, as Temporal sees them."""
    client = await Client.connect(s.temporal)
    got = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace="default",
            task_queue=TaskQueue(name="sponsorflow"),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return {int(p.identity.split("@", 1)[0]) for p in got.pollers}


async def _wait_workers_polling(s: Stack, timeout: float = 45) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = {k: v for k, v in s.pids().items() if k.startswith("worker-")}
        if len(workers) == 2 and set(workers.values()) <= await _polling_pids(s):
            return workers
        await asyncio.sleep(0.3)
    raise AssertionError(f"both workers polling within {timeout:.0f}s; up printed:\n{s.output()}")


async def test_sigkilled_temporal_is_restarted_on_its_file(stack: Stack) -> None:
    s = stack
    # Workers restarted by the tests before may still be starting (and would need Temporal).
    workers = await _wait_workers_polling(s)
    before = s.pids()
    os.kill(before["temporal"], signal.SIGKILL)
    line = f"temporal exited with code -9 (SIGKILL); restarting in {BACKOFF_S} s (restart 1)"
    s.wait_for("Temporal's exit noticed", lambda: line in s.output(), timeout=10)
    assert "temporal" not in s.pids()
    s.wait_for("Temporal restarted", lambda: s.pids().get("temporal") not in (None, before["temporal"]))

    # The workers and the API reconnect by themselves; the deal's workflow is still there.
    def moved() -> bool:
        r, _ = _move(s, s.deals[2], "negotiation")
        return r.status_code == 200 and r.json()["stage"] == "negotiation"

    await asyncio.to_thread(s.wait_for, "a move through the restarted Temporal", moved, 45)
    r = httpx.get(f"{s.api}/api/v1/deals/{s.deals[2]}", headers=s.auth)
    assert [h["to"] for h in r.json()["history"]] == ["lead", "qualified", "proposal", "negotiation"]
    # Nothing else was restarted: the workers polled on through the outage.
    assert await _wait_workers_polling(s) == workers
    assert s.pids()["api"] == before["api"]
