"""Webhook side effects: claim outbox events into deliveries, send one delivery, requeue, test.

The endpoint's workflow decides what to send and when; these persist and send. A delivery's
secret is read and decrypted here, inside the attempt, so it never travels through Temporal
(inputs and results carry ids only). Each attempt's outcome is written to its row before the
activity answers, so the deliveries list shows attempts, the last status code and error while
Temporal retries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import time
import uuid
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities import metrics
from db.engine import SessionMaker, tenant_tx
from db.webhooks import (
    EndpointSecrets,
    SecretBox,
    advance_start,
    claim_events,
    disable_endpoint,
    emit_test_event,
    endpoint_summaries,
    get_delivery,
    get_endpoint,
    load_attempts,
    mark_delivered,
    mark_failed,
    open_secrets,
    pending_deliveries,
    prune_deliveries,
    record_failure,
    replay_window,
    requeue_delivery,
    slack_context,
)
from domain.webhooks import (
    ClaimDeliveriesInput,
    ClaimDeliveriesResult,
    DeliverWebhookInput,
    DeliverWebhookResult,
    DeliverWebhooksInput,
    DeliverWebhooksResult,
    DisableEndpointInput,
    DisableEndpointResult,
    EmitTestEventInput,
    FailDeliveryInput,
    FailDeliveryResult,
    RequeueDeliveriesInput,
    RequeueDeliveriesResult,
    SendTestResult,
    WebhookConfig,
    address_refusal,
    message_id,
    next_step,
    parse_retry_after,
    request_body,
    retry_delay,
    retry_refusal,
    signature_header,
    signing_secrets,
)
from settings import Settings
from workflows import search_attributes as sa
from workflows.starters import WEBHOOK_WORKFLOW, wake_webhook_workflow, webhook_workflow_id

log = logging.getLogger("sponsorflow.webhooks")

ATTEMPT_FAILED = "WebhookAttemptFailed"
# HTTP clients (one per host) and cached lookups kept per worker.
_MAX_CLIENTS = 256
# Deliveries deleted per transaction by the retention check.
_PRUNE_BATCH = 5000


# Lookups run on threads of their own: one stuck on a black-holed resolver (its wait is cancelled,
# its thread is not) must not take the event loop's default executor from everything else.
_DNS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sponsorflow-dns")


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to now, in the resolver's order (empty: it does not resolve)."""
    try:
        infos = await asyncio.get_running_loop().run_in_executor(
            _DNS,
            functools.partial(
                socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
            ),
        )
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: the checked address in place of the URL's host.

    The request still names the host (`Host` header) and, over https, asks for and verifies the
    host's certificate (SNI): connecting to the address that was checked, rather than resolving the
    name again inside the HTTP client, leaves no window for DNS rebinding between check and connect.
    """

    url: str
    host: str  # the URL's host name, as the certificate must carry it
    host_header: str
    sni: str | None


def pinned(url: str, address: str) -> Target:
    """The URL with its host replaced by `address` (one of the addresses its host resolved to)."""
    parts = urlsplit(url)
    # The host as it goes on the wire: an internationalised name in its IDNA (punycode) form.
    host = httpx.URL(url).raw_host.decode("ascii")
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    header = (f"[{host}]" if ":" in host else host) + ("" if parts.port is None else f":{parts.port}")
    pinned_url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(
        url=pinned_url, host=host, host_header=header, sni=host if parts.scheme == "https" else None
    )


async def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why the URL may not be called now (None: it may): checked at creation and on every change.

    A URL the HTTP client cannot send as it is (a control character, a name IDNA 2008 refuses) is
    refused here, so no endpoint is created whose every attempt could only fail.
    """
    try:
        pinned(url, "192.0.2.1")
    except Exception as exc:  # noqa: BLE001 - whatever httpx refuses, named for the 422
        return f"it cannot be sent as it is ({type(exc).__name__}: {exc})"[:300]
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return address_refusal(await resolve(parts.hostname or "", port), allow_private=allow_private)


