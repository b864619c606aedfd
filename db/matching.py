"""Matchmaking in SQL: the features a recalculation scores, the ranking swap, the ranked reads."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import raw_connection
from db.models import Advertiser, Match, Show, Tenant
from domain.io import slot_capacity
from domain.scoring import DEFAULT_WEIGHTS, HORIZON_DAYS, SIGNALS, AdvertiserFeatures, ShowFeatures

# Downloads are compared over two 28-day periods: recent against the one before.
TREND_DAYS = 28
DEFAULT_FLIGHT_DAYS = 30


@dataclass
class Features:
    """Everything one tenant's recalculation scores."""

    shows: list[ShowFeatures]
    advertisers: list[AdvertiserFeatures]
    # (show id, advertiser id) -> delivered share of goal on past IOs.
    past_delivery: dict[tuple[str, str], float]
    weights: dict[str, float]


def weights_of(settings: dict[str, Any] | None) -> dict[str, float]:
    """The tenant's match weights: its own where set, the documented defaults elsewhere."""
    own = (settings or {}).get("match_weights") or {}
    return {s: float(own.get(s, DEFAULT_WEIGHTS[s])) for s in SIGNALS}


async def load_features(session: AsyncSession, tenant_id: uuid.UUID, today: date) -> Features:
    """Reads the tenant's shows, advertisers, downloads trend, inventory and past delivery."""
    settings = await session.scalar(select(Tenant.settings).where(Tenant.id == tenant_id))
    trend = {
        r[0]: r[1:]
        for r in await session.execute(
            text(
                """
                SELECT show_id,
                  sum(downloads) FILTER (WHERE date > :cut AND country = ''),
                  sum(downloads) FILTER (WHERE date <= :cut AND country = ''),
                  sum(downloads) FILTER (WHERE date > :cut AND country <> ''),
                  sum(downloads) FILTER (WHERE date <= :cut AND country <> '')
                FROM show_downloads WHERE date > :start AND date <= :today
                GROUP BY show_id
                """
            ),
            {
                "cut": today - timedelta(days=TREND_DAYS),
                "start": today - timedelta(days=2 * TREND_DAYS),
                "today": today,
            },
        )
    }
    booked: dict[uuid.UUID, dict[int, int]] = {}
    for show_id, day, n in await session.execute(
        text(
            """
            SELECT show_id, air_date - CAST(:today AS date), count(*) FROM ad_units
            WHERE placement = 'mid_roll' AND status <> 'cancelled'
              AND air_date >= :today AND air_date < :end
            GROUP BY 1, 2
            """
        ),
        {"today": today, "end": today + timedelta(days=HORIZON_DAYS)},
    ):
        booked.setdefault(show_id, {})[int(day)] = int(n)
    past = {
        (str(r[0]), str(r[1])): float(r[2])
        for r in await session.execute(
            text(
                """
                SELECT u.show_id, c.advertiser_id,
                  sum(least(u.delivered_impressions, u.impressions_goal))::float8 / sum(u.impressions_goal)
                FROM ad_units u
                JOIN io_bookings i ON i.id = u.io_id
                JOIN campaigns c ON c.id = i.campaign_id
                WHERE u.pricing_model = 'cpm' AND u.makegood_of IS NULL AND u.impressions_goal > 0
                  AND u.status IN ('aired', 'delivered', 'made_good')
                GROUP BY 1, 2
                """
            )
        )
    }
    shows = []
    for s in (await session.scalars(select(Show).order_by(Show.id))).all():
        cap = slot_capacity(s.slots, "mid_roll")
        free = [cap] * HORIZON_DAYS
        for day, n in booked.get(s.id, {}).items():
            free[day] = max(0, cap - n)
        recent, prior = _trend(trend.get(s.id))
        shows.append(
            ShowFeatures(
                id=str(s.id),
                name=s.name,
                geo=dict(s.geo),
                age=dict(s.age),
                female_share=float(s.female_share) if s.female_share is not None else None,
                categories=tuple(s.categories),
                brand_safety=dict(s.brand_safety),
                cpm_usd=float(s.cpm_usd) if s.cpm_usd is not None else None,
                avg_downloads=s.avg_downloads,
                recent_downloads=recent,
                prior_downloads=prior,
                free_mid_slots=tuple(free),
            )
        )
    advertisers = [
        _advertiser(a, today)
        for a in (await session.scalars(select(Advertiser).order_by(Advertiser.id))).all()
    ]
    return Features(shows=shows, advertisers=advertisers, past_delivery=past, weights=weights_of(settings))


