"""`python -m tests.faults`, what `make faults` runs: exit 0 clean, 1 on a violation, 2 if it cannot run."""

from __future__ import annotations

import asyncio
import traceback

from tests.faults import report
from tests.faults.config import Config
from tests.faults.harness import FaultSuite


def main() -> int:
    """Runs the suite once, prints the table and the invariants, writes the JSON."""
    cfg = Config.from_env()
    suite = FaultSuite(cfg)
    code = 2
    try:
        code = asyncio.run(suite.main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: stopping everything this run started", flush=True)
        code = 130
    except Exception:  # noqa: BLE001 - reported, then every process is cleaned up
        traceback.print_exc()
        suite.findings.violation("suite_error", detail=traceback.format_exc(limit=5))
        code = 2
    finally:
        suite.cleanup()
    requests = suite.load.requests if suite.load else []
    rows = report.fault_rows(requests, suite.windows, suite.findings)
    inv = report.invariants(suite.findings, suite.settle)
    if code == 0 and suite.findings.violations:  # found while cleaning up (leftover processes)
        code = 1
    print()
    print(report.table(rows))
    print()
    print(report.summary_text(inv))
    if suite.findings.violations:
        print(f"\n{len(suite.findings.violations)} violation(s); the first ones:")
        for v in suite.findings.violations[:15]:
            print(f"  - {v}")
    out = cfg.output / "faults.json"
    report.write_json(
        out,
        {
            "exit_code": code,
            "run_id": suite.run_id,
            "config": {
                k: str(v) if not isinstance(v, int | float | tuple) else v for k, v in vars(cfg).items()
            },
            "wall_s": round(suite.timeline.now(), 1),
            "faults": rows,
            "invariants": inv,
            "figures": suite.findings.figures,
            "violations": suite.findings.violations,
            "notes": suite.findings.notes,
            "timeline": suite.events,
        },
    )
    print(
        f"\nfigures: {out}\nlogs:    {suite.logs}  (requests.jsonl has every request)\n"
        f"wall time {suite.timeline.now():.0f} s"
    )
    return code


if __name__ == "__main__":
    from settings import exit_skipping_teardown

    exit_skipping_teardown(main())
