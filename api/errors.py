"""Every error answer of the API, built in one place: one shape per status class.

- 422: FastAPI's validation shape, `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`, the
  field named in `loc` (a request-model 422 and a hand-made one read the same): `unprocessable`.
- every other 4xx/5xx: `{"detail": "<one sentence>", "code": "<machine name>", ...}`; what a client
  needs beyond the sentence (the allowed stages, the current ETag, the full episodes) sits at the
  top level beside `detail`, never inside it: `ApiError` and the helpers below.

Domain errors (a forbidden stage move, a refused booking) are mapped to HTTP here; routers raise
what these helpers return and build no HTTPException by hand. `install` registers the exception
handlers that render them (and FastAPI's own errors, database and Temporal outages) on the app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.io import BOOKING_CONFLICT, BOOKING_INVALID
from domain.stages import Stage, TransitionError
from workflows import io as io_workflow

log = logging.getLogger("sponsorflow.api")

# The `code` of an answer that names none: one per status.
DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "outcome_unknown",
}

# Codes a client can branch on (documented in the OpenAPI).
STAGE_NOT_ALLOWED = "stage_not_allowed"
STAGE_MOVED = "stage_moved"
DEAL_NOT_WON = "deal_not_won"
NO_FREE_SLOT = "no_free_slot"
BOOKING_TAKEN = "booking_conflict"
DUPLICATE = "duplicate_external_id"
NOT_APPLIED = "not_applied"
FEATURE_DISABLED = "feature_disabled"
WORKFLOW_FINISHED = "workflow_finished"

_RETRY_AFTER = {"Retry-After": "1"}


def default_code(status_code: int) -> str:
    """The `code` of an answer with this status that names none."""
    if status_code in DEFAULT_CODES:
        return DEFAULT_CODES[status_code]
    return "client_error" if status_code < 500 else "server_error"


class ApiError(HTTPException):
    """A non-422 error: a sentence in `detail`, a `code`, and top-level `fields` for clients."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(status_code, detail=detail, headers=headers)
        self.code = code or default_code(status_code)
        self.fields = fields

    def body(self) -> dict[str, Any]:
        """The JSON answer: detail, code, then the extra fields."""
        return {"detail": self.detail, "code": self.code, **self.fields}


def issue(loc: Sequence[str | int], msg: str, type: str = "value_error") -> dict[str, Any]:
    """One item of a 422 `detail` list."""
    return {"loc": list(loc), "msg": msg, "type": type}


def unprocessable(loc: Sequence[str | int], msg: str, type: str = "value_error") -> HTTPException:
    """422 naming one field: `loc` is full, e.g. `["body", "stage"]` or `["query", "cursor"]`."""
    return invalid_issues([issue(loc, msg, type)])


