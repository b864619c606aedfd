"""Webhooks under the conditions that lose events elsewhere: a worker away while events are written,
an event that commits after a later one, continue-as-new mid-stream, a slow endpoint or entity.

Events are written straight into the outbox (as the product's activities write them), so the
tests need no other workflow. Every delivery is verified with `standardwebhooks`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.events import emit_event
from domain.webhooks import (
    ClaimDeliveriesInput,
    ClaimDeliveriesResult,
    DeliverWebhookResult,
    DeliverWebhooksInput,
    DeliverWebhooksResult,
    DeliveryRef,
    FailDeliveryInput,
    FailDeliveryResult,
    WebhookConfig,
    WebhookEndpointInput,
    message_id,
)
from tests.conftest import Stack, new_worker, stack_worker, start_stack
from tests.helpers.receivers import Behaviour, Received, receiver
from tests.helpers.webhooks import FAST_WEBHOOKS, emit
from workflows.webhooks import WebhookEndpointWorkflow

FAST = FAST_WEBHOOKS


@pytest.fixture
async def api_first(database: EmbeddedDatabase, client: Client, sm: SessionMaker) -> AsyncIterator[Stack]:
    """The API alone, fast webhook clocks: each test runs the worker when it wants."""
    async for s in start_stack(database, client, sm, worker=False, **FAST):
        yield s


async def _create(stack: Stack, h: dict[str, str], url: str) -> dict[str, Any]:
    r = await stack.http.post(
        "/api/v1/webhooks", json={"url": url, "event_types": ["io.ad_aired"]}, headers=h
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _bodies(secret: str, reqs: list[Received]) -> list[dict[str, Any]]:
    return [dict(Webhook(secret).verify(q.body, q.headers)) for q in reqs]


async def test_events_written_while_no_worker_runs_are_delivered_once_it_is_back(api_first: Stack) -> None:
    t = await api_first.new_tenant()
    h = api_first.auth(t)
    async with receiver("ok") as r:
        hook = await _create(api_first, h, r.url)
        async with stack_worker(api_first):
            await emit(api_first.sm, t.id, "io-1", n=1)
            await r.wait_for(1)
        # The worker is gone: the product keeps writing.
        for n in range(2, 7):
            await emit(api_first.sm, t.id, f"io-{n % 2}", n=n)
        await asyncio.sleep(1.0)
        assert len(r.requests) == 1
        async with stack_worker(api_first):
            reqs = await r.wait_for(6)
            await asyncio.sleep(2.0)  # past the settle time: the overlap finds nothing new
        assert sorted(b["payload"]["n"] for b in _bodies(hook["secret"], r.requests)) == [1, 2, 3, 4, 5, 6]
        assert len(reqs) == len(r.requests) == 6


async def test_an_event_that_commits_after_a_later_one_is_not_skipped(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    # The cursor trails the newest event seen by the settle time (5 s here): a transaction that
    # took an id before a later event committed has that long to commit.
    async for stack in start_stack(
        database, client, sm, worker=False, **FAST | {"webhook_outbox_settle_seconds": 5}
    ):
        await _late_commit(stack)


async def _late_commit(api_first: Stack) -> None:
    t = await api_first.new_tenant()
    h = api_first.auth(t)
    async with receiver("ok") as r, stack_worker(api_first):
        hook = await _create(api_first, h, r.url)
        # A transaction takes its event id, then commits only after a later event was delivered.
        async with tenant_tx(sm=api_first.sm, tenant_id=t.id) as slow:
            await emit_event(
                session=slow,
                tenant_id=t.id,
                type="io.ad_aired",
                entity_type="io",
                entity_id="slow",
                payload={"n": "early id, late commit"},
                occurred_at=datetime.now(UTC),
                idempotency_key=f"test/{uuid.uuid4()}",
            )
            await emit(api_first.sm, t.id, "fast", n=2)
            await r.wait_for(1)
            await asyncio.sleep(0.5)
        reqs = await r.wait_for(2)
        bodies = _bodies(hook["secret"], reqs)
        assert [b["entity_id"] for b in bodies] == ["fast", "slow"]
        assert int(bodies[1]["id"]) < int(bodies[0]["id"])


async def test_continue_as_new_mid_stream_loses_and_repeats_nothing(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    async for stack in start_stack(
        database, client, sm, **FAST, webhook_history_limit=100, webhook_batch_size=1
    ):
        t = await stack.new_tenant()
        h = stack.auth(t)
        async with receiver("ok") as r:
            hook = await _create(stack, h, r.url)
            for n in range(40):
                await emit(stack.sm, t.id, f"io-{n % 4}", n=n)
            await r.wait_for(40, timeout=60)
            await asyncio.sleep(1.5)
            bodies = _bodies(hook["secret"], r.requests)
            assert sorted(b["payload"]["n"] for b in bodies) == list(range(40))
            # In order per entity.
            for entity in ("io-0", "io-1", "io-2", "io-3"):
                ns = [b["payload"]["n"] for b in bodies if b["entity_id"] == entity]
                assert ns == sorted(ns)
            history = await stack.client.get_workflow_handle(hook["workflow_id"]).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            assert started.continued_execution_run_id, "the current run continued an earlier one"


async def test_a_slow_entity_or_endpoint_delays_no_other(api_first: Stack) -> None:
    t = await api_first.new_tenant()
    h = api_first.auth(t)

    def stuck_on_io_slow(req: Received) -> Any:
        return "hang" if json.loads(req.body)["entity_id"] == "slow" else "ok"

    async with (
        receiver("hang") as dead,
        receiver(decide=stuck_on_io_slow) as mixed,
        stack_worker(api_first),
    ):
        await _create(api_first, h, dead.url)
        hook = await _create(api_first, h, mixed.url)
        await emit(api_first.sm, t.id, "slow", n=1)
        await dead.wait_for(1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for n in range(2, 6):
            await emit(api_first.sm, t.id, f"io-{n}", n=n)
        others = {"io-2", "io-3", "io-4", "io-5"}
        while not others <= {json.loads(q.body)["entity_id"] for q in mixed.requests}:
            assert loop.time() - t0 < 10, "the other entities never arrived"
            await asyncio.sleep(0.05)
        took = loop.time() - t0
        # Four other entities delivered while "slow" keeps timing out (1 s each) on both endpoints.
        got = Counter(b["entity_id"] for b in _bodies(hook["secret"], mixed.requests))
        assert {k: v for k, v in got.items() if k != "slow"} == {"io-2": 1, "io-3": 1, "io-4": 1, "io-5": 1}
        assert took < 3.0


async def test_a_delivery_retrying_across_continue_as_new_stays_pending_and_is_sent_again(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    """The drain before continue-as-new cancels a delivery waiting for its next retry: it stays
    pending (not failed) and the next run sends it again with the same webhook-id."""
    # Retries 30..60 s apart (equal jitter of 60 s): the next one is past the 15 s drain.
    slow_retries = {"webhook_retry_initial_seconds": 60.0, "webhook_retry_max_interval_seconds": 60.0}
    async for stack in start_stack(database, client, sm, **FAST | slow_retries, webhook_history_limit=100):
        await _retrying_across_continue_as_new(stack)


async def _only_delivery(stack: Stack, h: dict[str, str], hook: dict[str, Any]) -> dict[str, Any]:
    got = await stack.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)
    assert got.status_code == 200, got.text
    (delivery,) = got.json()["items"]
    return dict(delivery)


async def _retrying_across_continue_as_new(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    answer: dict[str, Behaviour] = {"now": "error"}
    async with receiver(decide=lambda _req: answer["now"]) as r:
        hook = await _create(stack, h, r.url)
        handle = stack.client.get_workflow_handle(hook["workflow_id"])
        first_run = (await handle.describe()).run_id
        await emit(stack.sm, t.id, "io-1", n=1)
        await r.wait_for(1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while (await handle.describe()).run_id == first_run:
            assert loop.time() - t0 < 60, "the workflow never continued as new"
            await asyncio.sleep(0.5)
        delivery = await _only_delivery(stack, h, hook)
        assert delivery["status"] == "pending", delivery
        answer["now"] = "ok"
        t0 = loop.time()
        while (await _only_delivery(stack, h, hook))["status"] != "delivered":
            assert loop.time() - t0 < 90, "the pending delivery was never sent again"
            await asyncio.sleep(0.5)
        assert (await _only_delivery(stack, h, hook))["id"] == delivery["id"]
        assert len(r.requests) >= 2
        assert [b["payload"] for b in _bodies(hook["secret"], r.requests)] == [{"n": 1}] * len(r.requests)
        assert {q.headers["webhook-id"] for q in r.requests} == {message_id(delivery["id"])}


async def test_after_a_pause_an_entitys_dropped_deliveries_go_before_its_later_ones(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    """A pause drops the deliveries an entity's chain was handed (they stay pending). While another
    entity's chain waits on a long retry, the claim after the resume hands them out again: the
    entity's event written after the resume arrives after them, not before."""
    async for stack in start_stack(database, client, sm, **FAST):
        await _dropped_then_resumed(stack)


