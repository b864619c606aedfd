"""IO bookings in SQL: slot locks and counts, promo codes, vanity paths, and the IO read model."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AdUnit, Advertiser, Deal, IoBooking, PromoCode, Show, Tenant, WriteRequest
from domain.io import (
    PROMO_CODE_TRIES,
    BookIoInput,
    IoStatus,
    UnitStatus,
    check_booking,
    generate_promo_code,
    next_vanity_path,
    no_free_slot,
    promo_exhausted,
    promo_taken,
    slot_capacity,
    slot_conflicts,
    slugify,
    vanity_taken,
)

SlotKey = tuple[uuid.UUID, date, str]


async def _advisory_lock(session: AsyncSession, key: str) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})


async def lock_slots(
    *, session: AsyncSession, tenant_id: uuid.UUID | str, days: Iterable[tuple[uuid.UUID, date]]
) -> None:
    """Serialises bookings of the same show episodes until this transaction ends.

    Counting then inserting is only safe when nobody else counts the same episode meanwhile;
    locks are taken in one global order so two bookings never wait on each other.
    """
    for show_id, day in sorted(set(days)):
        await _advisory_lock(session, f"slot/{tenant_id}/{show_id}/{day.isoformat()}")


async def lock_vanity_domain(*, session: AsyncSession, tenant_id: uuid.UUID | str, domain: str) -> None:
    """Serialises vanity path choices on one advertiser domain until this transaction ends."""
    await _advisory_lock(session, f"vanity/{tenant_id}/{domain.lower()}")


async def slot_usage(*, session: AsyncSession, keys: Iterable[SlotKey]) -> dict[SlotKey, int]:
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
    *,
    session: AsyncSession,
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
            await lock_slots(session=session, tenant_id=tenant_id, days=[(show.id, day)])
            # Re-count under the lock: a booking may have taken it since the read above.
            now_used = (await slot_usage(session=session, keys=[(show.id, day, placement)])).get(
                (show.id, day, placement), 0
            )
            if now_used < capacity:
                return day
        day += timedelta(days=1)
    return None


async def booked_per_day(
    *, session: AsyncSession, show_id: uuid.UUID, placement: str, first: date, last: date
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
    *, session: AsyncSession, tenant_id: uuid.UUID | str, code: str, io_id: uuid.UUID
) -> bool:
    """Reserves `code` for the IO; False when the tenant already has it in any case."""
    stmt = (
        insert(PromoCode)
        .values(tenant_id=uuid.UUID(str(tenant_id)), code=code, io_id=io_id)
        .on_conflict_do_nothing()
        .returning(PromoCode.id)
    )
    return (await session.execute(stmt)).scalar() is not None


async def taken_vanity_paths(*, session: AsyncSession, domain: str, prefix: str) -> set[str]:
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
    deal: Deal
    advertiser: Advertiser
    units: list[tuple[AdUnit, str]]
    promo_status: str | None


async def load_io(*, session: AsyncSession, io_id: uuid.UUID) -> IoRecord | None:
    """Reads one IO of the session's tenant (RLS), or None."""
    row = (
        await session.execute(
            select(IoBooking, Deal, Advertiser)
            .join(Deal, Deal.id == IoBooking.campaign_id)
            .join(Advertiser, Advertiser.id == Deal.advertiser_id)
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
        deal=row[1],
        advertiser=row[2],
        units=[(u, name) for u, name in units],
        promo_status=promo_status,
    )


@dataclass
class BookingFacts:
    """What a booking is checked against: its deal, the deal's advertiser and the units' shows."""

    deal: Deal | None
    advertiser: Advertiser | None
    shows: dict[str, Show]

    def check(self, booking: BookIoInput) -> None:
        """Raises BookingRefused: a missing or unwon deal, an unknown show, a vanity path without domain."""
        check_booking(
            booking,
            deal_stage=self.deal.stage if self.deal is not None else None,
            advertiser_name=self.advertiser.name if self.advertiser is not None else "",
            advertiser_domain=self.advertiser.domain if self.advertiser is not None else None,
            known_show_ids=set(self.shows),
        )


async def booking_facts(*, session: AsyncSession, booking: BookIoInput) -> BookingFacts:
    """Reads the deal, advertiser and shows of a booking (the session's tenant, RLS)."""
    campaign = await session.get(Deal, uuid.UUID(booking.campaign_id))
    advertiser = await session.get(Advertiser, campaign.advertiser_id) if campaign is not None else None
    ids = {uuid.UUID(u.show_id) for u in booking.ad_units}
    shows = {str(s.id): s for s in await session.scalars(select(Show).where(Show.id.in_(ids)))}
    return BookingFacts(deal=campaign, advertiser=advertiser, shows=shows)


async def reserve_booking(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID | str,
    io_id: uuid.UUID,
    booking: BookIoInput,
    choice: Callable[[str], str],
) -> None:
    """Writes a booking's rows, or raises BookingRefused with nothing written (the caller rolls back).

    Slots are counted under their locks (held until the caller's transaction ends), then the IO,
    its promo code (given, or generated with `choice`) and vanity path, then its units.
    """
    tid = uuid.UUID(str(tenant_id))
    facts = await booking_facts(session=session, booking=booking)
    facts.check(booking)
    assert facts.deal is not None and facts.advertiser is not None
    advertiser = facts.advertiser
    units = booking.ad_units

    await lock_slots(session=session, tenant_id=tid, days=[(uuid.UUID(u.show_id), u.air_date) for u in units])
    usage = await slot_usage(
        session=session, keys=[(uuid.UUID(u.show_id), u.air_date, u.placement.value) for u in units]
    )
    conflicts = slot_conflicts(
        units,
        shows={sid: (s.name, s.slots) for sid, s in facts.shows.items()},
        usage={(str(k[0]), k[1], k[2]): n for k, n in usage.items()},
    )
    if conflicts:
        raise no_free_slot(conflicts)

    domain = advertiser.domain
    vanity_path: str | None = None
    if domain:
        await lock_vanity_domain(session=session, tenant_id=tid, domain=domain)
        if booking.vanity_path:
            if booking.vanity_path.lower() in await taken_vanity_paths(
                session=session, domain=domain, prefix=booking.vanity_path
            ):
                raise vanity_taken(domain, booking.vanity_path)
            vanity_path = booking.vanity_path
        else:
            base = slugify(facts.shows[units[0].show_id].name)
            vanity_path = next_vanity_path(
                base, await taken_vanity_paths(session=session, domain=domain, prefix=base)
            )

    prices = [u.price for u in units]
    io = IoBooking(
        id=io_id,
        tenant_id=tid,
        campaign_id=facts.deal.id,
        status=IoStatus.SCHEDULED.value,
        payment_terms_days=booking.payment_terms_days,
        underdelivery_policy=booking.underdelivery_policy.value,
        measurement_window_days=booking.measurement_window_days,
        total_usd=sum(prices, Decimal("0")),
        idempotency_key=booking.idempotency_key,
        vanity_domain=domain if vanity_path else None,
        vanity_path=vanity_path,
        vanity_url=f"https://{domain}/{vanity_path}" if vanity_path else None,
    )
    session.add(io)
    await session.flush()

    if booking.promo_code:
        if not await claim_promo_code(session=session, tenant_id=tid, code=booking.promo_code, io_id=io_id):
            raise promo_taken(booking.promo_code)
        io.promo_code = booking.promo_code
    else:
        for _ in range(PROMO_CODE_TRIES):
            code = generate_promo_code(advertiser.name, choice)
            if await claim_promo_code(session=session, tenant_id=tid, code=code, io_id=io_id):
                io.promo_code = code
                break
        else:
            raise promo_exhausted()

    for u, price in zip(units, prices, strict=True):
        session.add(
            AdUnit(
                tenant_id=tid,
                io_id=io_id,
                show_id=uuid.UUID(u.show_id),
                placement=u.placement.value,
                format=u.format.value,
                insertion=u.insertion.value,
                air_date=u.air_date,
                duration_s=u.duration_s,
                pricing_model=u.pricing_model.value,
                cpm_usd=u.cpm_usd,
                impressions_goal=u.impressions_goal,
                flat_usd=u.flat_usd,
                price_usd=price,
                status=UnitStatus.SCHEDULED.value,
            )
        )
    await session.flush()


async def io_of_request(*, session: AsyncSession, request_id: str) -> uuid.UUID | None:
    """The IO a fenced request was about (the write fence's entity), or None."""
    entity = await session.scalar(
        select(WriteRequest.entity_id).where(
            WriteRequest.request_id == request_id, WriteRequest.entity_type == "io"
        )
    )
    return uuid.UUID(entity) if entity else None


async def io_with_idempotency_key(*, session: AsyncSession, key: str) -> uuid.UUID | None:
    """The IO booked with this Idempotency-Key (kept on the row; older bookings have only this)."""
    found: uuid.UUID | None = await session.scalar(
        select(IoBooking.id).where(IoBooking.idempotency_key == key)
    )
    return found


async def io_statuses(*, session: AsyncSession) -> dict[uuid.UUID, str]:
    """Every IO of the session's tenant with its status."""
    rows = await session.execute(select(IoBooking.id, IoBooking.status))
    return {r[0]: r[1] for r in rows}


def ios_query(*, campaign_id: uuid.UUID | None = None, status: IoStatus | None = None) -> Select[Any]:
    """IOs with their advertiser's name, unit count and next air date (the caller orders and pages)."""
    units = (
        select(
            AdUnit.io_id,
            func.count().label("n"),
            func.min(AdUnit.air_date).filter(AdUnit.status == UnitStatus.SCHEDULED.value).label("next_air"),
        )
        .group_by(AdUnit.io_id)
        .subquery()
    )
    stmt = (
        select(IoBooking, Advertiser.name, units.c.n, units.c.next_air)
        .join(Deal, Deal.id == IoBooking.campaign_id)
        .join(Advertiser, Advertiser.id == Deal.advertiser_id)
        .outerjoin(units, units.c.io_id == IoBooking.id)
    )
    if campaign_id is not None:
        stmt = stmt.where(IoBooking.campaign_id == campaign_id)
    if status is not None:
        stmt = stmt.where(IoBooking.status == status.value)
    return stmt


async def io_status(*, session: AsyncSession, io_id: uuid.UUID) -> str | None:
    """The IO's status, or None when this tenant has no such IO."""
    found: str | None = await session.scalar(select(IoBooking.status).where(IoBooking.id == io_id))
    return found


async def get_show(*, session: AsyncSession, show_id: uuid.UUID) -> Show | None:
    """The show of this tenant (RLS), or None."""
    return await session.get(Show, show_id)


async def publisher_name(*, session: AsyncSession, tenant_id: uuid.UUID) -> str:
    """The tenant's name, as its IO documents name the publisher ("" when unnamed)."""
    name: str | None = await session.scalar(select(Tenant.name).where(Tenant.id == tenant_id))
    return name or ""
