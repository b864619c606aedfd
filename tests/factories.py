"""Small factories that build data through the public API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


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
