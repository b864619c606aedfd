"""Webhook attempts connect to the address they checked (no DNS rebinding); old deliveries are pruned.

Pinning: the endpoint's host is a name the system resolver does not know; the product's resolver
(`activities.webhooks.resolve`, the one lookup the API and each attempt make) is replaced by one
this test controls. A request that arrives at all proves the HTTP client did not resolve the name
itself; the receiver sees the name in `Host`. Retention: the maintenance round's plugged check
deletes delivered and failed deliveries past SPONSORFLOW_WEBHOOK_DELIVERY_RETENTION_DAYS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client

import activities.webhooks as webhook_activities
from activities.webhooks import pinned
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.conftest import Stack, start_stack
from tests.helpers.receivers import receiver

HOST = "hooks.sponsorflow.test"
FAST: dict[str, Any] = {
    "webhook_poll_seconds": 0.2,
    "webhook_idle_poll_seconds": 0.3,
    "webhook_retry_initial_seconds": 0.2,
    "webhook_retry_max_interval_seconds": 0.5,
    "webhook_timeout_seconds": 1.0,
    "webhook_outbox_settle_seconds": 1.0,
    # No cache: every attempt looks the name up again (and connects to what it checked).
    "webhook_dns_cache_seconds": 0.0,
}


@pytest.fixture
async def hooks(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    async for s in start_stack(database, client, sm, **FAST):
        yield s


def test_a_pinned_target_keeps_the_name_for_host_and_tls() -> None:
    t = pinned("https://hooks.example.com:8443/in?x=1", "203.0.113.7")
    assert (t.url, t.host_header, t.sni) == (
        "https://203.0.113.7:8443/in?x=1",
        "hooks.example.com:8443",
        "hooks.example.com",
    )
    t = pinned("http://hooks.example.com/in", "2001:db8::5")
    assert (t.url, t.host_header, t.sni) == ("http://[2001:db8::5]/in", "hooks.example.com", None)


async def test_an_attempt_connects_to_the_checked_address_and_a_rebound_name_is_refused(
    hooks: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {HOST: ["127.0.0.1"]}
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return list(answers.get(host, []))

    monkeypatch.setattr(webhook_activities, "resolve", resolve)
    h = hooks.auth(await hooks.new_tenant())
    async with receiver("ok") as r:
        url = r.url.replace("127.0.0.1", HOST)
        created = await hooks.http.post(
            "/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=h
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        assert (await hooks.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)).status_code == 202
        (req,) = await r.wait_for(1)
        assert req.headers["host"] == f"{HOST}:{r.port}"
        assert Webhook(hook["secret"]).verify(req.body, req.headers)["type"] == "webhook.test"
        assert lookups.count(HOST) >= 2  # the API's check at creation, and the attempt's own

        # The name now points at the cloud metadata address: the next attempt refuses to send.
        answers[HOST] = ["169.254.169.254"]
        assert (await hooks.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)).status_code == 202
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            rows = (await hooks.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)).json()[
                "items"
            ]
            newest = rows[0]
            if newest["attempts"] >= 1 and newest["last_error"]:
                break
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.2)
        assert newest["status"] == "pending" and newest["last_status_code"] is None
        assert "address refused" in newest["last_error"] and "metadata" in newest["last_error"]
        assert len(r.requests) == 1  # nothing reached the receiver


async def test_the_maintenance_round_prunes_old_decided_deliveries_and_keeps_pending_ones(
    hooks: Stack,
) -> None:
    from activities.maintenance import PLUGGED_CHECKS
    from activities.webhooks import prune_old_deliveries
    from db.engine import tenant_tx

    assert PLUGGED_CHECKS.get("webhook_retention") is prune_old_deliveries
    t = await hooks.new_tenant()
    h = hooks.auth(t)
    async with receiver("ok") as r:
        created = await hooks.http.post(
            "/api/v1/webhooks", json={"url": r.url, "event_types": ["*"]}, headers=h
        )
        hook = created.json()
        for _ in range(3):
            assert (
                await hooks.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)
            ).status_code == 202
        await r.wait_for(3)
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            rows = (await hooks.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)).json()[
                "items"
            ]
            if len(rows) == 3 and all(d["status"] == "delivered" for d in rows):
                break
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.2)
    oldest, middle, newest = rows[2]["id"], rows[1]["id"], rows[0]["id"]
    async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
        # Two of them 40 days old, one of those still pending (a paused endpoint's backlog).
        await session.execute(
            text(
                "UPDATE webhook_deliveries SET created_at = now() - interval '40 days' WHERE id IN (:a, :b)"
            ),
            {"a": oldest, "b": middle},
        )
        await session.execute(
            text("UPDATE webhook_deliveries SET status = 'pending' WHERE id = :b"), {"b": middle}
        )
    assert await prune_old_deliveries(hooks.client, hooks.settings, hooks.sm, t.id) == 1
    left = (await hooks.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)).json()["items"]
    assert sorted(d["id"] for d in left) == sorted([middle, newest])
    off = hooks.settings.model_copy(update={"webhook_delivery_retention_days": 0})
    async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
        await session.execute(text("UPDATE webhook_deliveries SET created_at = now() - interval '400 days'"))
    assert await prune_old_deliveries(hooks.client, off, hooks.sm, t.id) == 0
