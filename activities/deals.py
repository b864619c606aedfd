"""Deal side effects: persist what DealWorkflow decided, each in one idempotent transaction."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from temporalio import activity

from db.engine import SessionMaker, tenant_tx
from db.events import emit_event
from db.models import Campaign, DealStageHistory
from domain import events
from domain.deals import (
    RecordStageChangeInput,
    RecordStageChangeResult,
    RecordStallInput,
    RecordStallResult,
)


class DealActivities:
    """Activities of the deal pipeline, bound to the worker's session factory."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sm = sessionmaker

    @activity.defn(name="record_stage_change")
    async def record_stage_change(self, inp: RecordStageChangeInput) -> RecordStageChangeResult:
        """Writes the stage, its history row and the deal.stage_changed event in one transaction."""
        campaign_id = uuid.UUID(inp.campaign_id)
        async with tenant_tx(self._sm, inp.tenant_id) as session:
            # The history row's unique key is the retry guard: a second attempt after a
            # commit inserts nothing and so writes nothing else either.
            inserted = (
                await session.execute(
                    insert(DealStageHistory)
                    .values(
                        tenant_id=uuid.UUID(inp.tenant_id),
                        campaign_id=campaign_id,
                        from_stage=inp.from_stage.value,
                        to_stage=inp.to_stage.value,
                        reason=inp.reason,
                        changed_at=inp.at,
                        idempotency_key=inp.idempotency_key,
                    )
                    .on_conflict_do_nothing(index_elements=["idempotency_key"])
                    .returning(DealStageHistory.id)
                )
            ).scalar()
            if inserted is None:
                return RecordStageChangeResult(applied=False)
            await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(
                    stage=inp.to_stage.value,
                    stage_changed_at=inp.at,
                    probability=inp.probability,
                    lost_reason=inp.lost_reason,
                    updated_at=inp.at,
                )
            )
            await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=events.DEAL_STAGE_CHANGED,
                entity_type="deal",
                entity_id=inp.campaign_id,
                payload={
                    "from": inp.from_stage.value,
                    "to": inp.to_stage.value,
                    "reason": inp.reason,
                    "probability": inp.probability,
                },
                occurred_at=inp.at,
                idempotency_key=inp.idempotency_key,
            )
        return RecordStageChangeResult(applied=True)

    @activity.defn(name="record_stall")
    async def record_stall(self, inp: RecordStallInput) -> RecordStallResult:
        """Emits deal.stalled once per stage entry (keyed by the entry's timestamp)."""
        key = f"deal.stalled/{inp.campaign_id}/{inp.stage.value}/{inp.stage_entered_at.isoformat()}"
        async with tenant_tx(self._sm, inp.tenant_id) as session:
            emitted = await emit_event(
                session=session,
                tenant_id=inp.tenant_id,
                type=events.DEAL_STALLED,
                entity_type="deal",
                entity_id=inp.campaign_id,
                payload={
                    "stage": inp.stage.value,
                    "stage_entered_at": inp.stage_entered_at.isoformat(),
                    "limit_days": inp.limit_days,
                },
                occurred_at=inp.at,
                idempotency_key=key,
            )
        return RecordStallResult(emitted=emitted)
