"""Benchmark: moving deals through the pipeline over HTTP vs the Temporal SDK, on one stack.

Starts its own `sponsorflow up` (fresh data dir, free ports, no demo data), creates a tenant, an
advertiser, a show and two equal sets of deals, then moves deals lead -> qualified -> proposal ->
negotiation -> lead ... in two ways:

  http   PATCH /api/v1/deals/{id}/stage (update-with-start behind the API), sent with a lean
         keep-alive HTTP/1.1 client (bench/lean_http.py), so the figure is the API's
  sdk    client.get_workflow_handle(workflow_id).execute_update(DealWorkflow.change_stage, ...),
         with a request id as its update id, as the API sends (the stage write claims it in the
         write fence)
  httpx  the same PATCH sent with httpx, sequentially, for context: httpx's own per-request cost
         (measured on GET /healthz against the lean client in the same run) is printed too

each sequentially and at a fixed concurrency. The work is split into rounds; within a round the two
paths run back to back and the one that goes first alternates, so drift and noise hit both alike.
Prints p50/p95/p99 latency, throughput and the HTTP/SDK ratios, checks them against the targets
(PASS/FAIL, informational: the exit code is 0 unless the run itself fails) and writes the figures
to bench/results/stage_changes.json.

Environment knobs: BENCH_MOVES (moves per path and mode, default 300), BENCH_CONCURRENCY (20),
BENCH_ROUNDS (4), BENCH_DEALS (deals per path, default 2x concurrency), BENCH_WARMUP (moves per
path and mode before measuring, default 40).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.lean_http import LeanClient
from bench.stack import Stack, env_int, results_path
from domain.deals import ChangeStageInput
from domain.stages import Stage
from settings import Settings, connect_temporal
from workflows.deals import DealWorkflow

CYCLE: tuple[Stage, ...] = (Stage.LEAD, Stage.QUALIFIED, Stage.PROPOSAL, Stage.NEGOTIATION)

P50_RATIO_MAX = 1.15
SEQ_HTTP_P50_MAX_MS = 25.0
SEQ_HTTP_P99_MAX_MS = 60.0
CONC_THROUGHPUT_RATIO_MIN = 0.85


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Deal:
    """A deal the bench moves, and where it left it."""

    id: str
    workflow_id: str
    position: int = 0  # index into CYCLE

    def next_stage(self) -> Stage:
        self.position = (self.position + 1) % len(CYCLE)
        return CYCLE[self.position]

    @property
    def stage(self) -> Stage:
        return CYCLE[self.position]


async def seed(http: httpx.AsyncClient, admin_token: str, n_deals: int) -> tuple[str, list[Deal]]:
    """Creates the tenant, one advertiser, one show and n_deals lead deals; returns the API key."""
    r = await http.post(
        "/api/v1/tenants",
        json={"name": "Bench Network"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    r.raise_for_status()
    api_key = r.json()["api_key"]
    http.headers["Authorization"] = f"Bearer {api_key}"
    r = await http.post(
        "/api/v1/advertisers",
        json={"name": "Acme Mattress Co", "domain": "acmemattress.com", "external_id": "bench-adv"},
    )
    r.raise_for_status()
    advertiser_id = r.json()["id"]
    r = await http.post(
        "/api/v1/shows", json={"name": "The Daily Grind", "avg_downloads": 85000, "external_id": "bench-show"}
    )
    r.raise_for_status()
    show_id = r.json()["id"]

    sem = asyncio.Semaphore(8)

    async def create(i: int) -> Deal:
        async with sem:
            r = await http.post(
                "/api/v1/deals",
                json={
                    "advertiser_id": advertiser_id,
                    "show_id": show_id,
                    "name": f"Bench deal {i:04d}",
                    "value_usd": 10000,
                },
            )
            r.raise_for_status()
            body = r.json()
            assert body["stage"] == Stage.LEAD.value, body
            return Deal(id=body["id"], workflow_id=body["workflow_id"])

    deals = await asyncio.gather(*(create(i) for i in range(n_deals)))
    return api_key, list(deals)


# ---------------------------------------------------------------------------- the two paths

Mover = Callable[[Deal], Awaitable[None]]


def http_mover(http: httpx.AsyncClient | LeanClient) -> Mover:
    async def move(deal: Deal) -> None:
        target = deal.next_stage()
        r = await http.patch(f"/api/v1/deals/{deal.id}/stage", json={"stage": target.value})
        if r.status_code != 200:
            raise RuntimeError(f"PATCH deal {deal.id} -> {target}: {r.status_code} {r.text[:300]}")
        stage = r.json()["stage"]
        if stage != target.value:
            raise RuntimeError(f"PATCH deal {deal.id} -> {target} answered stage {stage}")

    return move


def sdk_mover(client: Any) -> Mover:
    async def move(deal: Deal) -> None:
        target = deal.next_stage()
        # Like the API (and any client of the write contract), the anchor names its request: the
        # update id, which the stage write claims in the write fence. Both paths do the same work
        # in the workflow and the database; the ratio is the API's own cost.
        request_id = f"req-{uuid.uuid4().hex}"
        result = await client.get_workflow_handle(deal.workflow_id).execute_update(
            DealWorkflow.change_stage,
            ChangeStageInput(stage=target, reason=None, request_id=request_id),
            id=request_id,
        )
        if not result.changed or result.state.stage is not target:
            raise RuntimeError(f"update of {deal.workflow_id} -> {target} returned {result!r}")

    return move


@dataclass
class Sample:
    """Latencies (seconds) and the wall time spent measuring one path in one mode."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0


