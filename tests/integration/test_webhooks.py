"""Webhooks end to end: the API, the endpoint's workflow on the real dev server, real HTTP receivers.

Signatures are verified with the `standardwebhooks` package (the spec's reference library), not
with the project's own code.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.conftest import Stack, start_stack
from tests.helpers.factories import make_deal, move
from tests.helpers.receivers import Received, receiver
from tests.helpers.webhooks import FAST_WEBHOOKS

FAST: dict[str, Any] = {**FAST_WEBHOOKS, "webhook_failing_after_seconds": 2.0}


@pytest.fixture
async def hooks(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API and worker with the fast webhook clocks."""
    async for s in start_stack(database, client, sm, **FAST):
        yield s


async def _tenant(stack: Stack) -> dict[str, str]:
    return stack.auth(await stack.new_tenant())


async def _endpoint(
    stack: Stack, h: dict[str, str], url: str, types: list[str] | None = None
) -> dict[str, Any]:
    r = await stack.http.post(
        "/api/v1/webhooks",
        json={"url": url, "event_types": types or ["*"], "description": "tests"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _verify(secret: str, req: Received) -> dict[str, Any]:
    """The body, once the reference library accepts the request's signature."""
    return dict(Webhook(secret).verify(req.body, req.headers))


async def _deliveries(stack: Stack, h: dict[str, str], hook_id: str) -> list[dict[str, Any]]:
    r = await stack.http.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=h)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def _delivered(stack: Stack, h: dict[str, str], hook_id: str, n: int = 1) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        found[:] = await _deliveries(stack, h, hook_id)
        return sum(1 for d in found if d["status"] == "delivered") >= n

    await _until(check, f"{n} delivered")
    return found


async def _test(stack: Stack, h: dict[str, str], hook_id: str) -> str:
    r = await stack.http.post(f"/api/v1/webhooks/{hook_id}/test", headers=h)
    assert r.status_code == 202, r.text
    return str(r.json()["event_id"])


async def test_a_stage_move_reaches_a_subscribed_endpoint_once_and_not_an_unsubscribed_one(
    hooks: Stack,
) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as subscribed, receiver("ok") as other:
        a = await _endpoint(hooks, h, subscribed.url, ["deal.stage_changed"])
        b = await _endpoint(hooks, h, other.url, ["io.completed"])
        assert a["secret"].startswith("whsec_") and a["status"] == "active"
        deal = await make_deal(hooks.http, h)
        assert (await move(hooks.http, h, deal["id"], "qualified")).status_code == 200
        (req,) = await subscribed.wait_for(1)
        body = _verify(a["secret"], req)
        assert body["type"] == "deal.stage_changed"
        assert body["entity_id"] == deal["id"]
        assert body["payload"]["from"] == "lead" and body["payload"]["to"] == "qualified"
        # The body is the event as the events API shows it.
        events = (await hooks.http.get("/api/v1/events", params={"entity_id": deal["id"]}, headers=h)).json()
        (shown,) = [e for e in events["items"] if e["type"] == "deal.stage_changed"]
        assert body == shown
        (d,) = await _delivered(hooks, h, a["id"])
        assert (d["event_id"], d["event_type"], d["attempts"], d["last_status_code"]) == (
            shown["id"],
            "deal.stage_changed",
            1,
            200,
        )
        assert req.headers["webhook-id"] == f"msg_{d['id'].replace('-', '')}"
        # Several polls later (past the outbox settle time): still once, and nothing for the other.
        await asyncio.sleep(2.5)
        assert len(subscribed.requests) == 1
        assert other.requests == []
        assert await _deliveries(hooks, h, b["id"]) == []


async def test_a_slack_endpoint_gets_a_sentence(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as r:
        res = await hooks.http.post(
            "/api/v1/webhooks",
            json={"url": r.url, "event_types": ["deal.stage_changed"], "format": "slack"},
            headers=h,
        )
        assert res.status_code == 201 and res.json()["format"] == "slack"
        deal = await make_deal(hooks.http, h, value_usd=24000)
        await move(hooks.http, h, deal["id"], "negotiation")
        (req,) = await r.wait_for(1)
        body = _verify(res.json()["secret"], req)
        adv = (await hooks.http.get(f"/api/v1/advertisers/{deal['advertiser_id']}", headers=h)).json()["name"]
        show = (await hooks.http.get(f"/api/v1/shows/{deal['show_id']}", headers=h)).json()["name"]
        assert body == {"text": f"{adv} x {show} moved to negotiation ($24,000)"}


async def test_a_500_is_retried_with_the_same_webhook_id_until_a_200(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("error", "error", "ok") as r:
        hook = await _endpoint(hooks, h, r.url)
        event_id = await _test(hooks, h, hook["id"])
        reqs = await r.wait_for(3)
        assert len({q.headers["webhook-id"] for q in reqs}) == 1
        for q in reqs:
            assert _verify(hook["secret"], q)["id"] == event_id
        (d,) = await _delivered(hooks, h, hook["id"])
        assert (d["status"], d["attempts"], d["last_status_code"], d["last_error"]) == (
            "delivered",
            3,
            200,
            None,
        )


@pytest.mark.parametrize("first", ["hang", "close", "redirect"])
async def test_a_timeout_a_dropped_connection_and_a_redirect_are_failures(hooks: Stack, first: Any) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as target, receiver(first, "ok", redirect_to=target.url) as r:
        hook = await _endpoint(hooks, h, r.url)
        await _test(hooks, h, hook["id"])
        await r.wait_for(2)
        (d,) = await _delivered(hooks, h, hook["id"])
        assert d["attempts"] == 2
        # A redirect is not followed.
        assert target.requests == []


async def test_a_429_waits_for_its_retry_after(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("429", "ok", retry_after="2") as r:
        hook = await _endpoint(hooks, h, r.url)
        await _test(hooks, h, hook["id"])
        first, second = await r.wait_for(2)
        # Without Retry-After the next attempt comes after 0.1-0.2 s.
        assert second.at - first.at >= 1.9


async def test_a_delivery_fails_after_its_window_and_a_retry_sends_it_again(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, **FAST | {"webhook_retry_hours": 1.5 / 3600}):
        h = await _tenant(stack)
        async with receiver("error") as r:
            hook = await _endpoint(stack, h, r.url)
            await _test(stack, h, hook["id"])

            async def failed(
                stack: Stack = stack, h: dict[str, str] = h, hook: dict[str, Any] = hook
            ) -> bool:
                ds = await _deliveries(stack, h, hook["id"])
                return bool(ds) and ds[0]["status"] == "failed"

            await _until(failed, "the delivery failed")
            (d,) = await _deliveries(stack, h, hook["id"])
            assert d["attempts"] >= 2 and d["last_status_code"] == 500 and d["last_error"] == "HTTP 500"
            attempts = len(r.requests)
            r.script[:] = ["ok"]
            url = f"/api/v1/webhooks/{hook['id']}/deliveries/{d['id']}/retry"
            res = await stack.http.post(url, headers=h)
            assert res.status_code == 202, res.text
            assert res.json() == {"requeued": 1, "added": 0}
            (again,) = await _delivered(stack, h, hook["id"])
            assert again["id"] == d["id"] and again["attempts"] == 1
            assert r.requests[-1].headers["webhook-id"] == r.requests[0].headers["webhook-id"]
            assert len(r.requests) == attempts + 1
            # A delivered delivery can be retried; a pending one cannot (409).
            assert (await stack.http.post(url, headers=h)).status_code == 202


async def test_an_endpoint_failing_continuously_is_paused_with_webhook_disabled(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, **FAST | {"webhook_disable_after_hours": 2 / 3600}):
        h = await _tenant(stack)
        async with receiver("error") as dead, receiver("ok") as watcher:
            hook = await _endpoint(stack, h, dead.url)
            ops = await _endpoint(stack, h, watcher.url, ["webhook.disabled"])
            await _test(stack, h, hook["id"])
            (req,) = await watcher.wait_for(1)
            body = _verify(ops["secret"], req)
            assert (body["type"], body["entity_type"], body["entity_id"]) == (
                "webhook.disabled",
                "webhook",
                hook["id"],
            )
            assert "every attempt failed" in body["payload"]["reason"]
            one = await stack.http.get(f"/api/v1/webhooks/{hook['id']}", headers=h)
            assert one.json()["status"] == "paused"
            # Paused: the attempts stop; the delivery stays pending for when it is resumed.
            await asyncio.sleep(1.0)
            seen = len(dead.requests)
            await asyncio.sleep(1.0)
            assert len(dead.requests) == seen
            (d,) = await _deliveries(stack, h, hook["id"])
            assert d["status"] == "pending"
            dead.script[:] = ["ok"]
            r = await stack.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "active"}, headers=h)
            assert r.status_code == 200
            await _delivered(stack, h, hook["id"])


async def test_pause_stops_deliveries_until_resumed(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as r:
        hook = await _endpoint(hooks, h, r.url, ["deal.stage_changed"])
        r1 = await hooks.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "paused"}, headers=h)
        assert r1.status_code == 200 and r1.json()["status"] == "paused"
        deal = await make_deal(hooks.http, h)
        assert (await move(hooks.http, h, deal["id"], "qualified")).status_code == 200
        assert (await move(hooks.http, h, deal["id"], "proposal")).status_code == 200
        test = await hooks.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)
        assert test.status_code == 409 and test.json()["code"] == "webhook_paused"
        await asyncio.sleep(1.5)
        assert r.requests == []

        async def paused_in_temporal() -> bool:
            wid = r1.json()["workflow_id"]
            found = [
                w async for w in hooks.client.list_workflows(f'WorkflowId="{wid}" AND WebhookStatus="paused"')
            ]
            return bool(found)

        await _until(paused_in_temporal, "WebhookStatus=paused")
        r2 = await hooks.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "active"}, headers=h)
        assert r2.status_code == 200
        reqs = await r.wait_for(2)
        # In the order the events happened (one entity: one chain).
        moves = [json.loads(q.body)["payload"]["to"] for q in reqs]
        assert moves == ["qualified", "proposal"]


