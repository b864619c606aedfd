"""The fault suite's table, invariants summary and JSON (`test-output/faults.json`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.faults import checks
from tests.faults.checks import FaultWindow, Findings
from tests.faults.load import Request

COLUMNS = (
    ("fault", "fault"),
    ("moves", "sent"),
    ("2xx", "2xx"),
    ("503", "503"),
    ("no ans", "no_answer"),
    ("no-ans tries", "no_answer_attempts"),
    ("retry ok", "answered_after_retry"),
    ("other", "other"),
    ("ghost", "ghost"),
    ("lost 2xx", "lost_2xx"),
    ("rec max s", "recovery_max_s"),
    ("rec med s", "recovery_median_s"),
    ("unrec", "unrecovered"),
    ("gap max s", "longest_2xx_gap_s"),
    ("p50 ms", "latency_p50_ms"),
    ("p99 ms", "latency_p99_ms"),
    ("deliv 2xx/503/na", "deliveries"),
    ("deliv ghost", "delivery_ghost"),
    ("hook p99 s", "webhook_lag_p99_s"),
    ("hook2 p99 s", "webhook2_lag_p99_s"),
)


def fault_rows(
    requests: list[Request], windows: list[FaultWindow], findings: Findings
) -> list[dict[str, Any]]:
    """One row per fault (and the baseline): the figures of its moves and deliveries."""
    by_phase: Counter[tuple[str, str]] = Counter()
    for v in findings.violations:
        if v["check"] in ("ghost_move", "lost_2xx_move", "ghost_delivery", "lost_2xx_delivery"):
            by_phase[(v["check"], v.get("phase", ""))] += 1
    hooks = findings.figures.get("webhooks", {})
    hook_lag = hooks.get("all", {}).get("lag_s", {})
    hook2_lag = hooks.get("deliveries", {}).get("lag_s", {})
    rows = []
    for w in windows:
        moves = checks.fault_figures(requests, w, "move")
        deliv = checks.fault_figures(requests, w, "delivery")
        rows.append(
            {
                "fault": w.name,
                **moves,
                "unrecovered": len(moves["not_recovered_in_quiet"]),
                "ghost": by_phase[("ghost_move", w.name)],
                "lost_2xx": by_phase[("lost_2xx_move", w.name)],
                "deliveries": f"{deliv['2xx']}/{deliv['503']}/{deliv['no_answer']}",
                "delivery_ghost": by_phase[("ghost_delivery", w.name)],
                "delivery_lost_2xx": by_phase[("lost_2xx_delivery", w.name)],
                "delivery_figures": deliv,
                # Webhooks to the `all` endpoint: event written -> first 200 at the receiver.
                "webhook_lag_p99_s": hook_lag.get(w.name, {}).get("p99"),
                # ... and to `deliveries` (its receiver never fails: the endpoint nothing should slow).
                "webhook2_lag_p99_s": hook2_lag.get(w.name, {}).get("p99"),
                "window": {
                    "t_inject": round(w.t_inject, 2),
                    "t_end": round(w.t_end, 2),
                    "t_quiet_end": round(w.t_quiet_end, 2),
                    "down_s": round(w.t_end - w.t_inject, 2),
                },
                "notes": w.notes,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as a fixed-width text table."""
    head = [c[0] for c in COLUMNS]
    body = [["-" if r.get(k) is None else str(r.get(k)) for _, k in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(head), "-+-".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    return "\n".join(out)


def invariants(findings: Findings, settle: dict[str, Any]) -> dict[str, Any]:
    """The invariants summary: one count per check (0 everywhere is a clean run)."""
    n = Counter(v["check"] for v in findings.violations)
    return {
        "ghost_moves": n["ghost_move"],
        "lost_2xx_moves": n["lost_2xx_move"],
        "chains_broken": len({v.get("deal") for v in findings.violations if v["check"] == "chain"}),
        "duplicate_history_reasons": n["duplicate_history_reason"],
        "unexplained_history_entries": n["unexplained_history_entry"],
        "events_not_one_per_move": n["events_per_move"] + n["event_mismatch"],
        "duplicate_events": n["duplicate_event"],
        "drifted_deals_after_settle": n["deal_drift"],
        "drifted_ios_after_settle": n["io_drift"],
        "settle": settle,
        "ghost_deliveries": n["ghost_delivery"],
        "lost_2xx_deliveries": n["lost_2xx_delivery"],
        "delivery_figures_wrong": n["delivery_figure"],
        "webhooks_missing": n["webhook_missing"],
        "webhook_ids_changed_or_shared": n["webhook_id_changed"] + n["webhook_id_shared"],
        "webhooks_out_of_order": n["webhook_out_of_order"],
        "webhooks_stuck_or_failed": n["webhook_stuck"] + n["webhook_failed"],
        "webhooks_unexpected_or_bad": n["webhook_unexpected"]
        + n["webhook_bad_request"]
        + n["webhook_delivered_unseen"]
        + n["webhook_body_mismatch"],
        "webhook_workflows_wrong": n["webhook_workflow"],
        "webhooks": findings.figures.get("webhooks"),
        "import": findings.figures.get("import"),
        "import_violations": sum(v for k, v in n.items() if k.startswith("import")),
        "server_errors_5xx": n["server_error"],
        "stack_died": n["stack_died"],
        "children_not_restarted": n["not_restarted"],
        "leftover_processes": n["leftover_process"],
    }


def summary_text(inv: dict[str, Any]) -> str:
    """The invariants summary as lines of text."""
    lines = ["invariants:"]
    for k, v in inv.items():
        lines.append(f"  {k:32s} {json.dumps(v, default=str)}")
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Writes the run's document (figures, invariants, violations, timeline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))
