"""Deal side effects: persist what DealWorkflow decided, each in one idempotent transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import metrics
from db.engine import SessionMaker, tenant_tx
from db.events import emit_event
from db.fences import claim_request, release_claim
from db.models import Advertiser, Deal, DealStageHistory, Event, Show
from domain import events
from domain.deals import (
    LoadDealInput,
    LoadDealResult,
    RecordStageChangeInput,
    RecordStageChangeResult,
    RecordStallInput,
    RecordStallResult,
)
from domain.stages import Stage


def stall_key(campaign_id: str, stage: Stage, entered_at: datetime) -> str:
    """The idempotency key of a stage entry's deal.stalled event: at most one per entry."""
    return f"deal.stalled/{campaign_id}/{stage.value}/{entered_at.isoformat()}"


def _missing(campaign_id: str) -> ApplicationError:
    return ApplicationError(f"deal {campaign_id} does not exist", type="DealMissing", non_retryable=True)


async def _current_entry(
    session: AsyncSession, campaign_id: uuid.UUID
) -> tuple[Stage, datetime, str | None] | None:
    """The deal's stage entry as the row has it now, or None if the row is gone."""
    row = (
        await session.execute(
            select(Deal.stage, Deal.stage_changed_at, Deal.lost_reason).where(Deal.id == campaign_id)
        )
    ).first()
    return None if row is None else (Stage(row[0]), row[1], row[2])


class DealActivities:
    """Activities of the deal pipeline, bound to the worker's session factory."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sm = sessionmaker

    @activity.defn(name="record_stage_change")
    async def record_stage_change(self, inp: RecordStageChangeInput) -> RecordStageChangeResult:
        """Writes the stage, its history row and the deal.stage_changed event in one transaction."""
        campaign_id = uuid.UUID(inp.campaign_id)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            claim = None
            if inp.request_id is not None:
                # The write fence: the API may have given up on this request (abandoned: write
                # nothing), or an earlier attempt of it committed inside a workflow task that was
                # lost (applied: adopt the row as it is).
                claim = await claim_request(
                    session=session,
                    tenant_id=inp.tenant_id,
                    request_id=inp.request_id,
                    entity_type="deal",
                    entity_id=inp.campaign_id,
                )
                if claim.outcome == "abandoned":
                    return RecordStageChangeResult(outcome="abandoned")
                if claim.outcome == "applied":
                    entry = await _current_entry(session, campaign_id)
                    if entry is None:
                        raise _missing(inp.campaign_id)
                    return RecordStageChangeResult(
                        outcome="already_applied",
                        stage=entry[0],
                        stage_entered_at=entry[1],
                        lost_reason=entry[2],
                    )
            written = await session.scalar(
                select(DealStageHistory.changed_at).where(
                    DealStageHistory.idempotency_key == inp.idempotency_key
                )
            )
            if written is not None:
                # This very decision was written before (a retry, or an execution whose workflow
                # task was dropped): report the entry as it was stored.
                return RecordStageChangeResult(
                    outcome="already_applied", stage=inp.to_stage, stage_entered_at=written
                )
            # Compare-and-set on the stage entry the workflow decided against: a run seeded
            # from a row that has since moved must not write over it.
            moved = (
                await session.execute(
                    update(Deal)
                    .where(
                        Deal.id == campaign_id,
                        Deal.stage == inp.from_stage.value,
                        Deal.stage_changed_at == inp.from_entered_at,
                    )
                    .values(
                        stage=inp.to_stage.value,
                        stage_changed_at=inp.at,
                        probability=inp.probability,
                        lost_reason=inp.lost_reason,
                        updated_at=inp.at,
                    )
                    .returning(Deal.id)
                )
            ).scalar()
            if moved is None:
                entry = await _current_entry(session, campaign_id)
                if entry is None:
                    raise _missing(inp.campaign_id)
                if claim is not None:
                    # Decided against a stale entry: the workflow decides again under this id.
                    await release_claim(session=session, request_id=inp.request_id or "", claim=claim)
                return RecordStageChangeResult(
                    outcome="stale", stage=entry[0], stage_entered_at=entry[1], lost_reason=entry[2]
                )
            session.add(
                DealStageHistory(
                    tenant_id=uuid.UUID(inp.tenant_id),
                    campaign_id=campaign_id,
                    from_stage=inp.from_stage.value,
                    to_stage=inp.to_stage.value,
                    reason=inp.reason,
                    changed_at=inp.at,
                    idempotency_key=inp.idempotency_key,
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
        metrics.stage_moved(inp.from_stage.value, inp.to_stage.value)
        return RecordStageChangeResult(outcome="applied")

    @activity.defn(name="load_deal")
    async def load_deal(self, inp: LoadDealInput) -> LoadDealResult:
        """Reads the deal's current stage entry, and whether its stall was already reported."""
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            row = (
                await session.execute(
                    select(Deal, Advertiser.name, Show.name)
                    .join(Advertiser, Advertiser.id == Deal.advertiser_id)
                    .outerjoin(Show, Show.id == Deal.show_id)
                    .where(Deal.id == uuid.UUID(inp.campaign_id))
                )
            ).first()
            if row is None:
                return LoadDealResult(exists=False)
            c, advertiser_name, show_name = row
            stage, entered_at = Stage(c.stage), c.stage_changed_at
            stalled = await session.scalar(
                select(Event.id).where(Event.idempotency_key == stall_key(inp.campaign_id, stage, entered_at))
            )
        return LoadDealResult(
            exists=True,
            stage=stage,
            stage_entered_at=entered_at,
            lost_reason=c.lost_reason,
            stall_notified=stalled is not None,
            has_details=True,
            name=c.name,
            advertiser_id=str(c.advertiser_id),
            advertiser_name=advertiser_name,
            show_id=str(c.show_id) if c.show_id else None,
            show_name=show_name,
            value_usd=float(c.value_usd),
        )

    @activity.defn(name="record_stall")
    async def record_stall(self, inp: RecordStallInput) -> RecordStallResult:
        """Emits deal.stalled once per stage entry (keyed by the entry's timestamp)."""
        key = stall_key(inp.campaign_id, inp.stage, inp.stage_entered_at)
        async with tenant_tx(sm=self._sm, tenant_id=inp.tenant_id) as session:
            current = (
                await session.execute(
                    select(Deal.stage, Deal.stage_changed_at)
                    .where(Deal.id == uuid.UUID(inp.campaign_id))
                    .with_for_update()
                )
            ).first()
            if current is None or (current[0], current[1]) != (inp.stage.value, inp.stage_entered_at):
                # The deal moved on (the workflow's view was stale): that entry never stalled.
                return RecordStallResult(emitted=False)
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
        if emitted:
            metrics.stall_emitted(inp.stage.value)
        return RecordStallResult(emitted=emitted)