@dataclass
class Route:
    """One way of moving deals, over its own deals; cursors keep each deal's turn across rounds."""

    move: Mover
    deals: list[Deal]
    seq_cursor: int = 0
    lane_cursors: dict[int, int] = field(default_factory=dict)

    async def _timed(self, deal: Deal, out: list[float]) -> None:
        t0 = time.perf_counter()
        await self.move(deal)
        out.append(time.perf_counter() - t0)

    async def sequential(self, moves: int, s: Sample) -> None:
        """One move at a time, round-robin over the deals."""
        t0 = time.perf_counter()
        for _ in range(moves):
            deal = self.deals[self.seq_cursor % len(self.deals)]
            self.seq_cursor += 1
            await self._timed(deal, s.latencies)
        s.wall += time.perf_counter() - t0

    async def concurrent(self, moves: int, concurrency: int, s: Sample) -> None:
        """`concurrency` callers, each round-robin over its own deals (never two on one deal)."""
        lanes = [self.deals[k::concurrency] for k in range(concurrency)]
        counts = [moves // concurrency + (1 if k < moves % concurrency else 0) for k in range(concurrency)]

        async def lane(k: int) -> None:
            mine = lanes[k]
            for _ in range(counts[k]):
                i = self.lane_cursors.get(k, 0)
                self.lane_cursors[k] = i + 1
                await self._timed(mine[i % len(mine)], s.latencies)

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for k in range(concurrency):
                if counts[k]:
                    tg.create_task(lane(k))
        s.wall += time.perf_counter() - t0


# ---------------------------------------------------------------------------- figures


async def client_overhead(http: httpx.AsyncClient, lean: LeanClient, n: int = 300) -> dict[str, float]:
    """Median GET /healthz (no database, no Temporal) through each client, interleaved."""
    times: dict[str, list[float]] = {"httpx_ms": [], "lean_ms": []}
    for _ in range(n):
        for name, get in (("httpx_ms", http.get), ("lean_ms", lean.get)):
            t0 = time.perf_counter()
            r = await get("/healthz")
            times[name].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"GET /healthz: {r.status_code}")
    return {k: percentile(v, 50) for k, v in times.items()}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(s: Sample) -> dict[str, float]:
    lat = s.latencies
    return {
        "moves": len(lat),
        "p50_ms": percentile(lat, 50) * 1000,
        "p95_ms": percentile(lat, 95) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "mean_ms": sum(lat) / len(lat) * 1000,
        "max_ms": max(lat) * 1000,
        "wall_s": s.wall,
        "throughput_per_s": len(lat) / s.wall if s.wall else float("nan"),
    }