async def test_after_a_rotation_both_secrets_sign_for_a_day(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as r:
        hook = await _endpoint(hooks, h, r.url)
        rot = await hooks.http.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret", headers=h)
        assert rot.status_code == 200, rot.text
        new = rot.json()["secret"]
        assert new != hook["secret"] and new.startswith("whsec_")
        until = datetime.fromisoformat(rot.json()["previous_secret_expires_at"])
        assert timedelta(hours=23.9) < until - datetime.now(UTC) <= timedelta(hours=24)
        await _test(hooks, h, hook["id"])
        (req,) = await r.wait_for(1)
        assert len(req.headers["webhook-signature"].split(" ")) == 2
        assert _verify(new, req) == _verify(hook["secret"], req)
        other = "whsec_" + "A" * 32
        with pytest.raises(Exception, match="signature"):
            Webhook(other).verify(req.body, req.headers)


async def test_replay_sends_a_window_again_with_the_same_webhook_ids(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as r:
        hook = await _endpoint(hooks, h, r.url, ["deal.stage_changed"])
        since = datetime.now(UTC) - timedelta(seconds=1)
        deal = await make_deal(hooks.http, h)
        await move(hooks.http, h, deal["id"], "qualified")
        await move(hooks.http, h, deal["id"], "proposal")
        first = await r.wait_for(2)
        await _delivered(hooks, h, hook["id"], 2)
        res = await hooks.http.post(
            f"/api/v1/webhooks/{hook['id']}/replay", json={"since": since.isoformat()}, headers=h
        )
        assert res.status_code == 202, res.text
        assert res.json() == {"requeued": 2, "added": 0}
        again = (await r.wait_for(4))[2:]
        assert [q.headers["webhook-id"] for q in again] == [q.headers["webhook-id"] for q in first]
        bad = await hooks.http.post(
            f"/api/v1/webhooks/{hook['id']}/replay",
            json={"since": since.isoformat(), "until": (since - timedelta(hours=1)).isoformat()},
            headers=h,
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "until"]


async def test_deleting_an_endpoint_ends_its_workflow(hooks: Stack) -> None:
    h = await _tenant(hooks)
    async with receiver("ok") as r:
        hook = await _endpoint(hooks, h, r.url)
        wid = await hooks.http.get(f"/api/v1/webhooks/{hook['id']}", headers=h)
        handle = hooks.client.get_workflow_handle(wid.json()["workflow_id"])
        assert (await hooks.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=h)).status_code == 204
        await asyncio.wait_for(handle.result(), 10)
        assert (await hooks.http.get(f"/api/v1/webhooks/{hook['id']}", headers=h)).status_code == 404


async def test_the_maintenance_check_restarts_a_missing_endpoint_workflow(hooks: Stack) -> None:
    from activities.maintenance import PLUGGED_CHECKS
    from activities.webhooks import ensure_endpoint_workflows

    assert PLUGGED_CHECKS.get("webhook_workflows") is ensure_endpoint_workflows
    t = await hooks.new_tenant()
    h = hooks.auth(t)
    async with receiver("ok") as r:
        hook = await _endpoint(hooks, h, r.url)
        handle = hooks.client.get_workflow_handle(hook["workflow_id"])
        await handle.terminate("ops terminated it by hand")

        async def not_running() -> bool:
            query = f'WorkflowId="{hook["workflow_id"]}" AND ExecutionStatus="Running"'
            return not [w async for w in hooks.client.list_workflows(query)]

        await _until(not_running, "the terminated workflow out of the running list")
        assert await ensure_endpoint_workflows(hooks.client, hooks.settings, hooks.sm, t.id) == 1
        await _test(hooks, h, hook["id"])
        await r.wait_for(1)

        async def visible() -> bool:
            return not await not_running()

        await _until(visible, "the new run listed")
        assert await ensure_endpoint_workflows(hooks.client, hooks.settings, hooks.sm, t.id) == 0


async def test_the_api_refuses_bad_endpoints_and_other_tenants(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, webhook_allow_private=False):
        h = await _tenant(stack)

        async def create(body: dict[str, Any], stack: Stack = stack, h: dict[str, str] = h) -> Any:
            return await stack.http.post("/api/v1/webhooks", json=body, headers=h)

        r = await create({"url": "https://hooks.example.com/x", "event_types": ["deal.moved"]})
        assert r.status_code == 422
        (issue,) = r.json()["detail"]
        assert issue["loc"] == ["body", "event_types"]
        assert "deal.moved" in issue["msg"] and "deal.stage_changed" in issue["msg"]
        for url, words in (
            ("ftp://hooks.example.com/x", "scheme"),
            ("https://user:pw@hooks.example.com/x", "credentials"),
            ("https://127.0.0.1/x", "loopback"),
            ("https://10.1.2.3/x", "private"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://[fd00:ec2::254]/", "metadata"),
            ("not a url", "scheme"),
        ):
            r = await create({"url": url, "event_types": ["*"]})
            assert r.status_code == 422, (url, r.text)
            (issue,) = r.json()["detail"]
            assert issue["loc"] == ["body", "url"] and words in issue["msg"], (url, issue)
        r = await create({"url": "https://h.example/x", "event_types": ["*", "deal.created"]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "event_types"]
        r = await create({"url": "https://h.example/x", "event_types": ["*"], "format": "xml"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "format"]
    async for stack in start_stack(database, client, sm):
        # Development: http and loopback are allowed, the metadata address is not.
        h = await _tenant(stack)
        r = await stack.http.post(
            "/api/v1/webhooks", json={"url": "http://169.254.169.254/", "event_types": ["*"]}, headers=h
        )
        assert r.status_code == 422
        async with receiver("ok") as rec:
            hook = await _endpoint(stack, h, rec.url)
        one = await stack.http.get(f"/api/v1/webhooks/{hook['id']}", headers=h)
        assert one.status_code == 200 and "secret" not in one.json()
        listed = await stack.http.get("/api/v1/webhooks", headers=h)
        assert [w["id"] for w in listed.json()["items"]] == [hook["id"]]
        other = await _tenant(stack)
        for method, path in (
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/rotate-secret"),
            ("POST", "/test"),
            ("GET", "/deliveries"),
            ("POST", f"/deliveries/{uuid.uuid4()}/retry"),
        ):
            kwargs: dict[str, Any] = {"json": {"description": "x"}} if method == "PATCH" else {}
            r = await stack.http.request(
                method, f"/api/v1/webhooks/{hook['id']}{path}", headers=other, **kwargs
            )
            assert r.status_code == 404, (method, path, r.text)
        assert (await stack.http.get("/api/v1/webhooks", headers=other)).json()["items"] == []
        await stack.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=h)
