"""Shows and advertisers: create, list (paginated), get."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api import errors
from api.bodies import with_strict_numbers
from api.deps import TenantDbDep, parse_id
from api.openapi import invalid_cursor, not_found, problem
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from db.models import Advertiser, Show
from domain.catalog import AdvertiserFields, RiskLevel, ShowFields, Tolerance

router = APIRouter(prefix="/api/v1", tags=["catalog"])

M = TypeVar("M", Show, Advertiser)

_EXISTS = problem(
    "the external_id is taken in this tenant",
    "external_id 'show-42' already exists in this tenant",
    code="duplicate_external_id",
)
_CURSOR = invalid_cursor()


# The request bodies: the shared fields, with JSON numbers only (see api.bodies).
if TYPE_CHECKING:
    ShowCreate = ShowFields
    AdvertiserCreate = AdvertiserFields
else:
    ShowCreate = with_strict_numbers(
        ShowFields, "ShowCreate", "A new show (the columns of the `shows` import)."
    )
    AdvertiserCreate = with_strict_numbers(
        AdvertiserFields, "AdvertiserCreate", "A new advertiser (the columns of the `advertisers` import)."
    )


class ShowPublic(ShowFields):
    """A show with its id."""

    id: str
    created_at: datetime


class AdvertiserPublic(AdvertiserFields):
    """An advertiser with its id."""

    id: str
    created_at: datetime


def _public_show(row: Show) -> ShowPublic:
    return ShowPublic.model_construct(
        id=str(row.id),
        created_at=row.created_at,
        external_id=row.external_id,
        name=row.name,
        categories=list(row.categories),
        avg_downloads=row.avg_downloads,
        episodes_per_month=row.episodes_per_month,
        cpm_usd=float(row.cpm_usd) if row.cpm_usd is not None else None,
        geo=row.geo,
        age=row.age,
        female_share=float(row.female_share) if row.female_share is not None else None,
        brand_safety={k: RiskLevel(v) for k, v in row.brand_safety.items()},
        rss_url=row.rss_url,
        slots=row.slots,
    )


def _public_advertiser(row: Advertiser) -> AdvertiserPublic:
    return AdvertiserPublic.model_construct(
        id=str(row.id),
        created_at=row.created_at,
        external_id=row.external_id,
        name=row.name,
        domain=row.domain,
        target_categories=list(row.target_categories),
        target_geo=list(row.target_geo),
        target_age=list(row.target_age),
        brand_safety_tolerance=Tolerance(row.brand_safety_tolerance),
        target_gender=row.target_gender,  # type: ignore[arg-type]  # only female/male are written
        budget_usd=float(row.budget_usd) if row.budget_usd is not None else None,
        flight_start=row.flight_start,
        flight_end=row.flight_end,
    )


async def _create(db: TenantDbDep, model: type[M], values: dict[str, Any]) -> M:
    row = model(tenant_id=db.tenant_id, **values)
    try:
        async with db.tx() as session:
            session.add(row)
            await session.flush()
            await session.refresh(row)
    except IntegrityError:
        raise errors.duplicate(values.get("external_id")) from None
    return row


async def _page(db: TenantDbDep, model: type[M], limit: int, cursor: str | None) -> list[M]:
    stmt = newest_first(select(model), model, cursor, limit)
    async with db.tx() as session:
        return list((await session.scalars(stmt)).all())


@router.post(
    "/shows",
    status_code=status.HTTP_201_CREATED,
    response_model=ShowPublic,
    operation_id="createShow",
    responses={409: _EXISTS},
)
async def create_show(body: ShowCreate, db: TenantDbDep) -> ShowPublic:
    """Creates a show."""
    values = body.model_dump(mode="json", exclude_none=True)
    return _public_show(await _create(db, Show, values))


@router.get("/shows", response_model=Page[ShowPublic], operation_id="listShows", responses={422: _CURSOR})
async def list_shows(db: TenantDbDep, limit: LimitParam = 50, cursor: CursorParam = None) -> Page[ShowPublic]:
    """Lists this tenant's shows, newest first."""
    rows = await _page(db, Show, limit, cursor)
    return Page(items=[_public_show(r) for r in rows[:limit]], next_cursor=newest_next_cursor(rows, limit))


@router.get(
    "/shows/{show_id}", response_model=ShowPublic, operation_id="getShow", responses={404: not_found("show")}
)
async def get_show(show_id: str, db: TenantDbDep) -> ShowPublic:
    """Returns one show."""
    async with db.tx() as session:
        row = await session.get(Show, parse_id(show_id, "show"))
    if row is None:
        raise errors.not_found("show", show_id)
    return _public_show(row)


@router.post(
    "/advertisers",
    status_code=status.HTTP_201_CREATED,
    response_model=AdvertiserPublic,
    operation_id="createAdvertiser",
    responses={409: _EXISTS},
)
async def create_advertiser(body: AdvertiserCreate, db: TenantDbDep) -> AdvertiserPublic:
    """Creates an advertiser."""
    values = body.model_dump(exclude_none=True)
    values["brand_safety_tolerance"] = body.brand_safety_tolerance.value
    return _public_advertiser(await _create(db, Advertiser, values))


@router.get(
    "/advertisers",
    response_model=Page[AdvertiserPublic],
    operation_id="listAdvertisers",
    responses={422: _CURSOR},
)
async def list_advertisers(
    db: TenantDbDep, limit: LimitParam = 50, cursor: CursorParam = None
) -> Page[AdvertiserPublic]:
    """Lists this tenant's advertisers, newest first."""
    rows = await _page(db, Advertiser, limit, cursor)
    return Page(
        items=[_public_advertiser(r) for r in rows[:limit]], next_cursor=newest_next_cursor(rows, limit)
    )


@router.get(
    "/advertisers/{advertiser_id}",
    response_model=AdvertiserPublic,
    operation_id="getAdvertiser",
    responses={404: not_found("advertiser")},
)
async def get_advertiser(advertiser_id: str, db: TenantDbDep) -> AdvertiserPublic:
    """Returns one advertiser."""
    async with db.tx() as session:
        row = await session.get(Advertiser, parse_id(advertiser_id, "advertiser"))
    if row is None:
        raise errors.not_found("advertiser", advertiser_id)
    return _public_advertiser(row)