def ratios(http: dict[str, float], sdk: dict[str, float]) -> dict[str, float]:
    keys = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_per_s")
    return {k: http[k] / sdk[k] for k in keys}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    seq, conc = results["sequential"], results["concurrent"]
    checks = [
        ("sequential HTTP p50 <= 1.15x SDK p50", seq["ratio_http_sdk"]["p50_ms"], P50_RATIO_MAX, "<=", "x"),
        ("concurrent HTTP p50 <= 1.15x SDK p50", conc["ratio_http_sdk"]["p50_ms"], P50_RATIO_MAX, "<=", "x"),
        ("sequential HTTP p50 <= 25 ms", seq["http"]["p50_ms"], SEQ_HTTP_P50_MAX_MS, "<=", "ms"),
        ("sequential HTTP p99 <= 60 ms", seq["http"]["p99_ms"], SEQ_HTTP_P99_MAX_MS, "<=", "ms"),
        (
            "concurrent HTTP throughput >= 0.85x SDK",
            conc["ratio_http_sdk"]["throughput_per_s"],
            CONC_THROUGHPUT_RATIO_MIN,
            ">=",
            "x",
        ),
    ]
    out = []
    for name, value, limit, op, unit in checks:
        ok = value <= limit if op == "<=" else value >= limit
        out.append({"target": name, "value": value, "limit": limit, "op": op, "unit": unit, "pass": ok})
    return out


def render(meta: dict[str, Any], results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    lines = [
        f"stage changes: {meta['moves']} moves per path and mode, concurrency {meta['concurrency']}, "
        f"{meta['rounds']} rounds, {meta['deals_per_path']} deals per path, {meta['cpus']} CPUs",
        "",
        f"{'mode':<11} {'path':<9} {'moves':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'moves/s':>9}",
    ]
    for mode in ("sequential", "concurrent"):
        for path in ("sdk", "http", "httpx"):
            if path not in results[mode]:
                continue
            r = results[mode][path]
            lines.append(
                f"{mode:<11} {path.upper():<9} {r['moves']:>5} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
                f"{r['p99_ms']:>8.1f} {r['throughput_per_s']:>9.1f}"
            )
        for key, label in (("ratio_http_sdk", "HTTP/SDK"), ("ratio_httpx_sdk", "HTTPX/SDK")):
            if key not in results[mode]:
                continue
            q = results[mode][key]
            lines.append(
                f"{mode:<11} {label:<9} {'':>5} {q['p50_ms']:>7.2f}x {q['p95_ms']:>7.2f}x "
                f"{q['p99_ms']:>7.2f}x {q['throughput_per_s']:>8.2f}x"
            )
    o = results["client_overhead"]
    lines += [
        "",
        f"client cost, GET /healthz p50: httpx {o['httpx_ms']:.2f} ms, lean client {o['lean_ms']:.2f} ms "
        f"(HTTP rows use the lean client; HTTPX is the same PATCH sent with httpx)",
    ]
    lines += ["", "targets"]
    for t in targets:
        value = f"{t['value']:.2f}x" if t["unit"] == "x" else f"{t['value']:.1f} ms"
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<42} measured {value}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Config:
    """The run's knobs, from BENCH_* environment variables."""

    moves: int
    concurrency: int
    rounds: int
    deals: int
    warmup: int

    @classmethod
    def from_env(cls) -> Config:
        moves = env_int("BENCH_MOVES", 300)
        concurrency = env_int("BENCH_CONCURRENCY", 20)
        cfg = cls(
            moves=moves,
            concurrency=concurrency,
            rounds=min(env_int("BENCH_ROUNDS", 4), moves),
            deals=env_int("BENCH_DEALS", 2 * concurrency),
            warmup=int(os.environ.get("BENCH_WARMUP") or 40),
        )
        if cfg.deals < cfg.concurrency:
            raise SystemExit(f"BENCH_DEALS ({cfg.deals}) must be at least BENCH_CONCURRENCY ({concurrency})")
        return cfg


