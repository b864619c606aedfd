"""Tenant isolation: through HTTP, and in SQL as the application role under RLS."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from db.engine import set_tenant
from db.models import TENANT_TABLES
from tests.conftest import Stack
from tests.helpers.factories import make_advertiser, make_deal, make_show, move


async def test_tenant_b_cannot_see_or_touch_tenant_a(stack: Stack) -> None:
    a, b = await stack.new_tenant("A"), await stack.new_tenant("B")
    ha, hb = stack.auth(a), stack.auth(b)
    adv = await make_advertiser(stack.http, ha)
    show = await make_show(stack.http, ha)
    deal = await make_deal(stack.http, ha, advertiser=adv, show=show)
    assert (await move(stack.http, ha, deal["id"], "qualified")).status_code == 200

    assert (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=hb)).status_code == 404
    assert (await move(stack.http, hb, deal["id"], "proposal")).status_code == 404
    assert (await stack.http.get(f"/api/v1/shows/{show['id']}", headers=hb)).status_code == 404
    assert (await stack.http.get(f"/api/v1/advertisers/{adv['id']}", headers=hb)).status_code == 404
    for path in ("/api/v1/deals", "/api/v1/shows", "/api/v1/advertisers", "/api/v1/events"):
        assert (await stack.http.get(path, headers=hb)).json()["items"] == [], path
    r = await stack.http.post(
        "/api/v1/deals",
        json={"advertiser_id": adv["id"], "name": "poach", "value_usd": 1},
        headers=hb,
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "advertiser_id"]
    # A's deal did not move.
    assert (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=ha)).json()["stage"] == "qualified"


async def test_sql_as_app_role_sees_only_its_tenant(stack: Stack) -> None:
    a, b = await stack.new_tenant("A"), await stack.new_tenant("B")
    ha = stack.auth(a)
    await make_deal(stack.http, ha)
    async with stack.sm() as s, s.begin():
        assert (await s.execute(text("SELECT current_user"))).scalar() == "sponsorflow_app"
        await set_tenant(session=s, tenant_id=b.id)
        for table, column in TENANT_TABLES.items():
            n = (
                await s.execute(text(f"SELECT count(*) FROM {table} WHERE {column} = :a"), {"a": a.id})
            ).scalar()
            assert n == 0, f"{table}: tenant B read {n} of A's rows"
    async with stack.sm() as s, s.begin():
        await set_tenant(session=s, tenant_id=a.id)
        n = (await s.execute(text("SELECT count(*) FROM campaigns"))).scalar()
        assert n == 1


async def test_no_tenant_set_reads_nothing(stack: Stack) -> None:
    a = await stack.new_tenant("A")
    await make_deal(stack.http, stack.auth(a))
    async with stack.sm() as s, s.begin():
        for table in TENANT_TABLES:
            n = (await s.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
            assert n == 0, f"{table}: {n} rows visible without a tenant"


async def test_writing_into_another_tenant_is_refused(stack: Stack) -> None:
    a, b = await stack.new_tenant("A"), await stack.new_tenant("B")
    with pytest.raises(DBAPIError, match="row-level security"):
        async with stack.sm() as s, s.begin():
            await set_tenant(session=s, tenant_id=b.id)
            await s.execute(
                text("INSERT INTO shows (id, tenant_id, name, avg_downloads) VALUES (:i, :t, 'x', 1)"),
                {"i": uuid.uuid4(), "t": a.id},
            )


async def test_keys(stack: Stack) -> None:
    assert (await stack.http.get("/api/v1/deals")).status_code == 401
    r = await stack.http.get("/api/v1/deals", headers={"Authorization": "Bearer sf_nope_nope"})
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    t = await stack.new_tenant()
    # A tenant key is not an admin token.
    r = await stack.http.post("/api/v1/tenants", json={"name": "x"}, headers=stack.auth(t))
    assert r.status_code == 401
    r = await stack.http.post(
        "/api/v1/tenants", json={"name": "Acme Audio"}, headers={"Authorization": "Bearer test-admin-token"}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["name"] == "Acme Audio" and body["api_key"].startswith("sf_")
    assert (
        await stack.http.get("/api/v1/shows", headers={"Authorization": f"Bearer {body['api_key']}"})
    ).status_code == 200
    # Stored hashed: the key itself is nowhere in the table.
    async with stack.sm() as s, s.begin():
        await set_tenant(session=s, tenant_id=body["id"])
        stored = (await s.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
    assert stored and body["api_key"] not in stored and all(len(h) == 64 for h in stored)
