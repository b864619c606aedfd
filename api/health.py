"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SessionMakerDep, TemporalDep
from api.openapi import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="getLiveness")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="getReadiness",
    responses={503: {"model": NotReady, "description": "a dependency is down; detail and checks name it"}},
)
async def readyz(sm: SessionMakerDep, client: TemporalDep) -> JSONResponse:
    """Ready when both PostgreSQL and Temporal answer; 503 naming what is down otherwise."""
    checks: dict[str, str] = {}

    async def database() -> None:
        async with sm() as session:
            await session.execute(text("SELECT 1"))

    async def temporal() -> None:
        await client.service_client.check_health()

    for name, probe in (("database", database), ("temporal", temporal)):
        try:
            await asyncio.wait_for(probe(), timeout=3)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            checks[name] = f"down: {type(exc).__name__}: {exc}"[:300]
    down = [k for k, v in checks.items() if v != "ok"]
    if down:
        return JSONResponse(
            status_code=503,
            content={"detail": f"not ready: {', '.join(down)} down", "code": "not_ready", "checks": checks},
        )
    return JSONResponse({"status": "ready", "checks": checks})