async def measure(stack: Stack, cfg: Config) -> dict[str, Any]:
    concurrency, n_deals, warmup = cfg.concurrency, cfg.deals, cfg.warmup
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits, trust_env=False) as http:
        print(f"seeding a tenant and {2 * n_deals} deals ...", flush=True)
        _, all_deals = await seed(http, stack.admin_token, 2 * n_deals)
        # The same client setup the API uses: pydantic converter, namespace, no TLS.
        settings = Settings(
            temporal_address=f"127.0.0.1:{stack.temporal_port}",
            temporal_namespace="default",
            temporal_tls=False,
            temporal_tls_cert_path=None,
            temporal_tls_key_path=None,
            temporal_api_key=None,
            admin_token=stack.admin_token,
        )
        client = await connect_temporal(settings)
        lean = LeanClient("127.0.0.1", stack.api_port, {"Authorization": http.headers["Authorization"]})
        paths = {
            "http": Route(http_mover(lean), all_deals[:n_deals]),
            "sdk": Route(sdk_mover(client), all_deals[n_deals:]),
        }
        # httpx moves the same deals as the lean client (never at the same time), sequentially.
        via_httpx = Route(http_mover(http), all_deals[:n_deals])

        if warmup:
            print(f"warming up ({warmup} moves per path and mode) ...", flush=True)
            for path in paths.values():
                await path.concurrent(warmup, concurrency, Sample())
                await path.sequential(warmup, Sample())

        samples = {mode: {p: Sample() for p in paths} for mode in ("sequential", "concurrent")}
        samples["sequential"]["httpx"] = Sample()
        if warmup:
            await via_httpx.sequential(warmup, Sample())
        rounds = cfg.rounds
        chunks = [cfg.moves // rounds + (1 if r < cfg.moves % rounds else 0) for r in range(rounds)]
        for r, chunk in enumerate(chunks):
            order = ["sdk", "http"] if r % 2 == 0 else ["http", "sdk"]
            print(f"round {r + 1}/{rounds}: {chunk} moves per path and mode, {order[0]} first", flush=True)
            for name in order:
                await paths[name].sequential(chunk, samples["sequential"][name])
            via_httpx.seq_cursor = paths["http"].seq_cursor
            await via_httpx.sequential(chunk, samples["sequential"]["httpx"])
            paths["http"].seq_cursor = via_httpx.seq_cursor
            for name in order:
                await paths[name].concurrent(chunk, concurrency, samples["concurrent"][name])

        # Every move must have landed in the record: the API's view matches where we left each deal.
        sem = asyncio.Semaphore(concurrency)

        async def check(deal: Deal) -> None:
            async with sem:
                r = await http.get(f"/api/v1/deals/{deal.id}")
                r.raise_for_status()
                if r.json()["stage"] != deal.stage.value:
                    raise RuntimeError(f"deal {deal.id} is at {r.json()['stage']}, expected {deal.stage}")

        await asyncio.gather(*(check(d) for d in all_deals))
        overhead = await client_overhead(http, lean)
        await lean.aclose()

    results: dict[str, Any] = {}
    for mode, by_path in samples.items():
        figures = {p: summarize(s) for p, s in by_path.items()}
        results[mode] = {**figures, "ratio_http_sdk": ratios(figures["http"], figures["sdk"])}
        if "httpx" in figures:
            results[mode]["ratio_httpx_sdk"] = ratios(figures["httpx"], figures["sdk"])
    results["client_overhead"] = overhead
    meta = {
        "moves": cfg.moves,
        "concurrency": concurrency,
        "rounds": cfg.rounds,
        "deals_per_path": n_deals,
        "warmup_moves": warmup,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return {"meta": meta, "results": results}


def main() -> int:
    cfg = Config.from_env()
    stack = Stack()
    out = stack.run(lambda: asyncio.run(measure(stack, cfg)))
    targets = evaluate(out["results"])
    out["targets"] = targets
    print()
    print(render(out["meta"], out["results"], targets))
    results_file = results_path("stage_changes")
    results_file.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
