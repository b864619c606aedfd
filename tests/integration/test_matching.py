"""Matchmaking end to end: recalculation workflow, schedules, ranked reads, weights, imports.
Real PostgreSQL, real Temporal dev server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from db.engine import tenant_tx
from db.models import Event
from db.tenants import NewTenant
from tests.conftest import Stack, start_stack
from tests.helpers.factories import make_advertiser, make_show
from tests.helpers.matching import ALIGNED, FINTECH, MISALIGNED, matches, recalculate
from worker import reconcile_match_schedules
from workflows.matching import MatchRecalculationWorkflow
from workflows.starters import match_schedule_id, match_workflow_id

UNSAFE = {
    "name": "Late Night Rants",
    "avg_downloads": 90000,
    "categories": ["Business"],
    "geo": {"US": 0.9},
    "age": {"25-34": 0.7},
    "brand_safety": {"hate_speech": "high"},
}


async def _events(stack: Stack, tenant: NewTenant, type_: str) -> list[Event]:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        return list((await s.scalars(select(Event).where(Event.type == type_))).all())


async def test_aligned_shows_rank_first_and_unsafe_shows_never_appear(
    stack: Stack, tenant: NewTenant
) -> None:
    h = stack.auth(tenant)
    aligned = await make_show(stack.http, h, **ALIGNED)
    misaligned = await make_show(stack.http, h, **MISALIGNED)
    unsafe = await make_show(stack.http, h, **UNSAFE)
    fintech = await make_advertiser(stack.http, h, **FINTECH)

    done = await recalculate(stack, h)
    assert done["workflow_id"] == match_workflow_id(str(tenant.id))
    result = done["result"]
    assert (result.shows, result.advertisers, result.pairs_scored, result.pairs_excluded) == (3, 1, 3, 1)

    ranked = await matches(stack, h, advertiser_id=fintech["id"])
    assert [m["show_id"] for m in ranked] == [aligned["id"], misaligned["id"]]
    assert unsafe["id"] not in {m["show_id"] for m in await matches(stack, h)}
    best, worst = ranked
    assert 0 <= worst["score"] < best["score"] <= 100
    assert set(best["signals"]) == {"geo", "demographic", "topic", "lift", "inventory", "brand_safety"}
    assert best["signals"]["geo"] == 0.9 and best["signals"]["topic"] == 1.0
    assert "target countries" in best["rationale"]
    assert best["advertiser_name"] == "Ledgerly" and best["show_name"] == "Founders Daily"
    # Filters: by show, by minimum score.
    assert [m["advertiser_id"] for m in await matches(stack, h, show_id=aligned["id"])] == [fintech["id"]]
    assert await matches(stack, h, min_score=best["score"] + 0.01) == []

    (event,) = await _events(stack, tenant, "match.recalculated")
    assert event.payload["pairs_scored"] == 3 and event.payload["matches_written"] == 2
    assert event.payload["trigger"] == "manual" and event.payload["duration_s"] >= 0


async def test_concurrent_recalculate_calls_share_one_run(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    await make_show(stack.http, h, **ALIGNED)
    await make_advertiser(stack.http, h, **FINTECH)
    answers = await asyncio.gather(*(stack.http.post("/api/match/recalculate", headers=h) for _ in range(8)))
    assert {r.status_code for r in answers} == {202}
    runs = {(r.json()["workflow_id"], r.json()["run_id"]) for r in answers}
    assert len(runs) == 1
    (wid, run_id) = runs.pop()
    await stack.client.get_workflow_handle(wid, run_id=run_id).result()
    assert len(await _events(stack, tenant, "match.recalculated")) == 1


async def test_weights_change_the_ranking(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    big_uk = await make_show(
        stack.http,
        h,
        name="UK Giant",
        avg_downloads=100000,
        categories=["Business"],
        geo={"GB": 1.0},
        age={"25-34": 1.0},
    )
    small_us = await make_show(
        stack.http,
        h,
        name="US Niche",
        avg_downloads=1000,
        categories=["Leisure"],
        geo={"US": 1.0},
        age={"55+": 1.0},
    )
    adv = await make_advertiser(
        stack.http, h, name="Geo Only", target_geo=["US"], target_categories=["Business"]
    )
    assert (await stack.http.get("/api/v1/match/weights", headers=h)).json()["geo"] == 0.25
    r = await stack.http.put(
        "/api/v1/match/weights",
        json={"geo": 0, "demographic": 0, "topic": 0, "lift": 0, "inventory": 0, "brand_safety": 0},
        headers=h,
    )
    assert r.status_code == 422 and "at least one weight" in r.text
    r = await stack.http.put(
        "/api/v1/match/weights",
        json={"geo": 0, "topic": 1, "demographic": 0, "lift": 0, "inventory": 0, "brand_safety": 0},
        headers=h,
    )
    assert r.status_code == 200
    await recalculate(stack, h)
    assert [m["show_id"] for m in await matches(stack, h, advertiser_id=adv["id"])][0] == big_uk["id"]
    r = await stack.http.put(
        "/api/v1/match/weights",
        json={"geo": 1, "topic": 0, "demographic": 0, "lift": 0, "inventory": 0, "brand_safety": 0},
        headers=h,
    )
    await recalculate(stack, h)
    assert [m["show_id"] for m in await matches(stack, h, advertiser_id=adv["id"])][0] == small_us["id"]


async def test_readers_see_the_old_or_the_new_ranking_never_a_mix(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    for i in range(40):
        await make_show(
            stack.http,
            h,
            name=f"Show {i}",
            avg_downloads=1000 + 500 * i,
            categories=["Business"],
            geo={"US": (i % 10) / 10},
            age={"25-34": ((i * 7) % 10) / 10},
        )
    for i in range(4):
        await make_advertiser(stack.http, h, name=f"Brand {i}", target_geo=["US"], target_age=["25-34"])
    first = await recalculate(stack, h)
    old = {(m["advertiser_id"], m["show_id"], m["score"]) for m in await matches(stack, h, limit=200)}
    await stack.http.put(
        "/api/v1/match/weights",
        json={"geo": 0, "demographic": 1, "topic": 0, "lift": 0, "inventory": 0, "brand_safety": 0},
        headers=h,
    )
    r = await stack.http.post("/api/match/recalculate", headers=h)
    handle = stack.client.get_workflow_handle(r.json()["workflow_id"], run_id=r.json()["run_id"])
    seen: list[tuple[set[int], frozenset[tuple[str, str, float]]]] = []

    async def read_until_done() -> None:
        while True:
            items = await matches(stack, h, limit=200)
            seen.append(
                (
                    {m["generation"] for m in items},
                    frozenset((m["advertiser_id"], m["show_id"], m["score"]) for m in items),
                )
            )
            desc = await handle.describe()
            if desc.status is not None and desc.status.name != "RUNNING":
                return

    await read_until_done()
    new = {(m["advertiser_id"], m["show_id"], m["score"]) for m in await matches(stack, h, limit=200)}
    assert new != old
    for generations, snapshot in seen:
        assert len(generations) == 1
        assert snapshot in (frozenset(old), frozenset(new))
    assert first["result"].generation + 1 == min(next(iter(g)) for g, s in seen if s == frozenset(new))


async def test_each_tenant_gets_one_schedule_that_runs_the_recalculation(stack: Stack) -> None:
    r = await stack.http.post(
        "/api/v1/tenants",
        json={"name": f"Sched {uuid.uuid4().hex[:6]}"},
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert r.status_code == 201
    tenant_id, key = r.json()["id"], r.json()["api_key"]
    handle = stack.client.get_schedule_handle(match_schedule_id(tenant_id))
    desc = await handle.describe()
    assert desc.schedule.policy.overlap.name == "SKIP"
    assert desc.schedule.spec.intervals[0].every.total_seconds() == 24 * 3600
    # A worker start reconciles every tenant: nothing is duplicated, a missing one is created.
    await handle.delete()
    first = await reconcile_match_schedules(stack.client, stack.settings, stack.sm)
    assert first.created >= 1 and first.failed == []
    again = await reconcile_match_schedules(stack.client, stack.settings, stack.sm)
    assert again.created == 0 and again.updated == 0 and again.unchanged == again.tenants
    ids = [s.id async for s in await stack.client.list_schedules()]
    assert ids.count(match_schedule_id(tenant_id)) == 1

    h = {"Authorization": f"Bearer {key}"}
    await make_show(stack.http, h, **ALIGNED)
    await make_advertiser(stack.http, h, **FINTECH)
    await handle.trigger()
    for _ in range(150):
        if await matches(stack, h):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the triggered schedule did not produce matches")
    async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
        payload = await s.scalar(select(Event.payload).where(Event.type == "match.recalculated"))
    assert payload is not None and payload["trigger"] == "schedule"


async def test_a_completed_shows_import_triggers_a_recalculation(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    await make_advertiser(stack.http, h, **FINTECH)
    csv = b"external_id,name,avg_downloads,categories,geo\ns-1,Imported Show,20000,Business,US:0.9\n"
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("shows.csv", csv)}, data={"kind": "shows"}, headers=h
    )
    assert r.status_code == 202
    await stack.client.get_workflow_handle(r.json()["workflow_id"]).result()
    for _ in range(150):
        if await _events(stack, tenant, "match.recalculated"):
            break
        await asyncio.sleep(0.2)
    (event,) = await _events(stack, tenant, "match.recalculated")
    assert event.payload["trigger"] == "import"
    assert [m["show_name"] for m in await matches(stack, h)] == ["Imported Show"]


async def test_matchmaking_flag_off(database: Any, client: Client, sm: Any) -> None:
    async for off in start_stack(database, client, sm, enable_matchmaking=False):
        t = await off.new_tenant()
        for method, path in (
            ("POST", "/api/match/recalculate"),
            ("GET", "/api/match/recalculate"),
            ("GET", "/api/v1/matches"),
            ("GET", "/api/v1/match/recalculations"),
        ):
            r = await off.http.request(method, path, headers=off.auth(t))
            assert r.status_code == 404 and "ENABLE_MATCHMAKING" in r.json()["detail"]


async def test_replay_a_recalculation_history(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    await make_show(stack.http, h, **ALIGNED)
    await make_advertiser(stack.http, h, **FINTECH)
    done = await recalculate(stack, h)
    history = await stack.client.get_workflow_handle(
        done["workflow_id"], run_id=done["run_id"]
    ).fetch_history()
    await Replayer(
        workflows=[MatchRecalculationWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history)


async def test_status_and_history_of_the_rankings(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    r = await stack.http.get("/api/match/recalculate", headers=h)
    assert r.status_code == 200 and r.json() == {"running": [], "schedule": None, "current": None}
    assert (await stack.http.get("/api/v1/match/recalculations", headers=h)).json()["items"] == []

    await make_show(stack.http, h, **ALIGNED)
    await make_advertiser(stack.http, h, **FINTECH)
    first = (await recalculate(stack, h))["result"]
    r = await stack.http.put("/api/v1/match/weights", json={"geo": 1, "topic": 1}, headers=h)
    assert r.status_code == 200
    second = (await recalculate(stack, h))["result"]

    status = (await stack.http.get("/api/match/recalculate", headers=h)).json()
    assert status["running"] == []
    current = status["current"]
    assert current["generation"] == second.generation == (await matches(stack, h))[0]["generation"]
    assert (current["trigger"], current["pairs_scored"], current["matches_written"]) == ("manual", 1, 1)
    assert current["weights"]["geo"] == 1 and current["weights"]["lift"] == 0.1

    # Newest first, one per page.
    r = await stack.http.get("/api/v1/match/recalculations", params={"limit": 1}, headers=h)
    page = r.json()
    assert [g["generation"] for g in page["items"]] == [second.generation]
    r = await stack.http.get(
        "/api/v1/match/recalculations", params={"limit": 1, "cursor": page["next_cursor"]}, headers=h
    )
    assert [g["generation"] for g in r.json()["items"]] == [first.generation]
    assert r.json()["next_cursor"] is None
    bad = await stack.http.get("/api/v1/match/recalculations", params={"cursor": "nope"}, headers=h)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]

    # Another tenant sees none of it.
    other = stack.auth(await stack.new_tenant())
    assert (await stack.http.get("/api/v1/match/recalculations", headers=other)).json()["items"] == []
    assert (await stack.http.get("/api/match/recalculate", headers=other)).json()["current"] is None
