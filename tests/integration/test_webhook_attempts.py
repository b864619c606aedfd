"""Webhook attempts: to the address they checked (no DNS rebinding), each in its own retry window; retention.

Pinning: the endpoint's host is a name the system resolver does not know; the product's resolver
(`activities.webhooks.resolve`, the one lookup the API and each attempt make) is replaced by one
this test controls. A request that arrives at all proves the HTTP client did not resolve the name
itself; the receiver sees the name in `Host`. Retention: the maintenance round's plugged check
deletes delivered and failed deliveries past SPONSORFLOW_WEBHOOK_DELIVERY_RETENTION_DAYS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
from tests.helpers.webhooks import FAST_WEBHOOKS

HOST = "hooks.sponsorflow.test"
FAST: dict[str, Any] = {
    **FAST_WEBHOOKS,
    "webhook_retry_max_interval_seconds": 0.5,
    # No cache: every attempt looks the name up again (and connects to what it checked).
    "webhook_dns_cache_seconds": 0.0,
}


@pytest.fixture
async def hooks(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    async for s in start_stack(database, client, sm, **FAST):
        yield s


async def _deliveries_until(
    stack: Stack, h: dict[str, str], hook_id: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The endpoint's deliveries (newest first) once `done` holds for them (20 s at most)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        rows: list[dict[str, Any]] = (
            await stack.http.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=h)
        ).json()["items"]
        if rows and done(rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.2)


def test_a_pinned_target_keeps_the_name_for_host_and_tls() -> None:
    idn = pinned("https://bücher.example/in", "203.0.113.7")
    assert (idn.host_header, idn.sni) == ("xn--bcher-kva.example", "xn--bcher-kva.example")
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
        rows = await _deliveries_until(
            hooks, h, hook["id"], lambda rows: rows[0]["attempts"] >= 1 and bool(rows[0]["last_error"])
        )
        newest = rows[0]
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
        rows = await _deliveries_until(
            hooks,
            h,
            hook["id"],
            lambda rows: len(rows) == 3 and all(d["status"] == "delivered" for d in rows),
        )
    oldest, middle, newest = rows[2], rows[1], rows[0]

    async def start() -> int:
        async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
            return int(
                (
                    await session.execute(
                        text("SELECT after_event_id FROM webhook_endpoints WHERE id = :id"),
                        {"id": hook["id"]},
                    )
                ).scalar_one()
            )

    # The claims persist the settled cursor as where a new run starts.
    deadline = asyncio.get_running_loop().time() + 20
    while await start() < int(newest["event_id"]):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    patched = await hooks.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "paused"}, headers=h)
    assert patched.status_code == 200, patched.text
    async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
        # All three 40 days old: one of them still pending (a paused endpoint's backlog), one above
        # where a new run would start (its event could be claimed again: it must stay).
        await session.execute(
            text(
                "UPDATE webhook_deliveries SET created_at = now() - interval '40 days', "
                "delivered_at = now() - interval '40 days' WHERE endpoint_id = :e"
            ),
            {"e": hook["id"]},
        )
        await session.execute(
            text("UPDATE webhook_deliveries SET status = 'pending' WHERE id = :b"), {"b": middle["id"]}
        )
        await session.execute(
            text("UPDATE webhook_endpoints SET after_event_id = :a WHERE id = :e"),
            {"a": int(newest["event_id"]) - 1, "e": hook["id"]},
        )
    assert await prune_old_deliveries(hooks.client, hooks.settings, hooks.sm, t.id) == 1
    left = (await hooks.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)).json()["items"]
    assert sorted(d["id"] for d in left) == sorted([middle["id"], newest["id"]])
    assert oldest["id"] not in {d["id"] for d in left}
    off = hooks.settings.model_copy(update={"webhook_delivery_retention_days": 0})
    async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
        await session.execute(text("UPDATE webhook_deliveries SET created_at = now() - interval '400 days'"))
    assert await prune_old_deliveries(hooks.client, off, hooks.sm, t.id) == 0


async def test_each_delivery_opens_its_own_retry_window_and_a_retried_batch_hands_back_the_rest(
    hooks: Stack,
) -> None:
    """Two events of one entity: the first fails three times, the second waits behind it. The
    second's window opens at its own first attempt (not when the batch began), and the batch retried
    for the first answers once that one is delivered: the second goes in a batch of its own."""
    from db.engine import tenant_tx

    t = await hooks.new_tenant()
    h = hooks.auth(t)
    async with receiver("error", "error", "error", "ok") as r:
        hook = (
            await hooks.http.post("/api/v1/webhooks", json={"url": r.url, "event_types": ["*"]}, headers=h)
        ).json()
        async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
            for n in (1, 2):
                await session.execute(
                    text(
                        "INSERT INTO events (tenant_id, type, entity_type, entity_id, payload, "
                        "occurred_at, idempotency_key) "
                        "VALUES (:t, 'io.ad_aired', 'io', 'io-1', CAST(:p AS jsonb), now(), :k)"
                    ),
                    {"t": t.id, "p": f'{{"n": {n}}}', "k": f"test/{hook['id']}/{n}"},
                )
        await r.wait_for(5)
        await _deliveries_until(
            hooks,
            h,
            hook["id"],
            lambda rows: len(rows) == 2 and all(d["status"] == "delivered" for d in rows),
        )
    assert [int(Webhook(hook["secret"]).verify(q.body, q.headers)["payload"]["n"]) for q in r.requests] == [
        1,
        1,
        1,
        1,
        2,
    ]
    async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
        first, second = (
            await session.execute(
                text(
                    "SELECT first_attempt_at, delivered_at FROM webhook_deliveries WHERE endpoint_id = :e "
                    "ORDER BY event_id"
                ),
                {"e": hook["id"]},
            )
        ).all()
    # The second's first attempt came after the first was delivered (three retries later).
    assert second.first_attempt_at >= first.delivered_at > first.first_attempt_at
    history = await hooks.client.get_workflow_handle(hook["workflow_id"]).fetch_history()
    batches = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "deliver_webhooks"
    ]
    assert len(batches) >= 2


async def test_a_url_the_client_cannot_send_is_refused_at_creation_and_a_recorded_failure_later(
    hooks: Stack,
) -> None:
    """A control character or a name IDNA 2008 refuses: 422 naming `url` at creation; an endpoint
    that has one anyway (written before the check) fails each attempt on the record, never silently."""
    from db.engine import tenant_tx

    h = hooks.auth(await hooks.new_tenant())
    for bad in ("http://127.0.0.1:9/a\x7fb", "http://\u2603.net/hook"):
        refused = await hooks.http.post(
            "/api/v1/webhooks", json={"url": bad, "event_types": ["*"]}, headers=h
        )
        assert refused.status_code == 422 and "url" in refused.text, refused.text
        assert "cannot be sent" in refused.text, refused.text
    t = await hooks.new_tenant()
    h = hooks.auth(t)
    async with receiver("ok") as r:
        hook = (
            await hooks.http.post("/api/v1/webhooks", json={"url": r.url, "event_types": ["*"]}, headers=h)
        ).json()
        async with tenant_tx(sm=hooks.sm, tenant_id=t.id) as session:
            await session.execute(
                text("UPDATE webhook_endpoints SET url = :u WHERE id = :id"),
                {"u": r.url + "/a\x7fb", "id": hook["id"]},
            )
        assert (await hooks.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=h)).status_code == 202
        rows = await _deliveries_until(hooks, h, hook["id"], lambda rows: rows[0]["attempts"] >= 1)
        assert rows[0]["status"] == "pending" and rows[0]["last_error"] == "request failed (InvalidURL)"
        assert r.requests == []


def test_retention_must_outlive_the_retry_window() -> None:
    from settings import Settings

    with pytest.raises(ValueError, match="RETENTION_DAYS"):
        Settings(webhook_delivery_retention_days=2, webhook_retry_hours=72)
    assert Settings(webhook_delivery_retention_days=0).webhook_delivery_retention_days == 0
    assert (
        Settings(webhook_delivery_retention_days=4, webhook_retry_hours=72).webhook_delivery_retention_days
        == 4
    )
