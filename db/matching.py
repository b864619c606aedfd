"""Matchmaking in SQL: the features a recalculation scores, the ranking swap, the ranked reads."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import Row, Select, and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from db.engine import raw_connection
from db.models import Advertiser, Match, MatchGeneration, Show, Tenant
from domain.io import slot_capacity
from domain.scoring import (
    DEFAULT_WEIGHTS,
    HORIZON_DAYS,
    SIGNALS,
    AdvertiserFeatures,
    ShowFeatures,
    explain,
)

T = TypeVar("T")

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


def weights_of(*, settings: dict[str, Any] | None) -> dict[str, float]:
    """The tenant's match weights: its own where set, the documented defaults elsewhere."""
    own = (settings or {}).get("match_weights") or {}
    return {s: float(own.get(s, DEFAULT_WEIGHTS[s])) for s in SIGNALS}


async def load_features(*, session: AsyncSession, tenant_id: uuid.UUID, today: date) -> Features:
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
        shows.append(show_features(s=s, recent=recent, prior=prior, free_mid_slots=tuple(free)))
    advertisers = [
        advertiser_features(a=a, today=today)
        for a in (await session.scalars(select(Advertiser).order_by(Advertiser.id))).all()
    ]
    return Features(
        shows=shows, advertisers=advertisers, past_delivery=past, weights=weights_of(settings=settings)
    )


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


def show_features(
    *, s: Show, recent: float | None, prior: float | None, free_mid_slots: tuple[int, ...]
) -> ShowFeatures:
    """A show row as scoring sees it, with its download trend and free mid-roll slots."""
    return ShowFeatures(
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
        free_mid_slots=free_mid_slots,
    )


def advertiser_features(*, a: Advertiser, today: date) -> AdvertiserFeatures:
    """An advertiser row as scoring sees it; its flight window counts in days from `today`."""
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


def stored_rationale(
    *, show: Show, advertiser: Advertiser, match: Match, computed_on: date, weights: Mapping[str, float]
) -> str:
    """The rationale of a stored match, worded now from the facts its recalculation kept.

    The match row keeps the show's download totals (recent and prior period), the free mid-roll
    slots in the advertiser's flight window and the past delivery share; its generation keeps the
    date it was computed on and the weights. The show and the advertiser are the rows the match
    joins. A row from before migration 0005 (no facts) keeps the words it was written with.
    """
    if match.free_slots is None:
        return match.rationale
    sf = show_features(s=show, recent=match.recent_downloads, prior=match.prior_downloads, free_mid_slots=())
    return explain(
        sf,
        advertiser_features(a=advertiser, today=computed_on),
        weights_of(settings={"match_weights": dict(weights)}),
        free_slots=match.free_slots,
        past_delivery=match.past_delivery,
    )


# The COPY column order of MatchEncoder's lines. Nullable fields come right before a numeric
# one: the padding that gives every line the same width goes there, as leading spaces.
STAGE_COLUMNS = [
    "advertiser_id",
    "show_id",
    "recent_downloads",
    "prior_downloads",
    "score",
    *SIGNALS,
    "past_delivery",
    "free_slots",
]


