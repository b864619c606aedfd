"""api/errors.py: one shape per status, domain errors mapped to HTTP in one place."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import errors
from domain.io import BOOKING_CONFLICT, BOOKING_INVALID, BOOKING_UNAVAILABLE, deal_not_won, no_free_slot
from domain.stages import Stage, TransitionError
from workflows import io as io_workflow


def test_unprocessable_is_fastapis_validation_shape_naming_the_field() -> None:
    exc = errors.unprocessable(["query", "cursor"], "malformed cursor")
    assert exc.status_code == 422
    assert errors.error_body(exc) == {
        "detail": [{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "value_error"}]
    }
    assert errors.error_body(errors.key_reused("booking"))["detail"][0]["type"] == "idempotency_key_reused"


def test_a_422_given_a_sentence_still_answers_the_list_shape() -> None:
    body = errors.error_body(HTTPException(422, detail="reason is required"))
    assert body == {"detail": [{"loc": ["body"], "msg": "reason is required", "type": "value_error"}]}


def test_every_other_status_is_a_sentence_and_a_code() -> None:
    assert errors.error_body(errors.not_found("deal", "x")) == {
        "detail": "deal 'x' not found",
        "code": "not_found",
    }
    assert errors.error_body(HTTPException(405, detail="Method Not Allowed")) == {
        "detail": "Method Not Allowed",
        "code": "method_not_allowed",
    }
    assert errors.error_body(HTTPException(418, detail="tea"))["code"] == "client_error"
    assert errors.not_applied("not applied; retry").headers == {"Retry-After": "1"}


def test_a_stray_dict_detail_is_flattened_to_top_level_fields() -> None:
    body = errors.error_body(HTTPException(409, detail={"message": "taken", "stage": "lead"}))
    assert body == {"detail": "taken", "code": "conflict", "stage": "lead"}


def test_a_forbidden_move_carries_its_stages_beside_detail() -> None:
    exc = errors.transition_refused(
        TransitionError(Stage.LEAD, Stage.WON, [Stage.QUALIFIED, Stage.LOST], "cannot move from lead to won")
    )
    assert exc.status_code == 409
    assert errors.error_body(exc) == {
        "detail": "cannot move from lead to won",
        "code": "stage_not_allowed",
        "current_stage": "lead",
        "requested_stage": "won",
        "allowed_stages": ["qualified", "lost"],
    }


def test_a_stale_precondition_names_the_current_etag_in_body_and_header() -> None:
    exc = errors.stage_moved(Stage.PROPOSAL, '"proposal.1"')
    assert exc.status_code == 412 and exc.headers == {"ETag": '"proposal.1"'}
    body = errors.error_body(exc)
    assert body["code"] == "stage_moved" and body["etag"] == '"proposal.1"'
    assert body["current_stage"] == "proposal" and "proposal" in body["detail"]


def test_booking_refusals_map_to_their_status_with_their_fields_on_top() -> None:
    not_won = deal_not_won("d1", "negotiation")
    exc = errors.booking_refused(not_won.kind, not_won.detail)
    assert exc.status_code == 409
    assert errors.error_body(exc) == {
        "detail": not_won.message,
        "code": "deal_not_won",
        "stage": "negotiation",
    }
    conflict = {"ad_unit": 0, "show_id": "s", "show_name": "S", "air_date": "2031-01-01"}
    full = no_free_slot([{**conflict, "placement": "mid_roll", "capacity": 1, "booked": 1}])
    body = errors.error_body(errors.booking_refused(BOOKING_CONFLICT, full.detail))
    assert body["code"] == "no_free_slot" and body["conflicts"][0]["capacity"] == 1
    assert isinstance(body["detail"], str) and "no free mid_roll slot" in body["detail"]
    taken = errors.booking_refused(BOOKING_CONFLICT, "promo code 'X' is already in use")
    assert errors.error_body(taken) == {
        "detail": "promo code 'X' is already in use",
        "code": "booking_conflict",
    }
    invalid = errors.booking_refused(BOOKING_INVALID, [errors.issue(["body", "campaign_id"], "no deal")])
    assert invalid.status_code == 422 and errors.error_body(invalid)["detail"][0]["loc"] == [
        "body",
        "campaign_id",
    ]
    busy = errors.booking_refused(BOOKING_UNAVAILABLE, "could not find a free promo code; retry")
    assert busy.status_code == 503 and busy.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(
    ("kind", "status_code", "shape"),
    [
        (io_workflow.UNKNOWN_UNIT, 422, ["body", "ad_unit_id"]),
        (io_workflow.INVALID_REQUEST, 422, ["body"]),
        (io_workflow.UNIT_NOT_AIRED, 409, "unit_not_aired"),
        (io_workflow.IO_ABANDONED, 404, "not_found"),
        (io_workflow.REQUEST_ABANDONED, 503, "not_applied"),
    ],
)
def test_io_update_refusals_map_to_their_status(kind: str, status_code: int, shape: Any) -> None:
    exc = errors.io_update_refused(kind, "why")
    assert exc.status_code == status_code
    body = errors.error_body(exc)
    if status_code == 422:
        assert body["detail"][0]["loc"] == shape
    else:
        assert body == {"detail": "why", "code": shape}


class _Body(BaseModel):
    n: int


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app, database_errors=(ConnectionError,), allow=lambda path: "GET, POST")

    @app.get("/conflict")
    async def conflict() -> None:
        raise errors.conflict("taken", code="taken_here", owner="x")

    @app.post("/body")
    async def body(b: _Body) -> None: ...

    @app.get("/db")
    async def db() -> None:
        raise ConnectionError("gone")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/temporal")
    async def temporal() -> None:
        raise RuntimeError("Failed client connect: nope")

    return app


def test_installed_handlers_render_every_error_in_its_shape() -> None:
    with TestClient(_app(), raise_server_exceptions=False) as c:
        assert c.get("/conflict").json() == {"detail": "taken", "code": "taken_here", "owner": "x"}
        r = c.post("/body", json={"n": "not a number"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "n"]
        assert set(r.json()["detail"][0]) == {"loc", "msg", "type"}  # no input echo
        r = c.get("/nowhere")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found", "code": "not_found"}
        r = c.delete("/conflict")
        assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
        assert r.json()["code"] == "method_not_allowed"
        r = c.get("/db")
        assert r.status_code == 503 and r.json()["code"] == "unavailable" and r.headers["Retry-After"] == "1"
        r = c.get("/boom")
        assert r.status_code == 500 and r.json() == {"detail": "internal error", "code": "internal_error"}
        r = c.get("/temporal")
        assert r.status_code == 503 and "Temporal" in r.json()["detail"]
