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
    }
)
