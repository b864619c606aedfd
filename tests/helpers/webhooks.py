"""What the webhook tests share: fast webhook clocks for a test stack, and outbox events written
the way the product writes them (db.events.emit_event), matching an `io.ad_aired` subscription."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import SessionMaker, tenant_tx
from db.events import emit_event

# Polls every 0.2 s (0.3 s idle), retries from 0.2 s at most 1 s apart, a 1 s attempt timeout, a
# 1 s settle for observations without a horizon. Tests add or override what they are about.
FAST_WEBHOOKS: dict[str, Any] = {
    "webhook_poll_seconds": 0.2,
    "webhook_idle_poll_seconds": 0.3,
    "webhook_retry_initial_seconds": 0.2,
    "webhook_retry_max_interval_seconds": 1.0,
    "webhook_timeout_seconds": 1.0,
    "webhook_outbox_settle_seconds": 1.0,
}


async def emit_in(session: AsyncSession, tenant_id: uuid.UUID, entity: str, **payload: Any) -> int:
    """Writes one `io.ad_aired` event of `entity` in `session`'s transaction; returns its id."""
    key = f"test/{uuid.uuid4()}"
    await emit_event(
        session=session,
        tenant_id=tenant_id,
        type="io.ad_aired",
        entity_type="io",
        entity_id=entity,
        payload=payload,
        occurred_at=datetime.now(UTC),
        idempotency_key=key,
    )
    found = await session.execute(text("SELECT id FROM events WHERE idempotency_key = :k"), {"k": key})
    return int(found.scalar_one())


async def emit(sm: SessionMaker, tenant_id: uuid.UUID, entity: str, **payload: Any) -> int:
    """Writes one `io.ad_aired` event of `entity` in a transaction of its own; returns its id."""
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
        return await emit_in(session, tenant_id, entity, **payload)
