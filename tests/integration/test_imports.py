"""Spreadsheet imports end to end: upload over HTTP, CsvImportWorkflow, rows in PostgreSQL."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import openpyxl
import pytest

from domain.events import DEAL_CREATED_FIELDS
from tests.conftest import Stack
from tests.helpers.factories import move
from tests.helpers.imports import upload
from workflows.deals import DealWorkflow
from workflows.starters import deal_workflow_id

SHOWS_CSV = (
    "\ufeffExternal_ID ; Name;categories; AVG_DOWNLOADS ;cpm_usd;geo;age;female_share;brand_safety;colour\n"
    'show-1;The Daily Grind;"Business;News";85000;$28.50;"US:0.62;GB:0.2";"25-34:45%;18-24:0.2";44%;'
    "obscenity_profanity:high;red\n"
    'show-2;"Trail; and Error";Sports;32,000;24;US:55%;35-44:0.3;0.51;;blue\n'
).encode()


async def test_shows_csv_with_bom_semicolons_and_mixed_headers(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    content = SHOWS_CSV
    status = await upload(stack, h, "shows", "shows.csv", content)
    assert status["status"] == "completed", status
    assert (status["rows_processed"], status["rows_inserted"], status["rows_updated"]) == (2, 2, 0)
    assert any("colour" in w for w in status["warnings"])
    shows = {s["external_id"]: s for s in (await stack.http.get("/api/v1/shows", headers=h)).json()["items"]}
    grind = shows["show-1"]
    assert grind["categories"] == ["Business", "News"] and grind["cpm_usd"] == 28.5
    assert grind["geo"] == {"US": 0.62, "GB": 0.2} and grind["age"] == {"25-34": 0.45, "18-24": 0.2}
    assert grind["female_share"] == 0.44 and grind["brand_safety"] == {"obscenity_profanity": "high"}
    assert shows["show-2"]["name"] == "Trail; and Error" and shows["show-2"]["avg_downloads"] == 32000

    again = await upload(stack, h, "shows", "shows.csv", content)
    assert (again["rows_inserted"], again["rows_updated"]) == (0, 2)
    assert len((await stack.http.get("/api/v1/shows", headers=h)).json()["items"]) == 2
    events = (await stack.http.get("/api/v1/events?type=etl.import_completed", headers=h)).json()["items"]
    assert [e["payload"]["rows_updated"] for e in events] == [0, 2]


def _xlsx(rows: list[list[Any]]) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


async def test_advertisers_xlsx_with_date_cells(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    content = _xlsx(
        [
            ["external_id", "name", "domain", "target_geo", "budget_usd", "flight_start", "flight_end"],
            ["adv-1", "Acme", "acme.com", "US;CA", 250000, date(2026, 12, 1), date(2027, 2, 28)],
            ["adv-2", "Quill VPN", "quillvpn.com", "GB", "$12,000", "2026-12-01", "2026-11-01"],
        ]
    )
    status = await upload(stack, h, "advertisers", "advertisers.xlsx", content)
    assert status["status"] == "completed_with_errors", status
    assert (status["rows_inserted"], status["rows_failed"]) == (1, 1)
    assert status["errors"][0]["row"] == 3 and "flight" in (status["errors"][0]["column"] or "")
    advs = (await stack.http.get("/api/v1/advertisers", headers=h)).json()["items"]
    assert [(a["external_id"], a["flight_start"], a["target_geo"]) for a in advs] == [
        ("adv-1", "2026-12-01", ["US", "CA"])
    ]


async def test_campaigns_become_deals_with_workflows(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    await upload(stack, h, "advertisers", "a.csv", b"external_id,name\nadv-1,Acme\nadv-2,Ledgerly\n")
    await upload(
        stack, h, "shows", "s.csv", b"external_id,name,avg_downloads\nshow-1,The Daily Grind,85000\n"
    )
    campaigns = (
        b"external_id\tadvertiser_external_id\tshow_external_id\tname\tvalue_usd\tstage\tlost_reason\n"
        b"c-1\tadv-1\tshow-1\tQ1 flight\t$12,000\tproposal\t\n"
        b"c-2\tadv-2\t\tQ2 flight\t12,000.00 USD\tnegotiation\t\n"
        b"c-3\tadv-9\tshow-1\tGhost\t5000\tlead\t\n"
        b"c-4\tadv-1\tshow-1\tOld\t4000\tlost\tBudget cut\n"
    )
    status = await upload(stack, h, "campaigns", "deals.tsv", campaigns)
    assert status["status"] == "completed_with_errors", status
    assert (status["rows_inserted"], status["rows_failed"], status["workflows_started"]) == (3, 1, 2)
    err = status["errors"][0]
    assert (err["row"], err["column"], err["value"]) == (4, "advertiser_external_id", "adv-9")
    deals = {d["name"]: d for d in (await stack.http.get("/api/v1/deals", headers=h)).json()["items"]}
    assert deals["Q1 flight"]["stage"] == "proposal" and deals["Q1 flight"]["value_usd"] == 12000
    assert deals["Old"]["stage"] == "lost" and deals["Old"]["lost_reason"] == "Budget cut"
    desc = await stack.client.get_workflow_handle(
        deal_workflow_id(str(t.id), deals["Q2 flight"]["id"])
    ).describe()
    assert desc.status is not None and desc.status.name == "RUNNING"
    r = await move(stack.http, h, deals["Q1 flight"]["id"], "won")
    assert r.status_code == 200 and r.json()["history"][0]["reason"] == "imported"
    state = await stack.client.get_workflow_handle(
        deal_workflow_id(str(t.id), deals["Q2 flight"]["id"])
    ).query(DealWorkflow.state)
    assert state.stage.value == "negotiation"

    # An imported deal's deal.created reads like one created through the API: the same fields.
    r = await stack.http.post(
        "/api/v1/deals",
        json={"name": "By hand", "advertiser_id": deals["Q1 flight"]["advertiser_id"], "value_usd": 900},
        headers=h,
    )
    assert r.status_code == 201, r.text
    created = {
        e["entity_id"]: e["payload"]
        for e in (await stack.http.get("/api/v1/events?type=deal.created", headers=h)).json()["items"]
    }
    by_hand, imported = created[r.json()["id"]], created[deals["Q1 flight"]["id"]]
    assert sorted(by_hand) == sorted(imported) == sorted(DEAL_CREATED_FIELDS)
    assert imported == {
        "name": "Q1 flight",
        "stage": "proposal",
        "value_usd": 12000.0,
        "advertiser_id": deals["Q1 flight"]["advertiser_id"],
        "show_id": deals["Q1 flight"]["show_id"],
        "import_id": status["import_id"],
    }
    assert by_hand["import_id"] is None and by_hand["show_id"] is None and by_hand["name"] == "By hand"


async def test_show_downloads_and_in_file_duplicates(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    await upload(stack, h, "shows", "s.csv", b"external_id,name,avg_downloads\nshow-1,Grind,85000\n")
    content = (
        b"show_external_id,date,downloads,country\n"
        b"show-1,2026-11-01,1200,US\n"
        b"show-1,2026-11-01,1300,\n"
        b"show-1,2026-11-01,1250,US\n"
        b"show-2,2026-11-01,10,US\n"
        b"show-1,11/02/2026,10,US\n"
    )
    status = await upload(stack, h, "show_downloads", "dl.csv", content)
    assert status["status"] == "completed_with_errors", status
    assert status["rows_inserted"] == 2 and status["rows_failed"] == 2
    assert any("last row wins" in w for w in status["warnings"])
    cols = sorted((e["row"], e["column"]) for e in status["errors"])
    assert cols == [(5, "show_external_id"), (6, "date")]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not a CSV or XLSX"),
        ("shows.csv", b"name,categories\nx,y\n", "external_id"),
        ("shows.csv", b"external_id,name,avg_downloads\n", "no data rows"),
    ],
)
async def test_file_level_failures(stack: Stack, name: str, content: bytes, needle: str) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    status = await upload(stack, h, "shows", name, content)
    assert status["status"] == "failed" and needle in status["error"], status
    assert (await stack.http.get("/api/v1/shows", headers=h)).json()["items"] == []
    events = (await stack.http.get("/api/v1/events?type=etl.error", headers=h)).json()["items"]
    assert len(events) == 1 and needle in events[0]["payload"]["reason"]


async def test_bad_uploads_are_refused_at_once(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("a.csv", b"x")}, data={"kind": "podcasts"}, headers=h
    )
    assert r.status_code == 422 and "kind" in str(r.json()["detail"])
    r = await stack.http.post("/api/v1/etl/upload", data={"kind": "shows"}, headers=h)
    assert r.status_code == 422 and "file" in str(r.json()["detail"])
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("a.csv", b"")}, data={"kind": "shows"}, headers=h
    )
    assert r.status_code == 422 and "empty" in str(r.json()["detail"])
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("", b"a,b\n1,2\n")}, data={"kind": "shows"}, headers=h
    )
    assert r.status_code == 422 and "file" in str(r.json()["detail"])
    assert (await stack.http.get("/api/v1/etl/history", headers=h)).json()["items"] == []


async def test_too_large_is_413_and_stores_nothing(small_limit_stack: Stack) -> None:
    stack = small_limit_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    big = b"external_id,name,avg_downloads\n" + b"x,y,1\n" * 300_000
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("big.csv", big)}, data={"kind": "shows"}, headers=h
    )
    assert r.status_code == 413 and "MB" in r.json()["detail"]
    assert (await stack.http.get("/api/v1/etl/history", headers=h)).json()["items"] == []


async def test_history_and_isolation(stack: Stack) -> None:
    a, b = await stack.new_tenant("A"), await stack.new_tenant("B")
    ha, hb = stack.auth(a), stack.auth(b)
    first = await upload(stack, ha, "shows", "one.csv", b"external_id,name,avg_downloads\ns,S,1\n")
    second = await upload(stack, ha, "shows", "two.csv", b"external_id,name,avg_downloads\ns,S,2\n")
    hist = (await stack.http.get("/api/v1/etl/history", headers=ha)).json()["items"]
    assert [i["import_id"] for i in hist] == [second["import_id"], first["import_id"]]
    assert (await stack.http.get(f"/api/v1/etl/status/{first['import_id']}", headers=hb)).status_code == 404
    assert (await stack.http.get("/api/v1/etl/history", headers=hb)).json()["items"] == []


@pytest.mark.parametrize(
    ("kind", "rows", "check"),
    [
        (
            "shows",
            [
                ["External ID", "Name", "Avg Downloads", "CPM USD", "Female Share"],
                ["s-1", "Grind", 85000, 28.5, 0.44],
            ],
            ("/api/v1/shows", "s-1", "avg_downloads", 85000),
        ),
        (
            "campaigns",
            [
                ["external_id", "advertiser_external_id", "name", "value_usd", "expected_close"],
                ["c-1", "adv-1", "Q1", "$18,400", date(2027, 1, 15)],
            ],
            ("/api/v1/deals", "c-1", "value_usd", 18400.0),
        ),
        (
            "show_downloads",
            [["show_external_id", "date", "downloads", "country"], ["s-1", date(2026, 11, 1), 1200, "us"]],
            None,
        ),
    ],
)
async def test_each_kind_from_xlsx(
    stack: Stack, kind: str, rows: list[list[Any]], check: tuple[str, str, str, Any] | None
) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    await upload(stack, h, "advertisers", "a.csv", b"external_id,name\nadv-1,Acme\n")
    await upload(stack, h, "shows", "s.csv", b"external_id,name,avg_downloads\ns-1,Grind,1\n")
    status = await upload(stack, h, kind, f"{kind}.xlsx", _xlsx(rows))
    assert status["status"] == "completed", status
    assert status["rows_processed"] == 1
    if check:
        path, key, field, expected = check
        items = (await stack.http.get(path, headers=h)).json()["items"]
        assert [i[field] for i in items if i.get("external_id") == key] == [expected]


async def test_windows_1252_and_formula_text(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    content = 'external_id,name,avg_downloads\ns-1,Café Society,100\ns-2,=HYPERLINK("x"),5\n'.encode("cp1252")
    status = await upload(stack, h, "shows", "shows.csv", content)
    assert status["status"] == "completed", status
    assert any("Windows-1252" in w for w in status["warnings"])
    names = sorted(s["name"] for s in (await stack.http.get("/api/v1/shows", headers=h)).json()["items"])
    assert names == ['=HYPERLINK("x")', "Café Society"]


async def test_a_full_chunk_of_wide_rows(stack: Stack) -> None:
    """5000 shows x 14 columns is more bind parameters than one PostgreSQL statement takes."""
    t = await stack.new_tenant()
    h = stack.auth(t)
    head = (
        "external_id,name,categories,avg_downloads,episodes_per_month,cpm_usd,geo,age,female_share,rss_url\n"
    )
    body = "".join(
        f"s-{i},Show {i},Comedy,{1000 + i},4,$25,US:0.5,25-34:50%,40%,https://x.fm/{i}.xml\n"
        for i in range(6000)
    )
    status = await upload(stack, h, "shows", "many.csv", (head + body).encode())
    assert status["status"] == "completed", status
    assert (status["rows_inserted"], status["rows_failed"]) == (6000, 0)
