"""The event log: the tenant's outbox, oldest first, with cursor paging."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import TenantDbDep
from api.pagination import CursorParam, LimitParam, Page, decode_cursor, encode_cursor
from db.models import Event
from domain.events import EVENT_TYPES

router = APIRouter(prefix="/api/v1/events", tags=["events"])


class EventPublic(BaseModel):
    """One business event."""

    id: str
    type: str
    entity_type: str
    entity_id: str
    payload: dict[str, Any]
    occurred_at: datetime


@router.get("", response_model=Page[EventPublic])
async def list_events(
    db: TenantDbDep,
    type: Annotated[str | None, Query(max_length=60, description="e.g. deal.stage_changed")] = None,
    entity_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: LimitParam = 100,
    cursor: CursorParam = None,
) -> Page[EventPublic]:
    """Pages the tenant's events oldest first, filtered by type and entity."""
    if type is not None and type not in EVENT_TYPES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"type: unknown event type {type!r}; known: {', '.join(sorted(EVENT_TYPES))}",
        )
    after = decode_cursor(cursor, ("id",))
    stmt = select(Event).order_by(Event.id).limit(limit + 1)
    if after:
        try:
            stmt = stmt.where(Event.id > int(after["id"]))
        except (TypeError, ValueError):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="cursor: malformed") from None
    if type:
        stmt = stmt.where(Event.type == type)
    if entity_id:
        stmt = stmt.where(Event.entity_id == entity_id)
    async with db.tx() as session:
        rows = list((await session.scalars(stmt)).all())
    items = [
        EventPublic(
            id=str(e.id),
            type=e.type,
            entity_type=e.entity_type,
            entity_id=e.entity_id,
            payload=e.payload,
            occurred_at=e.occurred_at,
        )
        for e in rows[:limit]
    ]
    next_cursor = encode_cursor({"id": rows[limit - 1].id}) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
