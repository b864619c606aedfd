"""The webhook side of the fault suite: local receivers, the endpoints, and what reached them.

Two endpoints on the run's tenant, each with its own receiver in the suite's process (never
faulted): `all` subscribes to every event and fails the first attempt of a few deliveries on
purpose (a 500 for one event in `FLAKY_EVERY`, a dropped connection for another), so retries run
through the faults too; `deliveries` subscribes to `io.delivery_reported` only and always answers
200. Every request is verified with `standardwebhooks` (the spec's library, not the product's code)
and recorded: which event, which webhook-id, when, and what the receiver answered.
"""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.faults.load import pages
from tests.helpers.receivers import Behaviour, Received, receiver

# One event in this many gets a 500 on its first attempt, and another one a dropped connection.
FLAKY_EVERY = 40


@dataclass
class Hit:
    """One request a receiver got."""

    endpoint: str  # the endpoint's name in the suite (`all`, `deliveries`)
    webhook_id: str
    event_id: int | None
    event_type: str | None
    entity_id: str | None
    at: float  # wall clock (time.time())
    answered: int | None  # the status the receiver answered (None: it dropped the connection)
    signature_ok: bool
    problem: str | None = None
    payload: Any = None  # the body's `payload`, compared with the event's


@dataclass
class Endpoint:
    """One endpoint of the run: what it subscribes to, its id and secret, its receiver's hits."""

    name: str
    event_types: list[str]
    flaky: bool
    id: str = ""
    secret: str = ""
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    # The first attempt of a webhook-id this receiver saw (for the injected first-attempt failures).
    seen: set[str] = field(default_factory=set)
    # Until then (time.time()) every request hangs without an answer (the webhook_receiver_hang fault).
    hang_until: float = 0.0

    def wants(self, event_type: str) -> bool:
        """Whether the endpoint subscribes to an event type."""
        return "*" in self.event_types or event_type in self.event_types

    def decide(self, req: Received) -> Behaviour:
        """Verifies, records and answers one request (called by the receiver for each)."""
        hit = _hit(self, req)
        first = hit.webhook_id not in self.seen
        self.seen.add(hit.webhook_id)
        what: Behaviour = "ok"
        if hit.at < self.hang_until:
            what = "hang"
        elif self.flaky and first and hit.event_id is not None:
            if hit.event_id % FLAKY_EVERY == 0:
                what = "error"
            elif hit.event_id % FLAKY_EVERY == FLAKY_EVERY // 2:
                what = "close"
        if not hit.signature_ok:
            what = "error"  # a receiver refuses what it cannot verify
        hit.answered = {"ok": 200, "error": 500}.get(what)  # None: hung or dropped
        self.hits.append(hit)
        return what


def _hit(endpoint: Endpoint, req: Received) -> Hit:
    hid = req.headers.get("webhook-id", "")
    hit = Hit(endpoint.name, hid, None, None, None, time.time(), None, False)
    try:
        Webhook(endpoint.secret).verify(req.body, req.headers)
        hit.signature_ok = True
    except WebhookVerificationError as exc:
        hit.problem = f"signature: {exc}"
    try:
        body = json.loads(req.body)
        hit.event_id = int(body["id"])
        hit.event_type = str(body["type"])
        hit.entity_id = str(body["entity_id"])
        hit.payload = body.get("payload")
    except (ValueError, KeyError, TypeError) as exc:
        hit.problem = (hit.problem or "") + f" body: {exc!r}"
    return hit


@dataclass
class HookSite:
    """The run's receivers and endpoints."""

    endpoints: list[Endpoint] = field(
        default_factory=lambda: [
            Endpoint("all", ["*"], flaky=True),
            Endpoint("deliveries", ["io.delivery_reported"], flaky=False),
        ]
    )
    # The tenant's newest event id when the endpoints were created: later ones must all arrive.
    after_event_id: int = 0
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    enabled: bool = False
    skipped: str | None = None

    async def start(self) -> None:
        """Starts one receiver per endpoint (before the endpoints exist, so none misses a request)."""
        for ep in self.endpoints:
            r = await self.stack.enter_async_context(receiver(decide=ep.decide))
            ep.url = r.url

    async def create(self, http: httpx.AsyncClient) -> None:
        """Creates the endpoints through the API (skipped, with a note, on a checkout without webhooks)."""
        self.after_event_id = max((int(e["id"]) for e in await pages(http, "/api/v1/events")), default=0)
        for ep in self.endpoints:
            r = await http.post(
                "/api/v1/webhooks",
                json={
                    "url": ep.url,
                    "event_types": ep.event_types,
                    "description": f"fault suite: {ep.name}",
                },
            )
            if r.status_code == 404:
                self.skipped = "this checkout has no /api/v1/webhooks"
                return
            if r.status_code != 201:
                raise RuntimeError(f"could not create the {ep.name} webhook: {r.status_code} {r.text[:300]}")
            ep.id, ep.secret = r.json()["id"], r.json()["secret"]
        self.enabled = True

    async def stop(self) -> None:
        """Stops the receivers."""
        await self.stack.aclose()

    def hits(self) -> list[Hit]:
        """Every request any receiver got, in arrival order per receiver."""
        return [h for ep in self.endpoints for h in ep.hits]

    def as_json(self) -> list[dict[str, Any]]:
        """The hits as written to webhooks.jsonl."""
        return [vars(h) for h in self.hits()]
