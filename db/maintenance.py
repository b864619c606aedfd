"""Reads of the maintenance rounds: deal rows that changed recently (one tenant at a time)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Deal


@dataclass(frozen=True)
class ChangedDeal:
    """What a deal's workflow should agree with: the row's stage entry."""

    id: uuid.UUID
    stage: str
    stage_changed_at: datetime


async def recently_changed_deals(
    *, session: AsyncSession, since: datetime, until: datetime, after: uuid.UUID, limit: int
) -> list[ChangedDeal]:
    """Deals of the session's tenant whose stage or details changed in [since, until), by id."""
    rows = await session.execute(
        select(Deal.id, Deal.stage, Deal.stage_changed_at)
        .where(
            or_(
                Deal.stage_changed_at.between(since, until),
                Deal.updated_at.between(since, until),
            ),
            Deal.id > after,
        )
        .order_by(Deal.id)
        .limit(limit)
    )
    return [ChangedDeal(id=r[0], stage=r[1], stage_changed_at=r[2]) for r in rows]