def _trend(row: Any) -> tuple[float | None, float | None]:
    if row is None:
        return None, None
    recent_all, prior_all, recent_c, prior_c = row
    # Rows without a country are the show's totals; per-country rows are summed only when no
    # totals were imported, so a file carrying both is not counted twice.
    if recent_all is not None or prior_all is not None:
        return _f(recent_all), _f(prior_all)
    return _f(recent_c), _f(prior_c)


def _f(v: Any) -> float | None:
    return float(v) if v is not None else None


def _advertiser(a: Advertiser, today: date) -> AdvertiserFeatures:
    start = max(0, (a.flight_start - today).days) if a.flight_start else 0
    if a.flight_end is not None:
        end = (a.flight_end - today).days + 1
        end_date: date | None = a.flight_end
    else:
        end = start + DEFAULT_FLIGHT_DAYS
        end_date = today + timedelta(days=end)
    return AdvertiserFeatures(
        id=str(a.id),
        name=a.name,
        target_geo=tuple(a.target_geo),
        target_age=tuple(a.target_age),
        target_categories=tuple(a.target_categories),
        target_gender=a.target_gender,
        tolerance=a.brand_safety_tolerance,
        budget_usd=float(a.budget_usd) if a.budget_usd is not None else None,
        flight_start_day=min(start, HORIZON_DAYS),
        flight_end_day=max(0, min(end, HORIZON_DAYS)),
        flight_end_date=end_date,
    )


@dataclass(frozen=True)
class MatchRow:
    """One ranked pair to write."""

    advertiser_id: str
    show_id: str
    score: float
    signals: dict[str, float]
    rationale: str


class GenerationStage:
    """A new ranking generation being written inside one transaction (see open_generation)."""

    def __init__(self, session: AsyncSession, tenant_id: uuid.UUID, raw: Any) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._raw = raw

    async def copy(self, rows: list[MatchRow]) -> None:
        """Adds rows to the stage (COPY: the fast path for hundreds of thousands of rows)."""
        await self._raw.copy_records_to_table(
            "sf_match_stage",
            records=[
                (
                    uuid.UUID(r.advertiser_id),
                    uuid.UUID(r.show_id),
                    round(r.score, 2),
                    json.dumps(r.signals),
                    r.rationale,
                )
                for r in rows
            ],
            columns=["advertiser_id", "show_id", "score", "signals", "rationale"],
        )

    async def swap(self) -> int:
        """Makes the staged rows the next generation and drops all but the previous one.

        Readers see the old ranking until the transaction commits, then the new one, never a
        mix. The previous generation stays so a reader paging with a cursor can finish.
        """
        current = await self._session.scalar(select(func.max(Match.generation)))
        generation = int(current or 0) + 1
        await self._session.execute(
            text(
                """
                INSERT INTO matches (tenant_id, generation, advertiser_id, show_id, score, signals, rationale)
                SELECT :tenant, :generation, advertiser_id, show_id, score, signals, rationale
                FROM sf_match_stage
                """
            ),
            {"tenant": self._tenant_id, "generation": generation},
        )
        await self._session.execute(
            text("DELETE FROM matches WHERE generation < :keep"), {"keep": generation - 1}
        )
        return generation


async def open_generation(session: AsyncSession, tenant_id: uuid.UUID) -> GenerationStage:
    """Starts writing a new ranking in the session's transaction, one writer per tenant at a time."""
    # A scheduled and an on-demand run never interleave their writes.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"match/{tenant_id}"}
    )
    raw = await raw_connection(session)
    # COPY cannot target a table under row-level security; it fills a private stage instead.
    await raw.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sf_match_stage "
        "(advertiser_id uuid, show_id uuid, score numeric(6,2), signals jsonb, rationale text) "
        "ON COMMIT DELETE ROWS"
    )
    return GenerationStage(session, tenant_id, raw)
