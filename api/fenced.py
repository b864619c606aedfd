"""The fenced write protocol that deal and IO writes share (ARCHITECTURE section 11).

A write sent through Temporal carries a request id (its update id too). The API registers it
under the client's Idempotency-Key (`begin_keyed`), sends and resends it within the write's budget
(`within_budget`, each attempt `bounded`), and when it stops waiting fences the request off
(`fence_or_refuse`): from then on the write can never land, so a 503 is true; if the write won
the race, the request is answered as applied. What is applied is read back with `read_back`,
which never answers the generic 503 (that would claim it was not applied).

The feature modules (api/deal_writes.py, api/io_writes.py) hold what differs: what is sent, how
a refusal reads, what a retry re-reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from fastapi import HTTPException, status
from temporalio.client import RPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from api import errors
from api.deps import DATABASE_UNAVAILABLE, TenantDb, retryable_rpc
from db.fences import KeyedRequest, abandon_request, begin_keyed_request, fingerprint
from settings import Settings

log = logging.getLogger("sponsorflow.api.fenced")

T = TypeVar("T")

# The bound of one attempt within a write's budget (settings.update_budget_seconds, after which
# the API fences the request off: 503, never applied later). A resend carries the same update id,
# so it joins the update already sent instead of adding one.
ATTEMPT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What a write answers, and whether it is an earlier attempt's answer (Idempotent-Replayed)."""

    body: T
    replayed: bool = False


async def begin_keyed(
    db: TenantDb,
    settings: Settings,
    *,
    key: str,
    payload: Any,
    entity_type: str,
    entity_id: str,
    reused: str,
) -> KeyedRequest:
    """Registers this attempt under its Idempotency-Key (`key`, already scoped), fencing off earlier ones.

    A retry means the client stopped listening to the earlier attempt (no answer, a dropped
    connection, an API that died): that attempt can no longer land behind this one's back
    (db.fences.begin_keyed_request). Returns `new` (go ahead with its request_id) or `replay` (an
    earlier attempt was applied: request_id is that one); a key used for another request
    (`reused` names what) is a 422.
    """
    now = datetime.now(UTC)
    async with db.tx() as session:
        keyed = await begin_keyed_request(
            session=session,
            tenant_id=db.tenant_id,
            idempotency_key=key,
            fingerprint=fingerprint(payload=payload),
            entity_type=entity_type,
            entity_id=entity_id,
            expires_at=now + timedelta(seconds=settings.update_budget_seconds),
            now=now,
        )
    if keyed.status == "mismatch":
        raise errors.key_reused(reused)
    assert keyed.request_id is not None
    return keyed


class NoAnswer(Exception):
    """An attempt Temporal did not answer in time (it may still land: resend, or fence it off)."""


class Again(Exception):
    """Raised by an attempt that learned something and wants another one at once (no pause)."""


@dataclass(frozen=True)
class Backoff:
    """The pause after a retryable Temporal refusal: `base_s * 2**attempt` (from the 5th on, the 5th's),
    at most `cap_s`, optionally jittered (x0.5 to x1.5), never past the deadline."""

    base_s: float
    cap_s: float = float("inf")
    jitter: bool = False

    def pause(self, attempt: int, remaining_s: float) -> float:
        """Seconds to wait after attempt number `attempt` with `remaining_s` of the budget left."""
        pause = min(self.cap_s, self.base_s * float(2 ** min(attempt, 5)))
        if self.jitter:
            pause *= 0.5 + random.random()
        return min(pause, max(remaining_s - 0.05, 0.0))


async def bounded(send: Callable[[], Awaitable[T]], deadline: float) -> T:
    """One attempt, bounded by ATTEMPT_TIMEOUT_S within the deadline (at least 50 ms).

    Raises NoAnswer when Temporal did not answer in time, and a retryable RPCError (UNAVAILABLE)
    when the process's lazy client could not connect (Temporal down since the API started).
    """
    timeout = max(0.05, min(ATTEMPT_TIMEOUT_S, deadline - time.monotonic()))
    try:
        return await asyncio.wait_for(send(), timeout=timeout)
    except (TimeoutError, RPCTimeoutOrCancelledError) as exc:
        raise NoAnswer(str(exc)) from exc
    except RuntimeError as exc:
        raise RPCError(str(exc), RPCStatusCode.UNAVAILABLE, b"") from exc


