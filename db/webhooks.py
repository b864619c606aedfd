"""Webhook endpoints and deliveries: CRUD, the outbox claim, and each attempt's record.

Secrets are stored as Fernet tokens (`SecretBox`, key from SPONSORFLOW_WEBHOOK_SECRET_KEY): a dump
of the database alone cannot sign. Every function runs inside a tenant transaction (RLS).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.deals import get_deal
from db.events import emit_event
from db.models import Event, IoBooking, WebhookDelivery, WebhookEndpoint
from domain.events import WEBHOOK_DISABLED, WEBHOOK_TEST
from domain.webhooks import ALL_EVENTS, DeliveryRef, SlackContext, WebhookEvent


class SecretBox:
    """Encrypts and decrypts endpoint secrets with a key derived from the configured one."""

    def __init__(self, key: str) -> None:
        # Any string works as configuration; Fernet wants 32 url-safe base64 bytes.
        digest = hashlib.sha256(f"sponsorflow-webhook-secrets|{key}".encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, secret: str) -> str:
        """The stored form of a secret."""
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, token: str) -> str:
        """The secret of a stored token (ValueError: another key sealed it)."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError(
                "the webhook secret cannot be decrypted with SPONSORFLOW_WEBHOOK_SECRET_KEY"
            ) from None


# ---------------------------------------------------------------------------------------------
# Endpoints


async def create_endpoint(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    url: str,
    event_types: list[str],
    format: str,
    description: str | None,
    sealed_secret: str,
) -> WebhookEndpoint:
    """Inserts an endpoint whose cursor starts at the tenant's newest event."""
    newest = await session.scalar(select(func.coalesce(func.max(Event.id), 0)))
    row = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        url=url,
        event_types=event_types,
        format=format,
        description=description,
        secret_encrypted=sealed_secret,
        after_event_id=int(newest or 0),
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row


