"""Shows and advertisers: fields of the import formats, validation, paging."""

from __future__ import annotations

import math

import pytest

from tests.conftest import Stack
from tests.helpers.factories import make_advertiser, make_show


async def test_show_round_trip(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    show = await make_show(
        stack.http,
        h,
        external_id="show-001",
        name="The Daily Grind",
        categories=["Business", "News"],
        avg_downloads=85000,
        episodes_per_month=20,
        cpm_usd=28.5,
        geo={"us": 0.62, "GB": 0.2},
        age={"25-34": 0.45, "18-24": 0.2},
        female_share=0.44,
        brand_safety={"obscenity_profanity": "high"},
        rss_url="https://feeds.example.com/grind.xml",
    )
    got = (await stack.http.get(f"/api/v1/shows/{show['id']}", headers=h)).json()
    assert got["geo"] == {"US": 0.62, "GB": 0.2}
    assert got["brand_safety"] == {"obscenity_profanity": "high"}
    assert got["slots"] == {"pre_roll": 1, "mid_roll": 2, "post_roll": 1}
    assert got["cpm_usd"] == 28.5 and got["external_id"] == "show-001"


async def test_advertiser_round_trip(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    adv = await make_advertiser(
        stack.http,
        h,
        name="Acme",
        domain="acme.com",
        target_geo=["us", "CA"],
        target_age=["25-34"],
        brand_safety_tolerance="low",
        budget_usd=50000,
        flight_start="2026-12-01",
        flight_end="2027-02-28",
    )
    got = (await stack.http.get(f"/api/v1/advertisers/{adv['id']}", headers=h)).json()
    assert got["target_geo"] == ["US", "CA"] and got["brand_safety_tolerance"] == "low"
    assert got["flight_end"] == "2027-02-28"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"avg_downloads": -1}, "avg_downloads"),
        ({"geo": {"US": 0.8, "GB": 0.4}}, "more than 1"),
        ({"geo": {"USA": 0.5}}, "country code"),
        ({"age": {"30-40": 0.5}}, "age band"),
        ({"brand_safety": {"gossip": "high"}}, "GARM"),
        ({"brand_safety": {"hate_speech": "extreme"}}, "brand_safety"),
        ({"female_share": 1.5}, "female_share"),
        ({"rss_url": "ftp://x"}, "rss_url"),
        ({"name": ""}, "name"),
        ({"slots": {"mid_roll": 11}}, "slots"),
    ],
)
async def test_bad_show_is_422_naming_the_field(stack: Stack, fields: dict[str, object], needle: str) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    body = {"name": "Show", "avg_downloads": 100, **fields}
    r = await stack.http.post("/api/v1/shows", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert needle in str(r.json()["detail"])
    assert (await stack.http.get("/api/v1/shows", headers=h)).json()["items"] == []


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"brand_safety_tolerance": "floor"}, "brand_safety_tolerance"),
        ({"flight_start": "2027-01-01", "flight_end": "2026-01-01"}, "flight_end"),
        ({"flight_start": "soon"}, "flight_start"),
        ({"domain": "not a domain"}, "domain"),
        ({"budget_usd": -5}, "budget_usd"),
        ({"target_age": ["teens"]}, "age band"),
    ],
)
async def test_bad_advertiser_is_422(stack: Stack, fields: dict[str, object], needle: str) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post("/api/v1/advertisers", json={"name": "A", **fields}, headers=h)
    assert r.status_code == 422, r.text
    assert needle in str(r.json()["detail"])


async def test_duplicate_external_id_is_409(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    await make_show(stack.http, h, external_id="dup")
    r = await stack.http.post(
        "/api/v1/shows", json={"name": "Other", "avg_downloads": 1, "external_id": "dup"}, headers=h
    )
    assert r.status_code == 409 and "dup" in r.json()["detail"]
    # Another tenant may use the same external id.
    other = await stack.new_tenant()
    await make_show(stack.http, stack.auth(other), external_id="dup")


async def test_paging_visits_every_row_once(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    ids = {(await make_advertiser(stack.http, h))["id"] for _ in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await stack.http.get("/api/v1/advertisers", params=params, headers=h)).json()
        assert len(page["items"]) <= 3
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    r = await stack.http.get("/api/v1/advertisers?cursor=garbage", headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    r = await stack.http.get("/api/v1/advertisers?limit=0", headers=h)
    assert r.status_code == 422


async def test_rounded_shares_are_accepted_and_stored_normalised(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    body = {
        "name": "Rounded",
        "avg_downloads": 100,
        "geo": {"US": 0.62, "GB": 0.2, "CA": 0.19},  # 1.01: two-decimal rounding
        "age": {"18-24": 0.51, "25-34": 0.51},  # 1.02: the bound for two shares
    }
    r = await stack.http.post("/api/v1/shows", json=body, headers=h)
    assert r.status_code == 201, r.text
    created = r.json()
    got = (await stack.http.get(f"/api/v1/shows/{created['id']}", headers=h)).json()
    for shown in (created, got):
        assert math.isclose(math.fsum(shown["geo"].values()), 1.0, abs_tol=1e-12)
        assert math.isclose(shown["geo"]["US"], 0.62 / 1.01)
        assert shown["age"] == {"18-24": 0.5, "25-34": 0.5}
    # A sum below 1 is kept as sent.
    r = await stack.http.post(
        "/api/v1/shows", json={"name": "Partial", "avg_downloads": 1, "geo": {"US": 0.5}}, headers=h
    )
    assert r.status_code == 201 and r.json()["geo"] == {"US": 0.5}


@pytest.mark.parametrize(
    ("field", "shares", "total"),
    [
        ("geo", {"US": 0.62, "GB": 0.41}, "1.0300"),
        ("age", {"18-24": 0.6, "25-34": 0.3, "35-44": 0.14}, "1.0400"),
    ],
)
async def test_an_excess_beyond_rounding_is_a_422_naming_the_field(
    stack: Stack, field: str, shares: dict[str, float], total: str
) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post(
        "/api/v1/shows", json={"name": "S", "avg_downloads": 1, field: shares}, headers=h
    )
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"][-1] == field
    assert f"{field} shares add up to {total}, more than 1" in error["msg"]
    assert (await stack.http.get("/api/v1/shows", headers=h)).json()["items"] == []
