"""Benchmark: what metrics and tracing cost on the stage-change path (issue 16 point 5).

One `sponsorflow up` per mode (PostgreSQL, Temporal dev server, API, one worker), side by side,
identical but for the instrumentation:

  traced   the API serves GET /metrics, the worker serves the SDK's and the product's metrics
           (SPONSORFLOW_WORKER_METRICS_ADDRESS on a free port), both scraped once per round as
           Prometheus would; tracing on, every span written to a file (SPONSORFLOW_TRACE_FILE:
           FastAPI, Temporal client/update/activity and SQL spans)
  sampled  the same, traces sampled at the root (OTEL_TRACES_SAMPLER=parentbased_traceidratio, 0.1)
  metrics  the metrics only, tracing off
  control  a second stack like `off`: control/off is the run's noise floor (two identical stacks
           differ by a few percent; a ratio within that is no cost anyone can see)
  off      SPONSORFLOW_API_METRICS_PATH="" and SPONSORFLOW_WORKER_METRICS_ADDRESS="" (no SDK
           metrics; the product counters go to the SDK's no-op meter), tracing off (no OTEL_*)

Why stacks side by side and not one restarted between modes: a restart gives each mode its own
warm-up, caches and dev-server history, and the modes could only take turns a few times in a run;
side by side they take turns every round in the same minutes, so drift (other engineers' work on
the 2 cores, the dev servers' growing history) hits all alike. The moves are sequential, so only
one stack is busy at a time; an idle one costs its pollers' long polls and little more.

Not switched off in `off`: the API's metrics middleware and Temporal client interceptor, which
api/main.py installs always (the setting moves or drops only the scrape route). Their cost per
request is measured in this process (the same middleware and interceptor around no-op calls) and
taken off `off`'s p50 for a ratio against no instrumentation at all.

PATCH /api/v1/deals/{id}/stage sent with the lean keep-alive client (bench/lean_http.py), over
rounds in which the stack that goes first rotates. Prints p50/p95/p99 per mode and each mode's
ratio to `off`, checks p50 against 1.05x (PASS/FAIL, informational: the exit code is 0 unless the
run itself fails), checks that each stack was what it claims (an instrumented one counted every
move on both endpoints and, traced, wrote spans; `off` answers 404 on /metrics), and writes
bench/results/instrumentation.json.

Environment knobs: BENCH_INSTR_MOVES (measured moves per mode, default 600), BENCH_INSTR_ROUNDS
(20), BENCH_INSTR_DEALS (deals per stack, 20), BENCH_INSTR_WARMUP (moves per stack before
measuring, 40), BENCH_INSTR_MODES (a comma list of the modes above, default all; `off` always).
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
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.lean_http import LeanClient
from bench.stack import Stack, env_int, free_ports, results_path
from bench.stage_changes import Route, Sample, http_mover, percentile, seed, summarize

PATCH_ROUTE = "/api/v1/deals/{campaign_id}/stage"
P50_RATIO_MAX = 1.05
BASELINE = "off"
SAMPLE_RATIO = "0.1"
Thunk = Callable[[], Awaitable[None]]
T = TypeVar("T")

# mode -> (metrics on, tracing: None (off), "all" or the OTEL_TRACES_SAMPLER_ARG ratio), in the
# order they are printed. BENCH_INSTR_MODES picks some (the baseline `off` always runs).
MODES: dict[str, tuple[bool, str | None]] = {
    "traced": (True, "all"),
    "sampled": (True, SAMPLE_RATIO),
    "metrics": (True, None),
    "control": (False, None),
    "off": (False, None),
}
CONTROL = "control"  # a second `off`: how far two identical stacks differ in this run
DESCRIBED = {
    "traced": "API /metrics + worker metrics (scraped every round) + every trace to a file",
    "sampled": f"the same, traces sampled at the root: parentbased_traceidratio {SAMPLE_RATIO}",
    "metrics": "API /metrics + worker metrics (scraped every round), tracing off",
    "control": "a second stack like off: control/off is this run's noise between two identical stacks",
    "off": "SPONSORFLOW_API_METRICS_PATH='' SPONSORFLOW_WORKER_METRICS_ADDRESS='', tracing off",
}


@dataclass(frozen=True)
class Config:
    """The run's knobs, from BENCH_INSTR_* environment variables."""

    moves: int
    rounds: int
    deals: int
    warmup: int
    modes: tuple[str, ...]

    @classmethod
    def from_env(cls) -> Config:
        moves = env_int("BENCH_INSTR_MOVES", 600)
        raw = os.environ.get("BENCH_INSTR_MODES") or ",".join(MODES)
        asked = {m.strip() for m in raw.split(",") if m.strip()} | {BASELINE}
        if unknown := asked - set(MODES):
            raise SystemExit(f"BENCH_INSTR_MODES: unknown {sorted(unknown)}; known {list(MODES)}")
        return cls(
            moves=moves,
            rounds=min(env_int("BENCH_INSTR_ROUNDS", 20), moves),
            deals=env_int("BENCH_INSTR_DEALS", 20),
            warmup=int(os.environ.get("BENCH_INSTR_WARMUP") or 40),
            modes=tuple(m for m in MODES if m in asked),
        )