async def _dropped_then_resumed(stack: Stack) -> None:
    t = await stack.new_tenant()
    h = stack.auth(t)
    answer: dict[str, Behaviour] = {"E": "error"}
    ok_for_e: list[Received] = []

    def by_entity(req: Received) -> Behaviour:
        entity = json.loads(req.body)["entity_id"]
        if entity == "F":
            return "429"  # Retry-After: 30 s, so F's chain stays busy the whole test
        if answer["E"] == "ok":
            ok_for_e.append(req)
        return answer["E"]

    async with receiver(decide=by_entity, retry_after="30") as r:
        hook = await _create(stack, h, r.url)
        handle = stack.client.get_workflow_handle(hook["workflow_id"])
        loop = asyncio.get_running_loop()

        async def until_queued(n: int, what: str) -> None:
            t0 = loop.time()
            while (await handle.query("state")).get("queued") != n:
                assert loop.time() - t0 < 15, what
                await asyncio.sleep(0.1)

        await emit(stack.sm, t.id, "F", n=0)
        await r.wait_for(1)
        # E's three deliveries are handed to its chain, which keeps retrying the first.
        for n in (1, 2, 3):
            await emit(stack.sm, t.id, "E", n=n)
        await until_queued(4, "E's deliveries were never all handed to its chain")
        paused = await stack.http.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"status": "paused"}, headers=h
        )
        assert paused.status_code == 200, paused.text
        # E's next attempt answers `paused`: its chain drops the three; F's still waits on its retry.
        await until_queued(1, "E's chain never saw the pause")
        answer["E"] = "ok"
        resumed = await stack.http.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"status": "active"}, headers=h
        )
        assert resumed.status_code == 200, resumed.text
        await emit(stack.sm, t.id, "E", n=4)
        t0 = loop.time()
        while len(ok_for_e) < 4:
            assert loop.time() - t0 < 15, f"E got {[json.loads(q.body)['payload'] for q in ok_for_e]}"
            await asyncio.sleep(0.1)
        assert [b["payload"]["n"] for b in _bodies(hook["secret"], ok_for_e)] == [1, 2, 3, 4]
        # F kept retrying the whole time (its chain was busy when E's were dropped and resent).
        assert {json.loads(q.body)["entity_id"] for q in r.requests} == {"E", "F"}
        state = await handle.query("state")
        assert state["queued"] == 1 and state["in_flight"] == 1, state


