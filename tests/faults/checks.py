"""The invariants, checked from what the API and Temporal show once everything is quiet.

Pure functions over the recorded requests and what was read back, so each check can be tested
on hand-made data (tests/faults/test_checks.py) without starting anything.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.faults.hooks import Endpoint, Hit
from tests.faults.load import Request


@dataclass
class FaultWindow:
    """One injected fault: when it began, when the process was back, when its quiet period ended."""

    name: str
    t_inject: float
    t_end: float
    t_quiet_end: float
    notes: list[str] = field(default_factory=list)


@dataclass
class Findings:
    """What the checks found: violations fail the run, notes only inform."""

    violations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def violation(self, check: str, **details: Any) -> None:
        """Records one violation of the contract."""
        self.violations.append({"check": check, **details})

    def note(self, check: str, **details: Any) -> None:
        """Records something worth knowing that breaks no rule."""
        self.notes.append({"check": check, **details})

    def merge(self, other: Findings) -> None:
        """Adds another check's findings to these."""
        self.violations += other.violations
        self.notes += other.notes
        self.figures.update(other.figures)


def _ts(v: Any) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


def same_instant(a: Any, b: Any, tolerance_s: float = 0.001) -> bool:
    """True when two timestamps (ISO strings or datetimes) are the same instant to the millisecond."""
    x, y = _ts(a), _ts(b)
    if x is None or y is None:
        return x is y
    return abs((x - y).total_seconds()) <= tolerance_s


# ---------------------------------------------------------------------------- moves


def check_moves(
    requests: list[Request],
    histories: dict[str, list[dict[str, Any]]],
    events: dict[str, list[dict[str, Any]]],
    wall0: float | None = None,
) -> Findings:
    """Every 2xx move in its deal's history once, no 503'd move ever, one chain, one event per move.

    `histories`: deal id -> the deal's `history` as GET /api/v1/deals/{id} shows it;
    `events`: deal id -> its `deal.stage_changed` events, oldest first.
    """
    f = Findings()
    moves = [r for r in requests if r.kind == "move"]
    by_tag = {r.tag: r for r in moves}
    landed: dict[str, list[tuple[str, int, dict[str, Any]]]] = defaultdict(list)
    for deal_id, history in histories.items():
        for i, h in enumerate(history):
            if h.get("reason") in by_tag:
                landed[h["reason"]].append((deal_id, i, h))
        # One chain: created first, then each entry leaves the stage the one before entered.
        if not history or history[0].get("from") is not None:
            f.violation(
                "chain", deal=deal_id, detail="the first entry is not the creation", first=history[:1]
            )
        for i in range(1, len(history)):
            if history[i].get("from") != history[i - 1].get("to"):
                f.violation(
                    "chain",
                    deal=deal_id,
                    index=i,
                    detail=f"entry {i} leaves {history[i].get('from')} but entry {i - 1} entered "
                    f"{history[i - 1].get('to')}",
                    entries=history[i - 1 : i + 1],
                )
        reasons = Counter(h.get("reason") for h in history[1:])
        for reason, n in reasons.items():
            if n > 1:
                f.violation("duplicate_history_reason", deal=deal_id, reason=reason, count=n)
        for h in history[1:]:
            if h.get("reason") not in by_tag:
                f.violation("unexplained_history_entry", deal=deal_id, entry=h)
        # One deal.stage_changed per move, the same moves in the same order.
        evs = events.get(deal_id, [])
        moved = history[1:]
        if len(evs) != len(moved):
            f.violation(
                "events_per_move",
                deal=deal_id,
                moves=len(moved),
                events=len(evs),
                detail="the number of deal.stage_changed events differs from the moves in the history",
            )
        ev_reasons = Counter((e.get("payload") or {}).get("reason") for e in evs)
        for reason, n in ev_reasons.items():
            if n > 1:
                f.violation("duplicate_event", deal=deal_id, reason=reason, count=n)
        for i, (h, e) in enumerate(zip(moved, evs, strict=False)):
            p = e.get("payload") or {}
            if (p.get("from"), p.get("to")) != (h.get("from"), h.get("to")) or (
                "reason" in p and p.get("reason") != h.get("reason")
            ):
                f.violation(
                    "event_mismatch",
                    deal=deal_id,
                    index=i + 1,
                    entry=h,
                    event=e,
                    detail="the n-th event does not describe the n-th move",
                )
                break

    counts: Counter[str] = Counter()
    for r in moves:
        got = landed.get(r.tag, [])
        counts[r.outcome] += 1
        if r.outcome == "2xx":
            if r.applied:
                if not got:
                    f.violation(
                        "lost_2xx_move",
                        tag=r.tag,
                        deal=r.target,
                        stage=r.stage,
                        phase=r.phase,
                        answered_at=r.answered_at,
                        detail="answered 2xx with the move in the answer, absent from the history now",
                    )
            elif got:
                counts["2xx_noop_but_landed"] += 1
                f.note("noop_answer_then_landed", tag=r.tag, deal=r.target, phase=r.phase)
            else:
                counts["2xx_noop"] += 1
                f.note(
                    "noop_2xx",
                    tag=r.tag,
                    deal=r.target,
                    stage=r.stage,
                    believed=r.believed,
                    phase=r.phase,
                    detail="2xx without a move: the deal was already there (something the client "
                    "was not told about had moved it)",
                )
        elif r.outcome == "503":
            if got:
                deal_id, i, h = got[0]
                at = _ts(h.get("at"))
                f.violation(
                    "ghost_move",
                    tag=r.tag,
                    deal=deal_id,
                    phase=r.phase,
                    stage=r.stage,
                    answered_503_at=r.answered_at,
                    landed_at_s=round(at.timestamp() - wall0, 2) if at and wall0 else None,
                    landed_as=h,
                    history_index=i,
                    detail="answered 503 (not applied, never will be) and in the history anyway",
                )
        elif r.outcome == "no_answer":
            counts["no_answer_landed" if got else "no_answer_not_landed"] += 1
        else:
            counts[f"status_{r.final}"] += 1
            if r.final is not None and r.final >= 500:
                f.violation(
                    "server_error",
                    tag=r.tag,
                    deal=r.target,
                    status=r.final,
                    phase=r.phase,
                    detail=r.attempts[-1].detail,
                )
            else:
                f.note("unexpected_status", tag=r.tag, status=r.final, detail=r.attempts[-1].detail)
    f.figures["moves"] = dict(counts)
    return f


