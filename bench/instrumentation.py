"""Benchmark: what metrics and tracing cost on the stage-change path (issue 16 point 5).

Two stacks side by side, each its own `sponsorflow up` (PostgreSQL, Temporal dev server, API, one
worker), identical but for the instrumentation:

  on   the API serves GET /metrics, the worker serves the SDK's and the product's metrics
       (SPONSORFLOW_WORKER_METRICS_ADDRESS on a free port), tracing on with every span written to
       a file (SPONSORFLOW_TRACE_FILE: FastAPI, Temporal client/update/activity and SQL spans);
       both endpoints are scraped once per round, as Prometheus would
  off  SPONSORFLOW_API_METRICS_PATH="" and SPONSORFLOW_WORKER_METRICS_ADDRESS="" (no SDK metrics,
       the product counters go to the SDK's no-op meter), tracing off (no OTEL_*, no trace file)

Why two stacks and not one restarted between modes: a restart gives each mode its own warm-up,
caches and dev-server history, and the modes could only take turns a few times in a run; with
two stacks the modes take turns every few moves in the same minutes, so drift (other engineers'
work on the 2 cores, the dev servers' growing history) hits both alike. The moves are sequential,
so only one stack is busy at a time; the idle one costs its pollers' long polls and nothing more.

Not switched off in `off`: the API's metrics middleware and Temporal client interceptor, which
api/main.py installs always (the setting moves or drops only the scrape route). Their cost per
request is measured in this process (the same middleware and interceptor around no-op calls) and
taken off `off`'s p50 for the ratio against a stack with no instrumentation at all.

PATCH /api/v1/deals/{id}/stage sent with the lean keep-alive client (bench/lean_http.py), over
rounds in which the stack that goes first alternates. Prints p50/p95/p99 per mode and the on/off
ratios, checks p50 on/off against 1.05 (PASS/FAIL, informational: the exit code is 0 unless the
run itself fails), checks that the instrumentation was really on (the counters moved by the
moves made, the trace file holds spans) and off (no /metrics, no worker endpoint), and writes
bench/results/instrumentation.json.

Environment knobs: BENCH_INSTR_MOVES (measured moves per mode, default 600), BENCH_INSTR_ROUNDS
(20), BENCH_INSTR_DEALS (deals per stack, 20), BENCH_INSTR_WARMUP (moves per stack before
measuring, 40).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.lean_http import LeanClient
from bench.stack import Stack, env_int, free_ports, results_path
from bench.stage_changes import Route, Sample, http_mover, percentile, seed, summarize

PATCH_ROUTE = "/api/v1/deals/{campaign_id}/stage"
P50_RATIO_MAX = 1.05
MODES = ("on", "off")
Thunk = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Config:
    """The run's knobs, from BENCH_INSTR_* environment variables."""

    moves: int
    rounds: int
    deals: int
    warmup: int

    @classmethod
    def from_env(cls) -> Config:
        moves = env_int("BENCH_INSTR_MOVES", 600)
        return cls(
            moves=moves,
            rounds=min(env_int("BENCH_INSTR_ROUNDS", 20), moves),
            deals=env_int("BENCH_INSTR_DEALS", 20),
            warmup=int(os.environ.get("BENCH_INSTR_WARMUP") or 40),
        )


@dataclass
class Instrumented:
    """One stack and what it exposes."""

    mode: str
    stack: Stack
    worker_metrics: str  # host:port, or "" (off)
    trace_file: Path | None


def make_stacks() -> dict[str, Instrumented]:
    (worker_port,) = free_ports(1)
    on = Stack()
    trace_file = on.tmp / "traces.jsonl"
    on.extra_env.update(
        SPONSORFLOW_API_METRICS_PATH="/metrics",
        SPONSORFLOW_WORKER_METRICS_ADDRESS=f"127.0.0.1:{worker_port}",
        SPONSORFLOW_TRACE_FILE=str(trace_file),
    )
    off = Stack({"SPONSORFLOW_API_METRICS_PATH": "", "SPONSORFLOW_WORKER_METRICS_ADDRESS": ""})
    return {
        "on": Instrumented("on", on, f"127.0.0.1:{worker_port}", trace_file),
        "off": Instrumented("off", off, "", None),
    }


# ---------------------------------------------------------------------------- always-on parts


