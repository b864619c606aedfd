"""Ranking partitions (migration 0008): one per generation, written unseen, swapped in whole,
locked down, pruned without blocking readers. Real PostgreSQL (and Temporal where a
recalculation runs)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, make_engine, make_sessionmaker, set_tenant, tenant_tx
from db.matching import (
    Features,
    MatchEncoder,
    current_generation,
    open_generation,
    prune_generations,
    read_current_ranking,
)
from db.models import MatchGeneration
from domain.scoring import DEFAULT_WEIGHTS, SIGNALS
from tests.conftest import Stack
from tests.helpers.factories import make_advertiser, make_show
from tests.helpers.matching import ALIGNED, FINTECH, MISALIGNED, matches, recalculate
from tests.helpers.scoring import FINTECH as FINTECH_FEATURES
from tests.helpers.scoring import show


async def _partitions(owner_sm: SessionMaker, tenant_id: uuid.UUID) -> list[str]:
    """The tenant's attached ranking partitions, oldest first."""
    prefix = f"matches_{tenant_id.hex}_"
    async with owner_sm() as s:
        rows = await s.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'matches'::regclass AND c.relname LIKE :p ORDER BY 1"
            ),
            {"p": prefix.replace("_", "\\_") + "%"},
        )
        return sorted((r[0] for r in rows), key=lambda n: int(n.rsplit("_", 1)[1]))


async def _tenant_with_pairs(stack: Stack) -> tuple[Any, dict[str, str]]:
    tenant = await stack.new_tenant("Partitions")
    h = stack.auth(tenant)
    await make_show(stack.http, h, **ALIGNED)
    await make_show(stack.http, h, **MISALIGNED)
    await make_advertiser(stack.http, h, **FINTECH)
    return tenant, h


async def test_each_recalculation_is_one_partition_and_only_two_stay(
    stack: Stack, owner_sm: SessionMaker
) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    results = [(await recalculate(stack, h))["result"] for _ in range(3)]
    assert [r.generation for r in results] == [1, 2, 3]
    # The current ranking and the one before it (a reader may still page through it).
    assert await _partitions(owner_sm, tenant.id) == [
        f"matches_{tenant.id.hex}_2",
        f"matches_{tenant.id.hex}_3",
    ]
    items = await matches(stack, h)
    assert {m["generation"] for m in items} == {3} and len(items) == results[-1].matches_written
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        generations = (await s.scalars(select(MatchGeneration).order_by(MatchGeneration.generation))).all()
    # Every ranking is remembered with its date, weights and trigger, also after its rows went.
    assert [g.generation for g in generations] == [1, 2, 3]
    assert all(g.trigger == "manual" and g.weights == DEFAULT_WEIGHTS for g in generations)
    assert [g.matches_written for g in generations] == [r.matches_written for r in results]
    assert all(g.pairs_scored == 2 for g in generations)
    assert set(results[-1].phases) == {"load", "score", "write", "swap"}


async def test_partitions_are_read_only_through_matches(stack: Stack, owner_sm: SessionMaker) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    await recalculate(stack, h)
    other = await stack.new_tenant("Other")
    (part,) = await _partitions(owner_sm, tenant.id)
    # Not even the owning tenant's session may read or write the partition table directly.
    for tid in (tenant.id, other.id):
        with pytest.raises(DBAPIError, match="permission denied"):
            async with tenant_tx(sm=stack.sm, tenant_id=tid) as s:
                await s.execute(text(f"SELECT count(*) FROM {part}"))
    async with tenant_tx(sm=stack.sm, tenant_id=other.id) as s:
        assert (await s.execute(text("SELECT count(*) FROM matches"))).scalar() == 0
        assert (await s.execute(text("SELECT count(*) FROM match_generations"))).scalar() == 0
    # The application role cannot write into the ranking except through a new generation.
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            await s.execute(text("DELETE FROM matches"))


async def test_partition_functions_refuse_what_they_must(stack: Stack) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    await recalculate(stack, h)
    with pytest.raises(DBAPIError, match="no tenant is set"):
        async with stack.sm() as s, s.begin():
            await s.execute(text("SELECT sponsorflow_match_partition_open(5)"))
    with pytest.raises(DBAPIError, match="not newer than the current one"):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            await s.execute(text("SELECT sponsorflow_match_partition_open(1)"))
    with pytest.raises(DBAPIError, match="is not being written"):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            await s.execute(text("SELECT sponsorflow_match_partition_attach(7)"))
    with pytest.raises(DBAPIError, match="already attached"):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            await s.execute(text("SELECT sponsorflow_match_partition_attach(1)"))


