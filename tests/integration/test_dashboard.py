"""GET /api/v1/dashboard: every card computed from real rows, per tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from db.engine import SessionMaker, tenant_tx
from db.models import AdUnit, Advertiser, DealStageHistory, EtlImport, IoBooking, Show
from db.tenants import NewTenant
from domain.stages import Stage
from tests.conftest import Stack
from tests.helpers.factories import add_deal, make_advertiser, make_show
from tests.helpers.matching import matches, recalculate

NOW = datetime.now(UTC)
TODAY = NOW.date()


async def _io(
    sm: SessionMaker,
    tenant: uuid.UUID,
    campaign: uuid.UUID,
    show: uuid.UUID,
    status: str,
    units: list[dict[str, Any]],
) -> uuid.UUID:
    async with tenant_tx(sm=sm, tenant_id=tenant) as s:
        io = IoBooking(tenant_id=tenant, campaign_id=campaign, status=status, measurement_window_days=30)
        s.add(io)
        await s.flush()
        for u in units:
            s.add(
                AdUnit(
                    tenant_id=tenant,
                    io_id=io.id,
                    show_id=show,
                    placement="mid_roll",
                    format="host_read",
                    insertion="dynamic",
                    duration_s=60,
                    pricing_model="cpm",
                    cpm_usd=Decimal(25),
                    **u,
                )
            )
    return io.id


async def _seed(sm: SessionMaker, tenant: uuid.UUID) -> dict[str, Any]:
    async with tenant_tx(sm=sm, tenant_id=tenant) as s:
        adv = Advertiser(tenant_id=tenant, name="Acme Coffee")
        show = Show(tenant_id=tenant, name="The Daily Grind", avg_downloads=40000)
        s.add_all([adv, show])
        await s.flush()
        adv_id, show_id = adv.id, show.id
    ids: dict[str, Any] = {"advertiser": adv_id, "show": show_id}
    # name, value, stage, days since creation, days since the last move (None: created so)
    deals = [
        ("Fresh lead", 1000, Stage.LEAD, 2, None),
        ("Forgotten lead", 3000, Stage.LEAD, 40, None),
        ("Big negotiation", 20000, Stage.NEGOTIATION, 1, None),
        ("Spring flight", 10000, Stage.WON, 50, 20),
        ("Summer flight", 5000, Stage.WON, 40, 30),
        ("Lost pitch", 7000, Stage.LOST, 15, 5),
        ("Old win", 9000, Stage.WON, 300, 200),  # closed long before the 90-day window
    ]
    made = {}
    for name, value, stage, created, changed in deals:
        made[name] = await add_deal(
            sm,
            tenant,
            adv_id,
            name,
            value,
            stage,
            created=NOW - timedelta(days=created),
            changed=NOW - timedelta(days=changed) if changed is not None else None,
        )
    ids["stalled"], ids["won"] = made["Forgotten lead"], made["Spring flight"]
    aired = TODAY - timedelta(days=10)  # 11 of 30 measurement days gone: 3,666 of 10,000 expected
    ids["behind"] = await _io(
        sm,
        tenant,
        ids["won"],
        show_id,
        "live",
        [
            {"air_date": aired, "status": "aired", "impressions_goal": 10000, "delivered_impressions": 1000},
            {"air_date": TODAY + timedelta(days=3), "status": "scheduled", "impressions_goal": 5000},
            {"air_date": TODAY + timedelta(days=20), "status": "scheduled", "impressions_goal": 5000},
        ],
    )
    await _io(  # on pace: not flagged
        sm,
        tenant,
        ids["won"],
        show_id,
        "live",
        [{"air_date": aired, "status": "aired", "impressions_goal": 10000, "delivered_impressions": 5000}],
    )
    async with tenant_tx(sm=sm, tenant_id=tenant) as s:
        s.add(EtlImport(tenant_id=tenant, kind="shows", filename="shows.csv", status="completed"))
    return ids


async def test_the_cards_add_up_from_the_tenants_rows(stack: Stack, tenant: NewTenant) -> None:
    ids = await _seed(stack.sm, tenant.id)
    r = await stack.http.get("/api/v1/dashboard", headers=stack.auth(tenant))
    assert r.status_code == 200, r.text
    d = r.json()

    by_stage = {s["stage"]: s for s in d["pipeline"]}
    assert list(by_stage) == ["lead", "qualified", "proposal", "negotiation", "won", "lost"]
    assert by_stage["lead"] == {"stage": "lead", "count": 2, "value_usd": 4000.0, "weighted_value_usd": 400.0}
    assert by_stage["qualified"]["count"] == 0 and by_stage["qualified"]["value_usd"] == 0.0
    assert by_stage["negotiation"]["weighted_value_usd"] == 15000.0
    assert by_stage["won"]["count"] == 3 and by_stage["won"]["value_usd"] == 24000.0
    assert d["open_pipeline"] == {"count": 3, "value_usd": 24000.0, "weighted_value_usd": 15400.0}

    # Inside 90 days: two wins (30 and 10 days from creation to win), one loss; the old win is out.
    assert d["win_rate"] == {"won": 2, "lost": 1, "rate": 0.6667, "avg_days_to_close": 20.0}

    assert d["stalled"]["count"] == 1
    (stalled,) = d["stalled"]["items"]
    assert stalled["id"] == str(ids["stalled"]) and stalled["name"] == "Forgotten lead"
    assert stalled["days_in_stage"] == 40 and stalled["stall_limit_days"] == 14
    assert stalled["advertiser_name"] == "Acme Coffee"

    assert d["upcoming_air_dates"]["count"] == 1
    (air,) = d["upcoming_air_dates"]["items"]
    assert air["air_date"] == (TODAY + timedelta(days=3)).isoformat()
    assert air["io_id"] == str(ids["behind"]) and air["show_name"] == "The Daily Grind"

    assert d["underdelivering"]["count"] == 1
    (behind,) = d["underdelivering"]["items"]
    assert behind["io_id"] == str(ids["behind"]) and behind["advertiser_name"] == "Acme Coffee"
    assert behind["impressions_goal"] == 10000 and behind["delivered_impressions"] == 1000
    assert behind["expected_to_date"] == 3666 and behind["delivery_pct"] == 0.1

    assert [i["filename"] for i in d["latest_imports"]] == ["shows.csv"]
    events = d["latest_events"]
    assert len(events) == 7 and all(e["type"] == "deal.created" for e in events)
    assert [int(e["id"]) for e in events] == sorted((int(e["id"]) for e in events), reverse=True)

    movement = d["stage_movement"]
    assert len(movement["weeks"]) == 12
    assert (
        date.fromisoformat(movement["weeks"][-1])
        <= TODAY
        < date.fromisoformat(movement["weeks"][-1]) + (timedelta(days=7))
    )
    assert set(movement["series"]) == set(by_stage)
    assert d["top_matches"] == []


async def test_moves_show_up_in_the_weekly_movement(stack: Stack, tenant: NewTenant) -> None:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        adv = Advertiser(tenant_id=tenant.id, name="Acme")
        s.add(adv)
    deal = await add_deal(stack.sm, tenant.id, adv.id, "Mover", 100, created=NOW - timedelta(days=30))
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        for i, (frm, to, days_ago) in enumerate(
            [("lead", "qualified", 21), ("qualified", "proposal", 14), ("proposal", "negotiation", 0)]
        ):
            s.add(
                DealStageHistory(
                    tenant_id=tenant.id,
                    campaign_id=deal,
                    from_stage=frm,
                    to_stage=to,
                    changed_at=NOW - timedelta(days=days_ago),
                    idempotency_key=f"test/{deal}/{i}",
                )
            )
    d = (await stack.http.get("/api/v1/dashboard", headers=stack.auth(tenant))).json()
    series, weeks = d["stage_movement"]["series"], d["stage_movement"]["weeks"]
    assert series["negotiation"][-1] == 1
    assert sum(series["qualified"]) == 1 and sum(series["proposal"]) == 1
    week_of = {w: i for i, w in enumerate(weeks)}
    monday = (NOW - timedelta(days=14)).date()
    monday -= timedelta(days=monday.weekday())
    assert series["proposal"][week_of[monday.isoformat()]] == 1
    assert sum(series["lead"]) == 0  # creation is not a move


async def test_another_tenant_sees_none_of_it(stack: Stack, tenant: NewTenant) -> None:
    await _seed(stack.sm, tenant.id)
    other = await stack.new_tenant("Other")
    d = (await stack.http.get("/api/v1/dashboard", headers=stack.auth(other))).json()
    assert all(s["count"] == 0 for s in d["pipeline"])
    assert d["stalled"]["count"] == 0 and d["upcoming_air_dates"]["count"] == 0
    assert d["underdelivering"]["count"] == 0 and d["latest_events"] == [] and d["latest_imports"] == []
    assert d["win_rate"] == {"won": 0, "lost": 0, "rate": None, "avg_days_to_close": None}


async def test_bad_parameters_are_422_and_no_key_is_401(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    r = await stack.http.get("/api/v1/dashboard", params={"window_days": 0}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "window_days"]
    r = await stack.http.get("/api/v1/dashboard", params={"limit": "many"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    assert (await stack.http.get("/api/v1/dashboard")).status_code == 401


async def test_stall_limits_follow_the_configured_days(stack: Stack, tenant: NewTenant) -> None:
    await _seed(stack.sm, tenant.id)
    stack.settings.stall_days = {"lead": 1}
    d = (await stack.http.get("/api/v1/dashboard", headers=stack.auth(tenant))).json()
    assert d["stalled"]["count"] == 2  # the two-day-old lead is now past a one-day limit
    assert {i["stall_limit_days"] for i in d["stalled"]["items"]} == {1}


async def test_top_matches_are_the_best_of_the_current_ranking(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    for i in range(4):
        await make_show(
            stack.http,
            h,
            name=f"Show {i}",
            avg_downloads=1000 + 500 * i,
            categories=["Business"],
            geo={"US": (i + 1) / 5},
            age={"25-34": 0.5},
        )
    for i in range(2):
        await make_advertiser(stack.http, h, name=f"Brand {i}", target_geo=["US"], target_age=["25-34"])
    for _ in range(2):  # the dashboard reads the newest generation, not an older one
        await recalculate(stack, h)
    ranked = await matches(stack, h, limit=5)
    d = (await stack.http.get("/api/v1/dashboard", headers=h)).json()
    assert len(ranked) == 5
    assert [(m["advertiser_name"], m["show_name"], m["score"]) for m in d["top_matches"]] == [
        (m["advertiser_name"], m["show_name"], m["score"]) for m in ranked
    ]
