"""Deal rows: create, read with names and history, list with filters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.events import emit_event
from db.models import Advertiser, Deal, DealStageHistory, Show
from domain import events
from domain.deals import DealWorkflowInput
from domain.stages import OPEN_STAGES, Stage, probability


@dataclass(frozen=True)
class DealRow:
    """A campaign row with the names its workflow summary needs."""

    deal: Deal
    advertiser_name: str
    show_name: str | None


async def insert_deal(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    advertiser_id: uuid.UUID,
    show_id: uuid.UUID | None,
    name: str,
    value_usd: Decimal,
    stage: Stage,
    at: datetime,
    expected_close: date | None = None,
    lost_reason: str | None = None,
    owner_email: str | None = None,
    external_id: str | None = None,
    idempotency_key: str | None = None,
) -> Deal:
    """Writes a new deal, its first history entry and deal.created in the caller's transaction."""
    campaign = Deal(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        external_id=external_id,
        idempotency_key=idempotency_key,
        advertiser_id=advertiser_id,
        show_id=show_id,
        name=name,
        value_usd=value_usd,
        stage=stage.value,
        stage_changed_at=at,
        probability=probability(stage),
        lost_reason=lost_reason,
        expected_close=expected_close,
        owner_email=owner_email,
        created_at=at,
        updated_at=at,
    )
    session.add(campaign)
    await session.flush()
    key = f"{events.DEAL_CREATED_KEY_PREFIX}{campaign.id}"
    session.add(
        DealStageHistory(
            tenant_id=tenant_id,
            campaign_id=campaign.id,
            from_stage=None,
            to_stage=stage.value,
            reason="created",
            changed_at=at,
            idempotency_key=key,
        )
    )
    await emit_event(
        session=session,
        tenant_id=tenant_id,
        type=events.DEAL_CREATED,
        entity_type="deal",
        entity_id=str(campaign.id),
        payload=events.deal_created_payload(
            name=name,
            stage=stage.value,
            value_usd=float(value_usd),
            advertiser_id=str(advertiser_id),
            show_id=str(show_id) if show_id else None,
            import_id=None,
        ),
        occurred_at=at,
        idempotency_key=key,
    )
    return campaign


async def get_deal(*, session: AsyncSession, campaign_id: uuid.UUID) -> DealRow | None:
    """Returns the deal with its advertiser and show names, or None (RLS hides other tenants)."""
    row = (
        await session.execute(
            select(Deal, Advertiser.name, Show.name)
            .join(Advertiser, Advertiser.id == Deal.advertiser_id)
            .outerjoin(Show, Show.id == Deal.show_id)
            .where(Deal.id == campaign_id)
        )
    ).first()
    if row is None:
        return None
    return DealRow(deal=row[0], advertiser_name=row[1], show_name=row[2])


def deal_seed(*, row: DealRow, stall_days: dict[str, int], moves_per_run: int) -> DealWorkflowInput:
    """Seeds a DealWorkflow from the deal's row (also for deals that only exist in Postgres)."""
    c = row.deal
    return DealWorkflowInput(
        tenant_id=str(c.tenant_id),
        campaign_id=str(c.id),
        name=c.name,
        advertiser_id=str(c.advertiser_id),
        advertiser_name=row.advertiser_name,
        show_id=str(c.show_id) if c.show_id else None,
        show_name=row.show_name,
        value_usd=float(c.value_usd),
        stage=Stage(c.stage),
        stage_entered_at=c.stage_changed_at,
        lost_reason=c.lost_reason,
        stall_days=stall_days,
        moves_per_run=moves_per_run,
    )


