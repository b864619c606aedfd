"""Webhooks: the rules (URLs, event types, signatures, retries, health) and the models of
WebhookEndpointWorkflow and its activities (part of its history contract).

Pure: the addresses a URL resolves to, the current time and the random jitter are handed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from domain.events import EVENT_TYPES, WEBHOOK_TEST

ALL_EVENTS = "*"
FORMATS = ("standard", "slack")
ENDPOINT_STATUSES = ("active", "paused")
SECRET_PREFIX = "whsec_"
# Events an endpoint can subscribe to (webhook.test goes to the one endpoint it is sent to).
SUBSCRIBABLE: frozenset[str] = frozenset(EVENT_TYPES - {WEBHOOK_TEST})
# The cloud metadata services (AWS, GCP, Azure share the IPv4 one; AWS's IPv6 one): never a target.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)

EndpointStatus = Literal["active", "paused"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
Health = Literal["healthy", "failing", "paused"]
Outcome = Literal["delivered", "failed", "skipped", "paused", "gone"]


class WebhookRuleError(ValueError):
    """Input a webhook rule refuses; `field` names the body field (the API's 422 `loc`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# ---------------------------------------------------------------------------------------------
# Endpoints


def check_event_types(types: Sequence[str]) -> list[str]:
    """The subscription as stored: `["*"]`, or known types, sorted, each once."""
    if not types:
        raise WebhookRuleError("event_types", 'name at least one event type, or ["*"] for every one')
    if ALL_EVENTS in types:
        if len(set(types)) > 1:
            raise WebhookRuleError("event_types", '"*" already means every event type; send it alone')
        return [ALL_EVENTS]
    unknown = sorted(set(types) - SUBSCRIBABLE)
    if unknown:
        raise WebhookRuleError(
            "event_types",
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(SUBSCRIBABLE))}",
        )
    return sorted(set(types))


def check_url(url: str, *, allow_http: bool) -> str:
    """The URL's host, once its form is acceptable: https (http only when allowed), no credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRuleError("url", f"not a URL: {exc}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        allowed = "https or http (development)" if allow_http else "https"
        raise WebhookRuleError("url", f"the scheme must be {allowed}, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookRuleError("url", "credentials in the URL are refused; authenticate with the signature")
    if not parts.hostname:
        raise WebhookRuleError("url", "the URL names no host")
    if port == 0:
        raise WebhookRuleError("url", "port 0 is not a port")
    if parts.fragment:
        raise WebhookRuleError("url", "a URL fragment is never sent; remove it")
    return parts.hostname


def address_refusal(addresses: Iterable[str], *, allow_private: bool) -> str | None:
    """Why a host resolving to these addresses may not be called (None: it may).

    The metadata address is refused always; loopback, private, link-local, reserved and
    unspecified ones unless SPONSORFLOW_WEBHOOK_ALLOW_PRIVATE. Every address must pass, since
    the HTTP client may connect to any of them.
    """
    found = False
    for raw in addresses:
        found = True
        ip = ipaddress.ip_address(raw.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip in METADATA_ADDRESSES:
            return f"{ip} is the cloud metadata address"
        if allow_private:
            continue
        if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_unspecified:
            return (
                f"{ip} is a loopback, private or link-local address (SPONSORFLOW_WEBHOOK_ALLOW_PRIVATE=false)"
            )
        if ip.is_multicast:
            return f"{ip} is a multicast address"
    return None if found else "the host does not resolve"


def subscribed(event_types: Sequence[str], event_type: str, *, entity_id: str, endpoint_id: str) -> bool:
    """Whether an event goes to an endpoint (a test only to the endpoint it names)."""
    if event_type == WEBHOOK_TEST:
        return entity_id == endpoint_id
    return ALL_EVENTS in event_types or event_type in event_types


def summary(host: str, description: str | None) -> str:
    """The workflow's summary in the Temporal UI: the host only (a path can hold a token)."""
    return f"Webhook: {host}" + (f" ({description[:80]})" if description else "")


