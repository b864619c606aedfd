"""The fault suite's checks on hand-made records: each must catch what it is there to catch.

Pure and fast (no process), so `make test` runs these; the suite itself runs with `make faults`.
"""

from __future__ import annotations

from typing import Any

from tests.faults import checks, report
from tests.faults.checks import FaultWindow
from tests.faults.load import Attempt, Request, next_stage, shows_csv

T = "2026-12-01T09:00:00+00:00"


def move(
    tag: str, status: int | None, *, deal: str = "d1", applied: bool | None = True, t: float = 1.0
) -> Request:
    r = Request("move", "c1", tag, deal, "freeze", stage="qualified", believed="lead")
    r.attempts.append(Attempt(t, t + 0.1, status))
    r.applied = applied if status is not None and 200 <= status < 300 else None
    return r


def entry(frm: str | None, to: str, reason: str | None) -> dict[str, Any]:
    return {"from": frm, "to": to, "at": T, "reason": reason}


def event(frm: str, to: str, reason: str) -> dict[str, Any]:
    return {"type": "deal.stage_changed", "payload": {"from": frm, "to": to, "reason": reason}}


def violations(f: checks.Findings) -> list[str]:
    return sorted(v["check"] for v in f.violations)


def test_a_clean_history_passes() -> None:
    history = [
        entry(None, "lead", "created"),
        entry("lead", "qualified", "a"),
        entry("qualified", "proposal", "b"),
    ]
    evs = [event("lead", "qualified", "a"), event("qualified", "proposal", "b")]
    f = checks.check_moves([move("a", 200), move("b", 200)], {"d1": history}, {"d1": evs})
    assert f.violations == []
    assert f.figures["moves"] == {"2xx": 2}


def test_a_503_that_landed_is_a_ghost_and_a_2xx_missing_is_lost() -> None:
    history = [entry(None, "lead", "created"), entry("lead", "qualified", "ghost")]
    evs = [event("lead", "qualified", "ghost")]
    f = checks.check_moves([move("ghost", 503), move("lost", 200)], {"d1": history}, {"d1": evs})
    assert violations(f) == ["ghost_move", "lost_2xx_move"]
    ghost = next(v for v in f.violations if v["check"] == "ghost_move")
    assert ghost["tag"] == "ghost" and ghost["landed_as"]["to"] == "qualified"


def test_broken_chain_duplicates_and_strangers_are_caught() -> None:
    history = [
        entry(None, "lead", "created"),
        entry("lead", "qualified", "a"),
        entry("proposal", "negotiation", "a"),  # leaves a stage the deal was not in; same reason twice
        entry("negotiation", "lead", "nobody-sent-this"),
    ]
    evs = [
        event("lead", "qualified", "a"),
        event("proposal", "negotiation", "a"),
        event("negotiation", "lead", "x"),
    ]
    f = checks.check_moves([move("a", 200)], {"d1": history}, {"d1": evs})
    assert violations(f) == [
        "chain",
        "duplicate_event",
        "duplicate_history_reason",
        "event_mismatch",
        "unexplained_history_entry",
    ]


def test_events_must_be_one_per_move() -> None:
    history = [entry(None, "lead", "created"), entry("lead", "qualified", "a")]
    f = checks.check_moves([move("a", 200)], {"d1": history}, {"d1": []})
    assert violations(f) == ["events_per_move"]


def test_no_answer_may_land_and_a_500_is_a_violation() -> None:
    history = [entry(None, "lead", "created"), entry("lead", "qualified", "na")]
    evs = [event("lead", "qualified", "na")]
    f = checks.check_moves([move("na", None), move("boom", 500)], {"d1": history}, {"d1": evs})
    assert violations(f) == ["server_error"]
    assert f.figures["moves"]["no_answer_landed"] == 1