def invalid_issues(issues: list[dict[str, Any]]) -> HTTPException:
    """422 with a list of issues already in the validation shape."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=issues)


def malformed_cursor() -> HTTPException:
    """422: a `cursor` query parameter that decodes but names no position of this list."""
    return unprocessable(["query", "cursor"], "malformed cursor")


def key_reused(what: str) -> HTTPException:
    """422: an Idempotency-Key sent again with a different request."""
    return unprocessable(
        ["header", "Idempotency-Key"],
        f"this Idempotency-Key was used for a different {what}",
        "idempotency_key_reused",
    )


def not_found(what: str, value: Any) -> ApiError:
    """404 of an entity addressed by id (`what` is e.g. "deal", `value` the id as sent)."""
    return ApiError(status.HTTP_404_NOT_FOUND, f"{what} {value!r} not found")


def conflict(detail: str, *, code: str | None = None, **fields: Any) -> ApiError:
    """409 in words, with optional top-level fields."""
    return ApiError(status.HTTP_409_CONFLICT, detail, code=code, **fields)


def duplicate(external_id: str | None) -> ApiError:
    """409: the tenant already has an entity with this external_id."""
    return conflict(f"external_id {external_id!r} already exists in this tenant", code=DUPLICATE)


def not_applied(detail: str, *, retry_after: bool = True) -> ApiError:
    """503 of a write that was not applied and never will be."""
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail,
        code=NOT_APPLIED,
        headers=dict(_RETRY_AFTER) if retry_after else None,
    )


def unavailable(detail: str, *, retry_after: bool = False) -> ApiError:
    """503: a dependency (Temporal, the database) did not answer; nothing was changed."""
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers=dict(_RETRY_AFTER) if retry_after else None
    )


def transition_refused(exc: TransitionError) -> ApiError:
    """409 of a forbidden stage move: the current, requested and allowed stages beside detail."""
    return conflict(
        str(exc),
        code=STAGE_NOT_ALLOWED,
        current_stage=exc.current.value,
        requested_stage=exc.target.value,
        allowed_stages=[s.value for s in exc.allowed],
    )


def stage_moved(stage: Stage, etag: str) -> ApiError:
    """412: If-Match named a stage entry the deal has left; the current ETag rides along."""
    return ApiError(
        status.HTTP_412_PRECONDITION_FAILED,
        f"the deal moved meanwhile: it is now {stage.value}; nothing was changed",
        code=STAGE_MOVED,
        headers={"ETag": etag},
        current_stage=stage.value,
        etag=etag,
    )


def booking_refused(kind: str, detail: Any) -> HTTPException:
    """The answer of a domain.io BookingRefused (`kind`, `detail`), also after a workflow trip.

    BOOKING_INVALID details are already validation issues (422); a conflict detail is a sentence
    or a dict with `message` and what explains it (`stage`, `conflicts`), which go top level.
    """
    if kind == BOOKING_INVALID:
        if isinstance(detail, list):
            return invalid_issues(detail)
        return unprocessable(["body"], str(detail))
    status_code = (
        status.HTTP_409_CONFLICT if kind == BOOKING_CONFLICT else status.HTTP_503_SERVICE_UNAVAILABLE
    )
    if isinstance(detail, dict):
        fields = {k: v for k, v in detail.items() if k != "message"}
        code = DEAL_NOT_WON if "stage" in fields else NO_FREE_SLOT if "conflicts" in fields else None
        return ApiError(status_code, str(detail.get("message", "")), code=code or BOOKING_TAKEN, **fields)
    if status_code == status.HTTP_409_CONFLICT:
        return ApiError(status_code, str(detail), code=BOOKING_TAKEN)
    return unavailable(str(detail), retry_after=True)


# An IO update the workflow refused (its ApplicationError type): the status and the code.
IO_UPDATE_REFUSALS: dict[str, tuple[int, str]] = {
    io_workflow.UNKNOWN_UNIT: (422, "not_found"),
    io_workflow.INVALID_REQUEST: (422, "value_error"),
    io_workflow.UNIT_CANCELLED: (409, "unit_cancelled"),
    io_workflow.UNIT_NOT_AIRED: (409, "unit_not_aired"),
    io_workflow.IO_CLOSED: (409, "io_closed"),
    io_workflow.NOT_AWAITING_DELIVERY: (409, "not_awaiting_delivery"),
    io_workflow.IO_ABANDONED: (404, "not_found"),
    io_workflow.REQUEST_ABANDONED: (503, NOT_APPLIED),
}


def io_update_refused(kind: str, message: str) -> HTTPException:
    """The answer of an IO update refused by its workflow (`kind` a key of IO_UPDATE_REFUSALS)."""
    status_code, code = IO_UPDATE_REFUSALS[kind]
    if kind == io_workflow.UNKNOWN_UNIT:
        return unprocessable(["body", "ad_unit_id"], message, code)
    if status_code == 422:
        return unprocessable(["body"], message, code)
    if status_code == 503:
        return not_applied(message)
    return ApiError(status_code, message, code=code)


def error_body(exc: StarletteHTTPException) -> dict[str, Any]:
    """The JSON body of any HTTP exception, in the one shape of its status."""
    if isinstance(exc, ApiError):
        return exc.body()
    detail: Any = exc.detail
    if exc.status_code == 422:
        if isinstance(detail, list):
            return {"detail": detail}
        return {"detail": [issue(["body"], str(detail))]}
    if isinstance(detail, dict):  # a stray dict detail: its message in words, the rest beside it
        fields = {k: v for k, v in detail.items() if k not in ("message", "detail")}
        text = detail.get("message", detail.get("detail", ""))
        return {"detail": str(text), "code": default_code(exc.status_code), **fields}
    return {"detail": str(detail), "code": default_code(exc.status_code)}


def install(app: FastAPI, *, database_errors: Sequence[type[Exception]], allow: Callable[[str], str]) -> None:
    """Registers the handlers that render every error in its shape.

    `database_errors`: exceptions that mean the database is away (503, nothing went through
    Temporal); `allow(path)`: the methods of a path, for a 405's Allow header.
    """

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Pydantic's input echo can carry a whole request body; keep loc/msg/type only.
        issues = [issue(e.get("loc", ()), e.get("msg", ""), e.get("type", "")) for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": issues})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # A 405 names every method of the resource (RFC 9110), not those of one of its routes.
            headers["Allow"] = allow(request.url.path)
        if exc.status_code < 200 or exc.status_code in (204, 304):  # a status that carries no body
            return Response(status_code=exc.status_code, headers=headers or None)
        return JSONResponse(status_code=exc.status_code, content=error_body(exc), headers=headers or None)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("database error on %s %s: %r", request.method, request.url.path, exc)
        return _render(
            unavailable("the database is unavailable or dropped the request; retry", retry_after=True)
        )

    async def data_error(request: Request, exc: Exception) -> JSONResponse:
        # SQLSTATE class 22 (a value the column cannot hold): the input is wrong, retrying cannot help.
        log.warning("data error on %s %s: %r", request.method, request.url.path, exc)
        return _render(
            unprocessable(
                ["body"],
                "a value in the request cannot be stored (too long, out of range, or NUL)",
                "value_error",
            )
        )

    app.add_exception_handler(DataError, data_error)
    # A write sent through Temporal reads its answer with deps.read_back, which turns a database
    # that stays away into a 504 ("applied"); anything reaching these handlers changed nothing
    # that went through Temporal.
    for kind in database_errors:
        app.add_exception_handler(kind, database_error)

    @app.exception_handler(RuntimeError)
    async def temporal_unreachable(request: Request, exc: RuntimeError) -> JSONResponse:
        # The process's Temporal client is lazy: until Temporal first answers, every call raises
        # "Failed client connect" before anything is sent, so a 503 is true for any route.
        if "client connect" not in str(exc).lower():
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            return _render(ApiError(500, "internal error"))
        log.error("Temporal unreachable on %s %s: %s", request.method, request.url.path, exc)
        return _render(
            unavailable("Temporal is unreachable; nothing was changed through it, retry", retry_after=True)
        )


def _render(exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=error_body(exc), headers=exc.headers)
