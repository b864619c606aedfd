"""The OpenAPI document is the API: what it declares, and answers checked against its own schemas."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import jsonschema_rs
import pytest

from api.openapi import LINKS
from api.web import session as ws
from db.tenants import NewTenant
from tests.conftest import Stack
from tests.helpers.factories import make_advertiser, make_deal, move

CAMEL = re.compile(r"^[a-z]+(?:[A-Z][a-z0-9]*)*$")
# The writes that go through Temporal: each tells 503 (never applied) from 504 (outcome unknown)
# and takes an Idempotency-Key.
TEMPORAL_WRITES = ("changeDealStage", "bookIo", "reportIoDelivery", "cancelIo", "closeIoDelivery")


@pytest.fixture
async def spec(stack: Stack) -> dict[str, Any]:
    r = await stack.http.get("/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def operations(spec: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        op["operationId"]: (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }


def assert_documented(spec: dict[str, Any], operation_id: str, response: httpx.Response) -> None:
    """The answer's status is documented for the operation, and its JSON body fits that schema."""
    _, _, op = operations(spec)[operation_id]
    documented = op["responses"].get(str(response.status_code))
    assert documented is not None, f"{operation_id} answered an undocumented {response.status_code}"
    schema = documented["content"]["application/json"]["schema"]
    validator = jsonschema_rs.validator_for({**schema, "components": spec["components"]})
    errors = [e.message for e in validator.iter_errors(response.json())]
    assert not errors, (operation_id, response.status_code, response.json(), errors)


async def test_every_operation_has_a_stable_camel_case_id(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) and all(CAMEL.match(i) for i in ids), ids
    for wanted in ("createDeal", "getDeal", "listDeals", "changeDealStage", "bookIo", "getIo", "cancelIo"):
        assert wanted in ids
    # Schema names follow the ids too (generated clients name their models after them).
    assert "Body_uploadImport" in spec["components"]["schemas"]


