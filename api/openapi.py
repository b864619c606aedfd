"""The OpenAPI document as a contract: error shapes, security, cross-cutting answers, links.

Route decorators name their own errors (`responses=` built with the helpers below). What every
route of a kind can answer is derived here from the route's dependencies, so a new route is
documented by what it depends on:

- a route that authenticates a tenant (`get_tenant_id`) declares the bearer key or the session
  cookie (+ `X-CSRF-Token` on writes), and answers 401, 403 on writes (CSRF), and 503 when the
  database is away;
- `require_admin` declares the admin token and 401;
- a feature flag (`deps.feature_flag`) adds its 404;
- a request body adds 400 (unparseable body) and the 422 shapes.

OpenAPI links (`LINKS`) lead from what a create answers to the operations that use its id.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute, compile_path

from api.deps import FEATURE_FLAGS, get_tenant_id, require_admin
from api.web import session as web_session
from domain.catalog import AGE_BANDS, GARM_CATEGORIES, PLACEMENTS
from domain.events import EVENT_TYPES
from domain.imports import KINDS
from domain.stages import Stage

# --- error shapes -------------------------------------------------------------------------------


class Problem(BaseModel):
    """An error in words: `detail` says what went wrong and what to do about it; `code` names it.

    Every answer but a 422 has this shape; what a client needs beyond the sentence (the allowed
    stages, the current ETag, the full episodes) sits beside `detail` at the top level.
    """

    detail: str = Field(examples=["deal 'c0ffee00-0000-4000-8000-000000000000' not found"])
    code: str = Field(
        description="a stable machine name of the error: the status's own (`not_found`, "
        "`unauthorized`, `forbidden`, `conflict`, `precondition_failed`, `payload_too_large`, "
        "`unavailable`, `outcome_unknown`, ...) or a more precise one (`stage_not_allowed`, "
        "`stage_moved`, `deal_not_won`, `no_free_slot`, `booking_conflict`, `duplicate_external_id`, "
        "`not_applied`, `feature_disabled`, `file_too_large`, `csrf_failed`, ...)",
        examples=["not_found"],
    )


class ValidationIssue(BaseModel):
    """One invalid input: where (`loc`, e.g. `["body", "value_usd"]`), what (`msg`) and its kind."""

    loc: list[str | int] = Field(examples=[["body", "stage"]])
    msg: str = Field(
        examples=["Input should be 'lead', 'qualified', 'proposal', 'negotiation', 'won' or 'lost'"]
    )
    type: str = Field(examples=["enum"])


class ValidationProblem(BaseModel):
    """422: the request is well-formed but invalid.

    `detail` is a list of issues, each naming its field in `loc` (body, query, path or header):
    FastAPI's own validation shape, also for the checks the server makes itself (a `cursor`, an
    event `type`, an unknown advertiser).
    """

    detail: list[ValidationIssue]


class TransitionConflict(Problem):
    """409 of a stage change (`code` `stage_not_allowed`): where the deal may go from here."""

    current_stage: Stage
    requested_stage: Stage
    allowed_stages: list[Stage]


class PreconditionFailed(Problem):
    """412 (`code` `stage_moved`): If-Match named a stage entry the deal has left; nothing changed."""

    current_stage: Stage
    etag: str = Field(description="the deal's current ETag; send it as If-Match to move from here")


class SlotConflict(BaseModel):
    """One ad unit that would overbook its episode."""

    ad_unit: int = Field(description="index of the unit in the request's ad_units")
    show_id: str
    show_name: str
    air_date: str
    placement: str
    capacity: int
    booked: int


class BookingConflict(Problem):
    """409 of a booking: the deal is not won (`deal_not_won`, `stage`), episodes are full
    (`no_free_slot`, `conflicts`), or the promo code / vanity URL is taken (`booking_conflict`)."""

    stage: str | None = Field(default=None, description="the deal's stage, when it is not won")
    conflicts: list[SlotConflict] | None = Field(default=None, description="every unit without a free slot")


class NotReady(Problem):
    """503 of /readyz: what is down."""

    checks: dict[str, str]


ERROR_MODELS: tuple[type[BaseModel], ...] = (
    Problem,
    ValidationIssue,
    ValidationProblem,
    TransitionConflict,
    PreconditionFailed,
    SlotConflict,
    BookingConflict,
    NotReady,
)


# --- helpers for route decorators ---------------------------------------------------------------

_RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
_ETAG = {"ETag": {"$ref": "#/components/headers/ETag"}}
ETAG_HEADER = _ETAG
REPLAYED_HEADER = {"Idempotent-Replayed": {"$ref": "#/components/headers/Idempotent-Replayed"}}


def problem(
    description: str, *examples: Any, model: type[BaseModel] = Problem, code: str = ""
) -> dict[str, Any]:
    """One documented error answer: its schema (`model`), a description and example bodies.

    An example is a `detail`: a sentence (answered with `code`, or the status's own), or for a 422
    a list of issues.
    """
    content: dict[str, Any] = {}
    if examples:
        content = {
            "application/json": {
                "examples": {f"example{i + 1}": {"value": _body(ex, code)} for i, ex in enumerate(examples)}
            }
        }
    answer: dict[str, Any] = {"model": model, "description": description}
    if content:
        answer["content"] = content
    return answer


def _body(detail: Any, code: str) -> dict[str, Any]:
    if isinstance(detail, list):
        return {"detail": detail}
    return {"detail": detail, "code": code or "error"}  # every caller names its code


def not_found(what: str) -> dict[str, Any]:
    """404 of a route that addresses an entity by id (a malformed id is simply not found)."""
    return problem(
        f"unknown {what} (or an id that is not one)",
        f"{what} 'c0ffee00-0000-4000-8000-000000000000' not found",
        code="not_found",
    )


def invalid(description: str, *examples: Any) -> dict[str, Any]:
    """422 with the validation shapes and this route's own reasons."""
    return problem(description, *examples, model=ValidationProblem)


def not_applied(what: str) -> dict[str, Any]:
    """503 of a write through Temporal: not applied, and it never will be."""
    answer = problem(
        f"{what} was not applied, and it never will be (Temporal or the worker too slow, or the "
        "database away before anything was sent); retry, with the same Idempotency-Key if you sent one",
        f"{what} was not applied, and it never will be; retry",
        code="not_applied",
    )
    answer["headers"] = _RETRY_AFTER
    return answer


def outcome_unknown(what: str) -> dict[str, Any]:
    """504 of a write through Temporal: it may or may not have landed."""
    answer = problem(
        f"the outcome of {what} is unknown (it may have been applied): retry with the same "
        "Idempotency-Key to learn what happened",
        f"{what} was not confirmed and its outcome is unknown; retry with the same "
        "Idempotency-Key to learn it",
        code="outcome_unknown",
    )
    answer["headers"] = _RETRY_AFTER
    return answer


def precondition_failed() -> dict[str, Any]:
    """412 of a stage change sent with If-Match."""
    return {
        "model": PreconditionFailed,
        "description": "If-Match named a stage entry the deal has left (or no entry at all); "
        "nothing was changed",
        "headers": _ETAG,
        "content": {
            "application/json": {
                "example": {
                    "detail": "the deal moved meanwhile: it is now proposal; nothing was changed",
                    "code": "stage_moved",
                    "current_stage": "proposal",
                    "etag": '"proposal.1767225600000000"',
                }
            }
        },
    }


def transition_conflict() -> dict[str, Any]:
    """409 of a forbidden stage move."""
    return {
        "model": TransitionConflict,
        "description": "the move is not allowed from the deal's current stage; `allowed_stages` "
        "names where it may go",
        "content": {
            "application/json": {
                "example": {
                    "detail": "cannot move from lead to won; allowed: qualified, proposal, negotiation, lost",
                    "code": "stage_not_allowed",
                    "current_stage": "lead",
                    "requested_stage": "won",
                    "allowed_stages": ["qualified", "proposal", "negotiation", "lost"],
                }
            }
        },
    }


def booking_conflict() -> dict[str, Any]:
    """409 of an IO booking."""
    return {
        "model": BookingConflict,
        "description": "the deal is not won, an episode has no free slot, or the promo code / "
        "vanity URL is taken",
        "content": {
            "application/json": {
                "examples": {
                    "not_won": {
                        "value": {
                            "detail": "deal c0ffee00-0000-4000-8000-000000000000 is in stage "
                            "'proposal'; only a won deal can be booked",
                            "code": "deal_not_won",
                            "stage": "proposal",
                        }
                    },
                    "no_free_slot": {
                        "value": {
                            "detail": "ad_units[0]: The Daily Grind has no free midroll slot on "
                            "2031-03-02 (2 of 2 booked)",
                            "code": "no_free_slot",
                            "conflicts": [
                                {
                                    "ad_unit": 0,
                                    "show_id": "5eed0000-0000-4000-8000-000000000000",
                                    "show_name": "The Daily Grind",
                                    "air_date": "2031-03-02",
                                    "placement": "midroll",
                                    "capacity": 2,
                                    "booked": 2,
                                }
                            ],
                        }
                    },
                    "promo_taken": {
                        "value": {
                            "detail": "promo code 'GRIND20' is already in use in this network "
                            "(codes ignore case)",
                            "code": "booking_conflict",
                        }
                    },
                }
            }
        },
    }


def invalid_cursor(*more: str) -> dict[str, Any]:
    """422 of a list: a bad parameter, or a cursor this list did not return (cursors are opaque)."""
    reasons = ", ".join(("a cursor this list did not return", *more))
    return invalid(
        f"invalid query parameters, or {reasons}",
        [{"loc": ["query", "cursor"], "msg": "not a cursor this list returned", "type": "value_error"}],
        [
            {
                "loc": ["query", "limit"],
                "msg": "Input should be less than or equal to 200",
                "type": "less_than_equal",
            }
        ],
    )


def key_reused(what: str) -> list[dict[str, Any]]:
    """The 422 detail of an Idempotency-Key sent again with a different request."""
    return [
        {
            "loc": ["header", "Idempotency-Key"],
            "msg": f"this Idempotency-Key was used for a different {what}",
            "type": "idempotency_key_reused",
        }
    ]


# --- the document -------------------------------------------------------------------------------

SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "sf_<prefix>_<secret>",
        "description": "A tenant API key: `Authorization: Bearer <key>`. `POST /api/v1/tenants` returns the "
        "first one; `POST /api/v1/keys` adds more. A bearer key is never ambient, so it needs no CSRF token.",
    },
    "SessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": web_session.COOKIE,
        "description": "The web app's signed HttpOnly session (set by signing in at `/signin` with an API "
        "key). Reads need only the cookie; a write (POST, PATCH, PUT) also needs `X-CSRF-Token`.",
    },
    "CsrfToken": {
        "type": "apiKey",
        "in": "header",
        "name": web_session.CSRF_HEADER,
        "description": "The session's CSRF token (the web app's page shell carries it in "
        '`<meta name="csrf-token">`); required with the session cookie on every write. A browser-declared '
        "cross-site request (`Sec-Fetch-Site: cross-site`) is refused with 403 whatever the token.",
    },
    "AdminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <SPONSORFLOW_ADMIN_TOKEN>`: only for creating tenants.",
    },
}