def _transport_error(exc: httpx.HTTPError, timeout_s: float) -> str:
    # Never str(exc) alone: some messages carry the URL, and a URL's path can hold a token.
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closed without a complete answer"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect (refused, unreachable or TLS failure)"
    return f"request failed ({type(exc).__name__})"


def webhook_config(settings: Settings) -> WebhookConfig:
    """The workflow settings an endpoint's workflow starts with (the API's and the sweep's)."""
    return WebhookConfig(
        poll_seconds=settings.webhook_poll_seconds,
        idle_poll_seconds=settings.webhook_idle_poll_seconds,
        outbox_settle_seconds=settings.webhook_outbox_settle_seconds,
        max_in_flight=settings.webhook_max_in_flight,
        failing_after_seconds=settings.webhook_failing_after_seconds,
        retry_window_hours=settings.webhook_retry_hours,
        history_limit=settings.webhook_history_limit,
        disable_after_hours=settings.webhook_disable_after_hours,
        batch_size=settings.webhook_batch_size,
    )


async def ensure_endpoint_workflows(
    client: Client, settings: Settings, sm: SessionMaker, tenant_id: uuid.UUID
) -> int:
    """Maintenance check: starts the workflow of each of the tenant's endpoints that has none
    running (terminated by hand, or its start lost); returns how many were started."""
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
        endpoints = await endpoint_summaries(session=session)
    if not endpoints:
        return 0
    query = (
        f"WorkflowType = '{WEBHOOK_WORKFLOW}' AND ExecutionStatus = 'Running' "
        f"AND {sa.TENANT_ID.name} = '{tenant_id}'"
    )
    running = {wf.id async for wf in client.list_workflows(query)}
    started = 0
    for endpoint_id, url, description in endpoints:
        if webhook_workflow_id(str(tenant_id), str(endpoint_id)) in running:
            continue
        # Signal-with-start (USE_EXISTING): one started meanwhile, not yet visible, is only woken.
        await wake_webhook_workflow(
            client,
            str(tenant_id),
            str(endpoint_id),
            settings.temporal_task_queue,
            host=urlsplit(url).hostname or "?",
            description=description,
            config=webhook_config(settings),
        )
        started += 1
    if started:
        log.info("started %d missing webhook workflow(s) of tenant %s", started, tenant_id)
    return started


async def prune_old_deliveries(
    client: Client, settings: Settings, sm: SessionMaker, tenant_id: uuid.UUID
) -> int:
    """Maintenance check: deletes the tenant's delivered and failed deliveries older than
    SPONSORFLOW_WEBHOOK_DELIVERY_RETENTION_DAYS (0 keeps them forever), in bounded batches."""
    days = settings.webhook_delivery_retention_days
    if days <= 0:
        return 0
    before = datetime.now(UTC) - timedelta(days=days)
    pruned = 0
    while True:
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
            n = await prune_deliveries(session=session, before=before, limit=_PRUNE_BATCH)
        pruned += n
        if n < _PRUNE_BATCH:
            break
    if pruned:
        log.info("pruned %d webhook deliveries of tenant %s older than %g days", pruned, tenant_id, days)
    return pruned


@dataclass(frozen=True)
class _Prepared:
    """One delivery ready to send: its endpoint (secrets decrypted), the exact body, its window."""

    delivery_id: uuid.UUID
    endpoint: EndpointSecrets
    body: str
    give_up_at: datetime | None  # None: its window opens at this attempt
    attempts: int  # this attempt's number
    now: datetime


@dataclass(frozen=True)
class _Sent:
    """What one HTTP attempt got: a status (None: no answer) or an error, and a 429's Retry-After."""

    status_code: int | None
    error: str | None
    retry_after: float | None
    done_at: datetime
    started_at: datetime