async def open_deals_page(
    *, session: AsyncSession, after: uuid.UUID, limit: int, import_id: uuid.UUID | None = None
) -> list[DealRow]:
    """The tenant's open deals (optionally only those an import wrote) after `after`, by id."""
    stmt = (
        select(Deal, Advertiser.name, Show.name)
        .join(Advertiser, Advertiser.id == Deal.advertiser_id)
        .outerjoin(Show, Show.id == Deal.show_id)
        .where(Deal.stage.in_([s.value for s in OPEN_STAGES]), Deal.id > after)
        .order_by(Deal.id)
        .limit(limit)
    )
    if import_id is not None:
        stmt = stmt.where(Deal.last_import_id == import_id)
    rows = (await session.execute(stmt)).all()
    return [DealRow(deal=c, advertiser_name=adv, show_name=show) for c, adv, show in rows]


@dataclass(frozen=True)
class HistoryRow:
    """One move of a deal's history, as stored."""

    from_stage: str | None
    to_stage: str
    reason: str | None
    changed_at: datetime


async def get_history(*, session: AsyncSession, campaign_id: uuid.UUID) -> list[HistoryRow]:
    """Returns a deal's stage history, oldest first (plain rows: this is on the PATCH hot path)."""
    result = await session.execute(
        select(
            DealStageHistory.from_stage,
            DealStageHistory.to_stage,
            DealStageHistory.reason,
            DealStageHistory.changed_at,
        )
        .where(DealStageHistory.campaign_id == campaign_id)
        .order_by(DealStageHistory.changed_at, DealStageHistory.id)
    )
    return [HistoryRow(*r) for r in result.all()]


def deals_query(
    *,
    stage: Stage | None = None,
    advertiser_id: uuid.UUID | None = None,
    show_id: uuid.UUID | None = None,
) -> Select[Any]:
    """Deals filtered by stage, advertiser and show (the caller orders and pages)."""
    stmt = select(Deal)
    if stage is not None:
        stmt = stmt.where(Deal.stage == stage.value)
    if advertiser_id is not None:
        stmt = stmt.where(Deal.advertiser_id == advertiser_id)
    if show_id is not None:
        stmt = stmt.where(Deal.show_id == show_id)
    return stmt


def align(*, row: DealRow, history: list[HistoryRow]) -> None:
    """Makes the (detached) row's stage agree with its history's last entry.

    Row and history are two statements under READ COMMITTED; a move committed between them
    shows in the history only. The history is then the later truth, and a move changes nothing
    of the row but its stage fields.
    """
    if not history:
        return
    last, c = history[-1], row.deal
    if (last.to_stage, last.changed_at) != (c.stage, c.stage_changed_at):
        c.stage, c.stage_changed_at = last.to_stage, last.changed_at
        c.probability = probability(Stage(last.to_stage))
        c.lost_reason = last.reason if last.to_stage == Stage.LOST.value else None


async def get_deal_with_history(
    *, session: AsyncSession, campaign_id: uuid.UUID
) -> tuple[DealRow | None, list[HistoryRow]]:
    """The deal and its history as one snapshot (the row aligned to the history), or (None, []).

    The row is detached from the session first: aligning it (and the API's answer building on
    it) must never be flushed back as a write.
    """
    row = await get_deal(session=session, campaign_id=campaign_id)
    if row is None:
        return None, []
    history = await get_history(session=session, campaign_id=campaign_id)
    session.expunge(row.deal)
    align(row=row, history=history)
    return row, history


async def deal_with_idempotency_key(*, session: AsyncSession, key: str) -> uuid.UUID | None:
    """The deal a POST with this Idempotency-Key created, if any."""
    found: uuid.UUID | None = await session.scalar(select(Deal.id).where(Deal.idempotency_key == key))
    return found


async def missing_party(
    *, session: AsyncSession, advertiser_id: uuid.UUID, show_id: uuid.UUID | None
) -> str | None:
    """The field (`advertiser_id` or `show_id`) naming a party not in this tenant, or None."""
    if await session.get(Advertiser, advertiser_id) is None:
        return "advertiser_id"
    if show_id is not None and await session.get(Show, show_id) is None:
        return "show_id"
    return None
