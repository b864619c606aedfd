"""The fault suite's checks on hand-made records: each must catch what it is there to catch.

Pure and fast (no process), so `make test` runs these; the suite itself runs with `make faults`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.faults import checks, report
from tests.faults.checks import FaultWindow
from tests.faults.hooks import Endpoint, Hit
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


# ---------------------------------------------------------------------------- webhooks


def hook_event(
    eid: int, entity: str = "d1", type_: str = "deal.stage_changed", t: float = 100.0
) -> dict[str, Any]:
    at = datetime.fromtimestamp(t, UTC).isoformat()
    return {"id": str(eid), "type": type_, "entity_id": entity, "occurred_at": at}


def hit(
    eid: int, *, answered: int | None = 200, hid: str | None = None, entity: str = "d1", at: float = 101.0
) -> Hit:
    return Hit("all", hid or f"msg_{eid}", eid, "deal.stage_changed", entity, at, answered, True)


def hook_endpoint(*hits: Hit, types: tuple[str, ...] = ("*",)) -> Endpoint:
    ep = Endpoint("all", list(types), flaky=False, id="ep1")
    ep.hits = list(hits)
    return ep


def delivered(*eids: int, status: str = "delivered") -> dict[str, list[dict[str, Any]]]:
    return {"ep1": [{"id": f"dl{e}", "event_id": e, "status": status} for e in eids]}


def test_webhooks_every_event_once_in_order_pass_and_give_figures() -> None:
    events = [hook_event(1), hook_event(2), hook_event(3, entity="d2")]
    # A 500 first, then the same webhook-id accepted; a duplicate after acceptance is allowed.
    ep = hook_endpoint(hit(1, answered=500), hit(1), hit(3, entity="d2"), hit(2), hit(2))
    f = checks.check_webhooks([ep], events, 0, delivered(1, 2, 3))
    assert violations(f) == []
    fig = f.figures["webhooks"]["all"]
    assert (fig["expected"], fig["accepted"], fig["failed_on_purpose"], fig["duplicates"]) == (3, 3, 1, 1)
    assert fig["lag_s"]["all"]["p50"] == 1.0


def test_webhooks_an_event_never_accepted_is_missing() -> None:
    events = [hook_event(1), hook_event(2)]
    ep = hook_endpoint(hit(1), hit(2, answered=500), hit(2, answered=None))
    f = checks.check_webhooks([ep], events, 0, delivered(1))
    assert violations(f) == ["webhook_missing"]
    assert f.violations[0]["event_id"] == 2 and f.violations[0]["attempts_seen"] == 2


def test_webhooks_events_before_the_endpoint_or_unsubscribed_are_not_expected_and_must_not_arrive() -> None:
    events = [hook_event(1), hook_event(2, type_="io.delivery_reported", entity="io1"), hook_event(3)]
    ep = hook_endpoint(hit(3), hit(2, entity="io1"), types=("deal.stage_changed",))
    f = checks.check_webhooks([ep], events, 1, delivered(3))
    assert violations(f) == ["webhook_unexpected"]
    assert f.figures["webhooks"]["all"]["expected"] == 1


def test_webhooks_a_second_webhook_id_for_one_event_is_caught() -> None:
    ep = hook_endpoint(hit(1, answered=500, hid="msg_a"), hit(1, hid="msg_b"))
    f = checks.check_webhooks([ep], [hook_event(1)], 0, delivered(1))
    assert violations(f) == ["webhook_id_changed"]


def test_webhooks_one_entity_out_of_order_is_caught_other_entities_may_interleave() -> None:
    events = [hook_event(1), hook_event(2, entity="d2"), hook_event(3), hook_event(4, entity="d2")]
    ok = hook_endpoint(hit(2, entity="d2"), hit(1), hit(4, entity="d2"), hit(3))
    assert violations(checks.check_webhooks([ok], events, 0, delivered(1, 2, 3, 4))) == []
    bad = hook_endpoint(hit(3), hit(1), hit(2, entity="d2"), hit(4, entity="d2"))
    f = checks.check_webhooks([bad], events, 0, delivered(1, 2, 3, 4))
    assert violations(f) == ["webhook_out_of_order"]
    assert (f.violations[0]["first"], f.violations[0]["then"]) == (3, 1)


def test_webhooks_pending_failed_unsigned_and_unseen_deliveries_are_caught() -> None:
    unsigned = Hit("all", "msg_9", 9, "deal.stage_changed", "d1", 101.0, 500, False, "signature: no match")
    ep = hook_endpoint(hit(1), unsigned)
    rows = {
        "ep1": [
            {"id": "a", "event_id": 1, "status": "delivered"},
            {"id": "b", "event_id": 2, "status": "pending", "attempts": 3},
            {"id": "c", "event_id": 3, "status": "failed"},
            {"id": "d", "event_id": 4, "status": "delivered"},
        ]
    }
    f = checks.check_webhooks([ep], [hook_event(1)], 0, rows)
    assert violations(f) == sorted(
        ["webhook_bad_request", "webhook_stuck", "webhook_failed", "webhook_delivered_unseen"]
    )


def test_webhook_lag_is_grouped_by_the_fault_going_on_when_the_event_happened() -> None:
    windows = [FaultWindow("baseline", 0, 0, 10), FaultWindow("temporal_kill", 10, 20, 30)]
    events = [hook_event(1, t=1005.0), hook_event(2, t=1015.0)]
    ep = hook_endpoint(hit(1, at=1006.0), hit(2, at=1040.0))
    f = checks.check_webhooks([ep], events, 0, delivered(1, 2), windows, wall0=1000.0)
    lag = f.figures["webhooks"]["all"]["lag_s"]
    assert lag["baseline"]["max"] == 1.0 and lag["temporal_kill"]["max"] == 25.0
    rows = report.fault_rows([], windows, f)
    assert [r["webhook_lag_p99_s"] for r in rows] == [1.0, 25.0]


def test_webhooks_one_webhook_id_for_two_events_and_a_wrong_body_are_caught() -> None:
    events = [hook_event(1), hook_event(2)]
    ep = hook_endpoint(hit(1, hid="msg_x"), hit(2, hid="msg_x"))
    f = checks.check_webhooks([ep], events, 0, delivered(1, 2))
    assert violations(f) == ["webhook_id_shared"]
    wrong = hit(1)
    wrong.payload = {"from": "lead", "to": "won"}
    events[0]["payload"] = {"from": "lead", "to": "qualified"}
    f = checks.check_webhooks([hook_endpoint(wrong)], events[:1], 0, delivered(1))
    assert violations(f) == ["webhook_body_mismatch"]
