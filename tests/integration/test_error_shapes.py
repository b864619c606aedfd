"""The one error shape per status (api/errors.py), walked over representative error paths.

A 422 is FastAPI's validation list naming its field, whether the request model or the server's
own check refused it; every other error is a sentence in `detail` plus a `code`, with what a
client needs (allowed stages, the current ETag, the upload limit) at the top level.
"""

from __future__ import annotations

import uuid
from typing import Any

from db.tenants import NewTenant
from tests.conftest import Stack
from tests.helpers.factories import make_deal, move


def assert_problem(body: dict[str, Any], code: str) -> None:
    """The non-422 shape: a sentence in detail, the code, no dict anywhere in detail."""
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["code"] == code, body


def assert_validation(body: dict[str, Any], loc: list[Any]) -> None:
    """The 422 shape: a list of {loc, msg, type}, the first naming `loc`."""
    assert list(body) == ["detail"], body
    assert isinstance(body["detail"], list) and body["detail"], body
    for item in body["detail"]:
        assert set(item) == {"loc", "msg", "type"}, item
    assert body["detail"][0]["loc"] == loc, body


async def test_unknown_deal_is_a_404_problem(stack: Stack, tenant: NewTenant) -> None:
    r = await stack.http.get(f"/api/v1/deals/{uuid.uuid4()}", headers=stack.auth(tenant))
    assert r.status_code == 404
    assert_problem(r.json(), "not_found")
    assert "not found" in r.json()["detail"]


async def test_a_forbidden_stage_move_names_the_allowed_stages_beside_detail(
    stack: Stack, tenant: NewTenant
) -> None:
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    r = await move(stack.http, h, deal["id"], "won")
    assert r.status_code == 409
    body = r.json()
    assert_problem(body, "stage_not_allowed")
    assert body["current_stage"] == "lead" and body["requested_stage"] == "won"
    assert body["allowed_stages"] == ["qualified", "proposal", "negotiation", "lost"]


async def test_a_stale_if_match_is_a_412_with_the_current_etag(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    old = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).headers["ETag"]
    assert (await move(stack.http, h, deal["id"], "qualified")).status_code == 200
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "proposal"}, headers={**h, "If-Match": old}
    )
    assert r.status_code == 412
    body = r.json()
    assert_problem(body, "stage_moved")
    assert body["current_stage"] == "qualified"
    assert body["etag"] == r.headers["ETag"] != old


async def test_a_hand_made_422_reads_like_a_request_model_422(stack: Stack, tenant: NewTenant) -> None:
    h = stack.auth(tenant)
    # The request model refuses an unknown stage.
    deal = await make_deal(stack.http, h)
    r = await move(stack.http, h, deal["id"], "closed")
    assert r.status_code == 422
    assert_validation(r.json(), ["body", "stage"])
    # The server's own checks: an advertiser not in this tenant, a cursor it did not return.
    r = await stack.http.post(
        "/api/v1/deals",
        json={"name": "x", "advertiser_id": str(uuid.uuid4()), "value_usd": 10},
        headers=h,
    )
    assert r.status_code == 422
    assert_validation(r.json(), ["body", "advertiser_id"])
    assert r.json()["detail"][0]["type"] == "not_found"
    r = await stack.http.get("/api/v1/deals", params={"cursor": "nope"}, headers=h)
    assert r.status_code == 422
    assert_validation(r.json(), ["query", "cursor"])
    r = await stack.http.get("/api/v1/events", params={"type": "deal.exploded"}, headers=h)
    assert r.status_code == 422
    assert_validation(r.json(), ["query", "type"])


async def test_without_a_key_is_a_401_problem(stack: Stack) -> None:
    r = await stack.http.get("/api/v1/deals")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(r.json(), "unauthorized")


async def test_an_upload_too_large_is_a_413_naming_the_limit(small_limit_stack: Stack) -> None:
    stack = small_limit_stack
    h = stack.auth(await stack.new_tenant())
    big = b"external_id,name,avg_downloads\n" + b"x,y,1\n" * 300_000
    r = await stack.http.post(
        "/api/v1/etl/upload", files={"file": ("big.csv", big)}, data={"kind": "shows"}, headers=h
    )
    assert r.status_code == 413
    assert_problem(r.json(), "file_too_large")
    assert r.json()["limit_mb"] == 1 and "1 MB" in r.json()["detail"]


async def test_the_openapi_documents_one_error_shape_per_status(stack: Stack) -> None:
    spec = (await stack.http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    # Every non-422 error schema is a Problem: a sentence in detail and a code (extras beside it).
    problems = ("Problem", "TransitionConflict", "PreconditionFailed", "BookingConflict", "NotReady")
    for name in problems:
        assert schemas[name]["properties"]["detail"]["type"] == "string", name
        assert {"detail", "code"} <= set(schemas[name]["required"]), name
    assert schemas["ValidationProblem"]["properties"]["detail"]["type"] == "array"
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status_code, answer in op["responses"].items():
                if not status_code.startswith(("4", "5")):
                    continue
                ref = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                wanted = ("ValidationProblem",) if status_code == "422" else problems
                assert ref in wanted, (method, path, status_code, ref)
