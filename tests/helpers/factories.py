"""Small factories that build data through the public API."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import update

from db.deals import insert_deal
from db.engine import SessionMaker, tenant_tx
from db.models import Advertiser, Deal
from db.tenants import create_tenant
from domain.deals import DealWorkflowInput
from domain.stages import Stage


async def make_show(http: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Creates a show and returns it."""
    body = {"name": f"Show {uuid.uuid4().hex[:6]}", "avg_downloads": 25000, **fields}
    r = await http.post("/api/v1/shows", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def make_advertiser(http: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Creates an advertiser and returns it."""
    body = {"name": f"Advertiser {uuid.uuid4().hex[:6]}", "domain": "example.com", **fields}
    r = await http.post("/api/v1/advertisers", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def make_deal(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    advertiser: dict[str, Any] | None = None,
    show: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Creates a deal (and an advertiser and show if none given) and returns it."""
    advertiser = advertiser or await make_advertiser(http, headers)
    show = show or await make_show(http, headers)
    body = {
        "advertiser_id": advertiser["id"],
        "show_id": show["id"],
        "name": "Q1 host-read flight",
        "value_usd": 12000,
        **fields,
    }
    r = await http.post("/api/v1/deals", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def move(
    http: httpx.AsyncClient, headers: dict[str, str], deal_id: str, stage: str, reason: str | None = None
) -> httpx.Response:
    """Sends the stage PATCH."""
    body: dict[str, Any] = {"stage": stage}
    if reason is not None:
        body["reason"] = reason
    return await http.patch(f"/api/v1/deals/{deal_id}/stage", json=body, headers=headers)


async def seed_deal(
    sm: SessionMaker, *, stage: Stage = Stage.LEAD, at: datetime | None = None
) -> tuple[uuid.UUID, Deal]:
    """A fresh tenant with one deal written straight into PostgreSQL (no workflow started)."""
    tenant = await create_tenant(sm=sm, name=f"wf {uuid.uuid4().hex[:6]}")
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        adv = Advertiser(tenant_id=tenant.id, name="Acme")
        s.add(adv)
        await s.flush()
        campaign = await insert_deal(
            session=s,
            tenant_id=tenant.id,
            advertiser_id=adv.id,
            show_id=None,
            name="Spring flight",
            value_usd=Decimal("12000"),
            stage=stage,
            at=at or datetime.now(UTC),
        )
    return tenant.id, campaign


async def add_deal(
    sm: SessionMaker,
    tenant_id: uuid.UUID,
    advertiser_id: uuid.UUID,
    name: str,
    value_usd: int,
    stage: Stage = Stage.LEAD,
    *,
    created: datetime | None = None,
    changed: datetime | None = None,
) -> uuid.UUID:
    """A deal written straight into PostgreSQL (history, deal.created), optionally moved at `changed`."""
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
        c = await insert_deal(
            session=s,
            tenant_id=tenant_id,
            advertiser_id=advertiser_id,
            show_id=None,
            name=name,
            value_usd=Decimal(value_usd),
            stage=stage,
            at=created or datetime.now(UTC),
        )
        if changed is not None:
            await s.execute(update(Deal).where(Deal.id == c.id).values(stage_changed_at=changed))
    return c.id


def deal_input(tenant_id: uuid.UUID, c: Deal, **overrides: Any) -> DealWorkflowInput:
    """The workflow input of a seeded deal."""
    values: dict[str, Any] = {
        "tenant_id": str(tenant_id),
        "campaign_id": str(c.id),
        "name": c.name,
        "advertiser_id": str(c.advertiser_id),
        "advertiser_name": "Acme",
        "value_usd": float(c.value_usd),
        "stage": Stage(c.stage),
        "stage_entered_at": c.stage_changed_at,
    }
    return DealWorkflowInput(**(values | overrides))


def ad_unit(show_id: str, air_date: date, **fields: Any) -> dict[str, Any]:
    """An ad unit body: a 60 s host-read mid-roll at $25 CPM for 10,000 impressions unless told."""
    return {
        "show_id": show_id,
        "placement": "mid_roll",
        "format": "host_read",
        "insertion": "dynamic",
        "air_date": air_date.isoformat(),
        "duration_s": 60,
        "pricing_model": "cpm",
        "cpm_usd": 25,
        "impressions_goal": 10000,
        **fields,
    }


async def book_io(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    campaign_id: str,
    units: list[dict[str, Any]],
    **fields: Any,
) -> httpx.Response:
    """Sends POST /api/v1/io."""
    return await http.post(
        "/api/v1/io", json={"campaign_id": campaign_id, "ad_units": units, **fields}, headers=headers
    )
