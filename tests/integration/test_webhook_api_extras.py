"""Webhooks API extras: the event-types catalogue and the OpenAPI links of a new endpoint."""

from __future__ import annotations

import uuid
from typing import Any

from db.tenants import NewTenant
from domain.webhooks import SUBSCRIBABLE
from tests.conftest import Stack
from tests.helpers.receivers import receiver

EVENT_TYPES = "/api/v1/webhooks/event-types"


async def test_event_types_lists_what_an_endpoint_can_subscribe_to(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    r = await stack.http.get(EVENT_TYPES, headers=h)
    assert r.status_code == 200, r.text  # not read as an endpoint id (that would be a 404)
    items = r.json()["items"]
    types = [i["type"] for i in items]
    assert types[0] == "*" and types[1:] == sorted(SUBSCRIBABLE)
    assert "deal.stage_changed" in types and "webhook.test" not in types
    assert all(isinstance(i["description"], str) and i["description"].strip() for i in items), items
    stage = next(i for i in items if i["type"] == "deal.stage_changed")
    assert "stage" in stage["description"]
    # Every type listed is one the create accepts, all at once.
    async with receiver("ok") as rec:
        created = await stack.http.post(
            "/api/v1/webhooks", json={"url": rec.url, "event_types": types[1:]}, headers=h
        )
        assert created.status_code == 201, created.text
        assert created.json()["event_types"] == types[1:]
        assert (
            await stack.http.delete(f"/api/v1/webhooks/{created.json()['id']}", headers=h)
        ).status_code == 204


async def test_event_types_needs_a_key(stack: Stack) -> None:
    r = await stack.http.get(EVENT_TYPES)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = await stack.http.get(EVENT_TYPES, headers={"Authorization": "Bearer sf_not_a_key"})
    assert r.status_code == 401


async def test_openapi_documents_event_types(stack: Stack) -> None:
    spec: dict[str, Any] = (await stack.http.get("/openapi.json")).json()
    op = spec["paths"][EVENT_TYPES]["get"]
    assert op["operationId"] == "listWebhookEventTypes" and op["summary"]
    assert {"200", "401"} <= set(op["responses"])
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookEventTypes"
    }


async def test_event_types_is_its_own_resource_for_a_405(stack: Stack, tenant: NewTenant) -> None:
    # /{webhook_id} also matches the path; the 405's Allow names only what event-types serves.
    h = stack.auth(tenant)
    for method in ("OPTIONS", "PUT"):
        r = await stack.http.request(method, EVENT_TYPES, headers=h)
        assert r.status_code == 405 and r.headers["Allow"] == "GET", (method, r.headers)
    r = await stack.http.request("OPTIONS", f"/api/v1/webhooks/{uuid.uuid4()}", headers=h)
    assert r.status_code == 405 and r.headers["Allow"] == "DELETE, GET, PATCH", r.headers


async def test_openapi_links_a_new_endpoint_to_its_read_deliveries_and_test(stack: Stack) -> None:
    spec: dict[str, Any] = (await stack.http.get("/openapi.json")).json()
    links = spec["paths"]["/api/v1/webhooks"]["post"]["responses"]["201"]["links"]
    by_operation = {link["operationId"]: link for link in links.values()}
    assert set(by_operation) == {"getWebhook", "listWebhookDeliveries", "testWebhook"}, links
    paths = {op["operationId"]: path for path, item in spec["paths"].items() for op in item.values()}
    for operation_id, link in by_operation.items():
        assert link["parameters"] == {"webhook_id": "$response.body#/id"}, link
        assert paths[operation_id].startswith("/api/v1/webhooks/{webhook_id}"), paths[operation_id]


async def test_deliveries_can_be_listed_by_status(stack: Stack, tenant: NewTenant) -> None:
    import asyncio

    h = stack.auth(tenant)
    async with receiver("ok", "error") as rec:
        hook = (
            await stack.http.post("/api/v1/webhooks", json={"url": rec.url, "event_types": ["*"]}, headers=h)
        ).json()
        base = f"/api/v1/webhooks/{hook['id']}/deliveries"
        for _ in range(2):
            assert (
                await stack.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)
            ).status_code == 202
            await rec.wait_for(len(rec.requests) + 1)
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            items = (await stack.http.get(base, headers=h)).json()["items"]
            if sorted(d["status"] for d in items) == ["delivered", "pending"] and all(
                d["attempts"] for d in items
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, items
            await asyncio.sleep(0.2)
        for wanted in ("pending", "delivered"):
            only = (await stack.http.get(base, params={"status": wanted}, headers=h)).json()["items"]
            assert [d["status"] for d in only] == [wanted]
        assert (await stack.http.get(base, params={"status": "failed"}, headers=h)).json()["items"] == []
        bad = await stack.http.get(base, params={"status": "lost"}, headers=h)
        assert bad.status_code == 422 and "status" in bad.text, bad.text