class MatchEncoder:
    """Ranked pairs as COPY text, built column by column with NumPy (no Python object per row).

    A line holds the STAGE_COLUMNS, tab-separated. Every line of a batch has the same width
    (numbers padded with leading spaces, which PostgreSQL's number input skips), so a batch is
    one uint8 matrix. Scores and signals are rounded exactly as Python's round() does (2 and 4
    decimals); an unknown download total or past delivery is NULL.
    """

    def __init__(self, features: Features) -> None:
        self._adv_ids = _fixed_ids([a.id for a in features.advertisers])
        self._show_ids = _fixed_ids([s.id for s in features.shows])
        # Per show: "<recent>\t<prior>\t", then the padding before the score.
        self._downloads = _fixed(
            [
                f"{_copy_number(s.recent_downloads)}\t{_copy_number(s.prior_downloads)}\t"
                for s in features.shows
            ]
        )

    def encode(
        self,
        show_idx: npt.NDArray[np.int64],
        adv_idx: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float64],
        signals: npt.NDArray[np.float64],
        free: npt.NDArray[np.int64],
        past: npt.NDArray[np.float64],
    ) -> bytes:
        """COPY text of the pairs (show_idx[k], adv_idx[k]); signals is (len(SIGNALS), n); past NaN = none."""
        n = len(show_idx)
        if n == 0:
            return b""
        cents = _python_round(scores, 2)
        if cents.min() < 0 or cents.max() > 10_000:
            raise ValueError("scores must be within [0, 100]")
        parts: list[npt.NDArray[np.uint8]] = [
            self._adv_ids[adv_idx],
            _const("\t", n),
            self._show_ids[show_idx],
            _const("\t", n),
            self._downloads[show_idx],
            _digits(cents // 100, 3),
            _const(".", n),
            _digits(cents % 100, 2),
        ]
        for k, name in enumerate(SIGNALS):
            tenths = _python_round(signals[k], 4)
            if tenths.min() < 0 or tenths.max() > 10_000:
                raise ValueError(f"signal {name} must be within [0, 1]")
            parts += [
                _const("\t", n),
                _digits(tenths // 10_000, 1),
                _const(".", n),
                _digits(tenths % 10_000, 4),
            ]
        delivered = np.full(n, b"\\N\t", dtype="S26")
        for row in np.flatnonzero(~np.isnan(past)):
            delivered[row] = f"{_copy_number(float(past[row]))}\t".encode()
        parts += [_const("\t", n), _fixed_bytes(delivered), _spaced(free), _const("\n", n)]
        return np.concatenate(parts, axis=1).tobytes()


def _copy_number(v: float | None) -> str:
    """A number as COPY text: NULL (\\N) for None and non-finite values."""
    return repr(float(v)) if v is not None and math.isfinite(v) else "\\N"


def _fixed(values: Sequence[str]) -> npt.NDArray[np.uint8]:
    """(len(values), width) ASCII, each left-aligned and padded with spaces."""
    width = max((len(v) for v in values), default=1)
    return _fixed_bytes(np.array([v.encode().ljust(width) for v in values] or [b" "], dtype=f"S{width}"))


def _fixed_ids(ids: Sequence[str]) -> npt.NDArray[np.uint8]:
    """Row ids (UUIDs) as a matrix; a UUID field takes no padding, so all must be one width."""
    if len({len(i) for i in ids}) > 1:
        raise ValueError("row ids of one kind must all have the same length (UUIDs)")
    return _fixed(ids)


def _fixed_bytes(values: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint8]:
    width = values.dtype.itemsize
    out = values.view(np.uint8).reshape(len(values), width).copy()
    out[out == 0] = ord(" ")
    return out


def _const(text: str, n: int) -> npt.NDArray[np.uint8]:
    return np.broadcast_to(np.frombuffer(text.encode(), dtype=np.uint8), (n, len(text)))


def _digits(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """Non-negative integers as zero-padded decimal ASCII of the given width."""
    out = np.empty((len(values), width), dtype=np.uint8)
    v = values.astype(np.int64, copy=True)
    for col in range(width - 1, -1, -1):
        out[:, col] = ord("0") + v % 10
        v //= 10
    return out


def _spaced(values: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Non-negative integers as decimal ASCII, right-aligned with leading spaces."""
    v = np.maximum(values.astype(np.int64), 0)
    width = len(str(int(v.max()))) if len(v) else 1
    out = _digits(v, width)
    n_digits = np.ones(len(v), dtype=np.int64)
    for p in range(1, width):
        n_digits += v >= 10**p
    out[np.arange(width)[None, :] < (width - n_digits)[:, None]] = ord(" ")
    return out


def _python_round(x: npt.NDArray[np.float64], ndigits: int) -> npt.NDArray[np.int64]:
    """round(v, ndigits) * 10**ndigits for each v, as Python rounds (the exact binary value, ties to even)."""
    scaled = x * 10.0**ndigits
    out = np.rint(scaled)
    # Far from a tie, the product's rounding error cannot change the nearest integer.
    for k in np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6):
        out[k] = round(round(float(x[k]), ndigits) * 10**ndigits)
    return out.astype(np.int64)


class GenerationStage:
    """A new ranking generation being written inside one transaction (see open_generation).

    Its rows go by COPY into a partition table nobody else can see yet; swap() indexes it once,
    attaches it to `matches` and records the generation, all committed together.
    """

    def __init__(
        self, session: AsyncSession, raw: Any, tenant_id: uuid.UUID, generation: int, table: str
    ) -> None:
        self._session = session
        self._raw = raw
        self._tenant_id = tenant_id
        self.generation = generation
        self.table = table

    async def copy(self, data: bytes) -> None:
        """Adds MatchEncoder lines to the new generation (COPY into its partition table)."""
        if not data:
            return

        async def source() -> AsyncIterator[bytes]:
            yield data

        await self._raw.copy_to_table(self.table, source=source(), columns=STAGE_COLUMNS, format="text")

    async def swap(
        self,
        *,
        computed_on: date,
        weights: Mapping[str, float],
        trigger: str,
        pairs_scored: int,
        matches_written: int,
    ) -> int:
        """Makes the copied rows the tenant's current ranking (when the transaction commits).

        Readers see the old ranking until the commit, then the new one, never a mix; the
        previous generation stays so a reader paging with a cursor can finish (prune_generations
        drops the older ones). A show or advertiser deleted meanwhile fails the attach, and the
        recalculation is retried.
        """
        await self._session.execute(
            text("SELECT sponsorflow_match_partition_attach(:g)"), {"g": self.generation}
        )
        self._session.add(
            MatchGeneration(
                tenant_id=self._tenant_id,
                generation=self.generation,
                computed_on=computed_on,
                weights=dict(weights),
                trigger=trigger[:20],
                pairs_scored=pairs_scored,
                matches_written=matches_written,
            )
        )
        await self._session.flush()
        # Last, held through the commit: readers choose the old generation or wait the few
        # milliseconds until the new one is committed and visible (see read_current_ranking).
        await _publish_lock(self._session, self._tenant_id, shared=False)
        return self.generation


async def current_generation(*, session: AsyncSession) -> int | None:
    """The tenant's current ranking generation (the newest committed), or None before the first."""
    value = await session.scalar(select(func.max(MatchGeneration.generation)))
    return int(value) if value is not None else None


async def read_current_ranking(
    *, session: AsyncSession, tenant_id: uuid.UUID, read: Callable[[int], Awaitable[Sequence[T]]]
) -> Sequence[T]:
    """Rows of the tenant's current ranking, read by `read(generation)` in a statement of its own.

    The generation is chosen first, under the tenant's publish lock (shared), and the rows are
    read in the next statement. Never `generation = (SELECT max(...))` in one statement: a
    recalculation attaches its partition and commits concurrently with readers, and a reader
    may plan its statement (learning which partitions `matches` has) a moment before the
    commit yet execute it with a snapshot that already sees the new generation, and read an
    empty ranking. PostgreSQL also tells other sessions about a new partition a moment after
    the commit itself is visible. The swap takes the publish lock exclusively as its last step,
    so a reader waits for a commit in progress (milliseconds) and then sees the new partition,
    and a commit waits for the readers that chose the old generation; the old partition cannot
    be dropped under them (pruning keeps the previous generation).
    """
    await _publish_lock(session, tenant_id, shared=True)
    generation = await current_generation(session=session)
    if generation is None:
        return []
    return await read(generation)


# One row of a ranked page: the match, its generation's date and weights, its advertiser and show.
RankedMatch = Row[Match, date, dict[str, float], Advertiser, Show]


@dataclass(frozen=True)
class MatchesAfter:
    """Where a page of ranked matches starts: after this match of this generation (best first)."""

    generation: int
    score: float
    match_id: int


async def ranked_matches(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    after: MatchesAfter | None,
    advertiser_id: uuid.UUID | None,
    show_id: uuid.UUID | None,
    min_score: float,
    limit: int,
) -> Sequence[RankedMatch]:
    """Up to `limit + 1` ranked matches, best first (the extra one says another page follows).

    The first page reads the current ranking (read_current_ranking: the old ranking or the new,
    never a mix); a next page reads the generation its cursor names. The page is picked from the
    ranking alone (its partition's index, best first); only then are its rows joined to their
    shows, advertisers and generation. Row-level security scopes the rows; naming the tenant lets
    the planner skip other tenants' partitions.
    """
    page = select(Match).where(Match.tenant_id == tenant_id)
    if after is not None:
        page = page.where(
            or_(Match.score < after.score, and_(Match.score == after.score, Match.id > after.match_id))
        )
    if advertiser_id is not None:
        page = page.where(Match.advertiser_id == advertiser_id)
    if show_id is not None:
        page = page.where(Match.show_id == show_id)
    if min_score:
        page = page.where(Match.score >= min_score)

    def statement(generation: int) -> Select[Match, date, dict[str, float], Advertiser, Show]:
        ranked = (
            page.where(Match.generation == generation)
            .order_by(Match.score.desc(), Match.id)
            .limit(limit + 1)
            .subquery("ranked")
        )
        m_, adv, show = aliased(Match, ranked), aliased(Advertiser), aliased(Show)
        return (
            select(m_, MatchGeneration.computed_on, MatchGeneration.weights, adv, show)
            .join(
                MatchGeneration,
                and_(MatchGeneration.tenant_id == m_.tenant_id, MatchGeneration.generation == m_.generation),
            )
            .join(adv, adv.id == m_.advertiser_id)
            .join(show, show.id == m_.show_id)
            .order_by(m_.score.desc(), m_.id)
        )

    async def read(generation: int) -> Sequence[RankedMatch]:
        return (await session.execute(statement(generation))).all()

    if after is None:
        return await read_current_ranking(session=session, tenant_id=tenant_id, read=read)
    return await read(after.generation)


async def newest_ranking(*, session: AsyncSession) -> MatchGeneration | None:
    """The tenant's newest ranking (the one GET /matches reads), or None before the first."""
    return await session.scalar(select(MatchGeneration).order_by(MatchGeneration.generation.desc()).limit(1))


async def rankings_before(*, session: AsyncSession, before: int | None, limit: int) -> list[MatchGeneration]:
    """Up to `limit + 1` rankings, newest first, older than generation `before` when given."""
    stmt = select(MatchGeneration).order_by(MatchGeneration.generation.desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(MatchGeneration.generation < before)
    return list((await session.scalars(stmt)).all())


async def tenant_weights(*, session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, float]:
    """The tenant's match weights (weights_of its settings: the documented defaults unless set)."""
    return weights_of(settings=await session.scalar(select(Tenant.settings).where(Tenant.id == tenant_id)))


async def set_tenant_weights(
    *, session: AsyncSession, tenant_id: uuid.UUID, weights: dict[str, float]
) -> None:
    """Stores the tenant's match weights in its settings (the row locked: no lost update)."""
    tenant = await session.get(Tenant, tenant_id, with_for_update=True)
    assert tenant is not None
    settings: dict[str, Any] = dict(tenant.settings or {})
    settings["match_weights"] = weights
    tenant.settings = settings


async def prune_generations(
    *, session: AsyncSession, tenant_id: uuid.UUID, keep_from: int | None = None
) -> int:
    """Drops the tenant's ranking partitions older than `keep_from` (default: the current one).

    A recalculation calls it before it scores (the swap will keep the generation it replaces,
    so nothing a reader still pages on goes) and again after its swap committed, keeping the
    current and the previous generation. A partition a reader holds at that moment is left for
    a later run (the function waits at most 200 ms for it). Returns how many were dropped.
    """
    await _writer_lock(session, tenant_id)
    if keep_from is None:
        keep_from = await current_generation(session=session)
        if keep_from is None:
            return 0
    dropped = await session.scalar(
        text("SELECT sponsorflow_match_partition_prune(:keep)"), {"keep": keep_from}
    )
    return int(dropped or 0)


async def _publish_lock(session: AsyncSession, tenant_id: uuid.UUID, *, shared: bool) -> None:
    # Orders a reader choosing its generation against a ranking being committed (see read_current_ranking).
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await session.execute(text(f"SELECT {fn}(hashtextextended(:k, 0))"), {"k": f"match-publish/{tenant_id}"})


async def _writer_lock(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    # A scheduled and an on-demand run never interleave their writes.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"match/{tenant_id}"}
    )


async def open_generation(*, session: AsyncSession, tenant_id: uuid.UUID) -> GenerationStage:
    """Starts writing a new ranking in the session's transaction, one writer per tenant at a time."""
    await _writer_lock(session, tenant_id)
    generation = (await current_generation(session=session) or 0) + 1
    table = await session.scalar(text("SELECT sponsorflow_match_partition_open(:g)"), {"g": generation})
    raw = await raw_connection(session=session)
    return GenerationStage(session, raw, tenant_id, generation, str(table))
