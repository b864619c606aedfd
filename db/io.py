"""IO bookings in SQL: slot locks and counts, promo codes, vanity paths, and the IO read model."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AdUnit, Advertiser, Campaign, IoBooking, PromoCode, Show
from domain.io import UnitStatus, slot_capacity

SlotKey = tuple[uuid.UUID, date, str]


async def _advisory_lock(session: AsyncSession, key: str) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})


async def lock_slots(
    session: AsyncSession, tenant_id: uuid.UUID | str, days: Iterable[tuple[uuid.UUID, date]]
) -> None:
    """Serialises bookings of the same show episodes until this transaction ends.

    Counting then inserting is only safe when nobody else counts the same episode meanwhile;
    locks are taken in one global order so two bookings never wait on each other.
    """
    for show_id, day in sorted(set(days)):
        await _advisory_lock(session, f"slot/{tenant_id}/{show_id}/{day.isoformat()}")


async def lock_vanity_domain(session: AsyncSession, tenant_id: uuid.UUID | str, domain: str) -> None:
    """Serialises vanity path choices on one advertiser domain until this transaction ends."""
    await _advisory_lock(session, f"vanity/{tenant_id}/{domain.lower()}")


async def slot_usage(session: AsyncSession, keys: Iterable[SlotKey]) -> dict[SlotKey, int]:
    """Returns how many live (not cancelled) units occupy each (show, air date, placement)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await session.execute(
        select(AdUnit.show_id, AdUnit.air_date, AdUnit.placement, func.count())
        .where(
            tuple_(AdUnit.show_id, AdUnit.air_date, AdUnit.placement).in_(wanted),
            AdUnit.status != UnitStatus.CANCELLED.value,
        )
        .group_by(AdUnit.show_id, AdUnit.air_date, AdUnit.placement)
    )
    return {(r[0], r[1], r[2]): int(r[3]) for r in rows}


async def next_free_day(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | str,
    show: Show,
    placement: str,
    after: date,
    horizon_days: int,
) -> date | None:
    """Returns (and locks) the show's first day after `after` with a free `placement` slot."""
    capacity = slot_capacity(show.slots, placement)
    if capacity <= 0:
        return None
    last = after + timedelta(days=horizon_days)
    rows = await session.execute(
        select(AdUnit.air_date, func.count())
        .where(
            AdUnit.show_id == show.id,
            AdUnit.placement == placement,
            AdUnit.air_date > after,
            AdUnit.air_date <= last,
            AdUnit.status != UnitStatus.CANCELLED.value,
        )
        .group_by(AdUnit.air_date)
    )
    used = {r[0]: int(r[1]) for r in rows}
    day = after + timedelta(days=1)
    while day <= last:
        if used.get(day, 0) < capacity:
            await lock_slots(session, tenant_id, [(show.id, day)])
            # Re-count under the lock: a booking may have taken it since the read above.
            now_used = (await slot_usage(session, [(show.id, day, placement)])).get(
                (show.id, day, placement), 0
            )
            if now_used < capacity:
                return day
        day += timedelta(days=1)
    return None


async def booked_per_day(
    session: AsyncSession, *, show_id: uuid.UUID, placement: str, first: date, last: date
) -> dict[date, int]:
    """Live (not cancelled) units of one show and placement per air date in [first, last]."""
    rows = await session.execute(
        select(AdUnit.air_date, func.count())
        .where(
            AdUnit.show_id == show_id,
            AdUnit.placement == placement,
            AdUnit.air_date >= first,
            AdUnit.air_date <= last,
            AdUnit.status != UnitStatus.CANCELLED.value,
        )
        .group_by(AdUnit.air_date)
    )
    return {r[0]: int(r[1]) for r in rows}


async def claim_promo_code(
    session: AsyncSession, *, tenant_id: uuid.UUID | str, code: str, io_id: uuid.UUID
) -> bool:
    """Reserves `code` for the IO; False when the tenant already has it in any case."""
    stmt = (
        insert(PromoCode)
        .values(tenant_id=uuid.UUID(str(tenant_id)), code=code, io_id=io_id)
        .on_conflict_do_nothing()
        .returning(PromoCode.id)
    )
    return (await session.execute(stmt)).scalar() is not None


async def taken_vanity_paths(session: AsyncSession, *, domain: str, prefix: str) -> set[str]:
    """Returns the lower-cased paths already used on `domain` that start with `prefix`."""
    rows = await session.execute(
        select(func.lower(IoBooking.vanity_path)).where(
            func.lower(IoBooking.vanity_domain) == domain.lower(),
            func.lower(IoBooking.vanity_path).startswith(prefix.lower(), autoescape=True),
        )
    )
    return {r[0] for r in rows}


@dataclass
class IoRecord:
    """An IO with everything its readers show: deal, advertiser, units and their shows."""

    io: IoBooking
    campaign: Campaign
    advertiser: Advertiser
    units: list[tuple[AdUnit, str]]
    promo_status: str | None


async def load_io(session: AsyncSession, io_id: uuid.UUID) -> IoRecord | None:
    """Reads one IO of the session's tenant (RLS), or None."""
    row = (
        await session.execute(
            select(IoBooking, Campaign, Advertiser)
            .join(Campaign, Campaign.id == IoBooking.campaign_id)
            .join(Advertiser, Advertiser.id == Campaign.advertiser_id)
            .where(IoBooking.id == io_id)
        )
    ).first()
    if row is None:
        return None
    units = (
        await session.execute(
            select(AdUnit, Show.name)
            .join(Show, Show.id == AdUnit.show_id)
            .where(AdUnit.io_id == io_id)
            .order_by(AdUnit.air_date, AdUnit.created_at, AdUnit.id)
        )
    ).all()
    promo_status = await session.scalar(select(PromoCode.status).where(PromoCode.io_id == io_id))
    return IoRecord(
        io=row[0],
        campaign=row[1],
        advertiser=row[2],
        units=[(u, name) for u, name in units],
        promo_status=promo_status,
    )
