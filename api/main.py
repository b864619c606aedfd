"""The FastAPI app: lifespan (engine + Temporal client), routers, error shapes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import catalog, dashboard, deals, etl, events, health, io, keys, matching, openapi, tenants
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
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        # Lazy: the API starts (and /readyz can say so) while Temporal is still coming up.
        app.state.temporal = await connect_temporal(settings, lazy=True)
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

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Pydantic's input echo can carry a whole request body; keep loc/msg/type only.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    allow = openapi.allowed_methods(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # A 405 names every method of the resource (RFC 9110), not those of one of its routes.
            headers = {**(exc.headers or {}), "Allow": allow(request.url.path)}
            exc = StarletteHTTPException(405, detail=exc.detail, headers=headers)
        return await http_exception_handler(request, exc)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("database error on %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "the database is unavailable or dropped the request; retry"},
            headers={"Retry-After": "1"},
        )

    async def data_error(request: Request, exc: Exception) -> JSONResponse:
        # SQLSTATE class 22 (a value the column cannot hold): the input is wrong, retrying cannot help.
        log.warning("data error on %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse(
            status_code=422,
            content={"detail": "a value in the request cannot be stored (too long, out of range, or NUL)"},
        )

    app.add_exception_handler(DataError, data_error)

    # A write sent through Temporal reads its answer with deps.read_back, which turns a database
    # that stays away into a 504 ("applied"); anything reaching these handlers changed nothing
    # that went through Temporal.
    for kind in DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, database_error)

    @app.exception_handler(RuntimeError)
    async def temporal_unreachable(request: Request, exc: RuntimeError) -> JSONResponse:
        # The process's Temporal client is lazy: until Temporal first answers, every call raises
        # "Failed client connect" before anything is sent, so a 503 is true for any route.
        if "client connect" not in str(exc).lower():
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            return JSONResponse(status_code=500, content={"detail": "internal error"})
        log.error("Temporal unreachable on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "Temporal is unreachable; nothing was changed through it, retry"},
            headers={"Retry-After": "1"},
        )

    for module in (health, tenants, keys, catalog, deals, io, etl, matching, dashboard, events, pages):
        app.include_router(module.router)
    app.mount("/static", pages.RevalidatedStaticFiles(directory=pages.STATIC_DIR), name="static")
    openapi.install(app)
    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory api.main:app_factory`."""
    return create_app()