# ---------------------------------------------------------------------------- state agreement


def check_deal_state(
    rows: Mapping[str, Mapping[str, Any]],
    states: Mapping[str, Mapping[str, Any] | None],
    visibility: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Row = workflow state = search attributes for every deal; a closed deal has no running workflow.

    `rows`: deal id -> GET /api/v1/deals/{id}; `states`: deal id -> the `state` query (None: no
    running workflow); `visibility`: deal id -> {"DealStage", "StageEnteredAt"} of its running run.
    """
    drift = []
    for deal_id, row in rows.items():
        stage, at = row["stage"], row["stage_changed_at"]
        st, vis = states.get(deal_id), visibility.get(deal_id)
        if stage in ("won", "lost"):
            if st is not None or vis is not None:
                drift.append(
                    {"deal": deal_id, "row": [stage, at], "detail": "closed deal with a running workflow"}
                )
            continue
        problems = []
        if st is None:
            problems.append("no running workflow answers the state query")
        elif st["stage"] != stage or not same_instant(st["stage_entered_at"], at):
            problems.append(f"workflow says {st['stage']} since {st['stage_entered_at']}")
        if vis is None:
            problems.append("no running workflow in visibility")
        else:
            if vis.get("DealStage") != stage or not same_instant(vis.get("StageEnteredAt"), at):
                problems.append(
                    f"search attributes say {vis.get('DealStage')} since {vis.get('StageEnteredAt')}"
                )
            for name, want in (
                ("DealValue", row.get("value_usd")),
                ("AdvertiserId", row.get("advertiser_id")),
                ("ShowId", row.get("show_id")),
            ):
                if name in vis and want is not None and vis[name] != want:
                    problems.append(f"{name} says {vis[name]!r}, the row {want!r}")
        if problems:
            drift.append({"deal": deal_id, "row": [stage, at], "detail": "; ".join(problems)})
    return drift


def check_io_state(
    rows: Mapping[str, Mapping[str, Any]],
    snapshots: Mapping[str, Mapping[str, Any] | None],
    visibility: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Row = workflow snapshot = IoStatus for every IO (status, and each unit's figure and status)."""
    drift = []
    for io_id, row in rows.items():
        snap, vis = snapshots.get(io_id), visibility.get(io_id)
        problems = []
        if snap is None:
            problems.append("no running workflow answers the snapshot query")
        else:
            if snap["status"] != row["status"]:
                problems.append(f"workflow says {snap['status']}")
            units = {u["id"]: u for u in snap.get("units", [])}
            for u in row.get("ad_units", []):
                s = units.get(u["id"])
                if s is None:
                    problems.append(f"unit {u['id']} unknown to the workflow")
                elif (s["delivered_impressions"], s["status"]) != (u["delivered_impressions"], u["status"]):
                    problems.append(
                        f"unit {u['id']}: row {u['delivered_impressions']} {u['status']}, "
                        f"workflow {s['delivered_impressions']} {s['status']}"
                    )
        if vis is None:
            problems.append("no running workflow in visibility")
        elif vis.get("IoStatus") != row["status"]:
            problems.append(f"IoStatus says {vis.get('IoStatus')}")
        if problems:
            drift.append({"io": io_id, "row": row["status"], "detail": "; ".join(problems)})
    return drift


# ---------------------------------------------------------------------------- deliveries


def check_deliveries(
    requests: list[Request], rows: dict[str, dict[str, Any]], events: dict[str, list[dict[str, Any]]]
) -> Findings:
    """Every 2xx delivery landed once, no 503'd one ever, and each unit shows the latest landed figure.

    `rows`: IO id -> GET /api/v1/io/{id}; `events`: IO id -> its `io.delivery_reported` events.
    """
    f = Findings()
    reports = [r for r in requests if r.kind == "delivery"]
    sources: Counter[str] = Counter()
    for evs in events.values():
        for e in evs:
            sources[str((e.get("payload") or {}).get("source"))] += 1
    counts: Counter[str] = Counter()
    expected: dict[str, tuple[int, str]] = {}
    for r in reports:
        n = sources.get(r.tag, 0)
        counts[r.outcome] += 1
        if n > 1:
            f.violation("duplicate_delivery_event", tag=r.tag, io=r.target, count=n)
        if r.outcome == "2xx" and n == 0:
            f.violation(
                "lost_2xx_delivery",
                tag=r.tag,
                io=r.target,
                unit=r.unit,
                impressions=r.impressions,
                phase=r.phase,
            )
        if r.outcome == "503" and n:
            f.violation(
                "ghost_delivery",
                tag=r.tag,
                io=r.target,
                unit=r.unit,
                impressions=r.impressions,
                phase=r.phase,
                answered_503_at=r.answered_at,
            )
        if r.outcome == "no_answer":
            counts["no_answer_landed" if n else "no_answer_not_landed"] += 1
        if r.outcome not in ("2xx", "503", "no_answer") and (r.final or 0) >= 500:
            f.violation("server_error", tag=r.tag, io=r.target, status=r.final, detail=r.attempts[-1].detail)
        if n and r.outcome != "503" and r.unit is not None and r.impressions is not None:
            # Figures only rise, so the highest landed one is the last one sent that landed
            # (a 503'd one that landed is a ghost: the unit must not show it).
            if r.unit not in expected or r.impressions > expected[r.unit][0]:
                expected[r.unit] = (r.impressions, r.tag)
    for io_id, row in rows.items():
        for u in row.get("ad_units", []):
            want = expected.get(u["id"])
            if want is not None and u["delivered_impressions"] != want[0]:
                f.violation(
                    "delivery_figure",
                    io=io_id,
                    unit=u["id"],
                    shown=u["delivered_impressions"],
                    expected=want[0],
                    last_landed_tag=want[1],
                )
    f.figures["deliveries"] = dict(counts)
    return f


# ---------------------------------------------------------------------------- import


def check_import(
    final: dict[str, Any] | None, rows: int, bad_rows: int, imported_ids: list[str], prefix: str
) -> Findings:
    """Exact counts (inserted + updated + failed = rows) and every good row present exactly once."""
    f = Findings()
    if final is None:
        f.violation("import_finished", detail="the import did not finish within the suite's timeout")
        return f
    total = rows + bad_rows
    got = {
        k: final.get(k)
        for k in ("status", "rows_total", "rows_processed", "rows_inserted", "rows_updated", "rows_failed")
    }
    f.figures["import"] = got
    want_status = "completed_with_errors" if bad_rows else "completed"
    if final.get("status") != want_status:
        f.violation("import_status", expected=want_status, got=final.get("status"), error=final.get("error"))
    ins, upd, fail = (int(final.get(k) or 0) for k in ("rows_inserted", "rows_updated", "rows_failed"))
    if ins + upd + fail != total or final.get("rows_total") not in (None, total):
        f.violation("import_counts", expected_rows=total, **got)
    if (ins, upd, fail) != (rows, 0, bad_rows):
        f.violation("import_counts_exact", expected=[rows, 0, bad_rows], got=[ins, upd, fail])
    mine = [x for x in imported_ids if x.startswith(prefix)]
    dup = [x for x, n in Counter(mine).items() if n > 1]
    if dup:
        f.violation("import_duplicate_rows", count=len(dup), examples=dup[:5])
    if len(set(mine)) != rows:
        f.violation("import_rows_present", expected=rows, found=len(set(mine)))
    return f


# ---------------------------------------------------------------------------- webhooks


def phase_at(t: float, windows: list[FaultWindow]) -> str:
    """The fault (or baseline) whose window, quiet period included, holds run time `t`."""
    for w in windows:
        if t <= w.t_quiet_end:
            return w.name
    return "drain"


def check_webhooks(
    endpoints: list[Endpoint],
    events: list[dict[str, Any]],
    after_event_id: int,
    deliveries: Mapping[str, list[dict[str, Any]]],
    windows: list[FaultWindow] | None = None,
    wall0: float | None = None,
) -> Findings:
    """At least once, signed, one webhook-id per event, in order per entity, nothing left pending.

    `events`: the tenant's events as GET /api/v1/events shows them; each one after
    `after_event_id` (the newest when the endpoints were created) that an endpoint subscribes to
    must have reached its receiver and been answered 200. `deliveries`: endpoint id -> its
    deliveries as the API lists them, read once everything settled.
    """
    f = Findings()
    windows = windows or []
    figures: dict[str, Any] = {}
    for ep in endpoints:
        expected = {
            int(e["id"]): e for e in events if int(e["id"]) > after_event_id and ep.wants(str(e["type"]))
        }
        ids: defaultdict[int, set[str]] = defaultdict(set)
        events_of_id: defaultdict[str, set[int]] = defaultdict(set)
        accepted: dict[int, tuple[int, Hit]] = {}  # event id -> (arrival index, the first 200)
        duplicates = injected = 0
        for i, h in enumerate(ep.hits):
            if not h.signature_ok or h.event_id is None:
                f.violation(
                    "webhook_bad_request", endpoint=ep.name, webhook_id=h.webhook_id, problem=h.problem
                )
                continue
            if h.event_id not in expected:
                f.violation(
                    "webhook_unexpected",
                    endpoint=ep.name,
                    event_id=h.event_id,
                    event_type=h.event_type,
                    detail="not an event of this endpoint (unsubscribed type, or before it was created)",
                )
                continue
            ids[h.event_id].add(h.webhook_id)
            events_of_id[h.webhook_id].add(h.event_id)
            if h.payload is not None and h.payload != expected[h.event_id].get("payload"):
                f.violation(
                    "webhook_body_mismatch",
                    endpoint=ep.name,
                    event_id=h.event_id,
                    detail="the body's payload is not the event's as the events API shows it",
                )
            if h.answered != 200:
                injected += 1
            elif h.event_id in accepted:
                duplicates += 1
            else:
                accepted[h.event_id] = (i, h)
        for eid, hids in ids.items():
            if len(hids) > 1:
                f.violation("webhook_id_changed", endpoint=ep.name, event_id=eid, webhook_ids=sorted(hids))
        for hid, eids in events_of_id.items():
            if len(eids) > 1:
                # A receiver that drops a webhook-id it has seen would lose all but one of them.
                f.violation("webhook_id_shared", endpoint=ep.name, webhook_id=hid, event_ids=sorted(eids))
        for eid in sorted(set(expected) - set(accepted)):
            e = expected[eid]
            t = _ts(e.get("occurred_at"))
            phase = phase_at(t.timestamp() - wall0, windows) if t and wall0 is not None else None
            f.violation(
                "webhook_missing",
                endpoint=ep.name,
                event_id=eid,
                event_type=e["type"],
                entity_id=e.get("entity_id"),
                occurred_at=e.get("occurred_at"),
                phase=phase,
                attempts_seen=len([h for h in ep.hits if h.event_id == eid]),
            )
        # Order per entity: the events of one entity were first accepted in the order they happened.
        by_entity: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        for eid, (i, _h) in accepted.items():
            by_entity[str(expected[eid].get("entity_id"))].append((i, eid))
        for entity, seq in by_entity.items():
            order = [eid for _, eid in sorted(seq)]
            for a, b in zip(order, order[1:], strict=False):
                if b < a:
                    f.violation("webhook_out_of_order", endpoint=ep.name, entity_id=entity, first=a, then=b)
                    break
        rows = deliveries.get(ep.id, [])
        status = Counter(str(d.get("status")) for d in rows)
        for d in rows:
            if d.get("status") == "pending":
                f.violation(
                    "webhook_stuck",
                    endpoint=ep.name,
                    delivery_id=d.get("id"),
                    event_id=d.get("event_id"),
                    attempts=d.get("attempts"),
                    last_error=d.get("last_error"),
                )
            elif d.get("status") == "failed":
                f.violation(
                    "webhook_failed",
                    endpoint=ep.name,
                    event_id=d.get("event_id"),
                    last_error=d.get("last_error"),
                )
            elif d.get("status") == "delivered" and int(d.get("event_id") or 0) not in accepted:
                f.violation("webhook_delivered_unseen", endpoint=ep.name, event_id=d.get("event_id"))
        lags: defaultdict[str, list[float]] = defaultdict(list)
        for eid, (_, h) in accepted.items():
            t = _ts(expected[eid].get("occurred_at"))
            if t is None:
                continue
            lag = h.at - t.timestamp()
            lags["all"].append(lag)
            if wall0 is not None:
                lags[phase_at(t.timestamp() - wall0, windows)].append(lag)
        figures[ep.name] = {
            "expected": len(expected),
            "accepted": len(accepted),
            "requests": len(ep.hits),
            "failed_on_purpose": injected,
            "duplicates": duplicates,
            "deliveries": dict(status),
            "lag_s": {
                k: {"p50": _round(_pct(v, 0.5)), "p99": _round(_pct(v, 0.99)), "max": _round(max(v))}
                for k, v in lags.items()
            },
        }
    f.figures["webhooks"] = figures
    return f


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


# ---------------------------------------------------------------------------- per-fault figures


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fault_figures(requests: list[Request], window: FaultWindow, kind: str = "move") -> dict[str, Any]:
    """The figures of one fault's row: outcomes, recovery after it, the longest wait for a 2xx."""
    mine = [r for r in requests if r.kind == kind and r.phase == window.name]
    outcomes = Counter(r.outcome for r in mine)
    lat = [a.latency for r in mine if r.outcome == "2xx" for a in r.attempts[-1:]]
    clients = sorted({r.client for r in requests if r.kind == kind})
    recovery: list[float] = []
    not_recovered = []
    gaps: list[float] = []
    for c in clients:
        ok = sorted(
            t
            for r in requests
            if r.kind == kind and r.client == c and r.outcome == "2xx"
            for t in [r.answered_at]
            if t is not None
        )
        after = [t for t in ok if t >= window.t_end]
        if after and after[0] <= window.t_quiet_end:
            recovery.append(after[0] - window.t_end)
        else:
            not_recovered.append(c)
        before = [t for t in ok if t < window.t_inject]
        inside = [t for t in ok if window.t_inject <= t <= window.t_quiet_end]
        ends = (before[-1:] or [window.t_inject]) + inside + [window.t_quiet_end]
        gaps.append(max(b - a for a, b in zip(ends, ends[1:], strict=False)))
    return {
        "sent": len(mine),
        "2xx": outcomes.get("2xx", 0),
        "503": outcomes.get("503", 0),
        "no_answer": outcomes.get("no_answer", 0),
        "other": outcomes.get("other", 0),
        # By when the attempt failed, so a request sent just before the fault counts here.
        "no_answer_attempts": sum(
            1
            for r in requests
            if r.kind == kind
            for a in r.attempts
            if a.status is None and window.t_inject <= a.t1 <= window.t_quiet_end
        ),
        "answered_after_retry": sum(1 for r in mine if len(r.attempts) > 1 and r.final is not None),
        "recovery_max_s": round(max(recovery), 2) if recovery else None,
        "recovery_median_s": round(statistics.median(recovery), 2) if recovery else None,
        "not_recovered_in_quiet": not_recovered,
        "longest_2xx_gap_s": round(max(gaps), 2) if gaps else None,
        "latency_p50_ms": round(1000 * p, 1) if (p := _pct(lat, 0.5)) is not None else None,
        "latency_p99_ms": round(1000 * p, 1) if (p := _pct(lat, 0.99)) is not None else None,
    }
