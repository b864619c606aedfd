"""The outbox cursor never skips an event whose transaction commits late, however late: it moves
on the claims' PostgreSQL snapshot horizon, not on a settle time (here 0 s, so the old time rule
would skip). A transaction held open only holds the cursor back; one rolled back leaves a gap the
cursor passes once it ended. Deliveries are verified with `standardwebhooks`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client, WorkflowHandle

from db.embedded import EmbeddedDatabase, ensure_database
from db.engine import SessionMaker, make_engine, make_sessionmaker, set_tenant, tenant_tx
from db.migrate import upgrade
from db.models import WebhookEndpoint
from db.tenants import create_tenant
from db.webhooks import claim_events, create_endpoint
from domain.webhooks import Certificate, Observation, WebhookState, settle
from tests.conftest import Stack, start_stack
from tests.helpers.receivers import Received, receiver
from tests.helpers.webhooks import FAST_WEBHOOKS, emit, emit_in

# The old rule would move the cursor past anything not visible at the previous claim.
FAST: dict[str, Any] = {**FAST_WEBHOOKS, "webhook_outbox_settle_seconds": 0.0}


async def _unsent_endpoint(session: AsyncSession, tenant_id: uuid.UUID) -> WebhookEndpoint:
    """An endpoint row (no workflow sends to it) whose claims a test runs by hand."""
    return await create_endpoint(
        session=session,
        tenant_id=tenant_id,
        url="http://127.0.0.1:9/hook",
        event_types=["io.ad_aired"],
        format="standard",
        description=None,
        sealed_secret="unused",
    )


@asynccontextmanager
async def _open_tx(sm: SessionMaker, tenant_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
    """A tenant transaction on its own connection that the test commits or rolls back itself."""
    async with sm() as session:
        await session.begin()
        await set_tenant(session=session, tenant_id=tenant_id)
        try:
            yield session
        finally:
            if session.in_transaction():
                await session.rollback()


async def _state(handle: WorkflowHandle[Any, Any]) -> WebhookState:
    state: WebhookState = await handle.query("state", result_type=WebhookState)
    return state


async def _cursor_reaches(handle: WorkflowHandle[Any, Any], event_id: int, timeout: float = 20.0) -> None:
    """Waits until the workflow's event cursor is at or past `event_id`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        cursor = (await _state(handle)).event_cursor
        if cursor is not None and cursor >= event_id:
            return
        assert asyncio.get_running_loop().time() < deadline, f"the cursor stayed at {cursor} < {event_id}"
        await asyncio.sleep(0.2)


def _labels(secret: str, reqs: list[Received]) -> list[str]:
    return [str(dict(Webhook(secret).verify(q.body, q.headers))["payload"]["label"]) for q in reqs]


async def _setup(stack: Stack, url: str) -> tuple[uuid.UUID, dict[str, Any], WorkflowHandle[Any, Any]]:
    t = await stack.new_tenant()
    r = await stack.http.post(
        "/api/v1/webhooks", json={"url": url, "event_types": ["io.ad_aired"]}, headers=stack.auth(t)
    )
    assert r.status_code == 201, r.text
    hook = dict(r.json())
    return t.id, hook, stack.client.get_workflow_handle(hook["workflow_id"])


async def test_an_event_committed_long_after_later_ones_were_delivered_is_delivered(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, **FAST):
        async with receiver("ok") as r:
            tenant_id, hook, handle = await _setup(stack, r.url)
            await emit(sm, tenant_id, "first", label="first")
            await r.wait_for(1)
            # A writer takes its event id and stays open (an idle-in-transaction session, a worker
            # stopped mid-transaction) while later events are written and delivered.
            async with tenant_tx(sm=sm, tenant_id=tenant_id) as held:
                held_id = await emit_in(held, tenant_id, "held", label="held")
                for n in range(1, 4):
                    await emit(sm, tenant_id, f"later-{n}", label=f"later-{n}")
                    await r.wait_for(1 + n)
                await asyncio.sleep(1.5)  # several more claims past the open transaction
                state = await _state(handle)
                assert state.event_cursor is not None and state.event_cursor < held_id
                assert "held" not in _labels(hook["secret"], r.requests)
            # Committed now, long after the settle time: delivered, signed, once.
            reqs = await r.wait_for(5)
            labels = _labels(hook["secret"], reqs)
            assert sorted(labels) == ["first", "held", "later-1", "later-2", "later-3"]
            held_req = reqs[labels.index("held")]
            assert held_req.headers["webhook-id"].startswith("msg_")
            newest = await emit(sm, tenant_id, "last", label="last")
            await r.wait_for(6)

            # The cursor does not stay behind once nothing is open: it reaches the newest event.
            await _cursor_reaches(handle, newest)
            await asyncio.sleep(1.0)
            assert len(r.requests) == 6