async def within_budget(
    attempt: Callable[[], Awaitable[T]], *, what: str, deadline: float, backoff: Backoff
) -> T | None:
    """Runs `attempt` until it answers; None once the deadline has passed (the caller fences off).

    The first attempt always runs. NoAnswer: again at once (a resend joins the update already
    sent); a retryable RPCError (the per-workflow update limit, a restarting frontend, a closing
    run): again after a backoff pause; Again: again at once, before the deadline is looked at.
    Anything else (a WorkflowUpdateFailedError, a non-retryable RPCError) propagates.
    """
    n = 0
    while True:
        n += 1
        try:
            return await attempt()
        except Again:
            continue
        except NoAnswer:
            log.warning("%s: no answer from Temporal (attempt %d); resending", what, n)
        except RPCError as exc:
            if not retryable_rpc(exc):
                raise
            log.warning("%s: Temporal answered %s (attempt %d); retrying", what, exc.status.name, n)
            await asyncio.sleep(backoff.pause(n, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            return None


async def fence_off(
    db: TenantDb, *, request_id: str, entity_type: str, entity_id: str, what: str
) -> Literal["abandoned", "applied"]:
    """Fences off a request the API stops waiting for, or learns that its write won.

    `abandoned`: it can never land (the caller answers 503, or its refusal); `applied`: its write
    committed (the caller answers 2xx). A database that stays away is a 504 (outcome unknown):
    neither answer would be true.
    """
    for attempt in range(5):
        try:
            async with db.tx() as session:
                return await abandon_request(
                    session=session,
                    tenant_id=db.tenant_id,
                    request_id=request_id,
                    entity_type=entity_type,
                    entity_id=entity_id,
                )
        except DATABASE_UNAVAILABLE:
            log.warning("could not fence request %s (attempt %d)", request_id, attempt + 1, exc_info=True)
            await asyncio.sleep(0.2 * 2**attempt)
    raise errors.ApiError(
        status.HTTP_504_GATEWAY_TIMEOUT,
        f"the outcome of {what} is unknown; retry with the same Idempotency-Key to learn it",
        headers={"Retry-After": "1"},
    )


async def fence_or_refuse(
    db: TenantDb, *, request_id: str, entity_type: str, entity_id: str, what: str, refusal: HTTPException
) -> None:
    """Gives up on a request: raises `refusal` when the fence wins (it can never land after it).

    Returns when the request's write won the race: the caller answers it as applied.
    """
    outcome = await fence_off(
        db, request_id=request_id, entity_type=entity_type, entity_id=entity_id, what=what
    )
    if outcome == "abandoned":
        log.warning(
            "request %s of %s %s fenced off: answering %d",
            request_id,
            entity_type,
            entity_id,
            refusal.status_code,
        )
        raise refusal
    log.info("request %s of %s %s landed before the API gave up on it", request_id, entity_type, entity_id)


async def read_back(read: Callable[[], Awaitable[T]], *, what: str, budget_s: float = 10.0) -> T:
    """Reads an entity after its write was applied through Temporal.

    A database that is briefly away (a restart) is waited for; one that stays away is a 504
    saying the write was applied, never the generic 503, which would claim it was not.
    """
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            return await read()
        except DATABASE_UNAVAILABLE:
            if time.monotonic() + delay > deadline:
                raise errors.ApiError(
                    status.HTTP_504_GATEWAY_TIMEOUT,
                    f"{what} was applied, but it could not be read back (the database is "
                    "unavailable); read it again",
                    code="applied_not_read_back",
                ) from None
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