def generate_secret() -> str:
    """A new signing secret, `whsec_` + base64 of 24 random bytes (the spec's form)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


# ---------------------------------------------------------------------------------------------
# Requests (Standard Webhooks)


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw + "==")


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the secret's key bytes."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(signing_secrets: Sequence[str], msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value: one signature per secret, space-separated (rotation)."""
    return " ".join(signature(s, msg_id, timestamp, body) for s in signing_secrets)


def signing_secrets(
    current: str, previous: str | None, previous_until: datetime | None, now: datetime
) -> list[str]:
    """The secrets that sign now: the current one, and the previous one until it expires."""
    if previous and previous_until is not None and now < previous_until:
        return [current, previous]
    return [current]


class WebhookEvent(BaseModel):
    """The body of a delivery: the event as GET /api/v1/events shows it."""

    id: str
    type: str
    entity_type: str
    entity_id: str
    payload: dict[str, Any]
    occurred_at: datetime


def message_id(delivery_id: str) -> str:
    """`webhook-id`: the delivery's id, the same on every attempt and on a retry or replay."""
    return f"msg_{delivery_id.replace('-', '')}"


class SlackContext(BaseModel):
    """What a chat sentence names besides the event: the deal as people say it, and its value."""

    title: str
    value_usd: float | None = None


def _usd(value: Any) -> str:
    try:
        return f"${float(value):,.0f}"
    except (TypeError, ValueError):
        return str(value)


def _sentence(event: WebhookEvent, who: str, value: str) -> str | None:
    p = event.payload
    t = event.type
    if t == "deal.created":
        return f"New deal: {who}{value} in {p.get('stage', 'lead')}"
    if t == "deal.stage_changed":
        to = p.get("to")
        if to == "won":
            return f"{who} was won{value}"
        if to == "lost":
            return f"{who} was lost{value}: {p.get('reason') or 'no reason given'}"
        return f"{who} moved to {to}{value}"
    if t == "deal.stalled":
        return f"{who} stalled in {p.get('stage')} for {p.get('limit_days')} days"
    if t == "io.scheduled":
        return (
            f"IO booked for {who}: {p.get('units')} ad unit(s), {_usd(p.get('total_usd'))}, "
            f"first airs {p.get('first_air_date')}"
        )
    if t == "io.ad_aired":
        return f"{who}: the ad aired on {p.get('show_name')} ({p.get('placement')}, {p.get('air_date')})"
    if t == "io.delivery_reported":
        share = p.get("delivered_share")
        pct = f" ({float(share) * 100:.0f}%)" if share is not None else ""
        goal = f" of {int(p['impressions_goal']):,}" if p.get("impressions_goal") else ""
        return f"{who}: {int(p.get('impressions') or 0):,}{goal} impressions delivered{pct}"
    if t in ("io.delivery_overdue", "io.delivery_reminder"):
        return f"{who}: a delivery report is overdue"
    if t == "io.makegood_scheduled":
        return f"{who}: a make-good is scheduled"
    if t == "io.completed":
        return (
            f"IO for {who} completed: invoice {p.get('invoice_number')}, "
            f"{_usd(p.get('total_usd'))} due {p.get('due_date')}"
        )
    if t == "io.cancelled":
        return f"IO for {who} cancelled: {p.get('reason') or 'no reason given'}"
    if t == "etl.import_completed":
        return (
            f"Import of {p.get('filename')} ({p.get('kind')}) finished {p.get('status')}: "
            f"{p.get('rows_total')} rows, {p.get('rows_failed')} failed"
        )
    if t == "etl.error":
        return f"Import of {p.get('filename')} ({p.get('kind')}) failed: {p.get('reason')}"
    if t == "match.recalculated":
        return f"Match recommendations recalculated: {p.get('matches_written')} matches"
    if t == WEBHOOK_TEST:
        return f"Test from sponsorflow: {p.get('message')}"
    if t == "webhook.disabled":
        return f"A webhook endpoint was paused: {p.get('reason')}"
    return None


