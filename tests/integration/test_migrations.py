"""Migrations: idempotent upgrade, clean downgrade and re-upgrade, RLS on every tenant table."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from db.embedded import ensure_database
from db.migrate import alembic_config, downgrade, upgrade
from db.models import TENANT_TABLES

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
    db = ensure_database(pg_server, f"mig_{uuid.uuid4().hex[:8]}", "sponsorflow_app")
    await asyncio.to_thread(upgrade, db.owner_url)
    head = await _snapshot(db.owner_url)
    assert head["version"] == [
        (ScriptDirectory.from_config(alembic_config(db.owner_url)).get_current_head(),)
    ]
    assert {r[0] for r in head["rls"] if r[1]} >= set(TENANT_TABLES)
    assert {r[0] for r in head["policies"]} == set(TENANT_TABLES)

    await asyncio.to_thread(upgrade, db.owner_url)
    assert await _snapshot(db.owner_url) == head, "upgrade head on an up-to-date database changed it"

    await asyncio.to_thread(downgrade, db.owner_url, "base")
    base = await _snapshot(db.owner_url)
    assert {r[0] for r in base["columns"]} <= {"alembic_version"}
    assert base["policies"] == []

    await asyncio.to_thread(upgrade, db.owner_url)
    assert await _snapshot(db.owner_url) == head
