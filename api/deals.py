"""Deals: create, read, list, and move through the pipeline via DealWorkflow's update.

The routes are adapters: the writes live in api/deal_writes.py (the fenced protocol they share
with IOs in api/fenced.py), the schemas in api/deal_schemas.py, the rules in domain/stages.py.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from api.deal_schemas import DealCreate, DealPublic, DealSummary, StageChange, summary
from api.deal_writes import SeedCache, load_deal
from api.deal_writes import change_stage as move_deal
from api.deal_writes import create_deal as write_deal
from api.deps import SettingsDep, TemporalDep, TenantDbDep, feature_flag
from api.openapi import (
    ETAG_HEADER,
    REPLAYED_HEADER,
    invalid,
    invalid_cursor,
    key_reused,
    not_applied,
    not_found,
    outcome_unknown,
    precondition_failed,
    problem,
    transition_conflict,
)
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from api.timing import ServerTiming
from db.deals import deals_query
from db.models import Deal
from domain.stages import Stage, etag, parse_if_match

__all__ = ["SeedCache", "router"]

router = APIRouter(
    prefix="/api/v1/deals",
    tags=["deals"],
    dependencies=[Depends(feature_flag("enable_deal_pipeline", "ENABLE_DEAL_PIPELINE"))],
)


def _json(deal: DealPublic, timing: ServerTiming, *, replayed: bool = False) -> Response:
    # The model is built here from trusted rows; serialising it directly spares FastAPI's
    # second validation pass on the hot path (the route keeps response_model for the docs).
    headers = {**timing.headers(), "ETag": etag(deal.stage, deal.stage_changed_at)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(deal.model_dump_json(by_alias=True), media_type="application/json", headers=headers)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DealPublic,
    operation_id="createDeal",
    responses={
        409: problem(
            "the external_id is taken in this tenant",
            "external_id 'crm-1042' already exists in this tenant",
            code="duplicate_external_id",
        ),
        422: invalid(
            "invalid fields, an advertiser or show not in this tenant, or a lost deal without lost_reason",
            [
                {
                    "loc": ["body", "advertiser_id"],
                    "msg": "advertiser c0ffee00-0000-4000-8000-000000000000 not found in this tenant",
                    "type": "not_found",
                }
            ],
        ),
    },
)
async def create_deal(
    body: DealCreate,
    db: TenantDbDep,
    client: TemporalDep,
    settings: SettingsDep,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="a retried POST with the same key answers the deal it created, writing nothing",
        ),
    ] = None,
) -> DealPublic:
    """Creates a deal and starts its DealWorkflow."""
    seeds: SeedCache = request.app.state.deal_seeds
    return await write_deal(
        db=db, client=client, settings=settings, seeds=seeds, body=body, idempotency_key=idempotency_key
    )


@router.get("", response_model=Page[DealSummary], operation_id="listDeals", responses={422: invalid_cursor()})
async def get_deals(
    db: TenantDbDep,
    stage: Stage | None = None,
    advertiser_id: Annotated[uuid.UUID | None, Query()] = None,
    show_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
) -> Page[DealSummary]:
    """Lists deals newest first, filtered by stage, advertiser or show."""
    query = deals_query(stage=stage, advertiser_id=advertiser_id, show_id=show_id)
    async with db.tx() as session:
        rows = list((await session.scalars(newest_first(query, Deal, cursor, limit))).all())
    return Page(items=[summary(c) for c in rows[:limit]], next_cursor=newest_next_cursor(rows, limit))


@router.get(
    "/{campaign_id}",
    response_model=DealPublic,
    operation_id="getDeal",
    responses={200: {"headers": ETAG_HEADER}, 404: not_found("deal")},
)
async def read_deal(
    campaign_id: str, db: TenantDbDep, settings: SettingsDep, response: Response
) -> DealPublic:
    """Returns a deal with its stage, probability, weighted value and full history.

    The ETag header names the deal's current stage entry; send it back as If-Match on a stage
    change to move the deal only if nobody moved it meanwhile.
    """
    deal = await load_deal(db, campaign_id, settings)
    response.headers["ETag"] = etag(deal.stage, deal.stage_changed_at)
    return deal


@router.patch(
    "/{campaign_id}/stage",
    response_model=DealPublic,
    operation_id="changeDealStage",
    responses={
        200: {
            "description": "applied and in the deal's history (or a no-op: the deal was already there)",
            "headers": {**ETAG_HEADER, **REPLAYED_HEADER},
        },
        404: not_found("deal"),
        409: transition_conflict(),
        412: precondition_failed(),
        422: invalid(
            "unknown stage, lost without a reason, or an Idempotency-Key sent again with another move",
            [
                {
                    "loc": ["body"],
                    "msg": "Value error, reason is required to move a deal to lost",
                    "type": "value_error",
                }
            ],
            key_reused("stage change of this deal"),
        ),
        503: not_applied("the stage change"),
        504: outcome_unknown("the stage change"),
    },
)
async def change_stage(
    campaign_id: str,
    body: StageChange,
    db: TenantDbDep,
    client: TemporalDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="a retried PATCH with the same key answers what the first one did",
        ),
    ] = None,
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description="the deal's ETag (its current stage entry): move only if nobody moved it since",
        ),
    ] = None,
) -> Response:
    """Moves a deal: an update with a validator, sent with update-with-start, fenced by a request id."""
    timing = ServerTiming(response)
    answer = await move_deal(
        db=db,
        client=client,
        settings=settings,
        seeds=request.app.state.deal_seeds,
        campaign_id=campaign_id,
        body=body,
        precondition=parse_if_match(if_match),
        idempotency_key=idempotency_key,
        timing=timing,
    )
    return _json(answer.body, timing, replayed=answer.replayed)