def slack_text(event: WebhookEvent, context: SlackContext | None = None) -> str:
    """A sentence a person reads in a chat channel ("Acme x The Daily Grind moved to negotiation
    ($24,000)"); an event type without one names the type and the entity."""
    who = context.title if context else f"{event.entity_type} {event.entity_id}"
    value = f" ({_usd(context.value_usd)})" if context and context.value_usd is not None else ""
    return _sentence(event, who, value) or f"{event.type} on {event.entity_type} {event.entity_id}"


def request_body(event: WebhookEvent, format: str, context: SlackContext | None = None) -> str:
    """The exact bytes (as text) that are signed and sent: the event, or `{"text"}` for a chat."""
    if format == "slack":
        return json.dumps({"text": slack_text(event, context)})
    return event.model_dump_json()


# ---------------------------------------------------------------------------------------------
# Retries


def retry_delay(attempt: int, *, initial_seconds: float, max_seconds: float, rand: float) -> float:
    """Seconds before attempt `attempt + 1`: exponential from `initial`, capped, with jitter.

    "Equal jitter": half the exponential delay plus a random part of the other half (`rand` in
    [0, 1)), so endpoints that failed together do not all come back at the same instant.
    """
    base = min(max_seconds, initial_seconds * 2.0 ** max(attempt - 1, 0))
    return base / 2 + base / 2 * rand


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a 429's `Retry-After` asks for (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


def next_step(
    *, now: datetime, give_up_at: datetime, delay_seconds: float
) -> tuple[Literal["retry", "give_up"], datetime | None]:
    """After a failed attempt: retry at now + delay, or give up when that is past the window."""
    at = now + timedelta(seconds=delay_seconds)
    if at > give_up_at:
        return "give_up", None
    return "retry", at


def retry_refusal(status: str) -> str | None:
    """Why a delivery cannot be sent again by hand (None: it can)."""
    if status == "pending":
        return "this delivery is still pending: it is being sent or retried"
    return None


def test_refusal(status: str) -> str | None:
    """Why an endpoint cannot receive a test now (None: it can)."""
    if status == "paused":
        return "the endpoint is paused; set its status to active first"
    return None


def disable_reason(*, failing_since: datetime | None, now: datetime, after_hours: float) -> str | None:
    """Why an endpoint is paused now (None: it is not): it has failed continuously that long."""
    if failing_since is None or now - failing_since < timedelta(hours=after_hours):
        return None
    days = after_hours / 24
    span = f"{days:g} days" if days >= 1 else f"{after_hours:.3g} hours"
    return f"every attempt failed for {span} (since {failing_since.isoformat()}); set it active to resume"


def health(
    *, paused: bool, oldest_in_flight_seconds: float | None, failing_after_seconds: float, last_failed: bool
) -> Health:
    """`WebhookStatus`: paused; failing while a delivery keeps retrying or the last one failed."""
    if paused:
        return "paused"
    if oldest_in_flight_seconds is not None and oldest_in_flight_seconds >= failing_after_seconds:
        return "failing"
    return "failing" if last_failed else "healthy"


# ---------------------------------------------------------------------------------------------
# Workflow and activity models


class WebhookConfig(BaseModel):
    """The worker's webhook settings the workflow follows (the starter's; carried across runs)."""

    poll_seconds: float = 1.0
    idle_poll_seconds: float = 5.0
    outbox_settle_seconds: float = 300.0
    max_in_flight: int = 8
    failing_after_seconds: float = 30.0
    retry_window_hours: float = 72.0
    claim_limit: int = 200
    # Deliveries of one entity sent by one activity (in order; a failure retries from there).
    batch_size: int = 20
    disable_after_hours: float = 120.0
    history_limit: int = 10_000


class Observation(BaseModel):
    """At `at`, every event of the tenant up to `max_event_id` had been handed out or was in flight.

    `horizon_xid` (claims since the webhook-snapshot-horizon patch): the claim's own transaction
    id, taken after the snapshot that saw `max_event_id`; every transaction that may still commit
    an id up to `max_event_id` has a smaller one. None: recorded before the patch (time rule).
    """

    at: datetime
    max_event_id: int
    horizon_xid: int | None = None


class Certificate(BaseModel):
    """What the last claim proved: no transaction below `snapshot_xmin` was running when it read,
    and every matching event visible to it up to `covered_through` is queued."""

    snapshot_xmin: int
    covered_through: int