class StandInOutbox:
    """Stands in for the claim, delivery and give-up activities (one entity's three pending
    deliveries), to test the workflow's decisions when a delivery activity ends badly."""

    def __init__(self, answer: str) -> None:
        self.answer = answer  # "guard": the first batch ends in an error; "empty": no outcomes
        self.refs = [DeliveryRef(id=f"d{n}", event_id=n, entity_id="E", queue_seq=n) for n in (1, 2, 3)]
        self.pending = {r.id for r in self.refs}
        self.batches: list[list[str]] = []
        self.failed: list[str] = []
        self.gone = False

    @activity.defn(name="claim_webhook_deliveries")
    async def claim(self, inp: ClaimDeliveriesInput) -> ClaimDeliveriesResult:
        cursor = inp.event_cursor or 0
        if self.gone:
            return ClaimDeliveriesResult(endpoint="gone", event_cursor=cursor, observed_max_event_id=cursor)
        refs = [r for r in self.refs if r.id in self.pending and r.queue_seq > inp.after_seq]
        return ClaimDeliveriesResult(
            endpoint="active", event_cursor=cursor, observed_max_event_id=cursor, deliveries=refs
        )

    @activity.defn(name="deliver_webhooks")
    async def deliver(self, inp: DeliverWebhooksInput) -> DeliverWebhooksResult:
        self.batches.append(list(inp.delivery_ids))
        if self.answer == "empty":
            return DeliverWebhooksResult(outcomes=[])
        if len(self.batches) == 1:
            # As Temporal ends it once the schedule-to-close guard passed: no more retries.
            raise ApplicationError("the window of d1 ran out", non_retryable=True)
        self.pending -= set(inp.delivery_ids)
        return DeliverWebhooksResult(
            outcomes=[DeliverWebhookResult(outcome="delivered")] * len(inp.delivery_ids)
        )

    @activity.defn(name="fail_webhook_delivery")
    async def fail(self, inp: FailDeliveryInput) -> FailDeliveryResult:
        self.failed.append(inp.delivery_id)
        self.pending.discard(inp.delivery_id)
        return FailDeliveryResult(changed=True)


