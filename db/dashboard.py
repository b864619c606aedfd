"""The dashboard's queries: a handful of index-backed aggregates in two concurrent read transactions.

Each query is bounded by an index of migration 0006 (or an existing one) so the whole card set stays
well under 100 ms on a tenant with 100,000 deals (bench/dashboard.py measures it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from db.matching import read_current_ranking
from domain.stages import OPEN_STAGES, STAGE_NAMES, stall_limit

# An IO is flagged when what its aired units delivered is below this share of what they should
# have delivered by now (goal x days since air / measurement window, capped at the goal).
UNDERDELIVERY_PACE = 0.9
MOVEMENT_WEEKS = 12
AIR_DATE_DAYS = 14


@dataclass(frozen=True)
class DashboardQuery:
    """What the dashboard reads: the window, the stall limits and the list sizes."""

    tenant_id: uuid.UUID
    now: datetime
    window_days: int = 90
    stall_days: dict[str, int] | None = None
    list_limit: int = 10


async def _rows(session: AsyncSession, sql: str, params: dict[str, Any]) -> list[Any]:
    return list((await session.execute(text(sql), params)).all())


async def pipeline(*, session: AsyncSession, q: DashboardQuery) -> list[dict[str, Any]]:
    """Count, value and weighted value per stage (every stage, zeros included)."""
    rows = await _rows(
        session,
        """
        SELECT stage, count(*) AS n, coalesce(sum(value_usd::float8), 0) AS value,
               coalesce(sum(value_usd::float8 * probability), 0) / 100 AS weighted
        FROM campaigns WHERE tenant_id = :t GROUP BY stage
        """,
        {"t": q.tenant_id},
    )
    found = {r.stage: r for r in rows}
    out = []
    for stage in STAGE_NAMES:
        r = found.get(stage)
        out.append(
            {
                "stage": stage,
                "count": int(r.n) if r else 0,
                "value_usd": round(float(r.value), 2) if r else 0.0,
                "weighted_value_usd": round(float(r.weighted), 2) if r else 0.0,
            }
        )
    return out


async def win_rate(*, session: AsyncSession, q: DashboardQuery) -> dict[str, Any]:
    """Won and lost deals closed inside the window, the win rate, and average days to close a win."""
    (row,) = await _rows(
        session,
        """
        SELECT count(*) FILTER (WHERE stage = 'won') AS won,
               count(*) FILTER (WHERE stage = 'lost') AS lost,
               avg(extract(epoch FROM stage_changed_at - created_at) / 86400.0)
                 FILTER (WHERE stage = 'won') AS days
        FROM campaigns
        WHERE tenant_id = :t AND stage IN ('won', 'lost') AND stage_changed_at >= :since
        """,
        {"t": q.tenant_id, "since": q.now - timedelta(days=q.window_days)},
    )
    won, lost = int(row.won), int(row.lost)
    return {
        "won": won,
        "lost": lost,
        "rate": round(won / (won + lost), 4) if won + lost else None,
        "avg_days_to_close": round(max(float(row.days), 0.0), 1) if row.days is not None else None,
    }


async def stalled(*, session: AsyncSession, q: DashboardQuery) -> dict[str, Any]:
    """Open deals past their stage's stall limit, longest-waiting first.

    One index range per stage (tenant, stage, stage_changed_at): counted index-only, and the oldest
    few of each range merged, so the cost does not grow with the number of stalled deals.
    """
    params: dict[str, Any] = {"t": q.tenant_id, "lim": q.list_limit}
    limits: dict[str, int] = {}
    counts, firsts = [], []
    for stage in OPEN_STAGES:
        limit = stall_limit(stage, q.stall_days)
        if limit is None:
            continue
        s = stage.value
        limits[s] = limit.days
        params[f"s_{s}"], params[f"cut_{s}"] = s, q.now - limit
        where = f"tenant_id = :t AND stage = :s_{s} AND stage_changed_at < :cut_{s}"
        counts.append(f"(SELECT count(*) FROM campaigns WHERE {where})")
        firsts.append(
            f"(SELECT id, name, stage, stage_changed_at, value_usd, advertiser_id FROM campaigns "
            f"WHERE {where} ORDER BY stage_changed_at LIMIT :lim)"
        )
    if not counts:
        return {"count": 0, "items": []}
    (total,) = await _rows(session, f"SELECT {' + '.join(counts)} AS n", params)
    rows = await _rows(
        session,
        f"""
        SELECT c.id, c.name, c.stage, c.stage_changed_at, c.value_usd, a.name AS advertiser
        FROM ({" UNION ALL ".join(firsts)}) c JOIN advertisers a ON a.id = c.advertiser_id
        ORDER BY c.stage_changed_at, c.id LIMIT :lim
        """,
        params,
    )
    return {
        "count": int(total.n),
        "items": [
            {
                "id": str(r.id),
                "name": r.name,
                "stage": r.stage,
                "days_in_stage": (q.now - r.stage_changed_at).days,
                "stall_limit_days": limits[r.stage],
                "advertiser_name": r.advertiser,
                "value_usd": float(r.value_usd),
            }
            for r in rows
        ],
    }


async def upcoming_air_dates(*, session: AsyncSession, q: DashboardQuery) -> dict[str, Any]:
    """Booked units airing from today through the next 14 days (partial index on scheduled units)."""
    today = q.now.date()
    params = {
        "t": q.tenant_id,
        "today": today,
        "until": today + timedelta(days=AIR_DATE_DAYS),
        "lim": q.list_limit,
    }
    where = "tenant_id = :t AND status = 'scheduled' AND air_date BETWEEN :today AND :until"
    (total,) = await _rows(session, f"SELECT count(*) AS n FROM ad_units WHERE {where}", params)
    rows = await _rows(
        session,
        f"""
        SELECT u.io_id, u.id, u.air_date, u.placement, u.status, s.name AS show, a.name AS advertiser
        FROM (SELECT * FROM ad_units WHERE {where} ORDER BY air_date, id LIMIT :lim) u
        JOIN io_bookings i ON i.id = u.io_id
        JOIN campaigns c ON c.id = i.campaign_id
        JOIN advertisers a ON a.id = c.advertiser_id
        JOIN shows s ON s.id = u.show_id
        ORDER BY u.air_date, u.id
        """,
        params,
    )
    return {
        "count": int(total.n),
        "items": [
            {
                "io_id": str(r.io_id),
                "ad_unit_id": str(r.id),
                "air_date": r.air_date.isoformat(),
                "show_name": r.show,
                "advertiser_name": r.advertiser,
                "placement": r.placement,
                "status": r.status,
            }
            for r in rows
        ],
    }


async def underdelivering(*, session: AsyncSession, q: DashboardQuery) -> dict[str, Any]:
    """Live or measuring IOs whose aired impression goals are behind pace, worst first."""
    rows = await _rows(
        session,
        """
        WITH per_io AS (
          SELECT i.id, i.status, i.campaign_id,
                 sum(u.impressions_goal) AS goal,
                 sum(u.delivered_impressions) AS delivered,
                 sum(u.impressions_goal * least(1.0,
                     greatest(:today - u.air_date + 1, 1)::numeric / greatest(i.measurement_window_days, 1)))
                   AS expected
          FROM io_bookings i
          JOIN ad_units u ON u.io_id = i.id
          WHERE i.tenant_id = :t AND i.status IN ('live', 'measuring', 'awaiting_delivery')
            AND u.status = 'aired' AND u.impressions_goal IS NOT NULL
          GROUP BY i.id, i.status, i.campaign_id
        ), behind AS (
          SELECT p.*, p.delivered / nullif(p.expected, 0) AS pace, count(*) OVER () AS total
          FROM per_io p WHERE p.delivered < :pace * p.expected
          ORDER BY pace, p.id LIMIT :lim
        )
        SELECT b.*, a.name AS advertiser
        FROM behind b JOIN campaigns c ON c.id = b.campaign_id JOIN advertisers a ON a.id = c.advertiser_id
        ORDER BY b.pace, b.id
        """,
        {"t": q.tenant_id, "today": q.now.date(), "pace": UNDERDELIVERY_PACE, "lim": q.list_limit},
    )
    return {
        "count": int(rows[0].total) if rows else 0,
        "items": [
            {
                "io_id": str(r.id),
                "advertiser_name": r.advertiser,
                "status": r.status,
                "impressions_goal": int(r.goal),
                "delivered_impressions": int(r.delivered),
                "expected_to_date": int(r.expected),
                "delivery_pct": round(float(r.delivered) / float(r.goal), 4) if r.goal else 0.0,
                "pace_pct": round(float(r.delivered) / float(r.expected), 4) if r.expected else 0.0,
            }
            for r in rows
        ],
    }


async def top_matches(*, session: AsyncSession, q: DashboardQuery) -> list[dict[str, Any]]:
    """The best-scoring pairs of the current ranking."""

    async def read(generation: int) -> list[Any]:
        return await _rows(
            session,
            """
            SELECT m.advertiser_id, a.name AS advertiser, m.show_id, s.name AS show, m.score
            FROM (
              -- The best rows from the ranking's own index first, then their names.
              SELECT advertiser_id, show_id, score, id FROM matches
              WHERE tenant_id = :t AND generation = :g
              ORDER BY score DESC, id LIMIT :lim
            ) m
            JOIN advertisers a ON a.id = m.advertiser_id
            JOIN shows s ON s.id = m.show_id
            ORDER BY m.score DESC, m.id
            """,
            {"t": q.tenant_id, "g": generation, "lim": min(q.list_limit, 5)},
        )

    # The generation in a statement of its own (see read_current_ranking).
    rows = await read_current_ranking(session=session, tenant_id=q.tenant_id, read=read)
    return [
        {
            "advertiser_id": str(r.advertiser_id),
            "advertiser_name": r.advertiser,
            "show_id": str(r.show_id),
            "show_name": r.show,
            "score": float(r.score),
        }
        for r in rows
    ]


async def latest_imports(*, session: AsyncSession, q: DashboardQuery) -> list[dict[str, Any]]:
    """The newest imports with their status."""
    rows = await _rows(
        session,
        """
        SELECT id, kind, filename, status, rows_processed, rows_failed, error, created_at, finished_at
        FROM etl_imports WHERE tenant_id = :t ORDER BY created_at DESC, id LIMIT 5
        """,
        {"t": q.tenant_id},
    )
    return [
        {
            "import_id": str(r.id),
            "kind": r.kind,
            "filename": r.filename,
            "status": r.status,
            "rows_processed": int(r.rows_processed),
            "rows_failed": int(r.rows_failed),
            "error": r.error,
            "created_at": r.created_at,
            "finished_at": r.finished_at,
        }
        for r in rows
    ]


async def latest_events(*, session: AsyncSession, q: DashboardQuery) -> list[dict[str, Any]]:
    """The newest events, newest first."""
    rows = await _rows(
        session,
        """
        SELECT id, type, entity_type, entity_id, payload, occurred_at
        FROM events WHERE tenant_id = :t ORDER BY id DESC LIMIT :lim
        """,
        {"t": q.tenant_id, "lim": q.list_limit},
    )
    return [
        {
            "id": str(r.id),
            "type": r.type,
            "entity_type": r.entity_type,
            "entity_id": r.entity_id,
            "payload": r.payload,
            "occurred_at": r.occurred_at,
        }
        for r in rows
    ]


def week_start(*, day: date) -> date:
    """The Monday of a day's ISO week."""
    return day - timedelta(days=day.weekday())


