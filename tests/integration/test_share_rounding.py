"""Rounding is not an error, through the real import path: rounded shares stored normalised, one warning."""

from __future__ import annotations

import math
import random
from decimal import ROUND_HALF_UP, Decimal

from tests.conftest import Stack
from tests.helpers.imports import upload


def _normalised_warnings(status: dict[str, object]) -> list[str]:
    warnings = status["warnings"]
    assert isinstance(warnings, list)
    return [w for w in warnings if "normalised" in w]


async def _shows(stack: Stack, h: dict[str, str]) -> dict[str, dict[str, object]]:
    items = (await stack.http.get("/api/v1/shows", params={"limit": 200}, headers=h)).json()["items"]
    return {s["external_id"]: s for s in items}


def _total(shares: object) -> float:
    assert isinstance(shares, dict)
    return math.fsum(shares.values())


async def test_rounded_rows_are_stored_normalised_with_one_warning(small_chunk_stack: Stack) -> None:
    stack = small_chunk_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    content = (
        b"external_id,name,avg_downloads,geo,age\n"
        b's-1,One,1000,"US:0.62;GB:0.2;CA:0.19","18-24:0.5;25-34:0.5"\n'  # geo 1.01
        b's-2,Two,1000,"US:62%;GB:39%","25-34:45%;35-44:56%"\n'  # geo 1.01, age 1.01
        b's-3,Three,1000,"US:0.5;GB:0.3","18-24:0.2"\n'  # under 1: kept as is
        b's-4,Four,1000,"US:0.34;GB:0.34;CA:0.34",\n'  # 1.02 for 3 shares
        b's-5,Five,1000,"US:0.6;GB:0.4","18-24:0.5;25-34:0.51"\n'  # age 1.01
        b's-6,Six,1000,"US:1",\n'
        b's-7,Seven,1000,"US:0.51;GB:0.51",\n'  # exactly at the bound for 2 shares
    )
    status = await upload(stack, h, "shows", "rounded.csv", content)
    assert status["status"] == "completed", status
    assert (status["rows_processed"], status["rows_inserted"], status["rows_failed"]) == (7, 7, 0)
    (warning,) = _normalised_warnings(status)
    assert "5 row(s)" in warning

    shows = await _shows(stack, h)
    for key in ("s-1", "s-2", "s-4", "s-7"):
        assert math.isclose(_total(shows[key]["geo"]), 1.0), shows[key]
    for key in ("s-2", "s-5"):
        assert math.isclose(_total(shows[key]["age"]), 1.0), shows[key]
    geo = shows["s-1"]["geo"]
    assert isinstance(geo, dict)
    assert math.isclose(geo["US"], 0.62 / 1.01) and math.isclose(geo["CA"], 0.19 / 1.01)
    assert shows["s-3"]["geo"] == {"US": 0.5, "GB": 0.3} and shows["s-3"]["age"] == {"18-24": 0.2}
    assert shows["s-5"]["geo"] == {"US": 0.6, "GB": 0.4}
    assert shows["s-7"]["geo"] == {"US": 0.5, "GB": 0.5}

    # Deals and downloads of those shows import too.
    await upload(stack, h, "advertisers", "a.csv", b"external_id,name\nadv-1,Acme\n")
    deals = await upload(
        stack,
        h,
        "campaigns",
        "c.csv",
        b"external_id,advertiser_external_id,show_external_id,name,value_usd,stage\n"
        b"c-1,adv-1,s-1,Q1,5000,proposal\nc-2,adv-1,s-2,Q2,6000,lead\nc-3,adv-1,s-7,Q3,7000,won\n",
    )
    assert deals["status"] == "completed" and deals["rows_inserted"] == 3, deals
    downloads = await upload(
        stack,
        h,
        "show_downloads",
        "d.csv",
        b"show_external_id,date,downloads,country\ns-1,2026-11-01,1200,US\ns-2,2026-11-01,900,GB\n"
        b"s-5,2026-11-02,80,\n",
    )
    assert downloads["status"] == "completed" and downloads["rows_inserted"] == 3, downloads

    # Importing the stored values again: nothing left to normalise, no warning.
    again = await upload(stack, h, "shows", "plain.csv", b"external_id,name,avg_downloads\ns-9,Nine,1\n")
    assert _normalised_warnings(again) == []


async def test_an_excess_beyond_rounding_is_a_row_error_naming_the_column(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    content = (
        b"external_id,name,avg_downloads,geo,age\n"
        b's-1,One,1000,"US:0.62;GB:0.2;CA:0.19",\n'
        b's-2,Two,1000,"US:0.6;GB:0.45","18-24:0.5"\n'  # geo 1.05 > 1.02
        b's-3,Three,1000,"US:0.5","18-24:0.6;25-34:0.43"\n'  # age 1.03 > 1.02
    )
    status = await upload(stack, h, "shows", "bad.csv", content)
    assert status["status"] == "completed_with_errors", status
    assert (status["rows_inserted"], status["rows_failed"]) == (1, 2)
    errors = sorted((e["row"], e["column"], e["value"], e["message"]) for e in status["errors"])
    assert [e[:3] for e in errors] == [(3, "geo", "US:0.6;GB:0.45"), (4, "age", "18-24:0.6;25-34:0.43")]
    assert errors[0][3].startswith("geo shares add up to 1.0500, more than 1")
    assert errors[1][3].startswith("age shares add up to 1.0300, more than 1")
    (warning,) = _normalised_warnings(status)
    assert "1 row(s)" in warning
    assert set(await _shows(stack, h)) == {"s-1"}


def _rounded(shares: list[float]) -> list[Decimal]:
    return [Decimal(repr(s)).quantize(Decimal("0.01"), ROUND_HALF_UP) for s in shares]


async def test_a_realistic_file_of_two_hundred_rounded_shows_imports_whole(stack: Stack) -> None:
    # Audience shares exported with two decimals, as ad-ops spreadsheets do.
    rng = random.Random(13)
    lines = ["external_id,name,avg_downloads,geo,age"]
    over = 0
    for i in range(200):
        countries = rng.sample(["US", "GB", "CA", "AU", "DE", "FR", "IE", "NZ"], rng.randint(2, 6))
        weights = [rng.random() for _ in countries]
        geo = _rounded([w / sum(weights) for w in weights])
        bands = ["13-17", "18-24", "25-34", "35-44", "45-54", "55+"]
        ages = [rng.random() for _ in bands]
        age = _rounded([a / sum(ages) for a in ages])
        over += int(sum(geo) > 1 or sum(age) > 1)
        geo_cell = ";".join(f"{c}:{s}" for c, s in zip(countries, geo, strict=True))
        age_cell = ";".join(f"{b}:{s}" for b, s in zip(bands, age, strict=True))
        lines.append(f'show-{i},Show {i},{1000 + i},"{geo_cell}","{age_cell}"')
    assert over > 20  # the file really is rounded
    h = stack.auth(await stack.new_tenant())
    status = await upload(stack, h, "shows", "200.csv", "\n".join(lines).encode())
    assert status["status"] == "completed", status
    assert (status["rows_inserted"], status["rows_failed"]) == (200, 0)
    (warning,) = _normalised_warnings(status)
    assert f"{over} row(s)" in warning
    for show in (await _shows(stack, h)).values():
        assert _total(show["geo"]) <= 1 + 1e-9 and _total(show["age"]) <= 1 + 1e-9