async def test_a_rolled_back_transaction_leaves_a_gap_the_cursor_passes(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(database, client, sm, **FAST):
        async with receiver("ok") as r:
            tenant_id, hook, handle = await _setup(stack, r.url)
            async with _open_tx(sm, tenant_id) as session:
                gap_id = await emit_in(session, tenant_id, "gap", label="rolled back")
                later = await emit(sm, tenant_id, "later", label="later")
                await r.wait_for(1)
                await asyncio.sleep(1.0)
                state = await _state(handle)
                assert state.event_cursor is not None and state.event_cursor < gap_id
                await session.rollback()

            assert later > gap_id
            await _cursor_reaches(handle, later)
            assert _labels(hook["secret"], r.requests) == ["later"]


async def test_the_claims_horizon_holds_back_while_a_writer_that_got_its_xid_late_is_open(
    sm: SessionMaker,
) -> None:
    """The horizon is the claim's own xid, not its snapshot's xmax: xmax is one past the highest
    completed xid, and a writer that got its xid after the last completion is running at or
    above it, so "a later xmin >= xmax" would hold with that writer still open."""
    tenant = await create_tenant(sm=sm, name=f"Horizon {uuid.uuid4().hex[:6]}")
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as session:
        endpoint = await _unsent_endpoint(session, tenant.id)
    start = endpoint.after_event_id
    async with _open_tx(sm, tenant.id) as early, _open_tx(sm, tenant.id) as late:
        # `early` gets its xid first; `late` gets one after it and takes an event id; `early`
        # takes a later id and commits: the newest visible id is above the open writer's.
        await early.execute(text("SELECT pg_current_xact_id()"))
        late_id = await emit_in(late, tenant.id, "late", label="late")
        late_xid = int((await late.execute(text("SELECT pg_current_xact_id()::text::bigint"))).scalar_one())
        await emit_in(early, tenant.id, "early", label="early")
        await early.commit()
        async with sm() as s:
            xmax = int(
                (
                    await s.execute(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"))
                ).scalar_one()
            )
        # What the snapshot's xmax would have promised (nothing else runs in this database now).
        assert xmax <= late_xid

        async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
            first = await claim_events(session=s, endpoint=endpoint, cursor=start, limit=100)
        async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
            second = await claim_events(session=s, endpoint=endpoint, cursor=start, limit=100)
        assert first.newest_event_id > late_id
        assert first.horizon_xid is not None and first.horizon_xid > late_xid
        assert second.snapshot_xmin is not None and second.snapshot_xmin <= late_xid
        obs = [
            Observation(
                at=datetime.now(UTC), max_event_id=first.newest_event_id, horizon_xid=first.horizon_xid
            )
        ]
        cert = Certificate(snapshot_xmin=second.snapshot_xmin, covered_through=second.newest_event_id)
        cursor, _ = settle(
            cursor=start, observations=obs, now=datetime.now(UTC), settle_seconds=0, certificate=cert
        )
        assert cursor < late_id, "the cursor passed a writer that is still open"
        assert second.snapshot_xmin >= xmax, "the xmax rule would have passed it"
        await late.commit()
    # Committed: the next claim queues it, and the horizon passes.
    async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
        third = await claim_events(session=s, endpoint=endpoint, cursor=start, limit=100)
    assert third.claimed == 1
    assert third.snapshot_xmin is not None and first.horizon_xid is not None
    assert third.snapshot_xmin >= first.horizon_xid


async def test_a_database_without_migration_0012_gets_no_horizon_so_the_time_rule_stays(
    pg_server: Any,
) -> None:
    """Writers take their id before their xid there: a worker deployed before the migration must
    not claim a proof it does not have."""
    db = ensure_database(server=pg_server, name=f"hz_{uuid.uuid4().hex[:8]}", app_role="sponsorflow_app")
    await asyncio.to_thread(upgrade, url=db.owner_url, revision="0011")
    engine = make_engine(url=db.app_url, pool_size=2)
    try:
        app_sm = make_sessionmaker(engine=engine)
        tenant = await create_tenant(sm=app_sm, name="Before 0012")

        async def claim() -> int | None:
            async with tenant_tx(sm=app_sm, tenant_id=tenant.id) as session:
                endpoint = await _unsent_endpoint(session, tenant.id)
                await emit_in(session, tenant.id, "e", label="e")
            async with tenant_tx(sm=app_sm, tenant_id=tenant.id) as session:
                c = await claim_events(
                    session=session, endpoint=endpoint, cursor=endpoint.after_event_id, limit=10
                )
            assert c.claimed == 1
            return c.horizon_xid

        assert await claim() is None
        await engine.dispose()
        await asyncio.to_thread(upgrade, url=db.owner_url)
        assert await claim() is not None
    finally:
        await engine.dispose()