@dataclass
class Instrumented:
    """One stack and what it exposes."""

    mode: str
    stack: Stack
    worker_metrics: str  # host:port, or "" (off)
    trace_file: Path | None


def make_stacks(modes: tuple[str, ...]) -> dict[str, Instrumented]:
    ports = free_ports(len(modes))
    stacks = {}
    for mode, port in zip(modes, ports, strict=True):
        metrics, tracing = MODES[mode]
        stack = Stack()
        address = f"127.0.0.1:{port}" if metrics else ""
        stack.extra_env.update(
            SPONSORFLOW_API_METRICS_PATH="/metrics" if metrics else "",
            SPONSORFLOW_WORKER_METRICS_ADDRESS=address,
        )
        trace_file = None
        if tracing is not None:
            trace_file = stack.tmp / "traces.jsonl"
            stack.extra_env["SPONSORFLOW_TRACE_FILE"] = str(trace_file)
            if tracing != "all":
                stack.extra_env.update(
                    OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=tracing
                )
        stacks[mode] = Instrumented(mode, stack, address, trace_file)
    return stacks


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


async def scrape(inst: Instrumented, lean: LeanClient) -> tuple[str, str]:
    """Both endpoints of an instrumented stack, as Prometheus would every 15 s (not timed)."""
    api = await lean.get("/metrics")
    if api.status_code != 200:
        raise RuntimeError(f"GET /metrics on the {inst.mode} stack: {api.status_code}")
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        worker = await http.get(f"http://{inst.worker_metrics}/metrics")
        worker.raise_for_status()
    return api.text, worker.text


async def verify(inst: Instrumented, lean: LeanClient, moves: int) -> dict[str, Any]:
    """An instrumented stack counted every move (and traced it); an uninstrumented one serves no metrics."""
    checks: dict[str, Any] = {"moves_made": moves}
    problems = []
    if inst.worker_metrics:
        api_text, worker_text = await scrape(inst, lean)
        api, worker = samples(api_text), samples(worker_text)
        checks["api_patch_200_counted"] = patched = total(
            api, "sponsorflow_http_requests_total", method="PATCH", route=PATCH_ROUTE, status="200"
        )
        checks["worker_stage_moves_counted"] = moved = total(worker, "sponsorflow_deal_stage_moves_total")
        if patched != moves:
            problems.append(f"its API counted {patched:.0f} PATCH 200, {moves} made")
        if moved != moves:
            problems.append(f"its worker counted {moved:.0f} stage moves, {moves} made")
    else:
        checks["api_metrics_status"] = status = (await lean.get("/metrics")).status_code
        if status != 404:
            problems.append(f"it answers GET /metrics with {status}")
    if inst.trace_file is not None:
        spans = len(inst.trace_file.read_text().splitlines()) if inst.trace_file.exists() else 0
        checks["trace_file_spans"] = spans
        if MODES[inst.mode][1] == "all" and spans < moves:
            problems.append(f"its trace file holds {spans} spans for {moves} moves")
    if problems:
        raise RuntimeError(f"the {inst.mode} stack is not as configured: " + "; ".join(problems))
    return checks


# ---------------------------------------------------------------------------- measure


