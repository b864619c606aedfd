"""Request and answer bodies of the webhooks API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.bodies import JsonBody


class WebhookCreate(JsonBody):
    """A new endpoint: where to POST which events (`["*"]`: every one)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    url: str = Field(min_length=1, max_length=2000, examples=["https://hooks.example.com/sponsorflow"])
    event_types: list[str] = Field(min_length=1, max_length=50, examples=[["deal.stage_changed"]])
    description: str | None = Field(None, max_length=500)
    format: Literal["standard", "slack"] = "standard"


class WebhookPatch(JsonBody):
    """Changes to an endpoint; `status` pauses or resumes its deliveries."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    url: str | None = Field(None, min_length=1, max_length=2000)
    event_types: list[str] | None = Field(None, min_length=1, max_length=50)
    description: str | None = Field(None, max_length=500)
    status: Literal["active", "paused"] | None = None


class WebhookPublic(BaseModel):
    """An endpoint, without its secret."""

    id: str
    url: str
    event_types: list[str]
    format: str
    status: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    workflow_id: str


class WebhookCreated(WebhookPublic):
    """A new endpoint; `secret` (whsec_...) is shown this once."""

    secret: str


class WebhookSecretRotated(BaseModel):
    """The new secret (shown once); the previous one keeps signing beside it until the time given."""

    secret: str
    previous_secret_expires_at: datetime


class WebhookDeliveryPublic(BaseModel):
    """One event sent (or being sent) to one endpoint."""

    id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookReplay(JsonBody):
    """The window of events to send again: occurred_at in [since, until)."""

    model_config = ConfigDict(extra="forbid")
    since: datetime
    until: datetime | None = None


class WebhookTestSent(BaseModel):
    """The webhook.test event written; the endpoint's workflow sends it at once."""

    event_id: str
    status: Literal["queued"] = "queued"


class WebhookRequeued(BaseModel):
    """Deliveries queued again (`requeued`) and events queued for the first time (`added`)."""

    requeued: int
    added: int


class WebhookEventType(BaseModel):
    """An event type an endpoint can subscribe to, and what it means."""

    type: str = Field(examples=["deal.stage_changed"])
    description: str


class WebhookEventTypes(BaseModel):
    """Every type `event_types` accepts: `*` first, then the known types by name."""

    items: list[WebhookEventType]
