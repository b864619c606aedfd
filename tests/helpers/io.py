"""Test helpers shared by several test modules (moved from tests/integration/test_io_workflow.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from db.engine import tenant_tx
from db.models import Event
from db.tenants import NewTenant
from tests.conftest import Stack

TODAY = datetime.now(UTC).date()


async def sleep_to(env: WorkflowEnvironment, day_offset: float) -> None:
    """Skips time to `day_offset` days after the start of today (UTC): air dates start at 00:00."""
    start = datetime.combine(TODAY, datetime.min.time(), tzinfo=UTC)
    await env.sleep(start + timedelta(days=day_offset) - await env.get_current_time())


async def get_io(stack: Stack, h: dict[str, str], io_id: str) -> dict[str, Any]:
    r = await stack.http.get(f"/api/v1/io/{io_id}", headers=h)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def io_until(
    stack: Stack, h: dict[str, str], io_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Reads the IO until `check` holds: activities commit a moment after a timer fires."""
    for _ in range(100):
        io = await get_io(stack, h, io_id)
        if check(io):
            return io
        await asyncio.sleep(0.1)
    raise AssertionError(f"IO never reached the expected state: {io}")


async def event_types(stack: Stack, tenant: NewTenant, io_id: str) -> list[str]:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        return list(
            (await s.scalars(select(Event.type).where(Event.entity_id == io_id).order_by(Event.id))).all()
        )


async def deliver(stack: Stack, h: dict[str, str], io_id: str, unit_id: str, n: int) -> dict[str, Any]:
    r = await stack.http.post(
        f"/api/v1/io/{io_id}/delivery",
        json={"ad_unit_id": unit_id, "impressions": n, "source": "megaphone"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())