async def stage_movement(*, session: AsyncSession, q: DashboardQuery) -> dict[str, Any]:
    """Moves into each stage per ISO week (UTC), the last 12 weeks including this one."""
    first = week_start(day=q.now.date()) - timedelta(weeks=MOVEMENT_WEEKS - 1)
    rows = await _rows(
        session,
        """
        SELECT date_trunc('week', changed_at AT TIME ZONE 'UTC')::date AS week, to_stage, count(*) AS n
        FROM deal_stage_history
        WHERE tenant_id = :t AND changed_at >= :since AND from_stage IS NOT NULL
        GROUP BY 1, 2
        """,
        {"t": q.tenant_id, "since": datetime.combine(first, datetime.min.time(), tzinfo=q.now.tzinfo)},
    )
    weeks = [first + timedelta(weeks=i) for i in range(MOVEMENT_WEEKS)]
    index = {w: i for i, w in enumerate(weeks)}
    series = {stage: [0] * MOVEMENT_WEEKS for stage in STAGE_NAMES}
    for r in rows:
        if r.week in index and r.to_stage in series:
            series[r.to_stage][index[r.week]] = int(r.n)
    return {"weeks": [w.isoformat() for w in weeks], "series": series}


async def dashboard(
    *, tx: Callable[[], AbstractAsyncContextManager[AsyncSession]], q: DashboardQuery
) -> dict[str, Any]:
    """Every card. Two read transactions run side by side: the stage totals (the one full pass over
    the tenant's deals) and everything else; each card is consistent in itself."""

    async def totals() -> list[dict[str, Any]]:
        async with tx() as session:
            return await pipeline(session=session, q=q)

    async def cards() -> dict[str, Any]:
        async with tx() as session:
            return {
                "win_rate": await win_rate(session=session, q=q),
                "stalled": await stalled(session=session, q=q),
                "upcoming_air_dates": await upcoming_air_dates(session=session, q=q),
                "underdelivering": await underdelivering(session=session, q=q),
                "top_matches": await top_matches(session=session, q=q),
                "latest_imports": await latest_imports(session=session, q=q),
                "latest_events": await latest_events(session=session, q=q),
                "stage_movement": await stage_movement(session=session, q=q),
            }

    stages, rest = await asyncio.gather(totals(), cards())
    open_names = {st.value for st in OPEN_STAGES}
    open_rows = [s for s in stages if s["stage"] in open_names]
    return {
        "as_of": q.now.isoformat(),
        "window_days": q.window_days,
        "pipeline": stages,
        "open_pipeline": {
            "count": sum(s["count"] for s in open_rows),
            "value_usd": round(sum(s["value_usd"] for s in open_rows), 2),
            "weighted_value_usd": round(sum(s["weighted_value_usd"] for s in open_rows), 2),
        },
        **rest,
    }
