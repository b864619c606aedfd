"""The web app's edges over HTTP: sign-in, the session cookie, CSRF, redirects, SSE, slot hints."""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from api.web import session as ws
from db.engine import SessionMaker, tenant_tx
from db.models import AdUnit, Advertiser, ApiKey, Deal, IoBooking
from db.tenants import NewTenant
from tests.conftest import Stack, start_stack
from tests.helpers.factories import add_deal, make_deal, make_show


def _browser(stack: Stack) -> httpx.AsyncClient:
    """A second client on the same app with its own cookie jar, like a browser tab."""
    return httpx.AsyncClient(transport=stack.http._transport, base_url="http://test", timeout=30)


async def _sign_in(b: httpx.AsyncClient, key: str, next_path: str = "/") -> httpx.Response:
    form = await b.get("/signin", params={"next": next_path})
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    return await b.post("/signin", data={"api_key": key, "csrf_token": token.group(1), "next": next_path})


async def _csrf(b: httpx.AsyncClient, path: str = "/") -> str:
    page = await b.get(path)
    assert page.status_code == 200, page.text
    m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert m
    return m.group(1)


async def test_pages_without_a_session_redirect_to_sign_in(stack: Stack) -> None:
    async with _browser(stack) as b:
        pages = ("/", "/board", "/deals/x", "/imports", "/ios", "/ios/new", "/ios/y", "/matches", "/events")
        for path in pages:
            r = await b.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/signin?next="), path
        r = await b.get("/board?stage=won")
        assert r.headers["location"] == "/signin?next=%2Fboard%3Fstage%3Dwon"
        assert (await b.get("/api/v1/deals")).status_code == 401
        # A forged cookie is no session either.
        b.cookies.set(ws.COOKIE, "eyJoIjoiYWJjIn0.forged")
        assert (await b.get("/")).status_code == 303
        assert (await b.get("/api/v1/deals")).status_code == 401


async def test_sign_in_sets_an_httponly_cookie_and_the_api_accepts_it(
    stack: Stack, tenant: NewTenant
) -> None:
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, name="Cookie deal")
    async with _browser(stack) as b:
        r = await _sign_in(b, tenant.api_key, "/board")
        assert r.status_code == 303 and r.headers["location"] == "/board"
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith(f"{ws.COOKIE}=") and "HttpOnly" in set_cookie
        assert "samesite=lax" in set_cookie.lower() and tenant.api_key not in set_cookie
        page = await b.get("/board")
        assert page.status_code == 200 and 'data-page="board"' in page.text
        assert tenant.name in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        listed = await b.get("/api/v1/deals")
        assert listed.status_code == 200 and [d["id"] for d in listed.json()["items"]] == [deal["id"]]
        deal_page = await b.get(f"/deals/{deal['id']}")
        blob = re.search(r'data-params="([^"]+)"', deal_page.text)
        assert blob
        params = json.loads(html.unescape(blob.group(1)))
        assert params["deal_id"] == deal["id"]
        assert params["workflow_url"].endswith(f"/workflows/deal%2F{tenant.id}%2F{deal['id']}")


async def test_a_wrong_key_or_a_cross_site_form_does_not_sign_in(stack: Stack, tenant: NewTenant) -> None:
    async with _browser(stack) as b:
        r = await _sign_in(b, "sf_live_wrong")
        assert r.status_code == 401 and "That API key is not valid." in r.text
        assert ws.COOKIE not in b.cookies
    async with _browser(stack) as b:  # another site's form: no sign-in cookie to echo
        r = await b.post("/signin", data={"api_key": tenant.api_key, "csrf_token": "guess", "next": "/"})
        assert r.status_code == 403 and ws.COOKIE not in b.cookies
    async with _browser(stack) as b:  # an open redirect is not offered
        r = await _sign_in(b, tenant.api_key, "//evil.example/x")
        assert r.status_code == 303 and r.headers["location"] == "/"


