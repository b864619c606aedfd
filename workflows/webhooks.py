"""WebhookEndpointWorkflow: one per endpoint, it moves the tenant's outbox to that endpoint.

The product writes events into the outbox (`events`) in the transaction of the change they
report, and waits for nothing here. This workflow polls the outbox on a short durable timer
(sooner after a `wake` signal), claims the matching events after its cursor into
webhook_deliveries (idempotent, UNIQUE (endpoint_id, event_id)), and sends each pending delivery
with an activity that Temporal retries with backoff for about three days. Deliveries of one entity
go one after the other, in the order they were queued; different entities go in parallel, at
most `max_in_flight` at a time. One slow endpoint delays only its own workflow.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import WebhookActivities
    from domain.webhooks import (
        Certificate,
        ClaimDeliveriesInput,
        ClaimDeliveriesResult,
        DeliverWebhookInput,
        DeliverWebhooksInput,
        DeliveryRef,
        DisableEndpointInput,
        EmitTestEventInput,
        FailDeliveryInput,
        Observation,
        Outcome,
        ReplayInput,
        RequeueDeliveriesInput,
        RequeueResult,
        RetryDeliveryInput,
        SendTestInput,
        SendTestResult,
        WebhookEndpointInput,
        WebhookEndpointResult,
        WebhookState,
        disable_reason,
        health,
        held_back,
        settle,
    )
    from workflows import search_attributes as sa

_SHORT = timedelta(seconds=30)
_SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# Each attempt sets its own delay (ApplicationError.next_retry_delay: backoff with jitter, or a
# 429's Retry-After); these only bound it should an attempt fail without one (a worker crash).
_DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), backoff_coefficient=2.0, maximum_interval=timedelta(hours=1)
)
_ATTEMPT_TIMEOUT = timedelta(seconds=30)
# New runs send one entity's deliveries in batches (one activity for several); older runs one each.
BATCHES_PATCH = "webhook-batches"
# New runs move the cursor on the claims' snapshot horizon (no time bet); older runs on time.
HORIZON_PATCH = "webhook-snapshot-horizon"
# New runs leave a delivery pending when its activity is cancelled (continue-as-new, endpoint gone)
# instead of marking it failed, and move the cursor only over final observations oldest first.
KEEP_PENDING_PATCH = "webhook-cancel-keeps-pending"
# The cursor held back this long by an open transaction shows in the current details.
_HELD_LONG = timedelta(seconds=60)
# Observations closer together than this are merged (the later time, the larger id).
_MERGE = timedelta(seconds=10)
# Before continue-as-new: longer than one attempt (10 s), so only a delivery waiting for its next
# retry is cut off (and picked up again by the next run).
_DRAIN = timedelta(seconds=15)


@workflow.defn
class WebhookEndpointWorkflow:
    """Delivers one endpoint's events, forever, until the endpoint is deleted."""

    @workflow.init
    def __init__(self, inp: WebhookEndpointInput) -> None:
        self._inp = inp
        self._config = inp.config
        self._event_cursor = inp.event_cursor
        self._observations: list[Observation] = list(inp.observations)
        self._certificate: Certificate | None = inp.certificate
        self._delivered = inp.delivered
        self._failed = inp.failed
        # Pending deliveries handed out up to this queue position (0: none yet this run).
        self._after_seq = 0
        self._queues: dict[str, deque[DeliveryRef]] = {}
        # The ids in the queues (queued or in flight; and, for the rest of the run, those of a batch
        # answered with no outcome): enqueue() skips them, so a claim never hands one out twice.
        self._held: set[str] = set()
        # A chain dropped refs it was handed (a pause, the endpoint gone): the next claim looks at
        # every pending delivery again, not only those after `_after_seq`.
        self._dropped = False
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._in_flight: dict[str, datetime] = {}
        self._slots = asyncio.Semaphore(max(inp.config.max_in_flight, 1))
        # Claims and requeues are the only writers of an endpoint's queue order: one at a time.
        self._db_lock = asyncio.Lock()
        self._wake = False
        self._paused = False
        self._gone = False
        self._draining = False
        self._last_failed = False
        self._health = ""

    @workflow.run
    async def run(self, inp: WebhookEndpointInput) -> WebhookEndpointResult:
        """Claim, send, wait; continue-as-new before the history grows large; end when deleted."""
        self.show_health()
        while True:
            result = await self.claim()
            if self._gone:
                await self.stop_chains()
                return WebhookEndpointResult(delivered=self._delivered, failed=self._failed)
            self.show_health()
            if self.history_is_large():
                await self.continue_as_new()
            if result is not None and result.more:
                continue
            await self.wait_for_next_poll(busy=bool(result and (result.claimed or result.deliveries)))

    async def claim(self) -> ClaimDeliveriesResult | None:
        """One claim: new events into deliveries, then hand the pending ones to their chains."""
        # This claim answers every wake so far; one arriving during it asks for the next.
        self._wake = False
        async with self._db_lock:
            if self._dropped or (not self._queues and not self._in_flight):
                # Nothing handed out is outstanding, or a chain dropped what it was handed: look at
                # every pending delivery again (those a pause, a continue-as-new or an ended chain
                # left behind; enqueue() skips those still held, so each entity's order holds).
                self._after_seq = 0
                self._dropped = False
            scan_from = self.settled_cursor()
            result = await workflow.execute_activity_method(
                WebhookActivities.claim_deliveries,
                ClaimDeliveriesInput(
                    tenant_id=self._inp.tenant_id,
                    endpoint_id=self._inp.endpoint_id,
                    event_cursor=scan_from,
                    after_seq=self._after_seq,
                    limit=self._config.claim_limit,
                ),
                start_to_close_timeout=_SHORT,
                retry_policy=_SHORT_RETRY,
            )
        self._gone = result.endpoint == "gone"
        self._paused = result.endpoint == "paused"
        if result.endpoint == "active" and result.failing_since is not None:
            await self.disable_if_failing_too_long(result.failing_since)
        if self._event_cursor is None:
            self._event_cursor = result.event_cursor
        horizon_xid: int | None = None
        if workflow.patched(HORIZON_PATCH) and result.horizon_xid is not None:
            horizon_xid = result.horizon_xid
            if result.snapshot_xmin is not None:
                self._certificate = Certificate(
                    snapshot_xmin=result.snapshot_xmin, covered_through=result.observed_max_event_id
                )
        self.observe(result.observed_max_event_id, horizon_xid)
        if self._dropped:
            # A chain dropped refs while this claim ran: what it handed out could overtake them in
            # their entity's order. The next claim (at once: the chain woke it) hands out every
            # pending delivery again, in queue order.
            return result
        for ref in result.deliveries:
            self._after_seq = max(self._after_seq, ref.queue_seq)
            self.enqueue(ref)
        return result

    async def disable_if_failing_too_long(self, failing_since: datetime) -> None:
        """Pauses the endpoint (webhook.disabled) once every attempt has failed for days."""
        reason = disable_reason(
            failing_since=failing_since, now=workflow.now(), after_hours=self._config.disable_after_hours
        )
        if reason is None:
            return
        result = await workflow.execute_activity_method(
            WebhookActivities.disable_endpoint,
            DisableEndpointInput(
                tenant_id=self._inp.tenant_id,
                endpoint_id=self._inp.endpoint_id,
                failing_since=failing_since,
                reason=reason,
            ),
            start_to_close_timeout=_SHORT,
            retry_policy=_SHORT_RETRY,
        )
        if result.paused:
            self._paused = True

    def settled_cursor(self) -> int | None:
        """Moves the cursor to the newest observation below which nothing is still to come.

        Event ids come from a sequence and commit out of order: an id seen as the newest may have a
        smaller id committing later. Since the webhook-snapshot-horizon patch each claim reports
        its snapshot horizon, and an observation is final once the last claim's snapshot xmin has
        passed it (domain.webhooks.settle, db.webhooks.claim_events): no time bet, a transaction
        open for long only holds the cursor back. Observations recorded before the patch keep the
        old rule: final `outbox_settle_seconds` after they were made. Since the
        webhook-cancel-keeps-pending patch nothing after an observation still waiting moves the
        cursor (a claim without a horizon, from an older worker, is final on time alone). Until
        then the scan after the cursor overlaps, and the claim's NOT EXISTS skips what it queued.
        """
        # Decided at every claim (memoized for the run): deliver()'s cancellation rule follows it.
        in_order = workflow.patched(KEEP_PENDING_PATCH)
        if self._event_cursor is None:
            return None
        self._event_cursor, self._observations = settle(
            cursor=self._event_cursor,
            observations=self._observations,
            now=workflow.now(),
            settle_seconds=self._config.outbox_settle_seconds,
            certificate=self._certificate,
            in_order=in_order,
        )
        return self._event_cursor

    def observe(self, max_event_id: int, horizon_xid: int | None = None) -> None:
        """Records what this claim saw (after it completed: a conservative time), with its horizon.

        Without a horizon, observations closer than 10 s merge (the later time, the larger id).
        With one, merging keeps the larger horizon (the smaller would not cover the larger id), so
        the oldest waiting observation is never merged into: in the steady state it is final at
        the next claim but one; while a transaction stays open, the newer ones merge into one.
        """
        now = workflow.now()
        last = self._observations[-1] if self._observations else None
        if last is not None and max_event_id <= last.max_event_id:
            return
        if self._event_cursor is not None and max_event_id <= self._event_cursor:
            return
        if horizon_xid is None:
            if last is not None and last.horizon_xid is None and now - last.at < _MERGE:
                last.at, last.max_event_id = now, max_event_id
                return
        else:
            waiting = [o for o in self._observations if o.horizon_xid is not None]
            if len(waiting) >= 2 and last is waiting[-1] and last.horizon_xid is not None:
                last.at, last.max_event_id = now, max_event_id
                last.horizon_xid = max(last.horizon_xid, horizon_xid)
                return
        self._observations.append(Observation(at=now, max_event_id=max_event_id, horizon_xid=horizon_xid))

    def held_since(self) -> datetime | None:
        """Since when an open transaction holds the cursor back (None: not for long, or paused)."""
        if self._paused:
            return None
        held = held_back(self._observations, workflow.now(), _HELD_LONG.total_seconds())
        return held.at if held is not None else None

    def enqueue(self, ref: DeliveryRef) -> None:
        """Appends a delivery to its entity's chain, starting the chain if it is not running.

        Since the webhook-cancel-keeps-pending patch a delivery already held (queued or in flight)
        is skipped: after a chain dropped its refs the claim hands out every pending one again.
        """
        if workflow.patched(KEEP_PENDING_PATCH):
            if ref.id in self._held:
                return
            self._held.add(ref.id)
        self._queues.setdefault(ref.entity_id, deque()).append(ref)
        if ref.entity_id not in self._chains:
            self._chains[ref.entity_id] = asyncio.create_task(self.run_chain(ref.entity_id))

    async def run_chain(self, entity_id: str) -> None:
        """Sends one entity's deliveries in order, each once a slot is free.

        What it drops (a `paused` or `gone` outcome, the run ending) stays pending in the database.
        Since the webhook-cancel-keeps-pending patch the next claim hands it out again at once, in
        queue order (before the patch: once no chain was busy, hours later behind a retrying one,
        so an entity's later events went first).
        """
        queue = self._queues[entity_id]
        # Read once here: the `finally` below also runs when the worker evicts the run, outside the
        # workflow's event loop, where no workflow API may be called.
        keep_pending = workflow.patched(KEEP_PENDING_PATCH)
        try:
            while queue and not self._draining and not self._gone:
                # One activity per batch of the entity's queue: a fraction of the Temporal round
                # trips per delivery. Runs recorded before the patch send one delivery per activity.
                batched = workflow.patched(BATCHES_PATCH)
                refs = list(queue)[: max(self._config.batch_size, 1)] if batched else [queue[0]]
                async with self._slots:
                    if self._draining or self._gone:
                        break
                    self._in_flight[refs[0].id] = workflow.now()
                    try:
                        outcomes = (
                            await self.deliver_batch(refs) if batched else [await self.deliver(refs[0])]
                        )
                    except ActivityError:
                        # Cancelled (stop_chains), or the run is ending: the deliveries stay
                        # pending and the next claim, of this run or the next, hands them out again.
                        return
                    finally:
                        self._in_flight.pop(refs[0].id, None)
                if not outcomes and keep_pending:
                    # No outcome at all (the activity answers at least one): a bug, never a reason to
                    # send the same batch forever. The chain ends; its deliveries stay pending and
                    # stay held (the claims of this run skip them): the next run sends them again.
                    workflow.logger.error(
                        "webhook delivery activity answered no outcome for %d deliveries of entity %s;"
                        " left pending until the next run",
                        len(refs),
                        entity_id,
                    )
                    queue.clear()
                    break
                for outcome in outcomes:
                    self._held.discard(queue.popleft().id)
                    self.record(outcome)
                if any(o in ("paused", "gone") for o in outcomes):
                    # The rest stays pending in the database; the claim after the resume finds it.
                    self.release(queue)
                    self._dropped = keep_pending
                    self._wake = True
        finally:
            if queue and keep_pending:
                # Ended with refs still queued (cancelled, or the run is ending).
                self.release(queue)
                self._dropped = True
            self._queues.pop(entity_id, None)
            self._chains.pop(entity_id, None)

    def release(self, queue: deque[DeliveryRef]) -> None:
        """Drops a chain's queued refs: no longer held, so a claim may hand them out again."""
        for ref in queue:
            self._held.discard(ref.id)
        queue.clear()

    async def deliver(self, ref: DeliveryRef) -> Outcome:
        """One delivery, retried by Temporal until a 2xx or the end of its window."""
        try:
            result = await workflow.execute_activity_method(
                WebhookActivities.deliver_webhook,
                DeliverWebhookInput(
                    tenant_id=self._inp.tenant_id, endpoint_id=self._inp.endpoint_id, delivery_id=ref.id
                ),
                start_to_close_timeout=_ATTEMPT_TIMEOUT,
                # A guard only: each attempt gives up by itself at the delivery's give_up_at.
                schedule_to_close_timeout=timedelta(hours=self._config.retry_window_hours + 2),
                retry_policy=_DELIVERY_RETRY,
                summary=f"deliver event {ref.event_id}",
            )
        except ActivityError as exc:
            if self.leaves_pending(exc):
                raise
            await self.give_up([ref], exc)
            return "failed"
        return result.outcome

    async def deliver_batch(self, refs: list[DeliveryRef]) -> list[Outcome]:
        """The next deliveries of one entity in one activity, retried by Temporal from the first
        that fails until a 2xx or the end of that delivery's window."""
        try:
            result = await workflow.execute_activity_method(
                WebhookActivities.deliver_webhooks,
                DeliverWebhooksInput(
                    tenant_id=self._inp.tenant_id,
                    endpoint_id=self._inp.endpoint_id,
                    delivery_ids=[r.id for r in refs],
                ),
                start_to_close_timeout=_ATTEMPT_TIMEOUT * len(refs),
                heartbeat_timeout=_ATTEMPT_TIMEOUT,
                # A guard only: each attempt gives up by itself at its delivery's give_up_at.
                schedule_to_close_timeout=timedelta(hours=self._config.retry_window_hours + 2),
                retry_policy=_DELIVERY_RETRY,
                summary=f"deliver events {refs[0].event_id}..{refs[-1].event_id}",
            )
        except ActivityError as exc:
            if self.leaves_pending(exc):
                raise
            if workflow.patched(KEEP_PENDING_PATCH):
                # Temporal stopped retrying (the schedule-to-close guard, say): the batch was
                # retrying its first undecided delivery, whose window ran out; those after it were
                # never attempted. Give up only the first: the chain pops one outcome and sends the
                # rest in a batch of their own (with its own guard). Were the first decided already
                # (delivered before the batch's retries), fail_delivery changes nothing and the
                # next batch's first attempt decides the one that was retrying (its give_up_at).
                await self.give_up(refs[:1], exc)
                return ["failed"]
            await self.give_up(refs, exc)
            return ["failed"] * len(refs)
        return [o.outcome for o in result.outcomes]

    def leaves_pending(self, exc: ActivityError) -> bool:
        """Whether a delivery activity that ended in an error leaves its deliveries pending.

        Cancelled (stop_chains: continue-as-new after the drain, or the endpoint is gone), or ended
        while this run stops: Temporal did not give up on them, the next run sends them again (the
        same webhook-id) within the window that opened at their first attempt. Only a delivery
        Temporal stopped retrying (schedule-to-close, retries exhausted) is given up. Runs recorded
        before the webhook-cancel-keeps-pending patch gave up on every error.
        """
        if not workflow.patched(KEEP_PENDING_PATCH):
            return False
        return isinstance(exc.cause, CancelledError) or self._draining or self._gone

    async def give_up(self, refs: list[DeliveryRef], exc: ActivityError) -> None:
        """Marks deliveries failed once Temporal stopped retrying them (only pending ones change)."""
        for ref in refs:
            await workflow.execute_activity_method(
                WebhookActivities.fail_delivery,
                FailDeliveryInput(
                    tenant_id=self._inp.tenant_id,
                    delivery_id=ref.id,
                    error=f"gave up: {exc.cause or exc}"[:300],
                ),
                start_to_close_timeout=_SHORT,
                retry_policy=_SHORT_RETRY,
            )

    def record(self, outcome: Outcome) -> None:
        """Counts an outcome and keeps WebhookStatus current."""
        if outcome == "delivered":
            self._delivered += 1
            self._last_failed = False
        elif outcome == "failed":
            self._failed += 1
            self._last_failed = True
        elif outcome == "paused":
            self._paused = True
        self.show_health()

    def show_health(self) -> None:
        """Upserts WebhookStatus when it changed, and the current details every time."""
        now = workflow.now()
        oldest = min(self._in_flight.values(), default=None)
        state = health(
            paused=self._paused,
            oldest_in_flight_seconds=(now - oldest).total_seconds() if oldest is not None else None,
            failing_after_seconds=self._config.failing_after_seconds,
            last_failed=self._last_failed,
        )
        if state != self._health:
            self._health = state
            workflow.upsert_search_attributes([sa.WEBHOOK_STATUS.value_set(state)])
        queued = sum(len(q) for q in self._queues.values())
        details = (
            f"{state}: {self._delivered} delivered, {self._failed} failed, "
            f"{len(self._in_flight)} in flight, {queued} queued"
        )
        held = None if self._paused else held_back(self._observations, now, _HELD_LONG.total_seconds())
        if held is not None:
            details += (
                f"; event cursor held at {self._event_cursor} since {held.at:%Y-%m-%d %H:%M:%S}Z by a "
                f"database transaction older than xid {held.horizon_xid} still open (see pg_stat_activity)"
            )
        workflow.set_current_details(details)

    async def wait_for_next_poll(self, *, busy: bool) -> None:
        """A durable timer: short after work, longer when idle, cut short by `wake`."""
        # Not shorter while a delivery retries: its chain waits on Temporal's retry timer, and
        # polling faster would only grow the history.
        seconds = self._config.poll_seconds if busy else self._config.idle_poll_seconds
        try:
            await workflow.wait_condition(
                lambda: self._wake, timeout=timedelta(seconds=seconds), timeout_summary="next outbox poll"
            )
        except TimeoutError:
            pass

    def history_is_large(self) -> bool:
        """Whether this run should hand over to a new one."""
        info = workflow.info()
        return (
            info.get_current_history_length() >= self._config.history_limit
            or info.is_continue_as_new_suggested()
        )

    async def continue_as_new(self) -> None:
        """Lets deliveries in flight finish (up to 15 s), stops the rest, and continues as new.

        What was handed out but not finished stays pending in the database; the new run's first
        claim hands it out again (the same delivery id, so the same webhook-id).
        """
        self._draining = True
        try:
            await workflow.wait_condition(
                lambda: not self._in_flight and workflow.all_handlers_finished(),
                timeout=_DRAIN,
                timeout_summary="deliveries in flight before continue-as-new",
            )
        except TimeoutError:
            pass
        await self.stop_chains()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            self._inp.model_copy(
                update={
                    "event_cursor": self._event_cursor,
                    "observations": self._observations,
                    "certificate": self._certificate,
                    "delivered": self._delivered,
                    "failed": self._failed,
                }
            )
        )

    async def stop_chains(self) -> None:
        """Cancels every chain (and its activity in flight) and waits for them to end."""
        chains = list(self._chains.values())
        for task in chains:
            task.cancel()
        await asyncio.gather(*chains, return_exceptions=True)

    @workflow.signal
    def wake(self) -> None:
        """Poll now: an event was written, or the endpoint changed (paused, resumed, deleted)."""
        self._wake = True

    @workflow.update
    async def retry(self, inp: RetryDeliveryInput) -> RequeueResult:
        """Sends a delivered or failed delivery again (same webhook-id)."""
        return await self.requeue(
            RequeueDeliveriesInput(
                tenant_id=self._inp.tenant_id, endpoint_id=self._inp.endpoint_id, delivery_id=inp.delivery_id
            )
        )

    @workflow.update
    async def replay(self, inp: ReplayInput) -> RequeueResult:
        """Sends the matching events of [since, until) again."""
        return await self.requeue(
            RequeueDeliveriesInput(
                tenant_id=self._inp.tenant_id,
                endpoint_id=self._inp.endpoint_id,
                since=inp.since,
                until=inp.until,
            )
        )

    async def requeue(self, inp: RequeueDeliveriesInput) -> RequeueResult:
        """Requeues under the claim's lock, then polls at once."""
        async with self._db_lock:
            result = await workflow.execute_activity_method(
                WebhookActivities.requeue_deliveries,
                inp,
                start_to_close_timeout=_SHORT,
                retry_policy=_SHORT_RETRY,
            )
        self._wake = True
        return RequeueResult(
            requeued=result.requeued, added=result.added, refused=result.refused, found=result.found
        )

    @workflow.update
    async def send_test(self, inp: SendTestInput) -> SendTestResult:
        """Writes a webhook.test event for this endpoint and polls at once."""
        info = workflow.current_update_info()
        key = f"webhook.test/{self._inp.endpoint_id}/{info.id if info else workflow.uuid4()}"
        result = await workflow.execute_activity_method(
            WebhookActivities.emit_test_event,
            EmitTestEventInput(
                tenant_id=self._inp.tenant_id,
                endpoint_id=self._inp.endpoint_id,
                key=key,
                note=inp.note,
                occurred_at=workflow.now(),
            ),
            start_to_close_timeout=_SHORT,
            retry_policy=_SHORT_RETRY,
        )
        self._wake = True
        return result

    @workflow.query
    def state(self) -> WebhookState:
        """What the workflow is doing now."""
        return WebhookState(
            health=self._health or "healthy",
            event_cursor=self._event_cursor,
            in_flight=len(self._in_flight),
            queued=sum(len(q) for q in self._queues.values()),
            delivered=self._delivered,
            failed=self._failed,
            cursor_held_since=self.held_since(),
        )
