"""Tenants and their API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import text

from db.engine import SessionMaker, tenant_tx
from db.models import ApiKey, Tenant


@dataclass(frozen=True)
class NewTenant:
    """A freshly created tenant and its first API key (shown once, stored hashed)."""

    id: uuid.UUID
    name: str
    api_key: str


def new_api_key() -> tuple[str, str, str]:
    """Returns (key, prefix, sha256 hash) of a fresh random API key."""
    prefix = secrets.token_hex(4)
    key = f"sf_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hashlib.sha256(key.encode()).hexdigest()


async def create_tenant(*, sm: SessionMaker, name: str) -> NewTenant:
    """Creates a tenant and its first API key in one transaction."""
    tenant_id = uuid.uuid4()
    key, prefix, key_hash = new_api_key()
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
        session.add(Tenant(id=tenant_id, name=name))
        await session.flush()
        session.add(ApiKey(tenant_id=tenant_id, key_hash=key_hash, prefix=prefix, name="first key"))
    return NewTenant(id=tenant_id, name=name, api_key=key)


async def all_tenant_ids(*, sm: SessionMaker) -> list[uuid.UUID]:
    """Every tenant's id, through the one function allowed to look across tenants."""
    async with sm() as session:
        rows = await session.execute(text("SELECT sponsorflow_tenant_ids()"))
        return [uuid.UUID(str(r[0])) for r in rows]
