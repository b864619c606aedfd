"""Every benchmark `make bench` runs, at tiny sizes: it runs to the end and prints its ratio line.

Not the figures (tiny runs measure nothing worth comparing): that each benchmark still starts its
stack, finds its processes, measures its anchor and its product in the same run, prints the
ratio and writes its results file. A benchmark nobody runs would otherwise rot unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 30)

# name -> (tiny-size knobs, the ratio line it must print). Every benchmark of `make bench`.
BENCHMARKS: dict[str, tuple[dict[str, str], str]] = {
    "persist_activity": (
        {"BENCH_MOVES": "5"},
        r"ratio p50 local/activity = \d+\.\d+",
    ),
    "stage_changes": (
        {
            "BENCH_MOVES": "8",
            "BENCH_CONCURRENCY": "2",
            "BENCH_ROUNDS": "2",
            "BENCH_DEALS": "2",
            "BENCH_WARMUP": "2",
        },
        r"sequential\s+HTTP/SDK\s+\d+\.\d+x",
    ),
    "import_throughput": (
        {"BENCH_SMALL_ROWS": "400", "BENCH_ROWS": "800"},
        r"ratio product/anchor\s+\d+\.\d+x\s+\d+\.\d+x",
    ),
    "import_kinds": (
        {
            "BENCH_KINDS_SMALL_ROWS": "200",
            "BENCH_KINDS_ROWS": "400",
            "BENCH_DELIVERIES_IOS": "4",
            "BENCH_DELIVERIES_UNITS": "5",
        },
        # Every kind ran: campaigns' workflows phase, then deliveries against its two anchors.
        r"campaigns\s+workflows/raw SDK\s+\d+\.\d+x\s+\d+\.\d+x[\s\S]*"
        r"deliveries\s+ratio product/raw SDK\s+\d+\.\d+x\s+\d+\.\d+x, product/db\s+\d+\.\d+x",
    ),
    "match_recalc": (
        {"BENCH_MATCH_SHOWS": "40", "BENCH_MATCH_ADVERTISERS": "10", "BENCH_MATCH_REFERENCE_PAIRS": "200"},
        r"\(c\)/\(a\) = \d+\.\d+x",
    ),
    "dashboard": (
        {"BENCH_DASHBOARD_DEALS": "300", "BENCH_DASHBOARD_REQUESTS": "5"},
        r"dashboard/anchor p50 = \d+\.\d+x",
    ),
    # Two of its stacks (traced and off): the ratio and the checks that each was what it claims.
    "instrumentation": (
        {
            "BENCH_INSTR_MODES": "traced",
            "BENCH_INSTR_MOVES": "8",
            "BENCH_INSTR_ROUNDS": "2",
            "BENCH_INSTR_DEALS": "2",
            "BENCH_INSTR_WARMUP": "2",
        },
        r"ratio traced/off p50 = \d+\.\d+x[\s\S]*"
        r"traced\s+10 moves made, counted 10 PATCHes \(API\) and 10 stage moves \(worker\), "
        r"traced \d+ spans\s+"
        r"off\s+10 moves made, GET /metrics answers 404",
    ),
    # Every event reached every endpoint (the run waits for all of them), then the bare loop's.
    "webhook_fanout": (
        {"BENCH_WEBHOOK_EVENTS": "20", "BENCH_WEBHOOK_ENDPOINTS": "2", "BENCH_WEBHOOK_TIMEOUT_S": "60"},
        r"product\s+[\d.]+\s+[\d.]+[\s\S]*lag product/anchor p50 = \d+\.\d+x, p99 = \d+\.\d+x",
    ),
}


def test_make_bench_runs_every_benchmark_here() -> None:
    """A benchmark added to `make bench` gets a smoke run too (or this names it)."""
    makefile = (ROOT / "Makefile").read_text()
    in_make = set(re.findall(r"-m bench\.(\w+)", makefile))
    assert in_make == set(BENCHMARKS), f"make bench runs {sorted(in_make)}, smoke-tested {sorted(BENCHMARKS)}"


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    """`python -m bench.<name>` exits 0, prints its ratio line and writes its results file."""
    knobs, ratio_line = BENCHMARKS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPONSORFLOW_", "BENCH_"))}
    env.update(knobs, BENCH_RESULTS_DIR=str(tmp_path / "results"))
    started = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # What it printed so far (bytes here, even with text=True).
        said = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in (exc.stdout, exc.stderr) if x)
        pytest.fail(f"bench.{name} did not finish within {RUN_TIMEOUT_S} s:\n{said.decode(errors='replace')}")
    elapsed = time.monotonic() - started
    tail = f"--- stdout\n{out.stdout[-4000:]}\n--- stderr\n{out.stderr[-4000:]}"
    assert out.returncode == 0, f"bench.{name} exited {out.returncode} after {elapsed:.0f} s\n{tail}"
    assert re.search(ratio_line, out.stdout), f"bench.{name} printed no ratio line /{ratio_line}/\n{tail}"
    results = tmp_path / "results" / f"{name}.json"
    assert results.exists(), f"bench.{name} wrote no {results.name}\n{tail}"
    assert json.loads(results.read_text()), f"{results.name} is empty"
    print(f"bench.{name}: {elapsed:.1f} s")
