"""The event log: the tenant's outbox, oldest first, with cursor paging."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select

from api import errors
from api.deps import TenantDbDep
from api.openapi import invalid, invalid_cursor
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


def _public(e: Event) -> EventPublic:
    return EventPublic(
        id=str(e.id),
        type=e.type,
        entity_type=e.entity_type,
        entity_id=e.entity_id,
        payload=e.payload,
        occurred_at=e.occurred_at,
    )


def _check_type(type: str | None) -> None:
    if type is not None and type not in EVENT_TYPES:
        raise errors.unprocessable(
            ["query", "type"], f"unknown event type {type!r}; known: {', '.join(sorted(EVENT_TYPES))}"
        )


@router.get(
    "",
    response_model=Page[EventPublic],
    operation_id="listEvents",
    responses={422: invalid_cursor("an unknown event type")},
)
async def list_events(
    db: TenantDbDep,
    type: Annotated[str | None, Query(max_length=60, description="e.g. deal.stage_changed")] = None,
    entity_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: LimitParam = 100,
    cursor: CursorParam = None,
) -> Page[EventPublic]:
    """Pages the tenant's events oldest first, filtered by type and entity."""
    _check_type(type)
    if entity_id is not None and "\x00" in entity_id:
        raise errors.unprocessable(["query", "entity_id"], "must not contain NUL (U+0000)")
    after = decode_cursor(cursor, ("id",))
    stmt = select(Event).order_by(Event.id).limit(limit + 1)
    if after:
        try:
            stmt = stmt.where(Event.id > int(after["id"]))
        except (TypeError, ValueError):
            raise errors.malformed_cursor() from None
    if type:
        stmt = stmt.where(Event.type == type)
    if entity_id:
        stmt = stmt.where(Event.entity_id == entity_id)
    async with db.tx() as session:
        rows = list((await session.scalars(stmt)).all())
    items = [_public(e) for e in rows[:limit]]
    next_cursor = encode_cursor({"id": rows[limit - 1].id}) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


def _frame(e: Event) -> str:
    return f"id: {e.id}\ndata: {json.dumps(_public(e).model_dump(mode='json'))}\n\n"


@router.get(
    "/stream",
    response_class=StreamingResponse,
    operation_id="streamEvents",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-sent events: `id: <event id>` and `data: <the event as JSON>` per message",
        },
        422: invalid(
            "an unknown event type, a Last-Event-ID that is not an event id, or an invalid parameter",
            [{"loc": ["header", "Last-Event-ID"], "msg": "not an event id", "type": "value_error"}],
        ),
    },
)
async def stream_events(
    request: Request,
    db: TenantDbDep,
    type: Annotated[str | None, Query(max_length=60, description="only this event type")] = None,
    backlog: Annotated[int, Query(ge=0, le=200, description="recent events sent first")] = 30,
    max_seconds: Annotated[
        float, Query(gt=0, le=3600, description="close after this long; EventSource reconnects")
    ] = 300,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=30)] = None,
) -> StreamingResponse:
    """The tenant's events as server-sent events: the latest `backlog` first, then each new one.

    Each message carries the event id, so a reconnecting EventSource resumes after the last one it saw
    (Last-Event-ID) without gaps or repeats. New events are picked up by polling the outbox every second.
    """
    _check_type(type)
    try:
        after = int(last_event_id) if last_event_id else None
    except ValueError:
        raise errors.unprocessable(["header", "Last-Event-ID"], "not an event id") from None

    def scoped(stmt: Any) -> Any:
        return stmt.where(Event.type == type) if type else stmt

    async def frames() -> AsyncIterator[str]:
        cursor = after
        yield "retry: 3000\n\n"
        if cursor is None:
            async with db.tx() as session:
                recent = list(
                    (
                        await session.scalars(scoped(select(Event).order_by(Event.id.desc()).limit(backlog)))
                    ).all()
                )
                newest = await session.scalar(select(Event.id).order_by(Event.id.desc()).limit(1))
            for e in reversed(recent):
                yield _frame(e)
            cursor = newest or 0
        deadline = time.monotonic() + max_seconds
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and not await request.is_disconnected():
            async with db.tx() as session:
                rows = list(
                    (
                        await session.scalars(
                            scoped(select(Event).where(Event.id > cursor).order_by(Event.id).limit(200))
                        )
                    ).all()
                )
            for e in rows:
                yield _frame(e)
                cursor = e.id
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            if len(rows) < 200:  # caught up: wait for the next poll
                await asyncio.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