async def get_endpoint(
    *, session: AsyncSession, endpoint_id: uuid.UUID, lock: bool = False
) -> WebhookEndpoint | None:
    """One endpoint of the tenant (None: not this tenant's, or gone)."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.scalars(stmt)).first()


async def endpoint_summaries(*, session: AsyncSession) -> list[tuple[uuid.UUID, str, str | None]]:
    """Every endpoint of the tenant: (id, url, description)."""
    rows = await session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.description).order_by(
            WebhookEndpoint.id
        )
    )
    return [(r[0], r[1], r[2]) for r in rows.all()]


async def update_endpoint(
    *, session: AsyncSession, row: WebhookEndpoint, changes: dict[str, Any]
) -> WebhookEndpoint:
    """Applies the given column changes to a locked endpoint row."""
    for column, value in changes.items():
        setattr(row, column, value)
    row.updated_at = func.now()
    await session.flush()
    await session.refresh(row)
    return row


async def delete_endpoint(*, session: AsyncSession, endpoint_id: uuid.UUID) -> bool:
    """Deletes an endpoint and its deliveries; returns whether it existed."""
    row = await get_endpoint(session=session, endpoint_id=endpoint_id, lock=True)
    if row is None:
        return False
    await session.delete(row)
    return True


@dataclass(frozen=True)
class EndpointSecrets:
    """What an attempt needs of its endpoint, secrets decrypted (never leaves the activity)."""

    url: str
    format: str
    status: str
    secret: str
    previous_secret: str | None
    previous_until: datetime | None


def open_secrets(*, row: WebhookEndpoint, box: SecretBox) -> EndpointSecrets:
    """The endpoint with its secrets decrypted."""
    return EndpointSecrets(
        url=row.url,
        format=row.format,
        status=row.status,
        secret=box.open(row.secret_encrypted),
        previous_secret=box.open(row.previous_secret_encrypted) if row.previous_secret_encrypted else None,
        previous_until=row.previous_secret_expires_at,
    )


# ---------------------------------------------------------------------------------------------
# Deliveries


_CLAIM = text(
    """
    WITH picked AS (
        SELECT e.id, e.tenant_id, e.type, e.entity_id
        FROM events e
        WHERE e.id > :cursor
          AND ((e.type = :test AND e.entity_id = :endpoint_text)
               OR (e.type <> :test AND (:every OR e.type = ANY(:types))))
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries d
              WHERE d.endpoint_id = CAST(:endpoint AS uuid) AND d.event_id = e.id
          )
        ORDER BY e.id
        LIMIT :limit
    ), claimed AS (
        INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_type, entity_id)
        SELECT gen_random_uuid(), p.tenant_id, CAST(:endpoint AS uuid), p.id, p.type, p.entity_id
        FROM picked p ORDER BY p.id
        ON CONFLICT (endpoint_id, event_id) DO NOTHING
        RETURNING event_id
    )
    SELECT (SELECT count(*) FROM picked) AS picked, (SELECT max(id) FROM picked) AS max_picked,
           (SELECT count(*) FROM claimed) AS claimed
    """
)


# One statement, so one snapshot: the newest visible event id, that snapshot's xmin, and this
# transaction's own xid, assigned while the statement runs (after its snapshot was taken). The
# columns are evaluated in order: `had_xid` tells whether an earlier statement already gave the
# transaction its xid (then it may be older than the snapshot, and no horizon is reported).
# `xid_first`: events.id defaults to sponsorflow_next_event_id() (migration 0012 applied; a
# worker deployed before it reports no horizon, and its workflow keeps the time rule).
_HORIZON = text(
    """
    WITH n AS (SELECT coalesce(max(id), 0) AS newest FROM events)
    SELECT n.newest,
           EXISTS (
               SELECT 1 FROM pg_attrdef d
               JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
               WHERE d.adrelid = 'public.events'::regclass AND a.attname = 'id'
                 AND pg_get_expr(d.adbin, d.adrelid) = 'sponsorflow_next_event_id()'
           ) AS xid_first,
           pg_current_xact_id_if_assigned() IS NOT NULL AS had_xid,
           CASE WHEN n.newest > :cursor THEN pg_current_xact_id()::text::bigint END AS horizon_xid,
           pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS snapshot_xmin
    FROM n
    """
)


@dataclass(frozen=True)
class Claim:
    """What one claim did: events picked (at most the limit), newly queued, the tenant's newest,
    and the snapshot horizon of the statement that read the newest (None: not trustworthy)."""

    picked: int
    max_picked: int | None
    claimed: int
    newest_event_id: int
    horizon_xid: int | None
    snapshot_xmin: int | None


async def claim_events(*, session: AsyncSession, endpoint: WebhookEndpoint, cursor: int, limit: int) -> Claim:
    """Queues a delivery for each matching event after `cursor` not queued yet (idempotent).

    The snapshot horizon, why it proves that nothing up to the newest id is still to come: events.id
    defaults to sponsorflow_next_event_id() (migration 0012), so a writer has its xid BEFORE it takes
    an id. Let M be the newest id visible to snapshot S, and X this transaction's xid, assigned after
    S. An id N <= M was taken before M, M before M's commit, that commit before S: so N's writer got
    its xid before S, hence before X, so its xid < X. Once a later claim's snapshot has xmin >= X,
    no transaction with an xid below X is running: every id up to M is final, committed (visible to
    that claim's scan, which runs after its xmin was read) or rolled back (a gap forever).

    X is this transaction's own xid and not S's xmax: pg_snapshot_xmax is one past the highest
    *completed* xid, and a writer that got its xid after the last completion but before S is
    running at or above it (xmin = xmax = its xid), so "later xmin >= xmax" would pass with it open.
    """
    # Read before the claim: every event up to it that is visible now gets picked below.
    # Nothing newer than the cursor (an idle endpoint): no observation to make, so no xid is taken
    # (each would count towards the anti-wraparound vacuum). No observation waits then either: a
    # waiting one is above the cursor, and its ids were visible, so the newest is above it too.
    h = (await session.execute(_HORIZON, {"cursor": cursor})).one()
    newest = int(h.newest or 0)
    trusted = bool(h.xid_first) and not h.had_xid
    every = ALL_EVENTS in endpoint.event_types
    row = (
        await session.execute(
            _CLAIM,
            {
                "cursor": cursor,
                "test": WEBHOOK_TEST,
                "endpoint_text": str(endpoint.id),
                "endpoint": endpoint.id,
                "every": every,
                "types": [] if every else list(endpoint.event_types),
                "limit": limit,
            },
        )
    ).one()
    return Claim(
        picked=int(row.picked),
        max_picked=int(row.max_picked) if row.max_picked is not None else None,
        claimed=int(row.claimed),
        newest_event_id=newest,
        horizon_xid=int(h.horizon_xid) if trusted and h.horizon_xid is not None else None,
        snapshot_xmin=int(h.snapshot_xmin) if trusted else None,
    )


async def pending_deliveries(
    *, session: AsyncSession, endpoint_id: uuid.UUID, after_seq: int, limit: int
) -> list[DeliveryRef]:
    """The endpoint's pending deliveries after `after_seq`, in queue order."""
    rows = (
        await session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.event_id,
                WebhookDelivery.entity_id,
                WebhookDelivery.queue_seq,
            )
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.queue_seq > after_seq,
            )
            .order_by(WebhookDelivery.queue_seq)
            .limit(limit)
        )
    ).all()
    return [
        DeliveryRef(id=str(r.id), event_id=r.event_id, entity_id=r.entity_id, queue_seq=r.queue_seq)
        for r in rows
    ]


