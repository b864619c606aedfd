"""Writes to the outbox, always inside the transaction of the change the event reports."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Event
from domain.events import EVENT_TYPES


async def emit_event(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID | str,
    type: str,
    entity_type: str,
    entity_id: str,
    payload: dict[str, Any],
    occurred_at: datetime,
    idempotency_key: str,
) -> bool:
    """Inserts one event unless its idempotency key was already written; returns whether it was."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    stmt = (
        insert(Event)
        .values(
            tenant_id=uuid.UUID(str(tenant_id)),
            type=type,
            entity_type=entity_type,
            entity_id=entity_id,
            payload=payload,
            occurred_at=occurred_at,
            idempotency_key=idempotency_key,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Event.id)
    )
    return (await session.execute(stmt)).scalar() is not None
