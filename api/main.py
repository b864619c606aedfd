"""The FastAPI app: lifespan (engine + Temporal client), routers, error shapes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import telemetry
from api import (
    catalog,
    dashboard,
    deals,
    errors,
    events,
    health,
    imports,
    io,
    keys,
    matching,
    metrics,
    openapi,
    tenants,
    webhooks,
)
from api.deps import DATABASE_UNAVAILABLE, KeyCache
from api.web import pages
from db.engine import make_engine, make_sessionmaker
from settings import Settings, connect_temporal, get_settings

log = logging.getLogger("sponsorflow.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the app for `settings` (tests build one per test with their own task queue)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("SPONSORFLOW_DATABASE_URL is not set (use `sponsorflow up` for a dev stack)")
        engine = make_engine(url=settings.database_url, pool_size=settings.db_pool_size)
        telemetry.instrument_engine(engine, settings)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine=engine)
        # Lazy: the API starts (and /readyz can say so) while Temporal is still coming up.
        app.state.temporal = await connect_temporal(
            settings, lazy=True, interceptors=[metrics.TemporalClientMetrics(app.state.metrics)]
        )
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="sponsorflow",
        version="0.1.0",
        description="Durable deal and insertion-order orchestration for podcast sponsorships.",
        lifespan=lifespan,
        # Schema names follow the operation ids (e.g. Body_uploadImport), not the Python names.
        generate_unique_id_function=lambda route: route.operation_id or route.name,
    )
    app.state.settings = settings
    app.state.key_cache = KeyCache(ttl=settings.api_key_cache_seconds)
    app.state.deal_seeds = deals.SeedCache()

    errors.install(app, database_errors=DATABASE_UNAVAILABLE, allow=openapi.allowed_methods(app))

    for module in (
        health,
        tenants,
        keys,
        catalog,
        deals,
        io,
        imports,
        matching,
        dashboard,
        events,
        webhooks,
        pages,
    ):
        app.include_router(module.router)
    app.mount("/static", pages.RevalidatedStaticFiles(directory=pages.STATIC_DIR), name="static")
    openapi.install(app)
    # Last: its middleware wraps every route and error handler; its route is outside the OpenAPI.
    metrics.install(app, path=settings.api_metrics_path)
    # Outermost: server spans (tracing on) and the traceparent header / log context of every request.
    telemetry.install_http(app, settings)
    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory api.main:app_factory`."""
    return create_app()
