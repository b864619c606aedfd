"""Match recalculation: load features, score every pair in chunks, swap in the new ranking."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from temporalio import activity

from db.engine import SessionMaker, tenant_tx
from db.events import emit_event
from db.matching import Features, MatchRow, load_features, open_generation
from db.models import Event
from domain import events
from domain.matching import MatchRecalcResult, RecalculateInput
from domain.scoring import SIGNALS, PairScore, ShowMatrix, rationale, score_batch, top_k


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
        self._pairs: dict[tuple[int, int], tuple[float, tuple[float, ...]]] = {}
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
        # Per advertiser: its best shows.
        k = min(self.top_n, n_shows)
        best_shows = top_k(masked, k, axis=0)
        for j in range(len(advertisers)):
            for i in best_shows[:, j]:
                if masked[i, j] == -np.inf:
                    continue
                sig = tuple(float(x) for x in result.signals[:, i, j])
                self._pairs[(int(i), start + j)] = (float(masked[i, j]), sig)
        # Per show: fold this chunk's advertisers into its running best.
        scores = np.concatenate([self._best, masked], axis=1)
        advs = np.concatenate(
            [self._best_adv, np.broadcast_to(np.arange(start, end, dtype=np.int64), masked.shape)], axis=1
        )
        signals = np.concatenate([self._best_signals, result.signals], axis=2)
        keep = top_k(scores, min(self.top_n, scores.shape[1]), axis=1)
        self._best = np.take_along_axis(scores, keep, axis=1)
        self._best_adv = np.take_along_axis(advs, keep, axis=1)
        self._best_signals = np.take_along_axis(signals, keep[None, :, :], axis=2)

    def pairs(self) -> list[tuple[int, int, float, tuple[float, ...]]]:
        """The union of both rankings, each pair once: (show index, advertiser index, score, signals)."""
        pairs = dict(self._pairs)
        for i in range(self._best.shape[0]):
            for col in range(self._best.shape[1]):
                score = float(self._best[i, col])
                if score == -np.inf:
                    continue
                j = int(self._best_adv[i, col])
                if (i, j) not in pairs:
                    pairs[(i, j)] = (score, tuple(float(x) for x in self._best_signals[:, i, col]))
        return [(i, j, score, sig) for (i, j), (score, sig) in pairs.items()]

    def rows(
        self, pairs: list[tuple[int, int, float, tuple[float, ...]]], start: int, end: int
    ) -> list[MatchRow]:
        """Rows pairs[start:end] with their rationale: built in batches so they never all sit in memory."""
        shows, advertisers = self.features.shows, self.features.advertisers
        out = []
        for i, j, score, sig in pairs[start:end]:
            signals = dict(zip(SIGNALS, sig, strict=True))
            pair = PairScore(score=score, signals=signals, excluded=None)
            out.append(
                MatchRow(
                    advertiser_id=advertisers[j].id,
                    show_id=shows[i].id,
                    score=score,
                    signals={k: round(v, 4) for k, v in signals.items()},
                    rationale=rationale(shows[i], advertisers[j], pair, self.features.weights),
                )
            )
        return out


# Rows (with their rationale) built and copied per batch: memory stays flat whatever the tenant size.
_WRITE_BATCH = 20_000


class MatchActivities:
    """The recalculation activity, bound to the worker's session factory."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sm = sessionmaker

    @activity.defn(name="recalculate_matches")
    async def recalculate_matches(self, inp: RecalculateInput) -> MatchRecalcResult:
        """Scores every advertiser-show pair of the tenant and swaps in the new top-N rankings."""
        tid = uuid.UUID(inp.tenant_id)
        key = f"match.recalculated/{inp.run_key}"
        async with tenant_tx(self._sm, tid) as session:
            done = await session.scalar(select(Event.payload).where(Event.idempotency_key == key))
        if done is not None:
            return MatchRecalcResult.model_validate(done)
        started = time.monotonic()
        async with tenant_tx(self._sm, tid) as session:
            features = await load_features(session, tid, datetime.now(UTC).date())
        ranker = await asyncio.to_thread(Ranker, features, inp.top_n)
        total = len(features.advertisers)
        for start in range(0, total, inp.chunk_advertisers):
            end = min(total, start + inp.chunk_advertisers)
            await asyncio.to_thread(ranker.add_chunk, start, end)
            activity.heartbeat({"advertisers_scored": end, "of": total})
        pairs = await asyncio.to_thread(ranker.pairs)
        async with tenant_tx(self._sm, tid) as session:
            stage = await open_generation(session, tid)
            for start in range(0, len(pairs), _WRITE_BATCH):
                rows = await asyncio.to_thread(ranker.rows, pairs, start, start + _WRITE_BATCH)
                await stage.copy(rows)
                activity.heartbeat({"written": start + len(rows), "of": len(pairs)})
            generation = await stage.swap()
            result = MatchRecalcResult(
                generation=generation,
                shows=len(features.shows),
                advertisers=total,
                pairs_scored=ranker.pairs_scored,
                pairs_excluded=ranker.pairs_excluded,
                matches_written=len(pairs),
                duration_s=round(time.monotonic() - started, 3),
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
        return result
