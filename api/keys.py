"""A tenant's own API keys: list, add, revoke (keys are shown once and stored only hashed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from api import errors
from api.bodies import JsonBody
from api.deps import Credentials, KeyCache, SettingsDep, TenantDbDep, get_key_cache, parse_id, presented_key
from api.openapi import not_found, problem
from api.pagination import Page
from db.models import ApiKey
from db.tenants import new_api_key

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


class KeyCreate(JsonBody):
    """A new key's label, e.g. who or what uses it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(min_length=1, max_length=200)


class KeyPublic(BaseModel):
    """A key without its secret: the prefix identifies it (`sf_<prefix>_...`)."""

    id: str
    prefix: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    current: bool = Field(description="the key (or web session) this request was made with")


class KeyCreated(KeyPublic):
    """A new key; `api_key` is shown this once."""

    api_key: str


async def _current_hash(request: Request, creds: Credentials, settings: SettingsDep) -> str | None:
    presented = presented_key(request, creds, settings)
    return presented[0] if presented else None


CurrentHash = Annotated[str | None, Depends(_current_hash)]


def _public(k: ApiKey, current: str | None) -> KeyPublic:
    return KeyPublic(
        id=str(k.id),
        prefix=k.prefix,
        name=k.name,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
        current=k.key_hash == current,
    )


@router.get("", response_model=Page[KeyPublic], operation_id="listKeys")
async def list_keys(db: TenantDbDep, current: CurrentHash) -> Page[KeyPublic]:
    """This tenant's keys, active first, newest first (a handful, so one page)."""
    async with db.tx() as session:
        rows = (
            await session.scalars(
                select(ApiKey).order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc(), ApiKey.id)
            )
        ).all()
    return Page(items=[_public(k, current) for k in rows], next_cursor=None)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, operation_id="createKey")
async def create_key(body: KeyCreate, db: TenantDbDep, current: CurrentHash) -> KeyCreated:
    """Adds a key (for a new integration, or to rotate: add, switch, revoke the old one)."""
    key, prefix, key_hash = new_api_key()
    async with db.tx() as session:
        row = ApiKey(tenant_id=db.tenant_id, key_hash=key_hash, prefix=prefix, name=body.name)
        session.add(row)
        await session.flush()
        await session.refresh(row)
    return KeyCreated(**_public(row, current).model_dump(), api_key=key)


@router.post(
    "/{key_id}/revoke",
    response_model=KeyPublic,
    operation_id="revokeKey",
    responses={
        404: not_found("key"),
        409: problem(
            "the tenant's last active key",
            "this is the tenant's last active key; create another before revoking it",
            code="last_active_key",
        ),
    },
)
async def revoke_key(
    key_id: str,
    db: TenantDbDep,
    current: CurrentHash,
    cache: Annotated[KeyCache, Depends(get_key_cache)],
) -> KeyPublic:
    """Revokes a key: it stops working at once in this API process and within the key cache's
    lifetime (SPONSORFLOW_API_KEY_CACHE_SECONDS) in the others; web sessions signed in with it end too.
    Revoking a revoked key answers it again. The last active key cannot be revoked (409)."""
    kid = parse_id(key_id, "key")
    async with db.tx() as session:
        # Every key of the tenant locked: two revocations racing cannot both take the last two.
        await session.execute(select(ApiKey.id).order_by(ApiKey.id).with_for_update())
        row = await session.get(ApiKey, kid)
        if row is None:
            raise errors.not_found("key", key_id)
        if row.revoked_at is None:
            active = await session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None), ApiKey.id != kid)
            )
            if not active:
                raise errors.conflict(
                    "this is the tenant's last active key; create another before revoking it",
                    code="last_active_key",
                )
            row.revoked_at = datetime.now(UTC)
        cache.forget(row.key_hash)
        return _public(row, current)