def settle(
    *,
    cursor: int,
    observations: Sequence[Observation],
    now: datetime,
    settle_seconds: float,
    certificate: Certificate | None,
    in_order: bool = False,
) -> tuple[int, list[Observation]]:
    """The outbox cursor after the observations that are final now, and those still waiting.

    An observation with a horizon is final once the last claim's snapshot xmin is at least its
    horizon and that claim's scan covered its id: every id up to it then belongs to a transaction
    that has ended (committed, so that scan queued it, or rolled back: a gap forever). No time
    condition: a transaction open for hours holds the cursor back (the scan only gets wider, the
    claim's NOT EXISTS keeps it idempotent), it is never skipped. An observation without a horizon
    (recorded before the patch, or claimed by an older worker or without a horizon) keeps the old
    time rule: final `settle_seconds` after it was made.

    `in_order` (runs since the webhook-cancel-keeps-pending patch): the observations are walked
    oldest first and the walk stops at the first one that is not final, so an observation final on
    time alone never moves the cursor past an earlier one whose writer is still open. Without it
    (older runs) the cursor moves to the newest final observation, wherever it is.
    """
    horizon = now - timedelta(seconds=settle_seconds)
    moved = cursor
    for o in observations:
        if o.horizon_xid is None:
            final = o.at <= horizon
        else:
            final = (
                certificate is not None
                and certificate.snapshot_xmin >= o.horizon_xid
                and certificate.covered_through >= o.max_event_id
            )
        if final:
            moved = max(moved, o.max_event_id)
        elif in_order:
            break
    return moved, [o for o in observations if o.max_event_id > moved]


def held_back(observations: Sequence[Observation], now: datetime, after_seconds: float) -> Observation | None:
    """The oldest observation with a horizon still waiting after `after_seconds` (None: none):
    some transaction older than its horizon xid is still open."""
    for o in observations:
        if o.horizon_xid is not None:
            return o if (now - o.at).total_seconds() >= after_seconds else None
    return None


class WebhookEndpointInput(BaseModel):
    """Starts (or continues) one endpoint's delivery workflow."""

    tenant_id: str
    endpoint_id: str
    config: WebhookConfig = Field(default_factory=WebhookConfig)
    # Every matching event up to here is claimed (None: from the endpoint's after_event_id).
    event_cursor: int | None = None
    observations: list[Observation] = Field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    # The last claim's proof (snapshot horizon; None: no claim since the patch yet).
    certificate: Certificate | None = None


class WebhookEndpointResult(BaseModel):
    """How the workflow ended: the endpoint was deleted."""

    delivered: int
    failed: int


class DeliveryRef(BaseModel):
    """A pending delivery handed to the workflow (no payload, no secret: ids only)."""

    id: str
    event_id: int
    entity_id: str
    queue_seq: int


class ClaimDeliveriesInput(BaseModel):
    """Claims the matching events after the cursor and hands out the pending deliveries after `after_seq`."""

    tenant_id: str
    endpoint_id: str
    event_cursor: int | None
    after_seq: int
    limit: int = 200


class ClaimDeliveriesResult(BaseModel):
    """The endpoint's state, what was handed out, and what the claim saw of the outbox."""

    endpoint: Literal["active", "paused", "gone"]
    # The endpoint's first failed attempt since its last success (None: not failing).
    failing_since: datetime | None = None
    event_cursor: int
    observed_max_event_id: int
    claimed: int = 0
    deliveries: list[DeliveryRef] = Field(default_factory=list)
    more: bool = False
    # The snapshot horizon (None: not read, e.g. paused, gone, or an older worker): the claim's own
    # xid, taken after the snapshot that saw observed_max_event_id, and that snapshot's xmin.
    horizon_xid: int | None = None
    snapshot_xmin: int | None = None


class DeliverWebhookInput(BaseModel):
    """Sends one delivery (the activity reads the event and the secrets from the database)."""

    tenant_id: str
    endpoint_id: str
    delivery_id: str