def _features(show_ids: list[uuid.UUID], adv_ids: list[uuid.UUID]) -> Features:
    return Features(
        shows=[show(str(i), id=str(i)) for i in show_ids],
        advertisers=[replace(FINTECH_FEATURES, id=str(i)) for i in adv_ids],
        past_delivery={},
        weights=dict(DEFAULT_WEIGHTS),
    )


async def _write(sm: SessionMaker, tenant_id: uuid.UUID, show_ids: list[uuid.UUID], adv_id: uuid.UUID) -> int:
    """Writes one generation pairing each show with the advertiser, as a recalculation does."""
    feats = _features(show_ids, [adv_id])
    n = len(show_ids)
    data = MatchEncoder(feats).encode(
        np.arange(n),
        np.zeros(n, dtype=np.int64),
        np.linspace(90, 10, n),
        np.full((len(SIGNALS), n), 0.5),
        np.ones(n, dtype=np.int64),
        np.full(n, np.nan),
    )
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as s:
        stage = await open_generation(session=s, tenant_id=tenant_id)
        await stage.copy(data)
        return await stage.swap(
            computed_on=datetime.now(UTC).date(),
            weights=DEFAULT_WEIGHTS,
            trigger="test",
            pairs_scored=n,
            matches_written=n,
        )


async def test_a_show_deleted_before_the_swap_leaves_the_old_ranking_whole(stack: Stack) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    first = (await recalculate(stack, h))["result"]
    before = await matches(stack, h)
    adv = (await stack.http.get("/api/v1/advertisers", headers=h)).json()["items"][0]
    shows = [uuid.UUID(s["id"]) for s in (await stack.http.get("/api/v1/shows", headers=h)).json()["items"]]
    # A show that no longer exists (deleted while the worker scored): the attach's foreign key
    # check refuses the whole generation; nothing of it is left behind.
    with pytest.raises(DBAPIError, match="foreign key"):
        await _write(stack.sm, tenant.id, [*shows, uuid.uuid4()], uuid.UUID(adv["id"]))
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        assert await current_generation(session=s) == first.generation
    assert await matches(stack, h) == before
    # The next generation number is free again and writes fine.
    assert await _write(stack.sm, tenant.id, shows, uuid.UUID(adv["id"])) == first.generation + 1
    assert {m["generation"] for m in await matches(stack, h)} == {first.generation + 1}


async def test_pruning_skips_a_partition_a_reader_holds_and_drops_it_later(
    stack: Stack, owner_sm: SessionMaker
) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    for _ in range(2):
        await recalculate(stack, h)
    old = f"matches_{tenant.id.hex}_1"
    assert old in await _partitions(owner_sm, tenant.id)
    reader = stack.sm()
    try:
        await reader.begin()
        await set_tenant(session=reader, tenant_id=tenant.id)
        # A long read of the old generation holds its partition until the transaction ends.
        await reader.execute(text("SELECT count(*) FROM matches WHERE generation = 1"))
        started = time.monotonic()
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            assert await prune_generations(session=s, tenant_id=tenant.id, keep_from=2) == 0
        assert time.monotonic() - started < 5, "pruning waited for the reader instead of moving on"
        assert old in await _partitions(owner_sm, tenant.id)
        assert (await reader.execute(text("SELECT count(*) FROM matches WHERE generation = 1"))).scalar() > 0
    finally:
        await reader.rollback()
        await reader.close()
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        assert await prune_generations(session=s, tenant_id=tenant.id, keep_from=2) == 1
    assert old not in await _partitions(owner_sm, tenant.id)