@dataclass(frozen=True)
class Attempt:
    """A delivery about to be attempted: its row, its event as the events API shows it, its endpoint."""

    delivery: WebhookDelivery
    event: WebhookEvent
    endpoint: WebhookEndpoint


async def load_attempts(*, session: AsyncSession, delivery_ids: list[uuid.UUID]) -> dict[uuid.UUID, Attempt]:
    """The deliveries with their events and endpoints, by id (a missing id: it or its endpoint is gone)."""
    found = await session.execute(
        select(WebhookDelivery, Event, WebhookEndpoint)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(delivery_ids))
    )
    out: dict[uuid.UUID, Attempt] = {}
    for d, e, ep in found.all():
        event = WebhookEvent(
            id=str(e.id),
            type=e.type,
            entity_type=e.entity_type,
            entity_id=e.entity_id,
            payload=e.payload,
            occurred_at=e.occurred_at,
        )
        out[d.id] = Attempt(delivery=d, event=event, endpoint=ep)
    return out


_MARK_DELIVERED = text(
    """
    UPDATE webhook_deliveries d
    SET status = 'delivered', attempts = d.attempts + 1, last_status_code = v.code,
        last_error = NULL, next_attempt_at = NULL, delivered_at = v.at,
        first_attempt_at = coalesce(d.first_attempt_at, v.started)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:codes AS integer[]), CAST(:starts AS timestamptz[]),
                CAST(:ats AS timestamptz[])) AS v(id, code, started, at)
    WHERE d.id = v.id AND d.status = 'pending'
    """
)