class DeliverWebhookResult(BaseModel):
    """What became of a delivery."""

    outcome: Outcome
    status_code: int | None = None
    attempts: int = 0


class DeliverWebhooksInput(BaseModel):
    """Sends one entity's next deliveries, in order (ids only: the activity reads the rest)."""

    tenant_id: str
    endpoint_id: str
    delivery_ids: list[str]


class DeliverWebhooksResult(BaseModel):
    """One outcome per delivery attempted, in order (fewer than asked after a pause)."""

    outcomes: list[DeliverWebhookResult]


class DisableEndpointInput(BaseModel):
    """Pauses an endpoint that is still failing since `failing_since`."""

    tenant_id: str
    endpoint_id: str
    failing_since: datetime
    reason: str


class DisableEndpointResult(BaseModel):
    """Whether it was paused now (False: it recovered, was paused or deleted meanwhile)."""

    paused: bool


class FailDeliveryInput(BaseModel):
    """Marks a delivery failed (its activity ran out of time without deciding)."""

    tenant_id: str
    delivery_id: str
    error: str


class FailDeliveryResult(BaseModel):
    """Whether the row was still pending."""

    changed: bool


class RequeueDeliveriesInput(BaseModel):
    """Sends deliveries again: one by id (retry), or every matching event of a window (replay)."""

    tenant_id: str
    endpoint_id: str
    delivery_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class RequeueDeliveriesResult(BaseModel):
    """How many deliveries were queued again or added; a refusal in words."""

    requeued: int = 0
    added: int = 0
    refused: str | None = None
    found: bool = True


class RetryDeliveryInput(BaseModel):
    """The `retry` update: send one delivery again."""

    delivery_id: str


class ReplayInput(BaseModel):
    """The `replay` update: send the matching events of [since, until) again."""

    since: datetime
    until: datetime | None = None


class RequeueResult(BaseModel):
    """Answer of `retry` and `replay`."""

    requeued: int
    added: int
    refused: str | None = None
    found: bool = True


class SendTestInput(BaseModel):
    """The `send_test` update."""

    note: str | None = None


class EmitTestEventInput(BaseModel):
    """Writes a webhook.test event for one endpoint into the outbox."""

    tenant_id: str
    endpoint_id: str
    key: str
    note: str | None = None
    occurred_at: datetime


class SendTestResult(BaseModel):
    """The webhook.test event written (the workflow delivers it like any other)."""

    event_id: int
    written: bool = True


class WebhookState(BaseModel):
    """The `state` query: what the workflow is doing now."""

    health: Health
    event_cursor: int | None
    in_flight: int
    queued: int
    delivered: int
    failed: int
    # Since when the cursor waits for a transaction that is still open (None: it is not held).
    cursor_held_since: datetime | None = None


# What each type an endpoint can subscribe to means (GET /api/v1/webhooks/event-types; the web
# app's checkboxes). Every SUBSCRIBABLE type and "*" has one; a test compares the two.
EVENT_TYPE_DESCRIPTIONS: dict[str, str] = {
    ALL_EVENTS: "every event type, including ones added later",
    "deal.created": "a deal was created (through the API or a campaigns import)",
    "deal.stage_changed": "a deal moved to another stage (payload from, to)",
    "deal.stalled": "a deal stayed in one stage longer than that stage's limit",
    "io.scheduled": "an insertion order was booked and its ad units scheduled",
    "io.ad_aired": "an ad unit of an insertion order aired",
    "io.delivery_reported": "the delivery (downloads) of an aired ad unit was reported",
    "io.makegood_scheduled": "a make-good unit was scheduled for a unit that under-delivered",
    "io.delivery_overdue": "the measurement window ended with a CPM unit's delivery unreported",
    "io.delivery_reminder": "a reminder that a CPM unit's delivery report is still missing",
    "io.completed": "an insertion order was reconciled and invoiced",
    "io.cancelled": "an insertion order was cancelled",
    "etl.import_completed": "an import finished (with its counts)",
    "etl.error": "an import was refused (with the reason)",
    "match.recalculated": "the show-advertiser match scores were recalculated",
    "webhook.disabled": "an endpoint failing continuously for days was paused",
}
