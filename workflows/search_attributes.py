"""The search attributes ops filter on in the Temporal UI (ARCHITECTURE section 6)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
IO_STATUS = SearchAttributeKey.for_keyword("IoStatus")
ADVERTISER_ID = SearchAttributeKey.for_keyword("AdvertiserId")
SHOW_ID = SearchAttributeKey.for_keyword("ShowId")
DEAL_VALUE = SearchAttributeKey.for_float("DealValue")
STAGE_ENTERED_AT = SearchAttributeKey.for_datetime("StageEnteredAt")
# A webhook endpoint's delivery workflow: healthy, failing or paused.
WEBHOOK_STATUS = SearchAttributeKey.for_keyword("WebhookStatus")

ALL_KEYS = (
    TENANT_ID,
    DEAL_STAGE,
    IO_STATUS,
    ADVERTISER_ID,
    SHOW_ID,
    DEAL_VALUE,
    STAGE_ENTERED_AT,
    WEBHOOK_STATUS,
)


def cli_flags() -> list[str]:
    """Returns `--search-attribute Name=Type` flags for `temporal server start-dev`."""
    kinds = {"KEYWORD": "Keyword", "DOUBLE": "Double", "DATETIME": "Datetime"}
    flags: list[str] = []
    for key in ALL_KEYS:
        flags += ["--search-attribute", f"{key.name}={kinds[key.indexed_value_type.name]}"]
    return flags