async def mark_delivered(
    *,
    session: AsyncSession,
    endpoint_id: uuid.UUID,
    delivered: list[tuple[uuid.UUID, int, datetime, datetime]],
) -> int:
    """2xx answers (delivery id, status code, attempt started, answered): delivered, in one
    statement (only pending rows change; a duplicate attempt changes nothing). Returns how many.

    The endpoint is healthy again: its failing streak ends (a no-op, and no row lock, when none
    runs: the endpoint's parallel chains do not queue on its row).
    """
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
        .values(failing_since=None)
    )
    result = await session.execute(
        _MARK_DELIVERED,
        {
            "ids": [d[0] for d in delivered],
            "codes": [d[1] for d in delivered],
            "starts": [d[2] for d in delivered],
            "ats": [d[3] for d in delivered],
        },
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def record_failure(
    *,
    session: AsyncSession,
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    status_code: int | None,
    error: str,
    next_attempt_at: datetime | None,
    at: datetime,
    started_at: datetime,
    give_up_at: datetime,
) -> bool:
    """A failed attempt: pending with its next attempt's time, or failed when there is none.

    The delivery's retry window opens at its own first attempt (`started_at`, `give_up_at`; a
    retry or replay opens a new one). The endpoint's failing streak starts here unless one is running.
    """
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_(None))
        .values(failing_since=at)
    )
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        .values(
            status="pending" if next_attempt_at is not None else "failed",
            attempts=WebhookDelivery.attempts + 1,
            last_status_code=status_code,
            last_error=error[:500],
            next_attempt_at=next_attempt_at,
            first_attempt_at=func.coalesce(WebhookDelivery.first_attempt_at, started_at),
            give_up_at=func.coalesce(WebhookDelivery.give_up_at, give_up_at),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def advance_start(*, session: AsyncSession, endpoint_id: uuid.UUID, cursor: int) -> None:
    """Moves where a new run of the endpoint's workflow starts (after_event_id) up to its settled
    cursor: a restarted workflow neither rescans months of outbox nor re-queues what retention pruned."""
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.after_event_id < cursor)
        .values(after_event_id=cursor)
    )


