"""A tenant's own keys: add one, list them, revoke one (it stops working at once here)."""

from __future__ import annotations

import asyncio

from db.tenants import NewTenant
from tests.conftest import Stack


async def test_add_list_and_revoke_a_key(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    r = await stack.http.post("/api/v1/keys", json={"name": "reporting script"}, headers=h)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["api_key"].startswith(f"sf_{new['prefix']}_") and new["revoked_at"] is None
    h2 = {"Authorization": f"Bearer {new['api_key']}"}
    assert (await stack.http.get("/api/v1/deals", headers=h2)).status_code == 200

    listed = (await stack.http.get("/api/v1/keys", headers=h2)).json()
    assert {k["name"] for k in listed["items"]} == {"first key", "reporting script"}
    assert [k["current"] for k in listed["items"] if k["name"] == "reporting script"] == [True]
    assert all("api_key" not in k and "key_hash" not in k for k in listed["items"])

    first = next(k for k in listed["items"] if k["name"] == "first key")
    r = await stack.http.post(f"/api/v1/keys/{first['id']}/revoke", headers=h2)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    # Cached a moment ago, refused now: this process forgets a key it revokes.
    assert (await stack.http.get("/api/v1/deals", headers=h)).status_code == 401
    again = await stack.http.post(f"/api/v1/keys/{first['id']}/revoke", headers=h2)
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"]

    last = await stack.http.post(f"/api/v1/keys/{new['id']}/revoke", headers=h2)
    assert last.status_code == 409 and "last active key" in last.json()["detail"]
    assert (await stack.http.get("/api/v1/deals", headers=h2)).status_code == 200


async def test_racing_revocations_leave_one_key_active(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    second = (await stack.http.post("/api/v1/keys", json={"name": "b"}, headers=h)).json()
    first = next(
        k
        for k in (await stack.http.get("/api/v1/keys", headers=h)).json()["items"]
        if k["name"] == "first key"
    )
    results = await asyncio.gather(
        stack.http.post(f"/api/v1/keys/{first['id']}/revoke", headers=h),
        stack.http.post(
            f"/api/v1/keys/{second['id']}/revoke", headers={"Authorization": f"Bearer {second['api_key']}"}
        ),
    )
    assert sorted(r.status_code for r in results) == [200, 409]


async def test_keys_are_per_tenant_and_names_are_checked(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    other = await stack.new_tenant("Other")
    theirs = (await stack.http.get("/api/v1/keys", headers=stack.auth(other))).json()["items"]
    assert len(theirs) == 1
    r = await stack.http.post(f"/api/v1/keys/{theirs[0]['id']}/revoke", headers=h)
    assert r.status_code == 404
    assert (await stack.http.get("/api/v1/deals", headers=stack.auth(other))).status_code == 200
    r = await stack.http.post("/api/v1/keys", json={"name": ""}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    assert (await stack.http.post("/api/v1/keys/not-an-id/revoke", headers=h)).status_code == 404
