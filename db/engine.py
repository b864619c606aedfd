"""Engine, sessions and tenant scoping: nothing tenant-scoped runs without SET LOCAL app.tenant_id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionMaker = async_sessionmaker[AsyncSession]


def make_engine(*, url: str, pool_size: int = 10) -> AsyncEngine:
    """Creates the one engine of a process (API or worker)."""
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_sessionmaker(*, engine: AsyncEngine) -> SessionMaker:
    """Creates the session factory handed to activities and API dependencies."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def set_tenant(*, session: AsyncSession, tenant_id: uuid.UUID | str) -> None:
    """Scopes the current transaction to one tenant; RLS policies read this setting."""
    await session.execute(
        text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(uuid.UUID(str(tenant_id)))}
    )


@asynccontextmanager
async def tenant_tx(*, sm: SessionMaker, tenant_id: uuid.UUID | str) -> AsyncIterator[AsyncSession]:
    """Opens one transaction scoped to `tenant_id`; commits on success, rolls back on error."""
    async with sm() as session, session.begin():
        await set_tenant(session=session, tenant_id=tenant_id)
        yield session


async def tenant_for_key_hash(*, session: AsyncSession, key_hash: str) -> uuid.UUID | None:
    """Resolves an API key hash to its tenant through the SECURITY DEFINER lookup function."""
    row = await session.execute(text("SELECT sponsorflow_tenant_for_key(:h)"), {"h": key_hash})
    value = row.scalar()
    return uuid.UUID(str(value)) if value else None


async def raw_connection(*, session: AsyncSession) -> Any:
    """The session's asyncpg connection, for COPY (which SQLAlchemy does not expose)."""
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    return raw