async def test_cookie_writes_need_the_csrf_token(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    async with _browser(stack) as b:
        await _sign_in(b, tenant.api_key)
        token = await _csrf(b)
        path = f"/api/v1/deals/{deal['id']}/stage"
        r = await b.patch(path, json={"stage": "qualified"})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = await b.patch(path, json={"stage": "qualified"}, headers={ws.CSRF_HEADER: "not-the-token"})
        assert r.status_code == 403
        cross = {ws.CSRF_HEADER: token, "Sec-Fetch-Site": "cross-site"}
        assert (await b.patch(path, json={"stage": "qualified"}, headers=cross)).status_code == 403
        assert (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()["stage"] == "lead"
        r = await b.patch(path, json={"stage": "qualified"}, headers={ws.CSRF_HEADER: token})
        assert r.status_code == 200 and r.json()["stage"] == "qualified"
        # A bearer key is not ambient: API clients need no CSRF token.
        assert (await stack.http.patch(path, json={"stage": "proposal"}, headers=h)).status_code == 200


async def test_sign_out_needs_the_token_and_ends_the_session(stack: Stack, tenant: NewTenant) -> None:
    async with _browser(stack) as b:
        await _sign_in(b, tenant.api_key)
        token = await _csrf(b)
        assert (await b.post("/signout", data={"csrf_token": "forged"})).status_code == 403
        assert (await b.get("/")).status_code == 200
        r = await b.post("/signout", data={"csrf_token": token})
        assert r.status_code == 303 and r.headers["location"] == "/signin"
        assert (await b.get("/")).status_code == 303


@pytest.fixture
async def uncached(database: Any, client: Any, sm: SessionMaker) -> AsyncIterator[Stack]:
    """A stack that checks the key on every request (no key cache)."""
    async for s in start_stack(database, client, sm, worker=False, api_key_cache_seconds=0):
        yield s


async def test_a_revoked_key_ends_its_web_sessions(uncached: Stack) -> None:
    tenant = await uncached.new_tenant()
    async with _browser(uncached) as b:
        await _sign_in(b, tenant.api_key)
        assert (await b.get("/")).status_code == 200
        async with tenant_tx(sm=uncached.sm, tenant_id=tenant.id) as s:
            await s.execute(update(ApiKey).values(revoked_at=datetime.now(UTC)))
        r = await b.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
        assert (await b.get("/api/v1/deals")).status_code == 401


def _frames(body: str) -> list[dict[str, Any]]:
    out = []
    for block in body.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        ids = [line[4:] for line in block.splitlines() if line.startswith("id: ")]
        if data:
            out.append({"id": ids[0], **json.loads(data[0])})
    return out


async def _seed_events(sm: SessionMaker, tenant: uuid.UUID, n: int) -> None:
    async with tenant_tx(sm=sm, tenant_id=tenant) as s:
        adv = Advertiser(tenant_id=tenant, name="Acme")
        s.add(adv)
    for i in range(n):
        await add_deal(sm, tenant, adv.id, f"Deal {i}", 100)


async def test_the_event_stream_sends_the_backlog_then_resumes_after_the_last_id(
    stack: Stack, tenant: NewTenant
) -> None:
    await _seed_events(stack.sm, tenant.id, 5)
    other = await stack.new_tenant("Other")
    await _seed_events(stack.sm, other.id, 2)
    h = stack.auth(tenant)
    r = await stack.http.get("/api/v1/events/stream", params={"backlog": 3, "max_seconds": 0.3}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = _frames(r.text)
    all_events = (await stack.http.get("/api/v1/events", headers=h)).json()["items"]
    assert [f["id"] for f in frames] == [e["id"] for e in all_events[-3:]]
    assert frames[-1]["type"] == "deal.created" and frames[-1]["payload"]
    # Reconnecting with Last-Event-ID: exactly what came after, nothing of the other tenant.
    resumed = await stack.http.get(
        "/api/v1/events/stream",
        params={"max_seconds": 0.3},
        headers={**h, "Last-Event-ID": all_events[1]["id"]},
    )
    assert [f["id"] for f in _frames(resumed.text)] == [e["id"] for e in all_events[2:]]
    bad = await stack.http.get("/api/v1/events/stream", headers={**h, "Last-Event-ID": "abc"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]
    assert (await stack.http.get("/api/v1/events/stream")).status_code == 401


async def test_availability_counts_live_units_per_day(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    show = await make_show(stack.http, h, name="Slots", slots={"pre_roll": 1, "mid_roll": 2, "post_roll": 1})
    deal = await make_deal(stack.http, h, show=show)
    day = datetime.now(UTC).date() + timedelta(days=5)
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        io = IoBooking(tenant_id=tenant.id, campaign_id=uuid.UUID(deal["id"]))
        s.add(io)
        await s.flush()
        for status in ("scheduled", "cancelled"):
            s.add(
                AdUnit(
                    tenant_id=tenant.id,
                    io_id=io.id,
                    show_id=uuid.UUID(show["id"]),
                    placement="mid_roll",
                    format="host_read",
                    insertion="dynamic",
                    air_date=day,
                    duration_s=60,
                    pricing_model="flat",
                    flat_usd=Decimal(500),
                    status=status,
                )
            )
        await s.execute(update(Deal).where(Deal.id == uuid.UUID(deal["id"])).values(stage="won"))
    r = await stack.http.get(
        "/api/v1/io/availability",
        params={"show_id": show["id"], "placement": "mid_roll", "start": day.isoformat(), "days": 3},
        headers=h,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["capacity"] == 2 and body["placement"] == "mid_roll"
    assert body["days"][0] == {"date": day.isoformat(), "booked": 1, "free": 1}  # the cancelled one is free
    assert [d["free"] for d in body["days"]] == [1, 2, 2]
    r = await stack.http.get(
        "/api/v1/io/availability", params={"show_id": show["id"], "placement": "side_roll"}, headers=h
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "placement"]
    r = await stack.http.get(
        "/api/v1/io/availability", params={"show_id": str(uuid.uuid4()), "placement": "mid_roll"}, headers=h
    )
    assert r.status_code == 404
    other = await stack.new_tenant("Other")
    r = await stack.http.get(
        "/api/v1/io/availability",
        params={"show_id": show["id"], "placement": "mid_roll"},
        headers=stack.auth(other),
    )
    assert r.status_code == 404


async def test_static_files_are_served_without_a_session(stack: Stack) -> None:
    async with _browser(stack) as b:
        css = await b.get("/static/app.css")
        js = await b.get("/static/app.js")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.headers["cache-control"] == "no-cache" and js.headers["etag"]