class WebhookActivities:
    """Activities of webhook delivery, bound to the worker's session factory and settings."""

    def __init__(self, sessionmaker: SessionMaker, settings: Settings) -> None:
        self._sm = sessionmaker
        self._settings = settings
        self._box = SecretBox(settings.webhook_secret_key_value)
        # One HTTP client (connection pool) per host name: pooled connections are keyed by the
        # address, and a connection whose TLS session was verified for one name must never carry
        # a request for another name at the same address.
        self._http: OrderedDict[str, httpx.AsyncClient] = OrderedDict()
        self._busy: Counter[str] = Counter()
        self._closing: set[asyncio.Task[None]] = set()
        # host -> (monotonic time of the lookup, its addresses): a short cache, safe because the
        # attempt connects to the address it checked.
        self._resolved: dict[tuple[str, int], tuple[float, list[str]]] = {}

    def _client(self, host: str) -> httpx.AsyncClient:
        """The host's client (most recently used last); past _MAX_CLIENTS the least recently used
        idle one is closed in the background (one with a request in flight is never closed)."""
        client = self._http.get(host)
        if client is not None:
            self._http.move_to_end(host)
            return client
        if len(self._http) >= _MAX_CLIENTS:
            idle = next((h for h in self._http if not self._busy[h]), None)
            if idle is not None:
                task = asyncio.get_running_loop().create_task(self._http.pop(idle).aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                self._busy.pop(idle, None)
        client = self._http[host] = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self._settings.webhook_timeout_seconds),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
            trust_env=False,
        )
        return client

    async def aclose(self) -> None:
        """Closes the HTTP clients' connections (worker shutdown, tests)."""
        clients, self._http = list(self._http.values()), OrderedDict()
        for client in clients:
            await client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _target(self, url: str, attempt: int) -> tuple[Target | None, str | None]:
        """The checked address to connect to (or why none may be): every address the host resolves
        to must pass; successive attempts go round them."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.hostname or "", port)
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached is not None and now - cached[0] < self._settings.webhook_dns_cache_seconds:
            addresses = cached[1]
        else:
            try:
                async with asyncio.timeout(self._settings.webhook_timeout_seconds):
                    addresses = await resolve(key[0], port)
            except TimeoutError:
                return None, f"the host's DNS lookup took over {self._settings.webhook_timeout_seconds:g} s"
            if addresses:
                if len(self._resolved) >= _MAX_CLIENTS:
                    self._resolved.pop(next(iter(self._resolved)))
                self._resolved[key] = (now, addresses)
            else:
                self._resolved.pop(key, None)
        refusal = address_refusal(addresses, allow_private=self._settings.webhook_private_allowed)
        if refusal is not None:
            return None, refusal
        return pinned(url, addresses[(attempt - 1) % len(addresses)]), None

    @activity.defn(name="claim_webhook_deliveries")
    async def claim_deliveries(self, inp: ClaimDeliveriesInput) -> ClaimDeliveriesResult:
        """Queues the matching events after the cursor (idempotent) and hands out pending deliveries."""
        endpoint_id = uuid.UUID(inp.endpoint_id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            endpoint = await get_endpoint(session=session, endpoint_id=endpoint_id)
            if endpoint is None:
                cursor = inp.event_cursor or 0
                return ClaimDeliveriesResult(
                    endpoint="gone", event_cursor=cursor, observed_max_event_id=cursor
                )
            # The higher of the two: the persisted start is settled too (a workflow reset to an older
            # point must not re-queue what retention pruned below it under new webhook-ids).
            cursor = max(inp.event_cursor or 0, endpoint.after_event_id)
            if endpoint.status == "paused":
                return ClaimDeliveriesResult(
                    endpoint="paused", event_cursor=cursor, observed_max_event_id=cursor
                )
            claim = await claim_events(session=session, endpoint=endpoint, cursor=cursor, limit=inp.limit)
            if inp.event_cursor is not None and inp.event_cursor > endpoint.after_event_id:
                await advance_start(session=session, endpoint_id=endpoint_id, cursor=inp.event_cursor)
            full = claim.picked >= inp.limit
            # A full batch: only up to its last event is everything visible handed out.
            observed = claim.max_picked if full and claim.max_picked is not None else claim.newest_event_id
            refs = await pending_deliveries(
                session=session, endpoint_id=endpoint_id, after_seq=inp.after_seq, limit=inp.limit
            )
        return ClaimDeliveriesResult(
            endpoint="active",
            failing_since=endpoint.failing_since,
            event_cursor=cursor,
            observed_max_event_id=max(observed, cursor),
            claimed=claim.claimed,
            deliveries=refs,
            more=full or len(refs) >= inp.limit,
            horizon_xid=claim.horizon_xid,
            snapshot_xmin=claim.snapshot_xmin,
        )

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, inp: DeliverWebhookInput) -> DeliverWebhookResult:
        """One attempt: sign, POST (10 s, no redirects), record; a failure raises for Temporal's retry.

        The first runs' activity (before the webhook-batches patch); new runs send batches.
        """
        batch = DeliverWebhooksInput(
            tenant_id=inp.tenant_id, endpoint_id=inp.endpoint_id, delivery_ids=[inp.delivery_id]
        )
        return (await self.deliver_webhooks(batch)).outcomes[0]

    @activity.defn(name="deliver_webhooks")
    async def deliver_webhooks(self, inp: DeliverWebhooksInput) -> DeliverWebhooksResult:
        """One entity's next deliveries in order, one attempt each, until one fails (raised: Temporal
        retries the batch, and what was delivered answers `delivered` again without a request).

        Two transactions per batch, not two per delivery: one reads every delivery, one records the
        2xx ones, written before a failure is recorded and raised and before the activity answers. A
        worker dying in between sends those again on the retry (at least once, the same webhook-id).
        A pause takes effect from the next batch. Each delivery's retry window opens at its own
        first attempt. A retried batch answers once the delivery it was retrying is decided, so what
        follows starts a batch of its own (its own schedule-to-close guard) instead of inheriting
        the time the retries used.
        """
        ids = [uuid.UUID(d) for d in inp.delivery_ids]
        retried = activity.info().attempt > 1
        prepared = await self._prepare(inp.tenant_id, ids)
        outcomes: list[DeliverWebhookResult] = []
        delivered: list[tuple[uuid.UUID, int, datetime, datetime]] = []
        try:
            for i, delivery_id in enumerate(ids):
                activity.heartbeat(i)
                p = prepared[delivery_id]
                if isinstance(p, DeliverWebhookResult):
                    outcomes.append(p)
                    if p.outcome in ("paused", "gone"):
                        break
                    continue
                sent = await self._send(p)
                if sent.error is None and sent.status_code is not None:
                    delivered.append((delivery_id, sent.status_code, sent.started_at, sent.done_at))
                    metrics.webhook_attempt("delivered", format=p.endpoint.format)
                    outcomes.append(
                        DeliverWebhookResult(
                            outcome="delivered", status_code=sent.status_code, attempts=p.attempts
                        )
                    )
                else:
                    await self._record_delivered(inp, delivered)
                    delivered = []
                    outcomes.append(await self._record_failure(inp, p, sent))
                if retried:
                    break
        finally:
            if delivered:
                await self._record_delivered(inp, delivered)
        return DeliverWebhooksResult(outcomes=outcomes)

    async def _prepare(
        self, tenant_id: str, ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, _Prepared | DeliverWebhookResult]:
        """Reads the deliveries in one transaction: what to send, or how each is decided already."""
        now = datetime.now(UTC)
        out: dict[uuid.UUID, _Prepared | DeliverWebhookResult] = {}
        secrets: dict[uuid.UUID, EndpointSecrets] = {}
        async with tenant_tx(sm=self._sm, tenant_id=tenant_id) as session:
            found = await load_attempts(session=session, delivery_ids=ids)
            for delivery_id in ids:
                attempt = found.get(delivery_id)
                if attempt is None:
                    out[delivery_id] = DeliverWebhookResult(outcome="gone")
                    continue
                row = attempt.delivery
                if row.status != "pending":
                    # Decided already (an earlier attempt of this batch, or another run): say how.
                    out[delivery_id] = DeliverWebhookResult(
                        outcome="delivered" if row.status == "delivered" else "failed",
                        status_code=row.last_status_code,
                        attempts=row.attempts,
                    )
                    continue
                if attempt.endpoint.status == "paused":
                    out[delivery_id] = DeliverWebhookResult(outcome="paused", attempts=row.attempts)
                    continue
                endpoint = secrets.get(attempt.endpoint.id)
                if endpoint is None:
                    endpoint = secrets[attempt.endpoint.id] = open_secrets(
                        row=attempt.endpoint, box=self._box
                    )
                context = None
                if endpoint.format == "slack":
                    context = await slack_context(
                        session=session,
                        entity_type=attempt.event.entity_type,
                        entity_id=attempt.event.entity_id,
                    )
                out[delivery_id] = _Prepared(
                    delivery_id=delivery_id,
                    endpoint=endpoint,
                    body=request_body(attempt.event, endpoint.format, context),
                    give_up_at=row.give_up_at,
                    attempts=row.attempts + 1,
                    now=now,
                )
        return out

    async def _send(self, p: _Prepared) -> _Sent:
        """The HTTP part of one attempt: to the checked address, signed, within one deadline."""
        s = self._settings
        started = datetime.now(UTC)

        def failed(error: str, code: int | None = None, retry_after: float | None = None) -> _Sent:
            return _Sent(code, error, retry_after, datetime.now(UTC), started)

        try:
            target, refusal = await self._target(p.endpoint.url, p.attempts)
        except Exception as exc:  # noqa: BLE001 - a URL httpx cannot parse: a recorded failed attempt
            return failed(f"request failed ({type(exc).__name__})")
        if target is None:
            return failed(f"address refused: {refusal}")
        ts = int(time.time())
        msg_id = message_id(str(p.delivery_id))
        signing = signing_secrets(
            p.endpoint.secret, p.endpoint.previous_secret, p.endpoint.previous_until, p.now
        )
        headers = {
            "content-type": "application/json",
            "user-agent": "sponsorflow-webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature_header(signing, msg_id, ts, p.body),
        }
        client = self._client(target.host)
        self._busy[target.host] += 1
        try:
            # One deadline for the whole attempt (httpx's timeout is per phase), and the answer's
            # body is never read: only its status and headers count.
            async with asyncio.timeout(s.webhook_timeout_seconds):
                request = client.build_request(
                    "POST",
                    target.url,
                    content=p.body.encode(),
                    headers={**headers, "host": target.host_header},
                    extensions={"sni_hostname": target.sni} if target.sni else {},
                )
                response = await client.send(request, stream=True)
                await response.aclose()
        except httpx.HTTPError as exc:
            return failed(_transport_error(exc, s.webhook_timeout_seconds))
        except TimeoutError:
            return failed(f"no answer within {s.webhook_timeout_seconds:g} s")
        except Exception as exc:  # noqa: BLE001 - recorded, never an unrecorded crash of the batch
            # Whatever else the request raised (a URL or header httpx cannot send): an attempt
            # that failed, recorded and retried like any other. Cancellation is not an Exception.
            return failed(f"request failed ({type(exc).__name__})")
        finally:
            self._busy[target.host] -= 1
        code = response.status_code
        if 200 <= code < 300:
            return _Sent(code, None, None, datetime.now(UTC), started)
        if 300 <= code < 400:
            return failed(f"HTTP {code}: a redirect, which is not followed", code)
        retry_after = (
            parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC)) if code == 429 else None
        )
        return failed(f"HTTP {code}", code, retry_after)

    async def _record_delivered(
        self, inp: DeliverWebhooksInput, delivered: list[tuple[uuid.UUID, int, datetime, datetime]]
    ) -> None:
        if not delivered:
            return
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            await mark_delivered(session=session, endpoint_id=uuid.UUID(inp.endpoint_id), delivered=delivered)

    async def _record_failure(
        self, inp: DeliverWebhooksInput, p: _Prepared, sent: _Sent
    ) -> DeliverWebhookResult:
        """Records a failed attempt; raises for Temporal's retry (or answers `failed`: window over)."""
        s = self._settings
        delay = sent.retry_after
        if delay is None:
            delay = retry_delay(
                p.attempts,
                initial_seconds=s.webhook_retry_initial_seconds,
                max_seconds=s.webhook_retry_max_interval_seconds,
                rand=random.random(),
            )
        # Its window opens at its own first attempt (not at the batch's: it may have waited behind
        # another delivery of its entity for days).
        give_up_at = p.give_up_at or sent.started_at + timedelta(hours=s.webhook_retry_hours)
        step, at = next_step(now=sent.done_at, give_up_at=give_up_at, delay_seconds=delay)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            await record_failure(
                session=session,
                endpoint_id=uuid.UUID(inp.endpoint_id),
                at=sent.done_at,
                delivery_id=p.delivery_id,
                status_code=sent.status_code,
                error=sent.error or "failed",
                next_attempt_at=at,
                started_at=sent.started_at,
                give_up_at=give_up_at,
            )
        metrics.webhook_attempt(
            metrics.webhook_result(sent.status_code, sent.error), format=p.endpoint.format
        )
        if step == "give_up":
            metrics.webhook_given_up(format=p.endpoint.format)
            log.info(
                "webhook delivery %s failed for good after %d attempts: %s",
                p.delivery_id,
                p.attempts,
                sent.error,
            )
            return DeliverWebhookResult(outcome="failed", status_code=sent.status_code, attempts=p.attempts)
        raise ApplicationError(
            f"attempt {p.attempts} failed: {sent.error}; next in {delay:.1f} s",
            type=ATTEMPT_FAILED,
            next_retry_delay=timedelta(seconds=delay),
        )

    @activity.defn(name="disable_webhook_endpoint")
    async def disable_endpoint(self, inp: DisableEndpointInput) -> DisableEndpointResult:
        """Pauses an endpoint that has failed continuously, with a webhook.disabled event."""
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            changed = await disable_endpoint(
                session=session,
                endpoint_id=uuid.UUID(inp.endpoint_id),
                failing_since=inp.failing_since,
                at=datetime.now(UTC),
                reason=inp.reason,
            )
        if changed:
            log.warning("webhook endpoint %s paused: %s", inp.endpoint_id, inp.reason)
        return DisableEndpointResult(paused=changed)

    @activity.defn(name="fail_webhook_delivery")
    async def fail_delivery(self, inp: FailDeliveryInput) -> FailDeliveryResult:
        """Marks a pending delivery failed (its activity timed out without deciding)."""
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            changed = await mark_failed(
                session=session, delivery_id=uuid.UUID(inp.delivery_id), error=inp.error
            )
        return FailDeliveryResult(changed=changed)

    @activity.defn(name="requeue_webhook_deliveries")
    async def requeue_deliveries(self, inp: RequeueDeliveriesInput) -> RequeueDeliveriesResult:
        """Sends one delivery again (retry), or every matching event of a window (replay)."""
        endpoint_id = uuid.UUID(inp.endpoint_id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            endpoint = await get_endpoint(session=session, endpoint_id=endpoint_id, lock=True)
            if endpoint is None:
                return RequeueDeliveriesResult(found=False)
            if inp.delivery_id is not None:
                row = await get_delivery(
                    session=session,
                    endpoint_id=endpoint_id,
                    delivery_id=uuid.UUID(inp.delivery_id),
                    lock=True,
                )
                if row is None:
                    return RequeueDeliveriesResult(found=False)
                refusal = retry_refusal(row.status)
                if refusal is not None:
                    return RequeueDeliveriesResult(refused=refusal)
                await requeue_delivery(session=session, delivery=row)
                return RequeueDeliveriesResult(requeued=1)
            assert inp.since is not None
            requeued, added = await replay_window(
                session=session, endpoint=endpoint, since=inp.since, until=inp.until
            )
        return RequeueDeliveriesResult(requeued=requeued, added=added)

    @activity.defn(name="emit_webhook_test_event")
    async def emit_test_event(self, inp: EmitTestEventInput) -> SendTestResult:
        """Writes the webhook.test event of one `send_test` update (its id is the key)."""
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            event_id = await emit_test_event(
                session=session,
                tenant_id=uuid.UUID(inp.tenant_id),
                endpoint_id=uuid.UUID(inp.endpoint_id),
                key=inp.key,
                note=inp.note,
                at=inp.occurred_at,
            )
        return SendTestResult(event_id=event_id)