HEADERS: dict[str, Any] = {
    "WWW-Authenticate": {"description": "`Bearer`: how to authenticate", "schema": {"type": "string"}},
    "Retry-After": {
        "description": "seconds to wait before retrying (present on most 503 and 504 answers)",
        "schema": {"type": "integer", "minimum": 0},
    },
    "ETag": {
        "required": True,
        "description": 'the deal\'s current stage entry, `"<stage>.<microseconds since epoch>"`: send '
        "it back as If-Match to move the deal only if nobody moved it since",
        "schema": {"type": "string", "pattern": '^"[a-z]+\\.[0-9]+"$'},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this answer is the one an earlier request with the same "
        "Idempotency-Key got",
        "schema": {"type": "string", "enum": ["true"]},
    },
}

CONVENTIONS = """\
**Authentication.** Send a tenant API key as `Authorization: Bearer <key>` (scheme `ApiKey`). The web
app's session cookie `sf_session` works too; a write made with it must carry `X-CSRF-Token`.
`POST /api/v1/tenants` takes the admin token instead. `/healthz` and `/readyz` need nothing.

**Errors** have one shape per status. A 422 is FastAPI's validation shape, `{"detail": [{"loc",
"msg", "type"}]}`, each issue naming its field in `loc` (`ValidationProblem`), for the server's
own checks too. Every other error is `{"detail": "<a sentence>", "code": "<machine name>"}`
(`Problem`), with what a client needs beside it at the top level: a 409 stage move names
`allowed_stages` (`TransitionConflict`), a 412 the current `etag` (`PreconditionFailed`), a 409
booking the `stage` or the full episodes' `conflicts` (`BookingConflict`). Text never holds NUL
(U+0000): such a field is a 422.

**Writes through Temporal** (stage change, IO booking, delivery, cancel): `2xx` applied and in the
history; `503` not applied and it never will be (`Retry-After`); `504` outcome unknown. A retry with
the same `Idempotency-Key` is safe and answers what happened (`Idempotent-Replayed: true`). A stage
change sent with `If-Match: <the deal's ETag>` moves the deal only if nobody moved it since (412).
Ids are opaque strings; an id that is not one is simply not found (404).
"""

