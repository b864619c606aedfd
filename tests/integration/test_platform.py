"""Health, readiness, feature flags, the event log and the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.client import Client

from api.main import create_app
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.conftest import Stack, make_settings, start_stack
from tests.helpers.factories import make_deal, move
from worker import registrations
from workflows.deals import DealWorkflow


@pytest.fixture
async def flagged_stack(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    async for s in start_stack(database, client, sm, enable_deal_pipeline=False):
        yield s


async def test_health_and_ready(stack: Stack) -> None:
    assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
    r = await stack.http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "temporal": "ok"}


async def _ready_with(**overrides: object) -> httpx.Response:
    settings = overrides.pop("settings")
    app = create_app(settings.model_copy(update=overrides))  # type: ignore[attr-defined]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/readyz")


async def test_ready_names_what_is_down(database: EmbeddedDatabase, client: Client) -> None:
    settings = make_settings(database, client)
    r = await _ready_with(settings=settings, temporal_address="127.0.0.1:1")
    assert r.status_code == 503 and "temporal" in r.json()["detail"]
    assert r.json()["checks"]["database"] == "ok"
    bad_db = database.app_url.replace("host=", "host=/nonexistent")
    r = await _ready_with(settings=settings, database_url=bad_db)
    assert r.status_code == 503 and "database" in r.json()["detail"]
    assert r.json()["checks"]["temporal"] == "ok"


async def test_flag_off_hides_the_deal_pipeline(flagged_stack: Stack) -> None:
    t = await flagged_stack.new_tenant()
    h = flagged_stack.auth(t)
    for method, path in (
        ("GET", "/api/v1/deals"),
        ("POST", "/api/v1/deals"),
        ("PATCH", "/api/v1/deals/x/stage"),
    ):
        r = await flagged_stack.http.request(method, path, headers=h, json={})
        assert r.status_code == 404, (method, path)
        assert "ENABLE_DEAL_PIPELINE" in r.json()["detail"]
    workflows, activities = registrations(flagged_stack.settings, flagged_stack.sm)
    assert DealWorkflow not in workflows
    assert not {"record_stage_change", "record_stall", "load_deal"} & {a.__name__ for a in activities}


async def test_events_filter_and_page(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    deal = await make_deal(stack.http, h)
    for stage in ("qualified", "proposal", "negotiation", "proposal"):
        assert (await move(stack.http, h, deal["id"], stage)).status_code == 200
    seen = []
    cursor = None
    while True:
        params = {"type": "deal.stage_changed", "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await stack.http.get("/api/v1/events", params=params, headers=h)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in seen] == [
        ("lead", "qualified"),
        ("qualified", "proposal"),
        ("proposal", "negotiation"),
        ("negotiation", "proposal"),
    ]
    assert all(e["entity_id"] == deal["id"] and e["entity_type"] == "deal" for e in seen)
    r = await stack.http.get("/api/v1/events?type=deal.exploded", headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "type"]
    assert "deal.stage_changed" in r.json()["detail"][0]["msg"]


async def test_openapi_documents_every_route(stack: Stack) -> None:
    spec = (await stack.http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/tenants",
        "/api/v1/shows",
        "/api/v1/advertisers",
        "/api/v1/deals",
        "/api/v1/deals/{campaign_id}",
        "/api/v1/deals/{campaign_id}/stage",
        "/api/v1/events",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    assert "409" in paths["/api/v1/deals/{campaign_id}/stage"]["patch"]["responses"]


@pytest.fixture
async def no_imports_stack(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> AsyncIterator[Stack]:
    async for s in start_stack(database, client, sm, enable_etl_csv_upload=False):
        yield s


async def test_flag_off_hides_imports(no_imports_stack: Stack) -> None:
    t = await no_imports_stack.new_tenant()
    h = no_imports_stack.auth(t)
    for method, path in (("POST", "/api/v1/etl/upload"), ("GET", "/api/v1/etl/history")):
        r = await no_imports_stack.http.request(method, path, headers=h)
        assert r.status_code == 404 and "ENABLE_ETL_CSV_UPLOAD" in r.json()["detail"]
    workflows, _ = registrations(no_imports_stack.settings, no_imports_stack.sm)
    # The maintenance singleton runs whatever the flags (its phases skip what is off).
    assert [w.__name__ for w in workflows] == [
        "DealWorkflow",
        "IoBookingWorkflow",
        "MatchRecalculationWorkflow",
        "WebhookEndpointWorkflow",
        "MaintenanceWorkflow",
    ]