def test_deal_state_drift_and_a_running_closed_deal() -> None:
    rows: dict[str, dict[str, Any]] = {
        "ok": {"stage": "proposal", "stage_changed_at": T},
        "drift": {"stage": "proposal", "stage_changed_at": T},
        "sa": {"stage": "lead", "stage_changed_at": T},
        "won": {"stage": "won", "stage_changed_at": T},
        "val": {"stage": "lead", "stage_changed_at": T, "value_usd": 12000.0},
    }
    states = {
        "ok": {"stage": "proposal", "stage_entered_at": "2026-12-01T09:00:00.0004Z"},
        "drift": {"stage": "negotiation", "stage_entered_at": T},
        "sa": {"stage": "lead", "stage_entered_at": T},
        "won": {"stage": "won", "stage_entered_at": T},
        "val": {"stage": "lead", "stage_entered_at": T},
    }
    vis: dict[str, dict[str, Any]] = {
        "ok": {"DealStage": "proposal", "StageEnteredAt": T},
        "drift": {"DealStage": "proposal", "StageEnteredAt": T},
        "sa": {"DealStage": "qualified", "StageEnteredAt": T},
        "won": {"DealStage": "won", "StageEnteredAt": T},
        "val": {"DealStage": "lead", "StageEnteredAt": T, "DealValue": 9000.0},
    }
    drift = checks.check_deal_state(rows, states, vis)
    assert sorted(d["deal"] for d in drift) == ["drift", "sa", "val", "won"]


def test_io_state_drift() -> None:
    unit = {"id": "u1", "delivered_impressions": 500, "status": "aired"}
    rows = {
        "io1": {"status": "measuring", "ad_units": [unit]},
        "io2": {"status": "measuring", "ad_units": [unit]},
    }
    snaps = {
        "io1": {"status": "measuring", "units": [unit]},
        "io2": {"status": "measuring", "units": [{**unit, "delivered_impressions": 400}]},
    }
    vis = {"io1": {"IoStatus": "measuring"}, "io2": {"IoStatus": "live"}}
    drift = checks.check_io_state(rows, snaps, vis)
    assert [d["io"] for d in drift] == ["io2"]
    assert "400" in drift[0]["detail"] and "IoStatus says live" in drift[0]["detail"]


def delivery(tag: str, status: int | None, figure: int) -> Request:
    r = Request("delivery", "v1", tag, "io1", "api_kill", unit="u1", impressions=figure)
    r.attempts.append(Attempt(1.0, 1.1, status))
    return r


def test_deliveries_ghost_lost_and_final_figure() -> None:
    reqs = [delivery("a", 200, 100), delivery("b", 503, 200), delivery("c", 200, 300)]
    evs = {"io1": [{"payload": {"source": "a"}}, {"payload": {"source": "b"}}]}
    rows = {"io1": {"ad_units": [{"id": "u1", "delivered_impressions": 200}]}}
    f = checks.check_deliveries(reqs, rows, evs)
    assert violations(f) == ["delivery_figure", "ghost_delivery", "lost_2xx_delivery"]


def test_import_counts_must_be_exact() -> None:
    final = {
        "status": "completed_with_errors",
        "rows_total": 12,
        "rows_inserted": 10,
        "rows_updated": 0,
        "rows_failed": 2,
    }
    ids = [f"p-imp-{i}" for i in range(10)]
    assert checks.check_import(final, 10, 2, ids, "p-imp-").violations == []
    f = checks.check_import(
        {**final, "rows_inserted": 9, "rows_updated": 1}, 10, 2, ids + ["p-imp-3"], "p-imp-"
    )
    assert violations(f) == ["import_counts_exact", "import_duplicate_rows"]
    assert violations(checks.check_import(None, 10, 2, ids, "p-imp-")) == ["import_finished"]


def test_recovery_is_measured_from_the_faults_end() -> None:
    w = FaultWindow("freeze", t_inject=10.0, t_end=35.0, t_quiet_end=50.0)
    reqs = []
    for client, times in {"c1": [9.0, 36.0, 37.0], "c2": [9.5, 40.0]}.items():
        for t in times:
            r = Request("move", client, f"{client}-{t}", "d", "freeze")
            r.attempts.append(Attempt(t - 0.05, t, 200))
            reqs.append(r)
    fig = checks.fault_figures(reqs, w)
    assert fig["recovery_max_s"] == 5.0 and fig["recovery_median_s"] == 3.0
    assert fig["longest_2xx_gap_s"] == 30.5  # c2: from 9.5 to 40.0
    assert fig["not_recovered_in_quiet"] == []
    rows = report.fault_rows(reqs, [w], checks.Findings())
    assert "freeze" in report.table(rows)


def test_a_503_steers_the_client_to_another_stage() -> None:
    assert next_stage("lead", set()) == "qualified"
    assert next_stage("lead", {"qualified"}) == "proposal"
    assert next_stage("negotiation", set()) == "lead"


def test_the_import_file_has_the_promised_rows() -> None:
    data, total = shows_csv("p", 50, 3)
    lines = data.decode().splitlines()
    assert total == 53 and len(lines) == 54
    assert sum("lots" in line for line in lines) == 3