async def test_a_ranking_commits_only_after_the_readers_that_chose_the_old_one(stack: Stack) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    adv = uuid.UUID((await stack.http.get("/api/v1/advertisers", headers=h)).json()["items"][0]["id"])
    shows = [uuid.UUID(s["id"]) for s in (await stack.http.get("/api/v1/shows", headers=h)).json()["items"]]
    assert await _write(stack.sm, tenant.id, shows, adv) == 1
    writing: asyncio.Task[int] | None = None

    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as reader:

        async def read(generation: int) -> list[Any]:
            nonlocal writing
            # A new ranking is written and swapped in between choosing the generation and
            # reading it: its commit waits for this reader.
            writing = asyncio.create_task(_write(stack.sm, tenant.id, shows, adv))
            await asyncio.sleep(0.5)
            assert not writing.done()
            rows = await reader.execute(
                text("SELECT generation, show_id FROM matches WHERE tenant_id = :t AND generation = :g"),
                {"t": tenant.id, "g": generation},
            )
            return list(rows)

        rows = await read_current_ranking(session=reader, tenant_id=tenant.id, read=read)
    # The old ranking, whole; then the new one commits and is what the next reader sees.
    assert [r.generation for r in rows] == [1, 1] and {r.show_id for r in rows} == set(shows)
    assert writing is not None and await asyncio.wait_for(writing, 10) == 2
    assert {m["generation"] for m in await matches(stack, h)} == {2}
    # A reader arriving while a commit holds the lock waits for it and reads the new ranking.
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as writer:
        stage = await open_generation(session=writer, tenant_id=tenant.id)
        await stage.copy(
            MatchEncoder(_features(shows, [adv])).encode(
                np.arange(2),
                np.zeros(2, dtype=np.int64),
                np.array([80.0, 20.0]),
                np.full((len(SIGNALS), 2), 0.5),
                np.ones(2, dtype=np.int64),
                np.full(2, np.nan),
            )
        )
        await stage.swap(
            computed_on=datetime.now(UTC).date(),
            weights=DEFAULT_WEIGHTS,
            trigger="test",
            pairs_scored=2,
            matches_written=2,
        )
        waiting = asyncio.create_task(matches(stack, h))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    assert {m["generation"] for m in await asyncio.wait_for(waiting, 10)} == {3}


async def test_readers_never_see_an_empty_ranking_while_rankings_commit(
    stack: Stack, database: EmbeddedDatabase
) -> None:
    tenant, h = await _tenant_with_pairs(stack)
    adv = uuid.UUID((await stack.http.get("/api/v1/advertisers", headers=h)).json()["items"][0]["id"])
    shows = [uuid.UUID(s["id"]) for s in (await stack.http.get("/api/v1/shows", headers=h)).json()["items"]]
    await _write(stack.sm, tenant.id, shows, adv)

    def commit_rankings() -> None:
        # Another process's worth of writer: its own event loop and connections.
        async def go() -> None:
            engine = make_engine(url=database.app_url, pool_size=2)
            try:
                for _ in range(40):
                    await _write(make_sessionmaker(engine=engine), tenant.id, shows, adv)
            finally:
                await engine.dispose()

        asyncio.run(go())

    writer = asyncio.create_task(asyncio.to_thread(commit_rankings))
    pages = 0
    while not writer.done():
        items = await matches(stack, h)
        # The whole ranking of one generation, every time: never empty, never a mix.
        assert len(items) == len(shows) and len({m["generation"] for m in items}) == 1
        pages += 1
    await writer
    assert pages >= 5, "the reads did not overlap the commits"
    assert {m["generation"] for m in await matches(stack, h)} == {41}


async def test_two_tenants_recalculating_at_once_each_get_their_own_ranking(
    stack: Stack, owner_sm: SessionMaker
) -> None:
    (a, ha), (b, hb) = await asyncio.gather(_tenant_with_pairs(stack), _tenant_with_pairs(stack))
    for _ in range(2):
        ra, rb = await asyncio.gather(recalculate(stack, ha), recalculate(stack, hb))
        assert ra["result"].generation == rb["result"].generation
    for tenant, h in ((a, ha), (b, hb)):
        items = await matches(stack, h)
        assert items and {m["generation"] for m in items} == {2}
        assert len(await _partitions(owner_sm, tenant.id)) == 2
    names_a = {m["show_id"] for m in await matches(stack, ha)}
    names_b = {m["show_id"] for m in await matches(stack, hb)}
    assert not names_a & names_b


async def test_pruning_survives_any_plan_over_the_catalog(stack: Stack, owner_sm: SessionMaker) -> None:
    """A partition's own indexes share its name's prefix (`matches_<tenant>_1_score_id_idx`): however
    the planner orders the function's conditions, such a name is never read as a generation."""
    tenant, h = await _tenant_with_pairs(stack)
    for _ in range(3):
        await recalculate(stack, h)
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        # Push the planner to scan pg_class first, filtering it before the join to pg_inherits.
        for knob in ("enable_hashjoin", "enable_mergejoin", "enable_indexscan", "enable_bitmapscan"):
            await s.execute(text(f"SET LOCAL {knob} = off"))
        assert await prune_generations(session=s, tenant_id=tenant.id, keep_from=3) == 1
    assert await _partitions(owner_sm, tenant.id) == [f"matches_{tenant.id.hex}_3"]