async def _run_stand_in(client: Client, outbox: StandInOutbox, watch_seconds: float) -> tuple[int, int]:
    config = WebhookConfig(poll_seconds=0.1, idle_poll_seconds=0.2)
    async with new_worker(
        client, WebhookEndpointWorkflow, activities=[outbox.claim, outbox.deliver, outbox.fail]
    ) as w:
        handle = await client.start_workflow(
            WebhookEndpointWorkflow.run,
            WebhookEndpointInput(tenant_id=str(uuid.uuid4()), endpoint_id=str(uuid.uuid4()), config=config),
            id=f"webhook-stand-in/{uuid.uuid4()}",
            task_queue=w.task_queue,
        )
        await asyncio.sleep(watch_seconds)
        outbox.gone = True
        await handle.signal(WebhookEndpointWorkflow.wake)
        result = await asyncio.wait_for(handle.result(), 20)
    return result.delivered, result.failed


async def test_a_batch_the_guard_ended_gives_up_only_its_first_delivery(client: Client) -> None:
    outbox = StandInOutbox("guard")
    delivered, failed = await _run_stand_in(client, outbox, watch_seconds=2.0)
    # d2 and d3 were never attempted: they go in a batch of their own, not failed with d1.
    assert outbox.failed == ["d1"]
    assert outbox.batches == [["d1", "d2", "d3"], ["d2", "d3"]]
    assert (delivered, failed) == (2, 1)


async def test_a_batch_answered_with_no_outcome_is_not_sent_again_and_again(client: Client) -> None:
    outbox = StandInOutbox("empty")
    delivered, failed = await _run_stand_in(client, outbox, watch_seconds=2.0)
    # Twenty claims in those 2 s: the batch went once, and stays pending for the next run.
    assert outbox.batches == [["d1", "d2", "d3"]]
    assert outbox.pending == {"d1", "d2", "d3"} and outbox.failed == []
    assert (delivered, failed) == (0, 0)