async def mark_failed(*, session: AsyncSession, delivery_id: uuid.UUID, error: str) -> bool:
    """Ends a pending delivery as failed without an attempt (its window ran out)."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        .values(status="failed", last_error=error[:500], next_attempt_at=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


_REQUEUE = {
    "status": "pending",
    "attempts": 0,
    "first_attempt_at": None,
    "give_up_at": None,
    "next_attempt_at": None,
    "delivered_at": None,
    "last_error": None,
    "last_status_code": None,
}


async def requeue_delivery(*, session: AsyncSession, delivery: WebhookDelivery) -> None:
    """Puts a delivered or failed delivery back in the queue (same id: same webhook-id)."""
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id)
        .values(**_REQUEUE, queue_seq=text("nextval('webhook_delivery_queue_seq')"))
    )


_REPLAY_ADD = text(
    """
    INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_type, entity_id)
    SELECT gen_random_uuid(), e.tenant_id, CAST(:endpoint AS uuid), e.id, e.type, e.entity_id
    FROM events e
    WHERE e.occurred_at >= :since AND (CAST(:until AS timestamptz) IS NULL OR e.occurred_at < :until)
      AND ((e.type = :test AND e.entity_id = :endpoint_text)
           OR (e.type <> :test AND (:every OR e.type = ANY(:types))))
    ORDER BY e.id
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
    """
)


async def replay_window(
    *, session: AsyncSession, endpoint: WebhookEndpoint, since: datetime, until: datetime | None
) -> tuple[int, int]:
    """Queues every matching event of [since, until) again: (requeued, added)."""
    window = [Event.occurred_at >= since] + ([Event.occurred_at < until] if until is not None else [])
    done = (
        select(WebhookDelivery.id)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status != "pending", *window)
        .order_by(Event.id)
    )
    ids = list((await session.scalars(done)).all())
    for did in ids:
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == did)
            .values(**_REQUEUE, queue_seq=text("nextval('webhook_delivery_queue_seq')"))
        )
    every = ALL_EVENTS in endpoint.event_types
    added = await session.execute(
        _REPLAY_ADD,
        {
            "since": since,
            "until": until,
            "test": WEBHOOK_TEST,
            "endpoint": endpoint.id,
            "endpoint_text": str(endpoint.id),
            "every": every,
            "types": [] if every else list(endpoint.event_types),
        },
    )
    return len(ids), int(added.rowcount)  # type: ignore[attr-defined]


async def get_delivery(
    *, session: AsyncSession, endpoint_id: uuid.UUID, delivery_id: uuid.UUID, lock: bool = False
) -> WebhookDelivery | None:
    """One delivery of one endpoint."""
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    if lock:
        stmt = stmt.with_for_update()
    return (await session.scalars(stmt)).first()


async def emit_test_event(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    key: str,
    note: str | None,
    at: datetime,
) -> int:
    """Writes the webhook.test event of one request (idempotent by its key); returns its id."""
    await emit_event(
        session=session,
        tenant_id=tenant_id,
        type=WEBHOOK_TEST,
        entity_type="webhook",
        entity_id=str(endpoint_id),
        payload={"endpoint_id": str(endpoint_id), "message": note or "a test event sent from sponsorflow"},
        occurred_at=at,
        idempotency_key=key,
    )
    return int(await session.scalar(select(Event.id).where(Event.idempotency_key == key)) or 0)


async def disable_endpoint(
    *, session: AsyncSession, endpoint_id: uuid.UUID, failing_since: datetime, at: datetime, reason: str
) -> bool:
    """Pauses an endpoint still failing since `failing_since`, with its webhook.disabled event."""
    row = await get_endpoint(session=session, endpoint_id=endpoint_id, lock=True)
    if row is None or row.status != "active" or row.failing_since != failing_since:
        return False
    row.status = "paused"
    # The streak is answered; after a resume a new one starts at the next failure.
    row.failing_since = None
    row.updated_at = at
    await emit_event(
        session=session,
        tenant_id=row.tenant_id,
        type=WEBHOOK_DISABLED,
        entity_type="webhook",
        entity_id=str(endpoint_id),
        payload={
            "endpoint_id": str(endpoint_id),
            "failing_since": failing_since.isoformat(),
            "reason": reason,
        },
        occurred_at=at,
        idempotency_key=f"{WEBHOOK_DISABLED}/{endpoint_id}/{failing_since.isoformat()}",
    )
    return True


async def slack_context(*, session: AsyncSession, entity_type: str, entity_id: str) -> SlackContext | None:
    """The deal a deal's or an IO's event is about, as a chat sentence names it."""
    try:
        key = uuid.UUID(entity_id)
    except ValueError:
        return None
    if entity_type == "io":
        found = await session.scalar(select(IoBooking.campaign_id).where(IoBooking.id == key))
        if found is None:
            return None
        key = found
    elif entity_type != "deal":
        return None
    row = await get_deal(session=session, campaign_id=key)
    if row is None:
        return None
    title = f"{row.advertiser_name} x {row.show_name}" if row.show_name else row.advertiser_name
    return SlackContext(title=title, value_usd=float(row.deal.value_usd))


async def prune_deliveries(*, session: AsyncSession, before: datetime, limit: int) -> int:
    """Deletes up to `limit` of the tenant's decided deliveries (delivered, failed) older than
    `before` (by when delivered, or when its window ended, else when created); pending ones stay.
    Returns how many went.

    Only below each endpoint's start (after_event_id, the settled cursor its claims persist): the
    claim never scans there again, so a pruned event is never queued again under a new webhook-id
    (a replay of its window still may: on purpose). Each endpoint's rows are found through
    ix_webhook_deliveries_newest (endpoint_id, created_at): delivered_at and give_up_at >= created_at.
    """
    result = await session.execute(
        text(
            """
            DELETE FROM webhook_deliveries WHERE id IN (
                SELECT d.id FROM webhook_endpoints ep
                CROSS JOIN LATERAL (
                    SELECT id FROM webhook_deliveries
                    WHERE endpoint_id = ep.id AND created_at < :before
                      AND status IN ('delivered', 'failed')
                      AND coalesce(delivered_at, give_up_at, created_at) < :before
                      AND event_id <= ep.after_event_id
                    LIMIT :limit
                ) d
                LIMIT :limit
            )
            """
        ),
        {"before": before, "limit": limit},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