_UNAUTHORIZED = "missing or invalid API key (send Authorization: Bearer <key>, or sign in at /signin)"
_DATABASE_AWAY = "the database is unavailable or dropped the request; retry"

# From what a create (or a move) answers, to the operations that use it. Parameters and bodies are
# OpenAPI runtime expressions; a requestBody here holds only the fields it fills in.
LINKS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "createShow": {
        "201": {
            "GetShow": {"operationId": "getShow", "parameters": {"show_id": "$response.body#/id"}},
            "CreateDealOnShow": {
                "operationId": "createDeal",
                "requestBody": {"show_id": "$response.body#/id"},
            },
            "ListShowMatches": {
                "operationId": "listMatches",
                "parameters": {"show_id": "$response.body#/id"},
            },
            "GetShowAvailability": {
                "operationId": "getIoAvailability",
                "parameters": {"show_id": "$response.body#/id"},
            },
        }
    },
    "createAdvertiser": {
        "201": {
            "GetAdvertiser": {
                "operationId": "getAdvertiser",
                "parameters": {"advertiser_id": "$response.body#/id"},
            },
            "CreateDealForAdvertiser": {
                "operationId": "createDeal",
                "requestBody": {"advertiser_id": "$response.body#/id", "show_id": None},
            },
            "ListAdvertiserDeals": {
                "operationId": "listDeals",
                "parameters": {"advertiser_id": "$response.body#/id"},
            },
            "ListAdvertiserMatches": {
                "operationId": "listMatches",
                "parameters": {"advertiser_id": "$response.body#/id"},
            },
        }
    },
    "createDeal": {
        "201": {
            "GetDeal": {"operationId": "getDeal", "parameters": {"campaign_id": "$response.body#/id"}},
            "ChangeDealStage": {
                "operationId": "changeDealStage",
                "parameters": {"campaign_id": "$response.body#/id"},
            },
            "ListDealIos": {"operationId": "listIos", "parameters": {"campaign_id": "$response.body#/id"}},
            "BookIo": {"operationId": "bookIo", "requestBody": {"campaign_id": "$response.body#/id"}},
            "ListDealEvents": {
                "operationId": "listEvents",
                "parameters": {"entity_id": "$response.body#/id"},
            },
        }
    },
    "changeDealStage": {
        "200": {
            "GetDeal": {"operationId": "getDeal", "parameters": {"campaign_id": "$response.body#/id"}},
            "ChangeDealStageAgain": {
                "operationId": "changeDealStage",
                "parameters": {"campaign_id": "$response.body#/id"},
            },
            "BookIo": {"operationId": "bookIo", "requestBody": {"campaign_id": "$response.body#/id"}},
        }
    },
    "bookIo": {
        "201": {
            "GetIo": {"operationId": "getIo", "parameters": {"io_id": "$response.body#/id"}},
            "ReportIoDelivery": {
                "operationId": "reportIoDelivery",
                "parameters": {"io_id": "$response.body#/id"},
                "requestBody": {"ad_unit_id": "$response.body#/ad_units/0/id"},
            },
            "CancelIo": {"operationId": "cancelIo", "parameters": {"io_id": "$response.body#/id"}},
            "GetIoDocument": {"operationId": "getIoDocument", "parameters": {"io_id": "$response.body#/id"}},
            "GetDealOfIo": {
                "operationId": "getDeal",
                "parameters": {"campaign_id": "$response.body#/campaign_id"},
            },
        }
    },
    "uploadImport": {
        "202": {
            "GetImportStatus": {
                "operationId": "getImportStatus",
                "parameters": {"import_id": "$response.body#/import_id"},
            }
        }
    },
    "createKey": {
        "201": {"RevokeKey": {"operationId": "revokeKey", "parameters": {"key_id": "$response.body#/id"}}}
    },
    "startRecalculation": {"202": {"GetRecalculationStatus": {"operationId": "getRecalculationStatus"}}},
    "createWebhook": {
        "201": {
            "GetWebhook": {"operationId": "getWebhook", "parameters": {"webhook_id": "$response.body#/id"}},
            "ListWebhookDeliveries": {
                "operationId": "listWebhookDeliveries",
                "parameters": {"webhook_id": "$response.body#/id"},
            },
            "SendWebhookTest": {
                "operationId": "testWebhook",
                "parameters": {"webhook_id": "$response.body#/id"},
            },
        }
    },
}

_WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})

_SHARE = {"type": "number", "minimum": 0, "maximum": 1}
_COUNTRY = {"type": "string", "pattern": "^\\s*[A-Za-z]{2}\\s*$"}

# What the models' validators check and their JSON Schema cannot say (a distribution's keys, a
# list's allowed items): {schema: {property: what to add to its object (or array) branch}}.
SCHEMA_REFINEMENTS: dict[str, dict[str, dict[str, Any]]] = {
    "ShowCreate": {
        "geo": {"propertyNames": _COUNTRY, "additionalProperties": _SHARE},
        "age": {"propertyNames": {"enum": list(AGE_BANDS)}, "additionalProperties": _SHARE},
        "brand_safety": {"propertyNames": {"enum": list(GARM_CATEGORIES)}},
        "slots": {
            "propertyNames": {"enum": list(PLACEMENTS)},
            "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 10},
        },
    },
    "AdvertiserCreate": {
        "target_geo": {"items": _COUNTRY},
        "target_age": {"items": {"type": "string", "enum": list(AGE_BANDS)}},
    },
    # A file part is bytes, whatever they look like (OpenAPI's `format: binary`).
    "Body_uploadImport": {"kind": {"enum": list(KINDS)}, "file": {"format": "binary"}},
}

# Parameters the routes check themselves: {(operationId, parameter): what to add to its schema}.
PARAMETER_REFINEMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("listEvents", "type"): {"enum": sorted(EVENT_TYPES)},
    ("streamEvents", "type"): {"enum": sorted(EVENT_TYPES)},
    # An empty header is no header; anything else is read as an integer (Python's int()).
    ("streamEvents", "Last-Event-ID"): {"pattern": "^$|^\\s*[+-]?\\d+(_\\d+)*\\s*$"},
}

