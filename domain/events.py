"""The event catalogue: every type the outbox may carry."""

from __future__ import annotations

DEAL_CREATED = "deal.created"
DEAL_STAGE_CHANGED = "deal.stage_changed"
DEAL_STALLED = "deal.stalled"
IO_SCHEDULED = "io.scheduled"
IO_AD_AIRED = "io.ad_aired"
IO_DELIVERY_REPORTED = "io.delivery_reported"
IO_MAKEGOOD_SCHEDULED = "io.makegood_scheduled"
# The measurement window ended with a CPM unit unreported (once per window), then reminders.
IO_DELIVERY_OVERDUE = "io.delivery_overdue"
IO_DELIVERY_REMINDER = "io.delivery_reminder"
IO_COMPLETED = "io.completed"
IO_CANCELLED = "io.cancelled"
ETL_IMPORT_COMPLETED = "etl.import_completed"
ETL_ERROR = "etl.error"
MATCH_RECALCULATED = "match.recalculated"
# Webhooks: a test sent from the API (to the one endpoint it names), and an endpoint paused
# after failing for days (its entity is the endpoint).
WEBHOOK_TEST = "webhook.test"
WEBHOOK_DISABLED = "webhook.disabled"

# deal.created carries the same fields whichever way the deal was made (POST /api/v1/deals or a
# `campaigns` import: import_id is null for the first); its idempotency key is the prefix + the
# deal's id, shared with the deal's first history entry.
DEAL_CREATED_FIELDS: tuple[str, ...] = ("name", "stage", "value_usd", "advertiser_id", "show_id", "import_id")
DEAL_CREATED_KEY_PREFIX = "deal.created/"


def deal_created_payload(
    *,
    name: str,
    stage: str,
    value_usd: float,
    advertiser_id: str,
    show_id: str | None,
    import_id: str | None,
) -> dict[str, object]:
    """The payload of deal.created, in DEAL_CREATED_FIELDS order."""
    payload: dict[str, object] = {
        "name": name,
        "stage": stage,
        "value_usd": value_usd,
        "advertiser_id": advertiser_id,
        "show_id": show_id,
        "import_id": import_id,
    }
    assert tuple(payload) == DEAL_CREATED_FIELDS
    return payload


EVENT_TYPES: frozenset[str] = frozenset(
    {
        DEAL_CREATED,
        DEAL_STAGE_CHANGED,
        DEAL_STALLED,
        IO_SCHEDULED,
        IO_AD_AIRED,
        IO_DELIVERY_REPORTED,
        IO_MAKEGOOD_SCHEDULED,
        IO_DELIVERY_OVERDUE,
        IO_DELIVERY_REMINDER,
        IO_COMPLETED,
        IO_CANCELLED,
        ETL_IMPORT_COMPLETED,
        ETL_ERROR,
        MATCH_RECALCULATED,
        WEBHOOK_TEST,
        WEBHOOK_DISABLED,
    }
)
