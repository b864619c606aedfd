"""The fault suite's run: start the processes, load them, inject the faults, settle, check, report."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import tempfile
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from tests.faults import checks
from tests.faults.checks import FaultWindow, Findings
from tests.faults.config import Config
from tests.faults.hooks import HookSite
from tests.faults.load import (
    ImportRun,
    Load,
    Timeline,
    deal_client,
    delivery_client,
    follow_import,
    pages,
    upload_import,
)
from tests.faults.procs import Postgres, TemporalDev, Up, alive, processes_mentioning, signal_pid
from workflows.search_attributes import (
    ADVERTISER_ID,
    DEAL_STAGE,
    DEAL_VALUE,
    IO_STATUS,
    SHOW_ID,
    STAGE_ENTERED_AT,
    WEBHOOK_STATUS,
)


class SetupError(RuntimeError):
    """The stack or its data could not be brought up: no figures, exit 2."""


class FaultSuite:
    """One run of the fault suite."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run_id = f"f{secrets.token_hex(3)}"
        self.root = Path(tempfile.mkdtemp(prefix="sf-faults-"))
        self.out = cfg.output
        self.logs = self.out / "faults-logs"
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        self.timeline = Timeline()
        self.pg = Postgres(self.root)
        self.temporal = TemporalDev(self.root, self.logs)
        self.up: Up | None = None
        self.client: Client | None = None
        self.admin_token = secrets.token_urlsafe(24)
        self.tenant_id = ""
        self.key = ""
        self.deals: list[str] = []
        self.won_deals: list[str] = []
        self.ios: dict[str, list[str]] = {}
        self.load: Load | None = None
        self.windows: list[FaultWindow] = []
        self.events: list[dict[str, Any]] = []
        self.frozen: set[int] = set()
        self.findings = Findings()
        self.imp = ImportRun(self.run_id, cfg.import_rows, cfg.import_bad_rows)
        self.import_task: asyncio.Task[None] | None = None
        self.stack_restarting = False
        self.stopping = False
        self.settle: dict[str, Any] = {}
        self.hooks = HookSite()
        self.cleaned = False

    # ------------------------------------------------------------------ log of what happened

    def log(self, what: str, **details: Any) -> None:
        """One line of the run's event log (printed, and kept in the JSON)."""
        t = self.timeline.now()
        self.events.append({"t": round(t, 2), "phase": self.timeline.phase, "what": what, **details})
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        print(f"[{t:7.1f}s] {what}" + (f" ({extra})" if extra else ""), flush=True)

    # ------------------------------------------------------------------ processes

    def start_processes(self) -> None:
        """PostgreSQL, the Temporal dev server, then `sponsorflow up` pointed at both."""
        self.log("starting PostgreSQL", pgdata=str(self.pg.pgdata))
        self.pg.start()
        self.log("starting the Temporal dev server", port=self.temporal.port)
        self.temporal.start()
        self.up = Up(
            self.root,
            self.logs,
            env={
                "SPONSORFLOW_DATABASE_URL": self.pg.app_url,
                "SPONSORFLOW_MIGRATION_DATABASE_URL": self.pg.owner_url,
                "SPONSORFLOW_TEMPORAL_ADDRESS": self.temporal.address,
                "SPONSORFLOW_TEMPORAL_UI_PORT": str(self.temporal.ui_port),
                "SPONSORFLOW_DEMO": "false",
                "SPONSORFLOW_ADMIN_TOKEN": self.admin_token,
                "SPONSORFLOW_WORKERS": str(self.cfg.workers),
                "SPONSORFLOW_IMPORT_CHUNK_ROWS": str(self.cfg.import_chunk_rows),
                "SPONSORFLOW_IMPORT_HEARTBEAT_SECONDS": str(self.cfg.import_heartbeat_s),
                # The receivers listen on 127.0.0.1; a retry after an injected failure comes soon.
                "SPONSORFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
                "SPONSORFLOW_WEBHOOK_SECRET_KEY": secrets.token_urlsafe(24),
                "SPONSORFLOW_WEBHOOK_RETRY_INITIAL_SECONDS": "1",
            },
            app_dir=self.cfg.app_dir,
        )
        self.log("starting sponsorflow up", api=self.up.api_url, workers=self.cfg.workers)
        self.up.start()
        self.up.wait_ready()
        ch = self.up.children()
        self.log("stack ready", children=ch.pids, via=ch.source)
        if len(ch.workers()) != self.cfg.workers:
            self.findings.note(
                "workers",
                detail=f"asked `up` for {self.cfg.workers} workers, it runs {len(ch.workers())}",
                children=ch.pids,
                via=ch.source,
            )

    async def monitor(self) -> None:
        """Watches `up` and its children: logs every change; restarts `up` if it died (a violation)."""
        assert self.up is not None
        last: dict[str, int] = {}
        while not self.stopping:
            await asyncio.sleep(0.5)
            if self.stopping:
                return
            if not self.up.running() and not self.stack_restarting:
                code = self.up.proc.returncode if self.up.proc else None
                tail = self.up.log.read_text(errors="replace").splitlines()[-8:]
                self.log("sponsorflow up exited", code=code)
                self.findings.violation(
                    "stack_died",
                    phase=self.timeline.phase,
                    t=round(self.timeline.now(), 2),
                    code=code,
                    up_log_tail=tail,
                    detail="`sponsorflow up` stopped the whole stack; the suite started it again",
                )
                self.stack_restarting = True
                try:
                    await asyncio.to_thread(self._restart_up)
                    self.log("the suite restarted sponsorflow up")
                except Exception as exc:  # noqa: BLE001 - reported; the run goes on without a stack
                    self.log("could not restart sponsorflow up", error=repr(exc))
                finally:
                    self.stack_restarting = False
                continue
            pids = self.up.children().pids
            if pids != last:
                changed = {k: v for k, v in pids.items() if last.get(k) != v}
                gone = sorted(set(last) - set(pids))
                if last:
                    self.log("children changed", changed=changed, gone=gone)
                last = pids

    def _restart_up(self) -> None:
        assert self.up is not None
        self.up.start()
        self.up.wait_ready(timeout=120)

    # ------------------------------------------------------------------ data

    async def setup_data(self) -> None:
        """A tenant, shows, an advertiser, the load's deals, and won deals booked as aired IOs."""
        assert self.up is not None
        async with httpx.AsyncClient(base_url=self.up.api_url, timeout=30, trust_env=False) as http:
            r = await http.post(
                "/api/v1/tenants",
                json={"name": f"Faults {self.run_id}"},
                headers={"Authorization": f"Bearer {self.admin_token}"},
            )
            self._expect(r, 201, "create the tenant")
            self.tenant_id, self.key = r.json()["id"], r.json()["api_key"]
            http.headers["Authorization"] = f"Bearer {self.key}"
            if self.cfg.webhooks:
                # First, so every event of the run is one the endpoints must get.
                await self.hooks.start()
                await self.hooks.create(http)
                self.log(
                    "webhook endpoints",
                    endpoints={e.name: e.id for e in self.hooks.endpoints} if self.hooks.enabled else None,
                    skipped=self.hooks.skipped,
                )
            shows = []
            for i in range(max(1, self.cfg.delivery_clients)):
                r = await http.post(
                    "/api/v1/shows",
                    json={
                        "external_id": f"{self.run_id}-show-{i}",
                        "name": f"Fault Line {i}",
                        "categories": ["Comedy"],
                        "avg_downloads": 50_000,
                        "cpm_usd": 25,
                    },
                )
                self._expect(r, 201, "create a show")
                shows.append(r.json()["id"])
            r = await http.post(
                "/api/v1/advertisers",
                json={
                    "external_id": f"{self.run_id}-adv",
                    "name": "Faultline Mattress Co",
                    "domain": "faultline.example",
                },
            )
            self._expect(r, 201, "create the advertiser")
            adv = r.json()["id"]
            for i in range(self.cfg.deal_clients):
                r = await http.post(
                    "/api/v1/deals",
                    json={
                        "advertiser_id": adv,
                        "show_id": shows[i % len(shows)],
                        "name": f"Fault deal {i}",
                        "value_usd": 10_000 + i,
                    },
                    headers={"Idempotency-Key": f"{self.run_id}-deal-{i}"},
                )
                self._expect(r, 201, "create a deal")
                self.deals.append(r.json()["id"])
            today = datetime.now(UTC).date().isoformat()
            for i in range(self.cfg.delivery_clients):
                r = await http.post(
                    "/api/v1/deals",
                    json={
                        "advertiser_id": adv,
                        "show_id": shows[i],
                        "name": f"Fault IO deal {i}",
                        "value_usd": 50_000,
                        "stage": "won",
                    },
                    headers={"Idempotency-Key": f"{self.run_id}-won-{i}"},
                )
                self._expect(r, 201, "create a won deal")
                deal = r.json()["id"]
                self.won_deals.append(deal)
                unit = {
                    "show_id": shows[i],
                    "format": "host_read",
                    "insertion": "dynamic",
                    "air_date": today,
                    "duration_s": 60,
                    "pricing_model": "cpm",
                    "cpm_usd": 25,
                    "impressions_goal": 50_000_000,
                }
                r = await http.post(
                    "/api/v1/io",
                    json={
                        "campaign_id": deal,
                        "measurement_window_days": 30,
                        "ad_units": [{**unit, "placement": "pre_roll"}, {**unit, "placement": "mid_roll"}],
                    },
                    headers={"Idempotency-Key": f"{self.run_id}-io-{i}"},
                )
                self._expect(r, 201, "book an IO")
                io = r.json()
                self.ios[io["id"]] = [u["id"] for u in io["ad_units"]]
            # Booked for today: the air-date timer (00:00 UTC today) fires at once.
            deadline = time.monotonic() + 60
            pending = set(self.ios)
            while pending and time.monotonic() < deadline:
                for io_id in list(pending):
                    r = await http.get(f"/api/v1/io/{io_id}")
                    if r.status_code == 200 and all(u["status"] == "aired" for u in r.json()["ad_units"]):
                        pending.discard(io_id)
                await asyncio.sleep(0.5)
            if pending:
                raise SetupError(f"IO units did not air within 60 s: {sorted(pending)}")
        # Every deal's workflow answers its state query: the workers poll.
        for deal in self.deals:
            await self._query(f"deal/{self.tenant_id}/{deal}", "state", timeout_s=60)
        self.log("data ready", deals=len(self.deals), ios=len(self.ios), tenant=self.tenant_id)

    @staticmethod
    def _expect(r: httpx.Response, status: int, what: str) -> None:
        if r.status_code != status:
            raise SetupError(f"could not {what}: {r.status_code} {r.text[:300]}")

    async def _query(self, workflow_id: str, query: str, timeout_s: float = 10) -> dict[str, Any]:
        assert self.client is not None
        handle = self.client.get_workflow_handle(workflow_id)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result: dict[str, Any] = await handle.query(
                    query, result_type=dict, rpc_timeout=timedelta(seconds=10)
                )
                return result
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ faults

    def _workers(self) -> dict[str, int]:
        assert self.up is not None
        return self.up.children().workers()

    async def _wait_children(self, name_prefix: str, old: int, count: int, window: FaultWindow) -> None:
        """Waits until `up` runs `count` live children named `name_prefix*`, none of them `old`."""
        assert self.up is not None
        deadline = time.monotonic() + self.cfg.restart_timeout_s
        while time.monotonic() < deadline:
            kids = {k: v for k, v in self.up.children().pids.items() if k.startswith(name_prefix)}
            live = [p for p in kids.values() if alive(p) and p != old]
            if len(live) >= count and not self.stack_restarting and self.up.running():
                await asyncio.to_thread(self.up.wait_ready, 60)
                return
            await asyncio.sleep(0.2)
        window.notes.append(f"{name_prefix} not back within {self.cfg.restart_timeout_s:.0f}s")
        self.findings.violation(
            "not_restarted",
            phase=window.name,
            child=name_prefix,
            detail=f"no new {name_prefix} within {self.cfg.restart_timeout_s:.0f}s of the kill",
        )

    async def fault_temporal_kill(self, w: FaultWindow) -> None:
        """SIGKILL the Temporal dev server; start it again on the same SQLite file 10 s later."""
        self.temporal.kill()
        self.log("temporal SIGKILLed")
        await asyncio.sleep(self.cfg.temporal_down_s)
        await asyncio.to_thread(self.temporal.start)
        self.log("temporal started again")

    async def fault_postgres_restart(self, w: FaultWindow) -> None:
        """`pg_ctl restart -m fast`."""
        await asyncio.to_thread(self.pg.restart)
        self.log("postgres restarted")

    async def _freeze(self, w: FaultWindow, pids: dict[str, int]) -> None:
        for pid in pids.values():
            if signal_pid(pid, signal.SIGSTOP):
                self.frozen.add(pid)
        self.log("workers frozen (SIGSTOP)", workers=pids)
        await asyncio.sleep(self.cfg.freeze_s)
        for pid in list(pids.values()):
            signal_pid(pid, signal.SIGCONT)
            self.frozen.discard(pid)
        self.log("workers continued (SIGCONT)")

    async def fault_worker_freeze_one(self, w: FaultWindow) -> None:
        """SIGSTOP one worker for longer than the API's retry budget, then SIGCONT."""
        workers = self._workers()
        if len(workers) < 2:
            w.notes.append(f"only {len(workers)} worker(s): freezing one freezes all")
        first = sorted(workers)[:1]
        await self._freeze(w, {k: workers[k] for k in first})

    async def fault_worker_freeze_all(self, w: FaultWindow) -> None:
        """SIGSTOP every worker for longer than the API's retry budget, then SIGCONT."""
        await self._freeze(w, self._workers())

    async def _import_worker(self) -> int | None:
        """The pid of the worker running the import's activity right now (from its identity), if any."""
        if self.imp.workflow_id is None or self.client is None:
            return None
        try:
            desc = await self.client.get_workflow_handle(self.imp.workflow_id).describe()
        except Exception:  # noqa: BLE001 - the import may be between activities
            return None
        for pa in desc.raw_description.pending_activities:
            ident = pa.last_worker_identity
            if ident and "@" in ident and pa.last_started_time.seconds:
                try:
                    return int(ident.split("@", 1)[0])
                except ValueError:
                    return None
        return None

    async def fault_worker_kill(self, w: FaultWindow) -> None:
        """SIGKILL one worker (the one running the import's activity, if the import runs now)."""
        workers = self._workers()
        if not workers:
            w.notes.append("no worker found to kill")
            self.findings.violation("fault_not_injected", phase=w.name, detail="no worker child found")
            return
        target_name, target = sorted(workers.items())[0]
        if self.cfg.import_fault == w.name:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pid = await self._import_worker()
                if pid is not None and pid in workers.values():
                    target_name = next(k for k, v in workers.items() if v == pid)
                    target = pid
                    w.notes.append(f"killed {target_name}, which ran the import's activity")
                    break
                if self.imp.final is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                w.notes.append("the import's activity was not seen running; killed the first worker")
        w.t_inject = self.timeline.now()
        signal_pid(target, signal.SIGKILL)
        self.log("worker SIGKILLed", worker=target_name, pid=target)
        await self._wait_children("worker", target, len(workers), w)
        self.log("workers back", workers=self._workers())

    async def fault_api_kill(self, w: FaultWindow) -> None:
        """SIGKILL the API process (in-flight requests get no answer); `up` should start it again."""
        assert self.up is not None
        api = self.up.children().pids.get("api")
        if api is None:
            self.findings.violation("fault_not_injected", phase=w.name, detail="no API child found")
            return
        signal_pid(api, signal.SIGKILL)
        self.log("API SIGKILLed", pid=api)
        await self._wait_children("api", api, 1, w)
        self.log("API back", pid=self.up.children().pids.get("api"))

    async def fault_webhook_receiver_hang(self, w: FaultWindow) -> None:
        """The `all` endpoint's receiver answers nothing for as long as a freeze (every attempt times
        out): the other endpoint and the product must not notice; afterwards everything arrives."""
        if not self.hooks.enabled:
            w.notes.append("no webhook endpoints in this run: nothing to hang")
            return
        hung = self.hooks.endpoints[0]
        hung.hang_until = time.time() + self.cfg.freeze_s
        self.log("webhook receiver hangs", endpoint=hung.name, seconds=self.cfg.freeze_s)
        await asyncio.sleep(self.cfg.freeze_s)
        self.log("webhook receiver answers again", endpoint=hung.name)

    async def run_fault(self, name: str, label: str) -> None:
        """One fault: (the import if this is its fault), inject, wait for the process, then a quiet period."""
        self.timeline.phase = label
        w = FaultWindow(label, self.timeline.now(), 0.0, 0.0)
        if label == self.cfg.import_fault:
            assert self.load is not None
            await upload_import(self.load, self.imp)
            self.log(
                "import uploaded",
                status=self.imp.upload_status,
                import_id=self.imp.import_id,
                error=self.imp.upload_error,
            )
            self.import_task = asyncio.create_task(
                follow_import(self.load, self.imp, self.cfg.import_timeout_s)
            )
            if name != "worker_kill":
                # Let it get going so the fault lands mid-import.
                for _ in range(50):
                    if self.imp.running_seen or self.imp.final is not None:
                        break
                    await asyncio.sleep(0.1)
            w.t_inject = self.timeline.now()
        await getattr(self, f"fault_{name}")(w)
        w.t_end = self.timeline.now()
        self.windows.append(w)
        await asyncio.sleep(self.cfg.quiet_s)
        w.t_quiet_end = self.timeline.now()

    # ------------------------------------------------------------------ reading back

    def api(self) -> httpx.AsyncClient:
        """A client of the stack's API with the tenant's key."""
        assert self.up is not None
        return httpx.AsyncClient(
            base_url=self.up.api_url,
            timeout=30,
            trust_env=False,
            headers={"Authorization": f"Bearer {self.key}"},
        )

    async def _visibility(self) -> dict[str, dict[str, Any]]:
        assert self.client is not None
        found: dict[str, dict[str, Any]] = {}
        query = f'TenantId="{self.tenant_id}" AND ExecutionStatus="Running"'
        async for wf in self.client.list_workflows(query):
            sa = wf.typed_search_attributes
            entered = sa.get(STAGE_ENTERED_AT)
            found[wf.id] = {
                "type": wf.workflow_type,
                "DealStage": sa.get(DEAL_STAGE),
                "StageEnteredAt": entered.isoformat() if entered else None,
                "IoStatus": sa.get(IO_STATUS),
                "DealValue": sa.get(DEAL_VALUE),
                "AdvertiserId": sa.get(ADVERTISER_ID),
                "ShowId": sa.get(SHOW_ID),
            }
        return found

    async def _running_query(self, workflow_id: str, query: str) -> dict[str, Any] | None:
        assert self.client is not None
        try:
            desc = await self.client.get_workflow_handle(workflow_id).describe()
        except Exception:  # noqa: BLE001 - no workflow at all
            return None
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return None
        return await self._query(workflow_id, query, timeout_s=20)

    async def read_state(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        """Row, workflow and search attributes of every deal and IO; returns the drift of each."""
        assert self.up is not None
        vis = await self._visibility()
        async with self.api() as http:
            rows, states, dvis = {}, {}, {}
            for deal in self.deals + self.won_deals:
                r = await http.get(f"/api/v1/deals/{deal}")
                r.raise_for_status()
                rows[deal] = r.json()
                wid = f"deal/{self.tenant_id}/{deal}"
                states[deal] = await self._running_query(wid, "state")
                if wid in vis:
                    dvis[deal] = vis[wid]
            io_rows, snaps, ivis = {}, {}, {}
            for io_id in self.ios:
                r = await http.get(f"/api/v1/io/{io_id}")
                r.raise_for_status()
                io_rows[io_id] = r.json()
                wid = f"io/{self.tenant_id}/{io_id}"
                snaps[io_id] = await self._running_query(wid, "snapshot")
                if wid in vis:
                    ivis[io_id] = vis[wid]
        raw = {
            "deals": rows,
            "deal_states": states,
            "deal_visibility": dvis,
            "ios": io_rows,
            "io_snapshots": snaps,
            "io_visibility": ivis,
        }
        return checks.check_deal_state(rows, states, dvis), checks.check_io_state(io_rows, snaps, ivis), raw

    async def settle_and_check(self) -> None:
        """Waits until row = workflow = search attributes everywhere (or the timeout), then checks it all."""
        self.timeline.phase = "settle"
        t0 = self.timeline.now()
        first: tuple[int, int] | None = None
        while True:
            try:
                deal_drift, io_drift, raw = await self.read_state()
            except Exception as exc:  # noqa: BLE001 - the stack may still be recovering
                self.log("state read failed; retrying", error=repr(exc)[:200])
                deal_drift, io_drift, raw = [{"detail": repr(exc)}], [], {}
            if first is None:
                first = (len(deal_drift), len(io_drift))
                self.log("state right after the load stopped", drifted_deals=first[0], drifted_ios=first[1])
            elapsed = self.timeline.now() - t0
            if not deal_drift and not io_drift:
                self.settle = {"converged": True, "after_s": round(elapsed, 1)}
                break
            if elapsed >= self.cfg.settle_timeout_s:
                self.settle = {"converged": False, "after_s": round(elapsed, 1)}
                break
            await asyncio.sleep(self.cfg.settle_poll_s)
        self.settle.update(
            drifted_deals_at_first_look=first[0] if first else None,
            drifted_ios_at_first_look=first[1] if first else None,
            drifted_deals=len(deal_drift),
            drifted_ios=len(io_drift),
        )
        self.log("settled", **self.settle)
        for d in deal_drift:
            self.findings.violation("deal_drift", **d)
        for d in io_drift:
            self.findings.violation("io_drift", **d)
        (self.logs / "final_state.json").write_text(json.dumps(raw, indent=1, default=str))

        assert self.up is not None and self.load is not None
        async with self.api() as http:
            histories, events = {}, {}
            for deal in self.deals:
                r = await http.get(f"/api/v1/deals/{deal}")
                r.raise_for_status()
                histories[deal] = r.json()["history"]
                events[deal] = await pages(http, "/api/v1/events", type="deal.stage_changed", entity_id=deal)
            self.findings.merge(
                checks.check_moves(self.load.requests, histories, events, self.timeline.wall0)
            )
            io_rows, io_events = {}, {}
            for io_id in self.ios:
                r = await http.get(f"/api/v1/io/{io_id}")
                r.raise_for_status()
                io_rows[io_id] = r.json()
                io_events[io_id] = await pages(
                    http, "/api/v1/events", type="io.delivery_reported", entity_id=io_id
                )
            self.findings.merge(checks.check_deliveries(self.load.requests, io_rows, io_events))
            if self.cfg.import_fault in self.cfg.faults:
                if self.import_task is not None:
                    await asyncio.wait_for(self.import_task, self.cfg.import_timeout_s + 10)
                shows = await pages(http, "/api/v1/shows")
                ids = [s.get("external_id") or "" for s in shows]
                f = checks.check_import(
                    self.imp.final, self.cfg.import_rows, self.cfg.import_bad_rows, ids, f"{self.run_id}-imp-"
                )
                f.figures.setdefault("import", {}).update(
                    during=self.imp.phase,
                    upload_status=self.imp.upload_status,
                    seen_part_way=self.imp.running_seen,
                    seconds=round((self.imp.finished_at or 0) - (self.imp.started_at or 0), 1),
                )
                if self.imp.upload_status != 202:
                    f.violation("import_upload", status=self.imp.upload_status, error=self.imp.upload_error)
                self.findings.merge(f)
            (self.logs / "histories.json").write_text(
                json.dumps({"histories": histories, "events": events, "io_events": io_events}, indent=1)
            )
        if self.hooks.enabled:
            await self.settle_webhooks()

    async def settle_webhooks(self) -> None:
        """Waits until every event reached every endpoint and nothing is pending; then checks it all."""
        assert self.up is not None
        self.timeline.phase = "webhooks"
        t0 = self.timeline.now()
        async with self.api() as http:
            while True:
                events = await pages(http, "/api/v1/events")
                rows = {
                    e.id: await pages(http, f"/api/v1/webhooks/{e.id}/deliveries")
                    for e in self.hooks.endpoints
                }
                found = checks.check_webhooks(
                    self.hooks.endpoints,
                    events,
                    self.hooks.after_event_id,
                    rows,
                    self.windows,
                    self.timeline.wall0,
                )
                open_ = [v for v in found.violations if v["check"] in ("webhook_missing", "webhook_stuck")]
                elapsed = self.timeline.now() - t0
                if not open_ or elapsed >= self.cfg.webhook_settle_timeout_s:
                    break
                await asyncio.sleep(self.cfg.settle_poll_s)
        found.figures["webhooks"]["settled_after_s"] = round(elapsed, 1)
        found.figures["webhooks"]["settled"] = not open_
        self.log("webhooks settled", converged=not open_, after_s=round(elapsed, 1), open=len(open_))
        self.findings.merge(found)
        await self.check_webhook_workflows()

    async def check_webhook_workflows(self) -> None:
        """Each endpoint's workflow runs and shows WebhookStatus `healthy` (its row is active)."""
        assert self.client is not None
        want = {f"webhook/{self.tenant_id}/{e.id}": e.name for e in self.hooks.endpoints}
        seen: dict[str, str | None] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            query = f'WorkflowType="WebhookEndpointWorkflow" AND TenantId="{self.tenant_id}"'
            seen = {
                wf.id: wf.typed_search_attributes.get(WEBHOOK_STATUS)
                async for wf in self.client.list_workflows(query + ' AND ExecutionStatus="Running"')
            }
            if all(seen.get(w) == "healthy" for w in want):
                return
            await asyncio.sleep(2)
        for wid, name in want.items():
            if seen.get(wid) != "healthy":
                self.findings.violation(
                    "webhook_workflow",
                    endpoint=name,
                    workflow_id=wid,
                    webhook_status=seen.get(wid, "not running"),
                    detail="the endpoint is active and quiet: its workflow should run and show healthy",
                )

    # ------------------------------------------------------------------ the run

    async def main(self) -> int:
        """The whole run; returns the exit code (0 clean, 1 violations, 2 the suite could not run)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        # Ctrl-C and SIGTERM end the run through the cleanup (also when started with SIGINT ignored).
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            # Not in a thread: a Ctrl-C meanwhile waits for it, so the cleanup sees every process.
            self.start_processes()
            self.client = await Client.connect(self.temporal.address, data_converter=pydantic_data_converter)
            await self.setup_data()
        except (SetupError, RuntimeError) as exc:
            self.log("setup failed", error=str(exc))
            traceback.print_exc()
            self.findings.violation("setup", detail=str(exc))
            return 2
        assert self.up is not None
        monitor = asyncio.create_task(self.monitor())
        self.load = Load(self.cfg, self.timeline, self.up.api_url, self.key, self.run_id)
        clients = [asyncio.create_task(deal_client(self.load, i, d)) for i, d in enumerate(self.deals)]
        clients += [
            asyncio.create_task(delivery_client(self.load, i, io, units))
            for i, (io, units) in enumerate(self.ios.items())
        ]
        self.timeline.phase = "baseline"
        t_base = self.timeline.now()
        self.log("load started", deal_clients=len(self.deals), delivery_clients=len(self.ios))
        await asyncio.sleep(self.cfg.baseline_s)
        self.windows.append(FaultWindow("baseline", t_base, t_base, self.timeline.now()))
        for round_ in range(self.cfg.rounds):
            for name in self.cfg.faults:
                label = name if round_ == 0 else f"{name}#{round_ + 1}"
                self.log(f"fault {label}")
                await self.run_fault(name, label)
        self.timeline.phase = "drain"
        self.load.stop.set()
        self.log("stopping the load (in-flight requests and their retries finish)")
        await asyncio.wait(clients, timeout=self.cfg.client_timeout_s * (self.cfg.no_answer_retries + 2))
        for c in clients:
            if not c.done():
                c.cancel()
        await self.settle_and_check()
        self.stopping = True
        monitor.cancel()
        await self.hooks.stop()
        return 1 if self.findings.violations else 0

    def cleanup(self) -> None:
        """Ends every process this run started (frozen ones first continued) and keeps their logs."""
        if self.cleaned:
            return
        self.cleaned = True
        self.stopping = True
        for pid in list(self.frozen):
            signal_pid(pid, signal.SIGCONT)
        if self.up is not None:
            code = self.up.stop()
            self.log("sponsorflow up stopped", code=code)
        self.temporal.stop()
        self.pg.stop()
        for src in [*(self.root / "data" / "logs").glob("*.log"), self.pg.log]:
            if src.exists():
                shutil.copy(src, self.logs / ("postgres.log" if src == self.pg.log else src.name))
        left = processes_mentioning(str(self.root))
        for pid, cmd in left:
            self.findings.violation("leftover_process", pid=pid, cmd=cmd)
            signal_pid(pid, signal.SIGCONT)
            signal_pid(pid, signal.SIGKILL)
        if self.hooks.enabled:
            with (self.logs / "webhooks.jsonl").open("w") as fh:
                for h in self.hooks.as_json():
                    fh.write(json.dumps(h) + "\n")
        if self.load is not None:
            with (self.logs / "requests.jsonl").open("w") as fh:
                for r in self.load.requests:
                    fh.write(json.dumps(r.as_json()) + "\n")
        shutil.rmtree(self.root, ignore_errors=True)
