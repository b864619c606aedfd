"""FastAPI dependencies: settings, the tenant from the API key, tenant-scoped DB, Temporal."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

import telemetry
from api import errors
from api.web import session as web_session
from db.engine import SessionMaker, tenant_for_key_hash, tenant_tx
from settings import Settings

log = logging.getLogger("sponsorflow.api")

_bearer = HTTPBearer(auto_error=False, description="A tenant API key")


def hash_key(key: str) -> str:
    """Returns the stored form of an API key (keys are random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()


# Dependencies are `async def` even when they only read app state: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per dependency per request (bench/stage_changes).
async def get_settings_dep(request: Request) -> Settings:
    """Returns the settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_temporal(request: Request) -> Client:
    """Returns the process's one Temporal client, made in the lifespan."""
    client: Client = request.app.state.temporal
    return client


async def get_sessionmaker(request: Request) -> SessionMaker:
    """Returns the process's session factory, made in the lifespan."""
    sm: SessionMaker = request.app.state.sessionmaker
    return sm


# Temporal answers worth a retry: per-workflow update limit, a restarting frontend, a closing run.
RETRYABLE_RPC = frozenset(
    {RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE, RPCStatusCode.ABORTED}
)


def retryable_rpc(exc: RPCError) -> bool:
    """Whether Temporal asks for another try: busy, restarting, an update aborted, or the workflow
    task an update rode on failed (FAILED_PRECONDITION with WorkflowNotReadyFailure: the next task
    takes the update; seen under 50 concurrent moves of one deal)."""
    if exc.status in RETRYABLE_RPC:
        return True
    if exc.status is not RPCStatusCode.FAILED_PRECONDITION:
        return False
    try:
        details = exc.grpc_status.details
    except Exception:  # an undecodable status is no invitation to retry
        return False
    return any(d.type_url.endswith("WorkflowNotReadyFailure") for d in details)


# What a database that is away (restarting, failing over, unreachable) raises: SQLAlchemy wraps
# most of it, but a refused or missing socket at connect time comes through as a plain OSError.
DATABASE_UNAVAILABLE = (DBAPIError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
SessionMakerDep = Annotated[SessionMaker, Depends(get_sessionmaker)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized() -> errors.ApiError:
    return errors.ApiError(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid API key (send Authorization: Bearer <key>, or sign in at /signin)",
        headers={"WWW-Authenticate": "Bearer"},
    )


class KeyCache:
    """Remembers recently verified key hashes for a few seconds, sparing a query per request.

    Only successes are cached, so a new key works at once; a revoked key keeps working for at
    most `ttl` seconds in each API process.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[uuid.UUID, float]] = {}

    def get(self, key_hash: str) -> uuid.UUID | None:
        """Returns the cached tenant of a key hash, if still fresh."""
        hit = self._entries.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def forget(self, key_hash: str) -> None:
        """Drops a key hash (after a revocation in this process)."""
        self._entries.pop(key_hash, None)

    def put(self, key_hash: str, tenant: uuid.UUID) -> None:
        """Caches a verified key hash."""
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key_hash] = (tenant, time.monotonic() + self._ttl)


def key_cache_of(request: Request) -> KeyCache:
    """The process's key cache."""
    cache: KeyCache = request.app.state.key_cache
    return cache


async def get_key_cache(request: Request) -> KeyCache:
    """Returns the process's key cache (the dependency)."""
    return key_cache_of(request)


async def tenant_of_key_hash(sm: SessionMaker, cache: KeyCache, key_hash: str) -> uuid.UUID | None:
    """The tenant of a stored key hash (cached for a few seconds), or None for an unknown/revoked key."""
    tenant = cache.get(key_hash)
    if tenant is not None:
        return tenant
    async with sm() as session:
        tenant = await tenant_for_key_hash(session=session, key_hash=key_hash)
    if tenant is not None:
        cache.put(key_hash, tenant)
    return tenant


def presented_key(
    request: Request, creds: Credentials, settings: Settings
) -> tuple[str, web_session.WebSession | None] | None:
    """The stored form (SHA-256) of the key this request presents, and the web session it came in.

    A bearer key wins (no session); otherwise the web app's signed session cookie names the key's hash.
    """
    if creds is not None and creds.credentials:
        return hash_key(creds.credentials), None
    session = web_session.verify(settings.session_key(), request.cookies.get(web_session.COOKIE))
    return (session.key_hash, session) if session is not None else None


async def get_tenant_id(
    request: Request,
    creds: Credentials,
    sm: SessionMakerDep,
    cache: Annotated[KeyCache, Depends(get_key_cache)],
    settings: SettingsDep,
) -> uuid.UUID:
    """Authenticates the bearer API key (or the web app's session cookie) and returns its tenant.

    A bearer key is never ambient, so it needs no CSRF check. A session cookie is: an unsafe request
    carried by it must also carry the session's CSRF token, and a browser-declared cross-site request
    is refused (403) before anything runs.
    """
    presented = presented_key(request, creds, settings)
    if presented is None:
        raise _unauthorized()
    key_hash, session = presented
    if session is not None and request.method not in web_session.SAFE_METHODS:
        if request.headers.get("sec-fetch-site") == "cross-site" or not web_session.csrf_ok(
            settings.session_key(), session, request.headers.get(web_session.CSRF_HEADER)
        ):
            raise errors.ApiError(
                status.HTTP_403_FORBIDDEN,
                f"CSRF check failed: send the session's token in {web_session.CSRF_HEADER}",
                code="csrf_failed",
            )
    tenant = await tenant_of_key_hash(sm, cache, key_hash)
    if tenant is None:
        raise _unauthorized()
    telemetry.bind(tenant_id=tenant)  # the request's log lines name its tenant
    return tenant


TenantIdDep = Annotated[uuid.UUID, Depends(get_tenant_id)]


@dataclass(frozen=True)
class TenantDb:
    """Opens transactions scoped to the authenticated tenant (RLS reads app.tenant_id)."""

    sm: SessionMaker
    tenant_id: uuid.UUID

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction with SET LOCAL app.tenant_id; commits on success."""
        async with tenant_tx(sm=self.sm, tenant_id=self.tenant_id) as session:
            yield session


async def get_tenant_db(tenant_id: TenantIdDep, sm: SessionMakerDep) -> TenantDb:
    """Returns the tenant-scoped database handle of this request."""
    return TenantDb(sm=sm, tenant_id=tenant_id)


TenantDbDep = Annotated[TenantDb, Depends(get_tenant_db)]


async def require_admin(creds: Credentials, settings: SettingsDep) -> None:
    """Lets only the holder of SPONSORFLOW_ADMIN_TOKEN through."""
    token = settings.admin_token
    if creds is None or not token or not hmac.compare_digest(creds.credentials, token):
        raise errors.ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "admin token required (Authorization: Bearer <SPONSORFLOW_ADMIN_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Every feature-flag dependency and the env var it reads (the OpenAPI document documents their 404).
FEATURE_FLAGS: dict[Callable[..., Any], str] = {}


def feature_flag(attr: str, env_name: str) -> Callable[..., Any]:
    """Returns a dependency that answers 404 naming the flag while the feature is off."""

    async def check(settings: SettingsDep) -> None:
        if not getattr(settings, attr):
            raise errors.ApiError(
                status.HTTP_404_NOT_FOUND,
                f"this feature is disabled ({env_name}=false)",
                code=errors.FEATURE_DISABLED,
            )

    FEATURE_FLAGS[check] = env_name
    return check


def parse_id(value: str, what: str) -> uuid.UUID:
    """Parses an opaque id from a path; anything malformed is simply not found."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise errors.not_found(what, value) from None