async def measure(stacks: dict[str, Instrumented], cfg: Config) -> dict[str, Any]:
    routes: dict[str, Route] = {}
    leans: dict[str, LeanClient] = {}
    clients: list[httpx.AsyncClient] = []
    modes = list(stacks)
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

        measured = {mode: Sample() for mode in modes}
        chunks = [
            cfg.moves // cfg.rounds + (1 if r < cfg.moves % cfg.rounds else 0) for r in range(cfg.rounds)
        ]
        scrape_s: list[float] = []
        for r, chunk in enumerate(chunks):
            # Each mode goes first as often as the others.
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            if r % 5 == 0:
                print(f"round {r + 1}/{cfg.rounds}: {chunk} moves per stack, {order[0]} first", flush=True)
            for mode in order:
                await routes[mode].sequential(chunk, measured[mode])
            for mode in modes:
                if stacks[mode].worker_metrics:
                    t0 = time.perf_counter()
                    await scrape(stacks[mode], leans[mode])
                    scrape_s.append(time.perf_counter() - t0)

        # Spans are written by a batch processor (500 ms delay): let it flush before counting.
        await asyncio.sleep(3)
        checks = {mode: await verify(stacks[mode], leans[mode], cfg.warmup + cfg.moves) for mode in modes}
    finally:
        for lean in leans.values():
            await lean.aclose()
        for http in clients:
            await http.aclose()

    figures = {mode: summarize(measured[mode]) for mode in modes}
    keys = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_per_s")
    ratios = {
        mode: {k: figures[mode][k] / figures[BASELINE][k] for k in keys} for mode in modes if mode != BASELINE
    }
    return {
        "figures": figures,
        "ratio_to_off": ratios,
        "checks": checks,
        "scrape_ms_p50": percentile(scrape_s, 50) * 1000 if scrape_s else float("nan"),
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode, ratio in results["ratio_to_off"].items():
        if mode == CONTROL:
            continue
        for key, label in (("p50_ms", "off"), ("p50_bare", "no instrumentation at all")):
            value = ratio[key]
            out.append(
                {
                    "target": f"p50 {mode}/{label} <= 1.05",
                    "value": value,
                    "limit": P50_RATIO_MAX,
                    "pass": value <= P50_RATIO_MAX,
                }
            )
    return out


def render(meta: dict[str, Any], results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    f = results["figures"]
    always = results["always_on_us"]
    always_us = always["middleware_us"] + always["temporal_interceptor_us"]
    lines = [
        f"instrumentation on the stage-change path: {meta['moves']} sequential PATCHes per stack, "
        f"{meta['rounds']} rounds (the first stack rotating), {meta['deals']} deals per stack, "
        f"{meta['cpus']} CPUs",
        *(f"  {mode + ':':<8} {DESCRIBED[mode]}" for mode in f),
        "",
        f"{'mode':<8} {'moves':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'moves/s':>8}",
    ]
    for mode, r in f.items():
        lines.append(
            f"{mode:<8} {r['moves']:>5} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['mean_ms']:>8.2f} {r['throughput_per_s']:>8.1f}"
        )
    for mode, q in results["ratio_to_off"].items():
        noise = " (noise)" if mode == CONTROL else ""
        lines.append(
            f"ratio {mode}/off{noise} p50 = {q['p50_ms']:.3f}x, p95 = {q['p95_ms']:.3f}x, "
            f"p99 = {q['p99_ms']:.3f}x, mean = {q['mean_ms']:.3f}x"
        )
    lines += [
        "",
        f"always on, also in off (measured in-process): metrics middleware {always['middleware_us']:.1f} us, "
        f"Temporal client interceptor {always['temporal_interceptor_us']:.1f} us per PATCH; against "
        f"off's p50 less those {always_us:.1f} us:",
        *(
            f"ratio {mode}/no instrumentation p50 = {q['p50_bare']:.3f}x"
            for mode, q in results["ratio_to_off"].items()
            if mode != CONTROL
        ),
        f"a scrape of both endpoints took {results['scrape_ms_p50']:.1f} ms (p50, once per round, not timed)",
        "",
        "checks",
    ]
    for mode, c in results["checks"].items():
        said = [f"{c['moves_made']} moves made"]
        if "api_patch_200_counted" in c:
            said.append(
                f"counted {c['api_patch_200_counted']:.0f} PATCHes (API) and "
                f"{c['worker_stage_moves_counted']:.0f} stage moves (worker)"
            )
        if "trace_file_spans" in c:
            said.append(f"traced {c['trace_file_spans']} spans")
        if "api_metrics_status" in c:
            said.append(f"GET /metrics answers {c['api_metrics_status']}")
        lines.append(f"  {mode:<8} " + ", ".join(said))
    lines += ["", "targets"]
    for t in targets:
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<48} measured {t['value']:.3f}x")
    return "\n".join(lines)


def run_all(stacks: list[Stack], body: Callable[[], T]) -> T:
    """Starts every stack (one after the other), runs `body` while all run, stops them all."""
    if not stacks:
        return body()
    return stacks[0].run(lambda: run_all(stacks[1:], body))


def main() -> int:
    cfg = Config.from_env()
    # The bench decides what is traced: a caller's OTEL_* would turn tracing on in the `off` stack.
    for var in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[var]
    print("measuring the always-on parts in-process ...", flush=True)
    always = always_on_cost_us()
    stacks = make_stacks(cfg.modes)
    out = run_all([inst.stack for inst in stacks.values()], lambda: asyncio.run(measure(stacks, cfg)))
    out["always_on_us"] = always
    bare_p50 = (
        out["figures"][BASELINE]["p50_ms"]
        - (always["middleware_us"] + always["temporal_interceptor_us"]) / 1000
    )
    for mode, ratio in out["ratio_to_off"].items():
        ratio["p50_bare"] = out["figures"][mode]["p50_ms"] / bare_p50
    meta = {
        "moves": cfg.moves,
        "rounds": cfg.rounds,
        "deals": cfg.deals,
        "warmup_moves": cfg.warmup,
        "modes": {mode: DESCRIBED[mode] for mode in cfg.modes},
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