def always_on_cost_us(n: int = 20000) -> dict[str, float]:
    """Per-request cost (us) of what the API installs in both modes: the metrics middleware around
    an ASGI app and the Temporal client interceptor around one call (a PATCH makes one
    update-with-start), each against the same no-op without it, interleaved in blocks."""
    from temporalio import client as tc

    from api.metrics import ApiMetrics, MetricsMiddleware, _TimedOutbound

    class _Route:
        path = PATCH_ROUTE

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def routed(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = _Route
        await app(scope, receive, send)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        return None

    metrics = ApiMetrics()
    middleware = MetricsMiddleware(routed, metrics)
    outbound = _TimedOutbound(tc.OutboundInterceptor(None), metrics)  # type: ignore[arg-type]

    async def noop() -> None:
        return None

    async def one_call() -> None:
        await outbound._timed("update_with_start", "DealWorkflow", noop())

    async def bare_call() -> None:
        await noop()

    async def run() -> dict[str, float]:
        def scope() -> dict[str, Any]:
            return {"type": "http", "method": "PATCH", "path": "/api/v1/deals/x/stage"}

        pairs: dict[str, tuple[Thunk, Thunk]] = {
            "middleware": (
                lambda: middleware(scope(), receive, send),
                lambda: routed(scope(), receive, send),
            ),
            "temporal_interceptor": (one_call, bare_call),
        }
        per: dict[str, list[float]] = {k: [] for k in pairs}
        block = 1000
        for _ in range(max(1, n // block)):
            for name, (with_it, without) in pairs.items():
                timings = []
                for fn in (with_it, without):
                    t0 = time.perf_counter()
                    for _ in range(block):
                        await fn()
                    timings.append((time.perf_counter() - t0) / block)
                per[name].append((timings[0] - timings[1]) * 1e6)
        return {f"{name}_us": max(0.0, percentile(v, 50)) for name, v in per.items()}

    return asyncio.run(run())


# ---------------------------------------------------------------------------- checks


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in parsed.items() if n == name and want <= set(ls))


async def scrape(on: Instrumented, lean: LeanClient) -> tuple[str, str]:
    """Both endpoints of the `on` stack, as Prometheus would every 15 s (not timed)."""
    api = await lean.get("/metrics")
    if api.status_code != 200:
        raise RuntimeError(f"GET /metrics on the instrumented stack: {api.status_code}")
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        worker = await http.get(f"http://{on.worker_metrics}/metrics")
        worker.raise_for_status()
    return api.text, worker.text


async def verify(stacks: dict[str, Instrumented], leans: dict[str, LeanClient], moves: int) -> dict[str, Any]:
    """The `on` stack counted every move and traced it; the `off` one serves no metrics."""
    api_text, worker_text = await scrape(stacks["on"], leans["on"])
    api, worker = samples(api_text), samples(worker_text)
    patched = total(api, "sponsorflow_http_requests_total", method="PATCH", route=PATCH_ROUTE, status="200")
    moved = total(worker, "sponsorflow_deal_stage_moves_total")
    trace_file = stacks["on"].trace_file
    assert trace_file is not None
    spans = len(trace_file.read_text().splitlines()) if trace_file.exists() else 0
    off_metrics = (await leans["off"].get("/metrics")).status_code
    checks = {
        "on_api_patch_200_counted": patched,
        "on_worker_stage_moves_counted": moved,
        "on_trace_file_spans": spans,
        "off_api_metrics_status": off_metrics,
        "moves_made_per_stack": moves,
    }
    problems = []
    if patched != moves:
        problems.append(f"the on stack's API counted {patched:.0f} PATCH 200, {moves} made")
    if moved != moves:
        problems.append(f"the on stack's worker counted {moved:.0f} stage moves, {moves} made")
    if spans < moves:
        problems.append(f"the on stack's trace file holds {spans} spans for {moves} moves")
    if off_metrics != 404:
        problems.append(f"the off stack answers GET /metrics with {off_metrics}")
    if problems:
        raise RuntimeError("instrumentation not as configured: " + "; ".join(problems))
    return checks


# ---------------------------------------------------------------------------- measure


async def measure(stacks: dict[str, Instrumented], cfg: Config) -> dict[str, Any]:
    routes: dict[str, Route] = {}
    leans: dict[str, LeanClient] = {}
    clients: list[httpx.AsyncClient] = []
    try:
        for mode, inst in stacks.items():
            http = httpx.AsyncClient(base_url=inst.stack.api_url, timeout=60, trust_env=False)
            clients.append(http)
            print(f"seeding {cfg.deals} deals on the {mode} stack ...", flush=True)
            _, deals = await seed(http, inst.stack.admin_token, cfg.deals)
            lean = LeanClient(
                "127.0.0.1", inst.stack.api_port, {"Authorization": http.headers["Authorization"]}
            )
            leans[mode] = lean
            routes[mode] = Route(http_mover(lean), deals)

        if cfg.warmup:
            print(f"warming up ({cfg.warmup} moves per stack) ...", flush=True)
            for route in routes.values():
                await route.sequential(cfg.warmup, Sample())

        measured = {mode: Sample() for mode in MODES}
        chunks = [
            cfg.moves // cfg.rounds + (1 if r < cfg.moves % cfg.rounds else 0) for r in range(cfg.rounds)
        ]
        scrape_s: list[float] = []
        for r, chunk in enumerate(chunks):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            if r % 5 == 0:
                print(f"round {r + 1}/{cfg.rounds}: {chunk} moves per stack, {order[0]} first", flush=True)
            for mode in order:
                await routes[mode].sequential(chunk, measured[mode])
            t0 = time.perf_counter()
            await scrape(stacks["on"], leans["on"])
            scrape_s.append(time.perf_counter() - t0)

        # Spans are written by a batch processor (500 ms delay): let it flush before counting.
        await asyncio.sleep(3)
        checks = await verify(stacks, leans, cfg.warmup + cfg.moves)
    finally:
        for lean in leans.values():
            await lean.aclose()
        for http in clients:
            await http.aclose()

    figures = {mode: summarize(measured[mode]) for mode in MODES}
    ratio = {
        k: figures["on"][k] / figures["off"][k]
        for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_per_s")
    }
    return {
        "figures": figures,
        "ratio_on_off": ratio,
        "checks": checks,
        "scrape_ms_p50": percentile(scrape_s, 50) * 1000,
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    p50 = results["ratio_on_off"]["p50_ms"]
    bare = results["ratio_on_bare"]["p50_ms"]
    return [
        {"target": "p50 on/off <= 1.05", "value": p50, "limit": P50_RATIO_MAX, "pass": p50 <= P50_RATIO_MAX},
        {
            "target": "p50 on/no instrumentation at all <= 1.05",
            "value": bare,
            "limit": P50_RATIO_MAX,
            "pass": bare <= P50_RATIO_MAX,
        },
    ]


def render(meta: dict[str, Any], results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    f, q = results["figures"], results["ratio_on_off"]
    always = results["always_on_us"]
    lines = [
        f"instrumentation on the stage-change path: {meta['moves']} sequential PATCHes per stack, "
        f"{meta['rounds']} rounds (first stack alternating), {meta['deals']} deals per stack, "
        f"{meta['cpus']} CPUs",
        "  on:  API /metrics + worker metrics (scraped every round) + tracing to a file",
        "  off: SPONSORFLOW_API_METRICS_PATH='' SPONSORFLOW_WORKER_METRICS_ADDRESS='', tracing off",
        "",
        f"{'mode':<6} {'moves':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'moves/s':>8}",
    ]
    for mode in MODES:
        r = f[mode]
        lines.append(
            f"{mode:<6} {r['moves']:>5} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['mean_ms']:>8.2f} {r['throughput_per_s']:>8.1f}"
        )
    lines += [
        f"ratio on/off p50 = {q['p50_ms']:.3f}x, p95 = {q['p95_ms']:.3f}x, p99 = {q['p99_ms']:.3f}x, "
        f"mean = {q['mean_ms']:.3f}x",
        "",
        f"always on in both (measured in-process): metrics middleware {always['middleware_us']:.1f} us, "
        f"Temporal client interceptor {always['temporal_interceptor_us']:.1f} us per PATCH",
        f"ratio on/no instrumentation at all p50 = {results['ratio_on_bare']['p50_ms']:.3f}x "
        f"(off p50 less those {always['middleware_us'] + always['temporal_interceptor_us']:.1f} us)",
        f"a scrape of both endpoints took {results['scrape_ms_p50']:.1f} ms (p50, once per round, not timed)",
        "",
        "checks: the on stack counted {on_api_patch_200_counted:.0f} PATCHes and "
        "{on_worker_stage_moves_counted:.0f} stage moves of {moves_made_per_stack} made and traced "
        "{on_trace_file_spans} spans; the off stack's GET /metrics answers {off_api_metrics_status}".format(
            **results["checks"]
        ),
        "",
        "targets",
    ]
    for t in targets:
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<42} measured {t['value']:.3f}x")
    return "\n".join(lines)


def main() -> int:
    cfg = Config.from_env()
    # The bench decides what is traced: a caller's OTEL_* would turn tracing on in the `off` stack.
    for var in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[var]
    print("measuring the always-on parts in-process ...", flush=True)
    always = always_on_cost_us()
    stacks = make_stacks()
    out = stacks["on"].stack.run(lambda: stacks["off"].stack.run(lambda: asyncio.run(measure(stacks, cfg))))
    out["always_on_us"] = always
    off_p50 = out["figures"]["off"]["p50_ms"]
    bare_p50 = off_p50 - (always["middleware_us"] + always["temporal_interceptor_us"]) / 1000
    out["ratio_on_bare"] = {"p50_ms": out["figures"]["on"]["p50_ms"] / bare_p50, "bare_p50_ms": bare_p50}
    meta = {
        "moves": cfg.moves,
        "rounds": cfg.rounds,
        "deals": cfg.deals,
        "warmup_moves": cfg.warmup,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    targets = evaluate(out)
    report = {"meta": meta, "results": out, "targets": targets}
    print()
    print(render(meta, out, targets))
    results_file = results_path("instrumentation")
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
