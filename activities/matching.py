"""Match recalculation: load features, score every pair in chunks, swap in the new ranking."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from temporalio import activity

from activities import metrics
from activities.heartbeat import Heartbeat
from db.engine import SessionMaker, tenant_tx
from db.events import emit_event
from db.matching import Features, MatchEncoder, load_features, open_generation, prune_generations
from db.models import Event
from domain import events
from domain.matching import MatchRecalcResult, RecalculateInput
from domain.scoring import SIGNALS, ShowMatrix, flight_windows, free_slots_in_window, score_batch, top_k


@dataclass
class RankedPairs:
    """The pairs a ranking keeps, as parallel arrays: show and advertiser indices, score, signals."""

    show_idx: npt.NDArray[np.int64]
    adv_idx: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    signals: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.show_idx)

    def take(self, index: npt.NDArray[np.intp]) -> RankedPairs:
        """The pairs at these positions."""
        return RankedPairs(
            self.show_idx[index], self.adv_idx[index], self.scores[index], self.signals[:, index]
        )


class Ranker:
    """Keeps the top N shows per advertiser and advertisers per show while chunks are scored."""

    def __init__(self, features: Features, top_n: int) -> None:
        self.features = features
        self.top_n = top_n
        self.matrix = ShowMatrix.build(features.shows)
        n_shows = len(features.shows)
        self._show_index = {s.id: i for i, s in enumerate(features.shows)}
        self._adv_index = {a.id: j for j, a in enumerate(features.advertisers)}
        # Running best advertisers per show: scores, advertiser indices, signals.
        self._best: npt.NDArray[np.float64] = np.full((n_shows, 0), -np.inf)
        self._best_adv: npt.NDArray[np.int64] = np.zeros((n_shows, 0), dtype=np.int64)
        self._best_signals: npt.NDArray[np.float64] = np.zeros((len(SIGNALS), n_shows, 0))
        # Best shows of each advertiser scored so far, one RankedPairs per chunk.
        self._per_advertiser: list[RankedPairs] = []
        self.pairs_scored = 0
        self.pairs_excluded = 0

    def add_chunk(self, start: int, end: int) -> None:
        """Scores advertisers [start, end) against every show and folds them into the rankings."""
        advertisers = self.features.advertisers[start:end]
        n_shows = len(self.features.shows)
        if not advertisers or not n_shows:
            return
        past = {
            (self._show_index[s], self._adv_index[a] - start): share
            for (s, a), share in self.features.past_delivery.items()
            if s in self._show_index and a in self._adv_index and start <= self._adv_index[a] < end
        }
        result = score_batch(self.matrix, advertisers, self.features.weights, past)
        masked = np.where(result.excluded, -np.inf, result.scores)
        self.pairs_scored += masked.size
        self.pairs_excluded += int(result.excluded.sum())
        # Per advertiser: its best shows (final once its chunk is scored).
        k = min(self.top_n, n_shows)
        best_shows = top_k(masked, k, axis=0)  # (k, chunk)
        cols = np.broadcast_to(np.arange(len(advertisers)), best_shows.shape)
        best_scores = masked[best_shows, cols]
        keep = best_scores != -np.inf
        self._per_advertiser.append(
            RankedPairs(
                show_idx=best_shows[keep].astype(np.int64),
                adv_idx=(start + cols[keep]).astype(np.int64),
                scores=best_scores[keep],
                signals=result.signals[:, best_shows[keep], cols[keep]],
            )
        )
        # Per show: fold this chunk's advertisers into its running best.
        scores = np.concatenate([self._best, masked], axis=1)
        advs = np.concatenate(
            [self._best_adv, np.broadcast_to(np.arange(start, end, dtype=np.int64), masked.shape)], axis=1
        )
        signals = np.concatenate([self._best_signals, result.signals], axis=2)
        best = top_k(scores, min(self.top_n, scores.shape[1]), axis=1)
        self._best = np.take_along_axis(scores, best, axis=1)
        self._best_adv = np.take_along_axis(advs, best, axis=1)
        self._best_signals = np.take_along_axis(signals, best[None, :, :], axis=2)

    def pairs(self) -> RankedPairs:
        """The union of both rankings, each pair once, best score first."""
        keep = self._best != -np.inf
        rows = np.broadcast_to(np.arange(self._best.shape[0])[:, None], self._best.shape)
        parts = [
            *self._per_advertiser,
            RankedPairs(
                show_idx=rows[keep].astype(np.int64),
                adv_idx=self._best_adv[keep],
                scores=self._best[keep],
                signals=self._best_signals[:, keep],
            ),
        ]
        union = RankedPairs(
            show_idx=np.concatenate([p.show_idx for p in parts]),
            adv_idx=np.concatenate([p.adv_idx for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            signals=np.concatenate([p.signals for p in parts], axis=1),
        )
        # A pair in both rankings was scored once: its two copies are equal, either will do.
        key = union.show_idx * max(1, len(self.features.advertisers)) + union.adv_idx
        _, first = np.unique(key, return_index=True)
        # Best first, so the ranked index and the ids grow in order as the rows are inserted.
        order = np.lexsort((union.adv_idx[first], union.show_idx[first], -union.scores[first]))
        return union.take(first[order])

    def facts(self, pairs: RankedPairs) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """What the rationale needs per pair beyond the rows: free slots in the flight, past delivery."""
        free = free_slots_in_window(
            self.matrix, flight_windows(self.features.advertisers), pairs.show_idx, pairs.adv_idx
        )
        past = np.full(len(pairs), np.nan)
        if self.features.past_delivery:
            n_adv = max(1, len(self.features.advertisers))
            known = {
                self._show_index[s] * n_adv + self._adv_index[a]: share
                for (s, a), share in self.features.past_delivery.items()
                if s in self._show_index and a in self._adv_index
            }
            key = pairs.show_idx * n_adv + pairs.adv_idx
            for k in np.flatnonzero(np.isin(key, np.fromiter(known, dtype=np.int64, count=len(known)))):
                past[k] = known[int(key[k])]
        return free, past


class _Phases:
    """Seconds spent per phase of a recalculation, for its result and event."""

    def __init__(self, started: float) -> None:
        self._last = started
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


# Rows encoded and copied per batch: memory stays flat whatever the tenant size.
_WRITE_BATCH = 100_000


class MatchActivities:
    """The recalculation activity, bound to the worker's session factory."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sm = sessionmaker

    @activity.defn(name="recalculate_matches")
    async def recalculate_matches(self, inp: RecalculateInput) -> MatchRecalcResult:
        """Scores every advertiser-show pair of the tenant and swaps in the new top-N rankings."""
        tid = uuid.UUID(inp.tenant_id)
        key = f"match.recalculated/{inp.run_key}"
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            done = await session.scalar(select(Event.payload).where(Event.idempotency_key == key))
        if done is not None:
            return MatchRecalcResult.model_validate(done)
        # Alive through every phase: the load, the writer lock waits (pruning, opening the
        # generation), the COPY and the swap are single long awaits a chunk heartbeat misses.
        async with Heartbeat({"phase": "load"}) as beat:
            return await self._recalculate(inp, tid, key, beat)

    async def _recalculate(
        self, inp: RecalculateInput, tid: uuid.UUID, key: str, beat: Heartbeat
    ) -> MatchRecalcResult:
        started = time.monotonic()
        phases = _Phases(started)
        today = datetime.now(UTC).date()
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            features = await load_features(session=session, tenant_id=tid, today=today)
        phases.done("load")
        beat.set({"phase": "score", "advertisers_scored": 0, "of": len(features.advertisers)})
        # The database drops rankings no reader needs any more while this process scores.
        pruning = asyncio.create_task(self._prune(tid, None))
        try:
            ranker = await asyncio.to_thread(Ranker, features, inp.top_n)
            total = len(features.advertisers)
            for start in range(0, total, inp.chunk_advertisers):
                end = min(total, start + inp.chunk_advertisers)
                await asyncio.to_thread(ranker.add_chunk, start, end)
                beat.set({"phase": "score", "advertisers_scored": end, "of": total})
            pairs = await asyncio.to_thread(ranker.pairs)
        finally:
            beat.set({"phase": "waiting for the writer lock (pruning)"})
            await pruning
        phases.done("score")
        encoder = MatchEncoder(features)

        def encode(lo: int) -> bytes:
            batch = pairs.take(np.arange(lo, min(lo + _WRITE_BATCH, len(pairs))))
            free, past = ranker.facts(batch)
            return encoder.encode(batch.show_idx, batch.adv_idx, batch.scores, batch.signals, free, past)

        beat.set({"phase": "waiting for the writer lock"})
        async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
            stage = await open_generation(session=session, tenant_id=tid)
            starts = range(0, len(pairs), _WRITE_BATCH)
            # The next batch is encoded (NumPy, in a thread) while the database copies this one.
            pending = asyncio.create_task(asyncio.to_thread(encode, 0)) if starts else None
            for n, lo in enumerate(starts):
                assert pending is not None
                data = await pending
                pending = (
                    asyncio.create_task(asyncio.to_thread(encode, starts[n + 1]))
                    if n + 1 < len(starts)
                    else None
                )
                await stage.copy(data)
                beat.set({"phase": "write", "written": min(len(pairs), lo + _WRITE_BATCH), "of": len(pairs)})
            phases.done("write")
            beat.set({"phase": "swap"})
            generation = await stage.swap(
                computed_on=today,
                weights=features.weights,
                trigger=inp.trigger,
                pairs_scored=ranker.pairs_scored,
                matches_written=len(pairs),
            )
            phases.done("swap")
            result = MatchRecalcResult(
                generation=generation,
                shows=len(features.shows),
                advertisers=total,
                pairs_scored=ranker.pairs_scored,
                pairs_excluded=ranker.pairs_excluded,
                matches_written=len(pairs),
                duration_s=round(time.monotonic() - started, 3),
                phases=phases.seconds,
            )
            await emit_event(
                session=session,
                tenant_id=tid,
                type=events.MATCH_RECALCULATED,
                entity_type="tenant",
                entity_id=inp.tenant_id,
                payload={**result.model_dump(), "trigger": inp.trigger},
                occurred_at=datetime.now(UTC),
                idempotency_key=key,
            )
        metrics.match_phases(result.phases)
        # Committed: the generation before the previous one has no reader left to wait for.
        beat.set({"phase": "prune", "generation": generation})
        await self._prune(tid, generation - 1)
        return result

    async def _prune(self, tid: uuid.UUID, keep_from: int | None) -> None:
        """Drops the tenant's ranking partitions older than keep_from (default: the current one).

        Best effort: a failure here leaves an old partition for the next run, never fails this one.
        """
        try:
            async with tenant_tx(sm=self._sm, tenant_id=tid) as session:
                await prune_generations(session=session, tenant_id=tid, keep_from=keep_from)
        except Exception:  # noqa: BLE001 - housekeeping; the ranking itself is committed
            activity.logger.warning("dropping old ranking partitions failed", exc_info=True)
