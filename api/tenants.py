"""Admin: create tenants (each gets its first API key once)."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field

from api.bodies import JsonBody
from api.deps import SessionMakerDep, SettingsDep, TemporalDep, require_admin
from db.tenants import create_tenant
from workflows.starters import ensure_match_schedule

log = logging.getLogger("sponsorflow.api.tenants")

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])


class TenantCreate(JsonBody):
    """A new tenant: a podcast network."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(min_length=1, max_length=200)


class TenantCreated(BaseModel):
    """The tenant and its API key; the key is shown this once and stored only hashed."""

    id: str
    name: str
    api_key: str


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantCreated,
    operation_id="createTenant",
    dependencies=[Depends(require_admin)],
)
async def post_tenant(
    body: TenantCreate, sm: SessionMakerDep, temporal: TemporalDep, settings: SettingsDep
) -> TenantCreated:
    """Creates a tenant and returns its first API key; its match schedule comes with it."""
    tenant = await create_tenant(sm=sm, name=body.name)
    if settings.enable_matchmaking:
        try:
            await ensure_match_schedule(
                temporal,
                str(tenant.id),
                settings.temporal_task_queue,
                timedelta(hours=settings.match_recalc_every_hours),
            )
        except Exception as exc:  # noqa: BLE001 - the tenant exists; the worker's start-up reconciles
            log.warning("match schedule of tenant %s not created yet: %s", tenant.id, exc)
    return TenantCreated(id=str(tenant.id), name=tenant.name, api_key=tenant.api_key)