async def test_security_is_declared_per_operation(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["SessionCookie"]["in"] == "cookie" and schemes["SessionCookie"]["name"] == ws.COOKIE
    assert schemes["CsrfToken"]["in"] == "header" and schemes["CsrfToken"]["name"] == ws.CSRF_HEADER
    assert "security" not in spec  # no global default: each operation says what it needs
    for op_id, (path, method, op) in operations(spec).items():
        security = op["security"]
        if path in ("/healthz", "/readyz"):
            assert security == [], op_id
        elif op_id == "createTenant":
            assert security == [{"AdminToken": []}]
            assert "401" in op["responses"]
        else:
            cookie = {"SessionCookie": [], "CsrfToken": []} if method != "get" else {"SessionCookie": []}
            assert security == [{"ApiKey": []}, cookie], op_id
            assert {"401", "503"} <= set(op["responses"]), op_id
            if method != "get":
                assert "403" in op["responses"], op_id
        if "{" in path:
            assert "404" in op["responses"], op_id
        if "requestBody" in op:
            assert {"400", "422"} <= set(op["responses"]), op_id


async def test_writes_through_temporal_document_their_fault_answers(spec: dict[str, Any]) -> None:
    ops = operations(spec)
    for op_id in TEMPORAL_WRITES:
        _, _, op = ops[op_id]
        responses = op["responses"]
        assert {"409", "422", "503", "504"} <= set(responses), op_id
        assert "never will be" in responses["503"]["description"], op_id
        assert "unknown" in responses["504"]["description"], op_id
        assert "Retry-After" in responses["503"]["headers"], op_id
        assert "Idempotency-Key" in [p["name"] for p in op["parameters"] if p["in"] == "header"], op_id
    _, _, stage = ops["changeDealStage"]
    assert "If-Match" in [p["name"] for p in stage["parameters"]]
    assert stage["responses"]["412"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PreconditionFailed"
    }
    assert "ETag" in stage["responses"]["200"]["headers"] and "ETag" in stage["responses"]["412"]["headers"]
    assert stage["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TransitionConflict"
    }


async def test_links_lead_from_creates_to_their_reads(spec: dict[str, Any]) -> None:
    ops = operations(spec)
    _, _, create = ops["createDeal"]
    links = create["responses"]["201"]["links"]
    assert links["GetDeal"] == {"operationId": "getDeal", "parameters": {"campaign_id": "$response.body#/id"}}
    assert links["ChangeDealStage"]["operationId"] == "changeDealStage"
    for source, by_status in LINKS.items():
        for status_code, named in by_status.items():
            assert status_code in ops[source][2]["responses"], (source, status_code)
            for name, link in named.items():
                _, _, target = ops[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", [])}
                assert set(link.get("parameters", {})) <= names, (source, name)
                if "requestBody" in link:
                    ref = target["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    fields = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
                    assert set(link["requestBody"]) <= set(fields), (source, name)


async def test_error_answers_fit_their_documented_schemas(
    stack: Stack, tenant: NewTenant, spec: dict[str, Any]
) -> None:
    h = stack.auth(tenant)
    r = await stack.http.get("/api/v1/deals")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_documented(spec, "listDeals", r)
    deal = await make_deal(stack.http, h)
    r = await move(stack.http, h, deal["id"], "won")
    assert_documented(spec, "changeDealStage", r)
    assert r.json()["current_stage"] == "lead"
    read = await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)
    assert (await move(stack.http, h, deal["id"], "qualified")).status_code == 200
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage",
        json={"stage": "proposal"},
        headers={**h, "If-Match": read.headers["ETag"]},
    )
    assert r.status_code == 412
    assert_documented(spec, "changeDealStage", r)
    r = await move(stack.http, h, deal["id"], "lost")  # no reason
    assert_documented(spec, "changeDealStage", r)
    r = await stack.http.get(f"/api/v1/deals/{uuid.uuid4()}", headers=h)
    assert_documented(spec, "getDeal", r)
    r = await stack.http.get("/api/v1/deals", params={"cursor": "nope"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert_documented(spec, "listDeals", r)
    r = await stack.http.post(
        "/api/v1/deals", content=b"{not json", headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422)
    assert_documented(spec, "createDeal", r)
    r = await stack.http.post(
        "/api/v1/io",
        json={
            "campaign_id": deal["id"],
            "ad_units": [
                {
                    "show_id": deal["show_id"],
                    "placement": "mid_roll",
                    "format": "host_read",
                    "insertion": "baked_in",
                    "air_date": "2031-03-02",
                    "duration_s": 60,
                    "pricing_model": "flat",
                    "flat_usd": 1000,
                }
            ],
        },
        headers=h,
    )
    assert r.status_code == 409 and r.json()["stage"] == "qualified", r.text
    assert_documented(spec, "bookIo", r)


async def test_a_cookie_write_without_its_csrf_token_is_the_documented_403(
    stack: Stack, tenant: NewTenant, spec: dict[str, Any]
) -> None:
    deal = await make_deal(stack.http, stack.auth(tenant))
    async with httpx.AsyncClient(transport=stack.http._transport, base_url="http://test") as browser:
        form = await browser.get("/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token
        await browser.post(
            "/signin", data={"api_key": tenant.api_key, "csrf_token": token.group(1), "next": "/"}
        )
        assert ws.COOKIE in browser.cookies
        r = await browser.patch(f"/api/v1/deals/{deal['id']}/stage", json={"stage": "qualified"})
        assert r.status_code == 403
        assert_documented(spec, "changeDealStage", r)
        r = await browser.get(f"/api/v1/deals/{deal['id']}")  # reads need the cookie only
        assert r.status_code == 200


async def test_a_405_names_every_method_of_the_resource(stack: Stack) -> None:
    # Starlette named only the methods of the first route matching the path ("Allow: POST").
    for method, path, allow in (
        ("DELETE", "/api/v1/deals", "GET, POST"),
        ("OPTIONS", "/api/v1/shows", "GET, POST"),
        ("DELETE", "/api/v1/match/weights", "GET, PUT"),
        ("PUT", "/api/match/recalculate", "GET, POST"),
    ):
        r = await stack.http.request(method, path)
        assert r.status_code == 405 and r.headers["Allow"] == allow, (method, path, r.headers)


async def test_numbers_in_bodies_are_json_numbers(stack: Stack, tenant: NewTenant) -> None:
    # Lax parsing took `true` (as 1) and "12" for numbers that the document types as numbers.
    h = stack.auth(tenant)
    r = await stack.http.put("/api/v1/match/weights", json={"geo": True}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "geo"], r.text
    r = await stack.http.post("/api/v1/shows", json={"name": "Show", "avg_downloads": "25000"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "avg_downloads"], r.text
    r = await stack.http.post(
        "/api/v1/shows", json={"name": "Show", "avg_downloads": 1, "geo": {"US": True}}, headers=h
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "geo", "US"], r.text
    # Ints still count as floats, and money keeps taking the strings the document states.
    assert (await stack.http.put("/api/v1/match/weights", json={"geo": 1}, headers=h)).status_code == 200
    adv = await make_advertiser(stack.http, h)
    r = await stack.http.post(
        "/api/v1/deals", json={"advertiser_id": adv["id"], "name": "Deal", "value_usd": "12000.50"}, headers=h
    )
    assert r.status_code == 201 and r.json()["value_usd"] == 12000.5


async def test_text_with_nul_is_a_422_naming_the_field(stack: Stack, tenant: NewTenant) -> None:
    # PostgreSQL cannot store U+0000: the insert failed and the answer was 503 "database unavailable; retry".
    h = stack.auth(tenant)
    r = await stack.http.post("/api/v1/keys", json={"name": "ci\u0000bot"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"], r.text
    r = await stack.http.post(
        "/api/v1/shows", json={"name": "S", "avg_downloads": 1, "categories": ["a\u0000"]}, headers=h
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "categories"], r.text
    deal = await make_deal(stack.http, h)
    r = await move(stack.http, h, deal["id"], "lost", reason="budget\u0000cut")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reason"], r.text
    r = await stack.http.get("/api/v1/events", params={"entity_id": "a\u0000"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "entity_id"], r.text
    assert (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()["stage"] == "lead"
