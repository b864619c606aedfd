"""The write fence: one row per request sent through Temporal, claimed by whoever decides first.

The activity that persists a request claims it as `applied` in the transaction of the write; an
API process that stops waiting claims it as `abandoned` before answering 503. PostgreSQL's unique
key serialises the two, so exactly one wins and both learn which: a 503 is never applied later,
and a write that did land is answered as applied.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import WriteRequest

Claim = Literal["claimed", "applied", "abandoned"]

# How long the API's side of the fence waits for a write that holds the request's key.
FENCE_LOCK_TIMEOUT_MS = 2000


def new_request_id() -> str:
    """A fresh request id (also the Temporal update id of the request)."""
    return f"req-{uuid.uuid4().hex}"


def fingerprint(*, payload: Any) -> str:
    """A stable digest of a request body, to refuse an Idempotency-Key reused for another request."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ClaimResult:
    """How a claim went: `claimed` now (inserted: the row is new), or already decided."""

    outcome: Claim
    inserted: bool = False


async def claim_request(
    *, session: AsyncSession, tenant_id: uuid.UUID | str, request_id: str, entity_type: str, entity_id: str
) -> ClaimResult:
    """Claims a request for the write in this transaction, unless it was applied or abandoned already."""
    stmt = (
        insert(WriteRequest)
        .values(
            tenant_id=uuid.UUID(str(tenant_id)),
            request_id=request_id,
            state="applied",
            entity_type=entity_type,
            entity_id=entity_id,
            decided_at=func.now(),
        )
        .on_conflict_do_update(
            index_elements=[WriteRequest.tenant_id, WriteRequest.request_id],
            set_={"state": "applied", "decided_at": func.now()},
            where=WriteRequest.state == "pending",
        )
        .returning(text("(xmax = 0) AS inserted"))
    )
    row = (await session.execute(stmt)).first()
    if row is not None:
        return ClaimResult("claimed", inserted=bool(row[0]))
    state = await session.scalar(select(WriteRequest.state).where(WriteRequest.request_id == request_id))
    return ClaimResult("abandoned" if state == "abandoned" else "applied")


async def release_claim(*, session: AsyncSession, request_id: str, claim: ClaimResult) -> None:
    """Undoes a claim whose write did not happen after all (a stale decision that will be retaken)."""
    if claim.outcome != "claimed":
        return
    if claim.inserted:
        await session.execute(delete(WriteRequest).where(WriteRequest.request_id == request_id))
    else:
        await session.execute(
            update(WriteRequest)
            .where(WriteRequest.request_id == request_id)
            .values(state="pending", decided_at=None)
        )


async def abandon_request(
    *, session: AsyncSession, tenant_id: uuid.UUID | str, request_id: str, entity_type: str, entity_id: str
) -> Literal["abandoned", "applied"]:
    """Claims a request as abandoned (the API gives up on it); returns `applied` if its write won.

    A write frozen mid-transaction (a stopped worker) holds the request's key: the wait is bounded
    (lock_timeout), and the caller answers "unknown" rather than hang with a pooled connection.
    """
    await session.execute(text(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT_MS}ms'"))
    stmt = (
        insert(WriteRequest)
        .values(
            tenant_id=uuid.UUID(str(tenant_id)),
            request_id=request_id,
            state="abandoned",
            entity_type=entity_type,
            entity_id=entity_id,
            decided_at=func.now(),
        )
        .on_conflict_do_update(
            index_elements=[WriteRequest.tenant_id, WriteRequest.request_id],
            set_={"state": "abandoned", "decided_at": func.now()},
            where=WriteRequest.state == "pending",
        )
        .returning(WriteRequest.state)
    )
    if (await session.execute(stmt)).first() is not None:
        return "abandoned"
    state = await session.scalar(select(WriteRequest.state).where(WriteRequest.request_id == request_id))
    return "applied" if state == "applied" else "abandoned"


@dataclass(frozen=True)
class KeyedRequest:
    """What an Idempotency-Key says about a new request.

    `new`: go ahead with `request_id` (registered pending); `replay`: an earlier request with this
    key was applied (`request_id` is that one); `mismatch`: the key was used for another request.
    """

    status: Literal["new", "replay", "mismatch"]
    request_id: str | None = None


async def begin_keyed_request(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID | str,
    idempotency_key: str,
    fingerprint: str,
    entity_type: str,
    entity_id: str,
    expires_at: datetime,
    now: datetime,
) -> KeyedRequest:
    """Registers a new attempt under an Idempotency-Key, after fencing off the earlier ones.

    A retry means the client stopped listening to the earlier attempt (no answer, a dropped
    connection, an API that died): that attempt is fenced as abandoned, so it can no longer land
    behind this one's back; if it had already been applied, the retry answers it instead.
    """
    await session.execute(text(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT_MS}ms'"))
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"{tenant_id}/{idempotency_key}"},
    )
    prints = (
        await session.scalars(
            select(WriteRequest.fingerprint).where(WriteRequest.idempotency_key == idempotency_key)
        )
    ).all()
    if any(p != fingerprint for p in prints):
        return KeyedRequest("mismatch")
    await session.execute(
        update(WriteRequest)
        .where(WriteRequest.idempotency_key == idempotency_key, WriteRequest.state == "pending")
        .values(state="abandoned", decided_at=now)
    )
    rows = (
        await session.execute(
            select(WriteRequest.request_id, WriteRequest.state, WriteRequest.fingerprint).where(
                WriteRequest.idempotency_key == idempotency_key
            )
        )
    ).all()
    for r in rows:
        if r.state == "applied":
            return KeyedRequest("replay", request_id=r.request_id)
    request_id = new_request_id()
    session.add(
        WriteRequest(
            tenant_id=uuid.UUID(str(tenant_id)),
            request_id=request_id,
            state="pending",
            entity_type=entity_type,
            entity_id=entity_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return KeyedRequest("new", request_id=request_id)


async def request_state(*, session: AsyncSession, request_id: str) -> str | None:
    """The fence's state of a request: pending, applied, abandoned, or None (never registered)."""
    state: str | None = await session.scalar(
        select(WriteRequest.state).where(WriteRequest.request_id == request_id)
    )
    return state
