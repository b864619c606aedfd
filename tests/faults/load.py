"""The load the faults land on: clients moving deals, clients reporting deliveries, one import.

Every request is recorded (tag, target, each attempt's time, status, latency, error), so the
checks can tie every history entry and every delivery event to exactly one request.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.faults.config import Config

OPEN_STAGES = ("lead", "qualified", "proposal", "negotiation")


@dataclass
class Attempt:
    """One HTTP attempt of a request: when (seconds since the run began), what came back."""

    t0: float
    t1: float
    status: int | None
    error: str | None = None
    detail: str | None = None

    @property
    def latency(self) -> float:
        """Seconds from sending to the answer (or to giving up on one)."""
        return self.t1 - self.t0


@dataclass
class Request:
    """One logical request: a tag, its target, and every attempt with the same key and tag."""

    kind: str  # "move" or "delivery"
    client: str
    tag: str
    target: str  # deal id or IO id
    # The fault (or "baseline") going on when its final answer came (or the client gave up):
    # a request sent just before a fault and answered during it counts for that fault.
    phase: str
    stage: str | None = None  # move: the requested stage; its stage before, as the client believed
    believed: str | None = None
    unit: str | None = None  # delivery: the ad unit and the cumulative figure
    impressions: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # From a 2xx answer: did the answer show this request applied (its tag in the deal's history,
    # its figure on the unit)? False means a 2xx no-op.
    applied: bool | None = None
    answered_stage: str | None = None
    sent_phase: str = ""

    @property
    def final(self) -> int | None:
        """The status of the last attempt that got an answer; None if none did."""
        for a in reversed(self.attempts):
            if a.status is not None:
                return a.status
        return None

    @property
    def outcome(self) -> str:
        """`2xx`, `503`, `no_answer` or `other`, by the final answer."""
        s = self.final
        if s is None:
            return "no_answer"
        if 200 <= s < 300:
            return "2xx"
        if s == 503:
            return "503"
        return "other"

    @property
    def answered_at(self) -> float | None:
        """When the final answer came (None without one)."""
        for a in reversed(self.attempts):
            if a.status is not None:
                return a.t1
        return None

    def as_json(self) -> dict[str, Any]:
        """The record as written to requests.jsonl."""
        return {
            "kind": self.kind,
            "client": self.client,
            "tag": self.tag,
            "target": self.target,
            "phase": self.phase,
            "sent_phase": self.sent_phase,
            "stage": self.stage,
            "believed": self.believed,
            "unit": self.unit,
            "impressions": self.impressions,
            "outcome": self.outcome,
            "final_status": self.final,
            "applied": self.applied,
            "answered_stage": self.answered_stage,
            "attempts": [
                {
                    "t0": round(a.t0, 3),
                    "t1": round(a.t1, 3),
                    "status": a.status,
                    "error": a.error,
                    "detail": a.detail,
                }
                for a in self.attempts
            ],
        }


class Timeline:
    """The run's clock and the phase (fault) going on now."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.phase = "setup"

    def now(self) -> float:
        """Seconds since the run began."""
        return time.monotonic() - self.t0


@dataclass
class Load:
    """Everything the clients share: the clock, the records, the stop flag."""

    cfg: Config
    timeline: Timeline
    api_url: str
    key: str
    run_id: str
    requests: list[Request] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def http(self) -> httpx.AsyncClient:
        """One keep-alive client per simulated user, with the suite's timeout."""
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(self.cfg.client_timeout_s, connect=5.0),
            trust_env=False,
        )

    async def send(
        self, http: httpx.AsyncClient, req: Request, method: str, path: str, body: dict[str, Any]
    ) -> httpx.Response | None:
        """Sends the request; after no answer, sends it again (same key, same body) a few times."""
        self.requests.append(req)
        req.sent_phase = req.phase
        headers = {"Idempotency-Key": f"{self.run_id}-{req.tag}"}
        resp: httpx.Response | None = None
        for attempt in range(self.cfg.no_answer_retries + 1):
            if attempt:
                await asyncio.sleep(min(5.0, self.cfg.retry_backoff_s * attempt))
            t0 = self.timeline.now()
            try:
                resp = await http.request(method, path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                req.attempts.append(Attempt(t0, self.timeline.now(), None, type(exc).__name__))
                continue
            detail = None if resp.status_code < 300 else resp.text[:300]
            req.attempts.append(Attempt(t0, self.timeline.now(), resp.status_code, None, detail))
            break
        req.phase = self.timeline.phase
        return resp

    async def read(
        self, http: httpx.AsyncClient, path: str, patience_s: float = 90.0
    ) -> dict[str, Any] | None:
        """GETs a resource until it answers 200 (through a fault), or gives up after `patience_s`."""
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            try:
                r = await http.get(path)
                if r.status_code == 200:
                    body: dict[str, Any] = r.json()
                    return body
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1.0)
        return None


def next_stage(believed: str, avoid: set[str]) -> str:
    """The next open stage in the cycle after `believed`, skipping stages that just got a 503."""
    i = OPEN_STAGES.index(believed)
    for s in OPEN_STAGES[i + 1 :] + OPEN_STAGES[:i]:
        if s not in avoid:
            return s
    return OPEN_STAGES[(i + 1) % len(OPEN_STAGES)]


