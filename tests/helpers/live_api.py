"""The real app served over loopback HTTP (uvicorn) with its worker, for tools that speak HTTP only.

Schemathesis and generated clients drive the API the way a client does: real sockets, the real
lifespan (engine, Temporal client), the session's PostgreSQL and Temporal dev server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from temporalio.client import Client

from api.main import create_app
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from db.tenants import NewTenant, create_tenant
from settings import Settings
from tests.conftest import make_settings
from worker import build_worker


@dataclass
class LiveApi:
    """An API listening on 127.0.0.1:<port>, its worker running, and a tenant to act as."""

    settings: Settings
    base_url: str
    tenant: NewTenant


@contextlib.asynccontextmanager
async def serve_api(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, **overrides: Any
) -> AsyncIterator[LiveApi]:
    """Runs the worker and the API (uvicorn, ephemeral port) in this event loop."""
    settings = make_settings(database, client, **overrides)
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    # pytest owns the signals; the server is stopped through should_exit.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    async with build_worker(client, settings, sm):
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(200):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.05)
            if not server.started:
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn did not start")
            port = server.servers[0].sockets[0].getsockname()[1]
            tenant = await create_tenant(sm=sm, name="OpenAPI contract network")
            yield LiveApi(settings=settings, base_url=f"http://127.0.0.1:{port}", tenant=tenant)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=30)