# One message of GET /api/v1/events/stream (OpenAPI 3.1: a streamed media type's schema is one item).
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "the event's id (send as Last-Event-ID)",
        },
        "event": {"type": "string", "enum": ["message"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/EventPublic"},
        },
        "retry": {"type": "integer"},
    },
}


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in _WRITE_METHODS | {"get", "head", "options"}:
                yield path, method, op


def _add(op: dict[str, Any], code: str, description: str, schema_ref: str, **extra: Any) -> None:
    """Adds an answer, or merges its description into the one the route already documents."""
    responses = op.setdefault("responses", {})
    if code in responses:
        existing = responses[code]
        if description not in existing.get("description", ""):
            existing["description"] = f"{existing['description']}; or {description}"
        content = existing.setdefault("content", {}).setdefault("application/json", {})
        content.setdefault("schema", {"$ref": schema_ref})
        for key, value in extra.items():
            existing.setdefault(key, value)
        return
    responses[code] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
        **extra,
    }


def _example(detail: str, code: str) -> dict[str, Any]:
    return {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "example": {"detail": detail, "code": code},
        }
    }


def _replace_refs(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and value == old:
                node[key] = new
            else:
                _replace_refs(value, old, new)
    elif isinstance(node, list):
        for value in node:
            _replace_refs(value, old, new)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with everything FastAPI cannot infer added."""
    spec = get_openapi(
        title=app.title,
        version=app.version,
        summary="Deals, insertion orders, imports and matchmaking for podcast ad sales.",
        description=f"{app.description}\n\n{CONVENTIONS}",
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in ERROR_MODELS:
        for name, schema in _schemas_of(model).items():
            schemas.setdefault(name, schema)
    # One 422 schema: FastAPI's list shape without its `input`/`ctx` echo, which our handler drops.
    _replace_refs(spec, "#/components/schemas/HTTPValidationError", "#/components/schemas/ValidationProblem")
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    components["headers"] = copy.deepcopy(HEADERS)

    routes = {
        (path, method.lower()): route for path, route in _api_routes(app) for method in route.methods or ()
    }
    by_id: dict[str, tuple[str, str]] = {}
    for path, method, op in _operations(spec):
        route = routes[(path, method)]
        by_id[op["operationId"]] = (path, method)
        calls = list(_calls(route.dependant))
        _document_auth(op, method, calls)
        for env_name in (FEATURE_FLAGS[c] for c in calls if c in FEATURE_FLAGS):
            _add(
                op,
                "404",
                f"the feature is disabled ({env_name}=false)",
                "#/components/schemas/Problem",
            )
        if "requestBody" in op:
            _add(
                op,
                "400",
                "the body could not be parsed (not JSON, or broken multipart)",
                "#/components/schemas/Problem",
            )
        _document_validation(op)
        for param in op.get("parameters", []):
            _absent_not_null(param)
            extra = PARAMETER_REFINEMENTS.get((op["operationId"], param["name"]))
            if extra:
                _branch(param["schema"], "string").update(copy.deepcopy(extra))
        for body_model in _body_models(route):
            _require_non_blank(body_model, schemas)
    for name, properties in SCHEMA_REFINEMENTS.items():
        for prop, extra in properties.items():
            target = schemas[name]["properties"][prop]
            _branch(
                target, "object" if "propertyNames" in extra else "array" if "items" in extra else "string"
            ).update(copy.deepcopy(extra))
    stream = spec["paths"]["/api/v1/events/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    stream["schema"] = copy.deepcopy(SSE_EVENT)
    for source, by_status in LINKS.items():
        path, method = by_id[source]
        responses = spec["paths"][path][method]["responses"]
        for status_code, links in by_status.items():
            responses[status_code].setdefault("links", {}).update(copy.deepcopy(links))
    return spec


def served_routes(app: FastAPI) -> Iterator[tuple[str, BaseRoute]]:
    """Every route with the path it is served at (FastAPI may include routers lazily)."""
    iter_contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    if iter_contexts is None:  # FastAPI before lazily included routers: the routes are flat
        for route in app.routes:
            yield getattr(route, "path_format", getattr(route, "path", "")), route
        return
    for context in iter_contexts(app.routes):
        route = context.original_route
        yield getattr(context, "path_format", getattr(route, "path_format", "")), route


def _api_routes(app: FastAPI) -> Iterator[tuple[str, APIRoute]]:
    for path, route in served_routes(app):
        if isinstance(route, APIRoute) and route.include_in_schema:
            yield path, route


def allowed_methods(app: FastAPI) -> Callable[[str], str]:
    """Returns a function naming every method the app serves at a path (the `Allow` of a 405).

    Starlette's own 405 names only the methods of the first route whose path matched, although
    FastAPI serves each method of a path as a route of its own. A path declared as it is (e.g.
    /api/v1/webhooks/event-types) is its own resource: its methods, not those of a sibling
    `{id}` template that also matches it.
    """
    table: list[tuple[re.Pattern[str], str | None, frozenset[str]]] | None = None

    def allow(path: str) -> str:
        nonlocal table
        if table is None:
            table = [
                (compile_path(p)[0], None if "{" in p else p, frozenset(methods))
                for p, route in served_routes(app)
                if (methods := getattr(route, "methods", None)) and p
            ]
        exact = [methods for _, literal, methods in table if literal == path]
        found: set[str] = set().union(*exact) if exact else set()
        if not exact:
            for regex, _, methods in table:
                if regex.match(path):
                    found |= methods
        return ", ".join(sorted(found))

    return allow


def _absent_not_null(param: dict[str, Any]) -> None:
    """An optional parameter is one that is left out: it has no `null` (which would be sent as "null")."""
    schema = param.get("schema", {})
    options = schema.get("anyOf")
    if param.get("required") or not options:
        return
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) == 1 and len(kept) < len(options):
        del schema["anyOf"]
        schema.update({k: v for k, v in kept[0].items() if k not in schema})


def _branch(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    """The branch of a (possibly nullable) schema that has type `kind`."""
    for option in schema.get("anyOf", ()):
        if option.get("type") == kind:
            return option  # type: ignore[no-any-return]
    return schema


def _body_models(route: APIRoute) -> Iterator[type[BaseModel]]:
    """The pydantic models of a route's body and the models nested in them."""
    seen: set[type[BaseModel]] = set()
    todo = [p.field_info.annotation for p in route.dependant.body_params]
    while todo:
        annotation = todo.pop()
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate not in seen:
                seen.add(candidate)
                yield candidate
                todo.extend(f.annotation for f in candidate.model_fields.values())
            elif getattr(candidate, "__args__", None) and candidate is not annotation:
                todo.append(candidate)


def _require_non_blank(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    """A model that strips whitespace refuses a blank required string: say so (`pattern: \\S`)."""
    schema = schemas.get(model.__name__)
    if schema is None or not model.model_config.get("str_strip_whitespace"):
        return

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "string" and node.get("minLength", 0) >= 1 and "pattern" not in node:
            node["pattern"] = "\\S"
        for option in node.get("anyOf", ()):
            visit(option)
        visit(node.get("items"))

    for prop in schema.get("properties", {}).values():
        visit(prop)


def _schemas_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {model.__name__: schema, **defs}


def _document_auth(op: dict[str, Any], method: str, calls: list[Callable[..., Any] | None]) -> None:
    if require_admin in calls:
        op["security"] = [{"AdminToken": []}]
        _add(
            op,
            "401",
            "the admin token is missing or wrong",
            "#/components/schemas/Problem",
            headers={"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
        )
        _add(op, "503", _DATABASE_AWAY, "#/components/schemas/Problem", headers=_RETRY_AFTER)
        return
    if get_tenant_id not in calls:
        op["security"] = []
        return
    write = method in _WRITE_METHODS
    op["security"] = [
        {"ApiKey": []},
        {"SessionCookie": [], "CsrfToken": []} if write else {"SessionCookie": []},
    ]
    _add(
        op,
        "401",
        "no API key, an unknown or revoked one, or an expired session",
        "#/components/schemas/Problem",
        headers={"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    )
    op["responses"]["401"]["content"] = _example(_UNAUTHORIZED, "unauthorized")
    if write:
        _add(
            op,
            "403",
            "authenticated by the session cookie without its X-CSRF-Token (or sent cross-site)",
            "#/components/schemas/Problem",
        )
        op["responses"]["403"]["content"] = _example(
            f"CSRF check failed: send the session's token in {web_session.CSRF_HEADER}", "csrf_failed"
        )
    _add(op, "503", _DATABASE_AWAY, "#/components/schemas/Problem", headers=_RETRY_AFTER)


def _document_validation(op: dict[str, Any]) -> None:
    responses = op.get("responses", {})
    if "422" in responses:
        answer = responses["422"]
        if answer.get("description") == "Validation Error":
            answer["description"] = "invalid input; detail names the field"
        answer.setdefault("content", {}).setdefault("application/json", {}).setdefault(
            "schema", {"$ref": "#/components/schemas/ValidationProblem"}
        )


def install(app: FastAPI) -> None:
    """Makes `app.openapi()` (and so /openapi.json and /docs) serve build_openapi, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