async def deal_client(load: Load, n: int, deal_id: str) -> None:
    """Moves one deal through the open stages until told to stop.

    After no answer (even after the retries) it reads the deal to learn where it is; after a 503
    it believes nothing moved and asks for a different stage, so a 503 that lands later shows up
    as a history entry nobody was answered 2xx for.
    """
    name = f"d{n:02d}"
    believed = "lead"
    avoid: set[str] = set()
    seq = 0
    async with load.http() as http:
        while not load.stop.is_set():
            seq += 1
            target = next_stage(believed, avoid)
            tag = f"{load.run_id}-{name}-{seq:05d}"
            req = Request("move", name, tag, deal_id, load.timeline.phase, stage=target, believed=believed)
            resp = await load.send(
                http, req, "PATCH", f"/api/v1/deals/{deal_id}/stage", {"stage": target, "reason": tag}
            )
            outcome = req.outcome
            if outcome == "2xx" and resp is not None:
                deal = resp.json()
                req.answered_stage = deal.get("stage")
                req.applied = any(h.get("reason") == tag for h in deal.get("history", []))
                believed = deal.get("stage", believed)
                avoid.clear()
            elif outcome == "503":
                avoid.add(target)
            else:
                deal = await load.read(http, f"/api/v1/deals/{deal_id}")
                if deal is not None:
                    believed = deal["stage"]
                avoid.clear()
            if believed not in OPEN_STAGES:
                return  # closed by someone else: nothing more this client may do
            await asyncio.sleep(load.cfg.think_s * (0.5 + random.random()))


async def delivery_client(load: Load, n: int, io_id: str, unit_ids: list[str]) -> None:
    """Reports rising cumulative impressions for the units of one IO, tagged through `source`."""
    name = f"v{n:02d}"
    figures = dict.fromkeys(unit_ids, 0)
    seq = 0
    async with load.http() as http:
        while not load.stop.is_set():
            seq += 1
            unit = unit_ids[seq % len(unit_ids)]
            figure = figures[unit] + random.randint(100, 900)
            # Every figure is higher than any sent before (answered or not), so each one is
            # its own event and a late one is told apart from a current one.
            figures[unit] = figure
            tag = f"{load.run_id}-{name}-{seq:05d}"
            req = Request("delivery", name, tag, io_id, load.timeline.phase, unit=unit, impressions=figure)
            resp = await load.send(
                http,
                req,
                "POST",
                f"/api/v1/io/{io_id}/delivery",
                {"ad_unit_id": unit, "impressions": figure, "source": tag},
            )
            if req.outcome == "2xx" and resp is not None:
                io = resp.json()
                got = {u["id"]: u.get("delivered_impressions") for u in io.get("ad_units", [])}
                req.applied = got.get(unit) == figure
            await asyncio.sleep(load.cfg.delivery_think_s * (0.5 + random.random()))


def shows_csv(run_id: str, rows: int, bad_rows: int) -> tuple[bytes, int]:
    """A `shows` file of `rows` new shows plus `bad_rows` rows that must fail; returns (file, total)."""
    lines = ["external_id,name,categories,avg_downloads,episodes_per_month,cpm_usd,geo"]
    bad_at = set(random.Random(7).sample(range(rows + bad_rows), bad_rows)) if bad_rows else set()
    good = 0
    for i in range(rows + bad_rows):
        if i in bad_at:
            lines.append(f"{run_id}-bad-{i},Broken show {i},Comedy,lots,4,25,US:0.5")
        else:
            good += 1
            lines.append(
                f"{run_id}-imp-{good:06d},Imported show {good},Comedy;News,{1000 + good},8,24,US:0.6;GB:0.2"
            )
    return ("\n".join(lines) + "\n").encode(), rows + bad_rows


@dataclass
class ImportRun:
    """The import started during a fault: what was sent and every status seen."""

    run_id: str
    rows: int
    bad_rows: int
    import_id: str | None = None
    workflow_id: str | None = None
    upload_status: int | None = None
    upload_error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    statuses: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    phase: str = ""

    @property
    def running_seen(self) -> bool:
        """True once a status showed the import part-way."""
        return any(
            s.get("status") == "running" and 0 < int(s.get("rows_processed") or 0) < self.rows
            for s in self.statuses
        )


async def upload_import(load: Load, imp: ImportRun) -> None:
    """Uploads the shows file (retrying what got no answer is not safe here: one upload only)."""
    data, _total = shows_csv(imp.run_id, imp.rows, imp.bad_rows)
    imp.phase = load.timeline.phase
    async with load.http() as http:
        imp.started_at = load.timeline.now()
        try:
            r = await http.post(
                "/api/v1/etl/upload",
                data={"kind": "shows"},
                files={"file": (f"{imp.run_id}-shows.csv", data, "text/csv")},
            )
        except httpx.HTTPError as exc:
            imp.upload_error = type(exc).__name__
            return
        imp.upload_status = r.status_code
        if r.status_code == 202:
            body = r.json()
            imp.import_id, imp.workflow_id = body["import_id"], body.get("workflow_id")
        else:
            imp.upload_error = r.text[:300]


async def follow_import(load: Load, imp: ImportRun, timeout_s: float) -> None:
    """Polls the import's status (through faults) until it ends or `timeout_s` passes."""
    if imp.import_id is None:
        return
    deadline = time.monotonic() + timeout_s
    async with load.http() as http:
        while time.monotonic() < deadline:
            try:
                r = await http.get(f"/api/v1/etl/status/{imp.import_id}")
                if r.status_code == 200:
                    st = r.json()
                    st["t"] = round(load.timeline.now(), 3)
                    imp.statuses.append(st)
                    if st["status"] in ("completed", "completed_with_errors", "failed", "cancelled"):
                        imp.final = st
                        imp.finished_at = load.timeline.now()
                        return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)


async def pages(http: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list (`items` / `next_cursor`), 200 a page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**params, "limit": 200, **({"cursor": cursor} if cursor else {})}
        r = await http.get(path, params=q)
        r.raise_for_status()
        body = r.json()
        items += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return items
