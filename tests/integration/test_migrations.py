"""Migrations: idempotent upgrade, clean downgrade and re-upgrade, RLS on every tenant table."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from db.embedded import ensure_database
from db.migrate import alembic_config, downgrade, upgrade
from db.models import TENANT_TABLES
from domain.scoring import SIGNALS

SNAPSHOT_SQL = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default
                  FROM information_schema.columns WHERE table_schema = 'public'
                  ORDER BY table_name, column_name""",
    "indexes": """SELECT tablename, indexname, indexdef FROM pg_indexes
                  WHERE schemaname = 'public' ORDER BY 1, 2""",
    "policies": "SELECT tablename, policyname, qual, with_check FROM pg_policies ORDER BY 1, 2",
    "rls": """SELECT relname, relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1""",
    "grants": """SELECT table_name, privilege_type FROM information_schema.role_table_grants
                 WHERE grantee = 'sponsorflow_app' ORDER BY 1, 2""",
    "version": "SELECT version_num FROM alembic_version",
}


async def _snapshot(url: str) -> dict[str, Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            out: dict[str, Any] = {}
            for name, sql in SNAPSHOT_SQL.items():
                try:
                    out[name] = [tuple(r) for r in (await conn.execute(text(sql))).all()]
                except Exception:  # noqa: BLE001 - alembic_version is absent at base
                    await conn.rollback()
                    out[name] = None
            return out
    finally:
        await engine.dispose()


async def test_upgrade_is_idempotent_and_downgrade_round_trips(pg_server: Any) -> None:
    db = ensure_database(server=pg_server, name=f"mig_{uuid.uuid4().hex[:8]}", app_role="sponsorflow_app")
    await asyncio.to_thread(upgrade, url=db.owner_url)
    head = await _snapshot(db.owner_url)
    assert head["version"] == [
        (ScriptDirectory.from_config(alembic_config(url=db.owner_url)).get_current_head(),)
    ]
    assert {r[0] for r in head["rls"] if r[1]} >= set(TENANT_TABLES)
    assert {r[0] for r in head["policies"]} == set(TENANT_TABLES)

    await asyncio.to_thread(upgrade, url=db.owner_url)
    assert await _snapshot(db.owner_url) == head, "upgrade head on an up-to-date database changed it"

    await asyncio.to_thread(downgrade, url=db.owner_url, revision="base")
    base = await _snapshot(db.owner_url)
    assert {r[0] for r in base["columns"]} <= {"alembic_version"}
    assert base["policies"] == []

    await asyncio.to_thread(upgrade, url=db.owner_url)
    assert await _snapshot(db.owner_url) == head


async def test_0008_moves_rankings_into_partitions_and_back(pg_server: Any) -> None:
    """Rankings written before 0008 (with facts, and older ones with worded rationales) survive
    the move into partitions, read the same through the API's query, and survive a downgrade."""
    db = ensure_database(server=pg_server, name=f"mig_{uuid.uuid4().hex[:8]}", app_role="sponsorflow_app")
    await asyncio.to_thread(upgrade, url=db.owner_url, revision="0007")
    tenant, show, adv = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    signals = {
        "geo": 0.5,
        "demographic": 0.25,
        "topic": 1,
        "lift": 0.5,
        "inventory": 0.1234,
        "brand_safety": 1,
    }
    facts = {"t": "2026-11-20", "w": [0.3, 0.2, 0.2, 0.1, 0.1, 0.1], "r": 100, "p": None, "f": 3, "d": 0.9}
    engine = create_async_engine(db.owner_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO tenants (id, name, settings) VALUES (:t, 'Net', '{}')"), {"t": tenant}
            )
            await conn.execute(
                text("INSERT INTO shows (id, tenant_id, name, avg_downloads) VALUES (:s, :t, 'Show', 1)"),
                {"s": show, "t": tenant},
            )
            await conn.execute(
                text("INSERT INTO advertisers (id, tenant_id, name) VALUES (:a, :t, 'Brand')"),
                {"a": adv, "t": tenant},
            )
            for generation, score, fact, words in ((1, 55.5, None, "old words"), (2, 66.25, facts, "")):
                await conn.execute(
                    text(
                        "INSERT INTO matches (tenant_id, generation, advertiser_id, show_id, score, signals,"
                        " facts, rationale) VALUES (:t, :g, :a, :s, :score, CAST(:sig AS jsonb),"
                        " CAST(:facts AS jsonb), :words)"
                    ),
                    {
                        "t": tenant,
                        "g": generation,
                        "a": adv,
                        "s": show,
                        "score": score,
                        "sig": json.dumps(signals),
                        "facts": json.dumps(fact) if fact else None,
                        "words": words,
                    },
                )
        await asyncio.to_thread(upgrade, url=db.owner_url)
        async with engine.begin() as conn:
            parts = (
                await conn.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'matches'::regclass ORDER BY 1"
                    )
                )
            ).all()
            assert [p[0] for p in parts] == [f"matches_{tenant.hex}_1", f"matches_{tenant.hex}_2"]
            rows = (
                (
                    await conn.execute(
                        text(
                            "SELECT m.*, g.computed_on, g.weights, g.trigger FROM matches m"
                            " JOIN match_generations g USING (tenant_id, generation) ORDER BY m.generation"
                        )
                    )
                )
                .mappings()
                .all()
            )
        legacy, kept = rows
        assert legacy["rationale"] == "old words" and legacy["free_slots"] is None
        assert legacy["weights"] == {} and legacy["trigger"] == "migrated"
        assert float(kept["score"]) == 66.25
        assert {k: round(kept[k], 4) for k in signals} == signals
        assert (
            kept["free_slots"],
            kept["past_delivery"],
            kept["recent_downloads"],
            kept["prior_downloads"],
        ) == (
            3,
            0.9,
            100.0,
            None,
        )
        assert kept["computed_on"].isoformat() == "2026-11-20"
        assert kept["weights"] == dict(zip(SIGNALS, facts["w"], strict=True))

        await asyncio.to_thread(downgrade, url=db.owner_url, revision="0007")
        async with engine.begin() as conn:
            back = (
                await conn.execute(text("SELECT signals, facts, rationale FROM matches ORDER BY generation"))
            ).all()
        assert [tuple(r) for r in back] == [(signals, None, "old words"), (signals, facts, "")]
    finally:
        await engine.dispose()
