"""Webhook endpoints: CRUD, secret rotation, test, deliveries, retry and replay.

The rules (URL form and addresses, event types, what may be retried) live in domain/webhooks.py;
sending lives in the endpoint's workflow. This router parses, checks with those rules, writes the
endpoint row, and wakes or asks the endpoint's workflow (retry, replay and test are its updates,
so they are ordered with its claims).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy import select
from temporalio.client import Client

from activities.webhooks import url_refusal, webhook_config
from api import errors
from api.deps import SettingsDep, TemporalDep, TenantDbDep, feature_flag, get_tenant_id, parse_id
from api.openapi import invalid, invalid_cursor, not_found, problem
from api.pagination import CursorParam, LimitParam, Page, newest_first, newest_next_cursor
from api.webhook_schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryPublic,
    WebhookEventType,
    WebhookEventTypes,
    WebhookPatch,
    WebhookPublic,
    WebhookReplay,
    WebhookRequeued,
    WebhookSecretRotated,
    WebhookTestSent,
)
from db.models import WebhookDelivery, WebhookEndpoint
from db.webhooks import SecretBox, create_endpoint, delete_endpoint, get_endpoint, update_endpoint
from domain.webhooks import (
    ALL_EVENTS,
    EVENT_TYPE_DESCRIPTIONS,
    ReplayInput,
    RequeueResult,
    RetryDeliveryInput,
    SendTestInput,
    SendTestResult,
    WebhookRuleError,
    check_event_types,
    check_url,
    generate_secret,
    test_refusal,
)
from settings import Settings
from workflows.starters import (
    TEMPORAL_ERRORS,
    WEBHOOK_REPLAY_UPDATE,
    WEBHOOK_RETRY_UPDATE,
    WEBHOOK_TEST_UPDATE,
    WEBHOOK_WAKE_SIGNAL,
    wake_webhook_workflow,
    webhook_workflow_id,
)

log = logging.getLogger("sponsorflow.api.webhooks")

router = APIRouter(
    prefix="/api/v1/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(feature_flag("enable_webhooks", "ENABLE_WEBHOOKS"))],
)


async def _box(settings: SettingsDep) -> SecretBox:
    try:
        return SecretBox(settings.webhook_secret_key_value)
    except ValueError as exc:
        raise errors.unavailable(f"webhooks are not configured: {exc}") from None


BoxDep = Annotated[SecretBox, Depends(_box)]


def _public(row: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic(
        id=str(row.id),
        url=row.url,
        event_types=list(row.event_types),
        format=row.format,
        status=row.status,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
        workflow_id=webhook_workflow_id(str(row.tenant_id), str(row.id)),
    )


def _delivery(d: WebhookDelivery) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=str(d.id),
        event_id=str(d.event_id),
        event_type=d.event_type,
        status=d.status,
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        next_attempt_at=d.next_attempt_at,
        delivered_at=d.delivered_at,
        created_at=d.created_at,
    )


async def _checked_url(url: str, settings: Settings) -> str:
    """The URL's host once the URL passes every rule (422 naming `url` otherwise)."""
    try:
        host = check_url(url, allow_http=settings.environment == "development")
    except WebhookRuleError as exc:
        raise errors.unprocessable(["body", exc.field], exc.message) from None
    refusal = await url_refusal(url, allow_private=settings.webhook_private_allowed)
    if refusal is not None:
        raise errors.unprocessable(["body", "url"], f"this URL may not be called: {refusal}")
    return host


def _checked_types(types: list[str]) -> list[str]:
    try:
        return check_event_types(types)
    except WebhookRuleError as exc:
        raise errors.unprocessable(["body", exc.field], exc.message) from None


async def _wake(client: Client, settings: Settings, row: WebhookEndpoint, *, signal: bool = True) -> Any:
    """Signal-with-start `wake`: the endpoint's workflow runs and polls at once."""
    from urllib.parse import urlsplit

    return await wake_webhook_workflow(
        client,
        str(row.tenant_id),
        str(row.id),
        settings.temporal_task_queue,
        host=urlsplit(row.url).hostname or "?",
        description=row.description,
        config=webhook_config(settings),
        signal=signal,
    )


async def _endpoint(db: TenantDbDep, webhook_id: str) -> WebhookEndpoint:
    wid = parse_id(webhook_id, "webhook")
    async with db.tx() as session:
        row = await get_endpoint(session=session, endpoint_id=wid)
    if row is None:
        raise errors.not_found("webhook", webhook_id)
    return row


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: not_found("webhook")}
_BAD_ENDPOINT = invalid(
    "an invalid body, an unknown event type (the message lists the known ones), or a URL that may not "
    "be called (not https, credentials in it, a host that does not resolve or resolves to a refused address)",
    [
        {
            "loc": ["body", "url"],
            "msg": "this URL may not be called: 169.254.169.254 is the cloud metadata address",
            "type": "value_error",
        }
    ],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    operation_id="createWebhook",
    responses={422: _BAD_ENDPOINT},
)
async def create_webhook(
    body: WebhookCreate, db: TenantDbDep, box: BoxDep, settings: SettingsDep, client: TemporalDep
) -> WebhookCreated:
    """Adds an endpoint and starts its delivery workflow; the secret is shown this once."""
    types = _checked_types(body.event_types)
    await _checked_url(body.url, settings)
    secret = generate_secret()
    async with db.tx() as session:
        row = await create_endpoint(
            session=session,
            tenant_id=db.tenant_id,
            url=body.url,
            event_types=types,
            format=body.format,
            description=body.description,
            sealed_secret=box.seal(secret),
        )
    try:
        await _wake(client, settings, row)
    except TEMPORAL_ERRORS as exc:
        # No workflow, no deliveries: take the endpoint back rather than keep one that never sends.
        async with db.tx() as session:
            await delete_endpoint(session=session, endpoint_id=row.id)
        log.warning("webhook %s not created: its workflow did not start (%s)", row.id, exc)
        raise errors.unavailable(
            "Temporal is unreachable; the endpoint was not created, retry", retry_after=True
        ) from None
    return WebhookCreated(**_public(row).model_dump(), secret=secret)


@router.get(
    "", response_model=Page[WebhookPublic], operation_id="listWebhooks", responses={422: invalid_cursor()}
)
async def list_webhooks(
    db: TenantDbDep, limit: LimitParam = 50, cursor: CursorParam = None
) -> Page[WebhookPublic]:
    """This tenant's endpoints, newest first."""
    async with db.tx() as session:
        rows = list(
            (
                await session.scalars(newest_first(select(WebhookEndpoint), WebhookEndpoint, cursor, limit))
            ).all()
        )
    return Page(items=[_public(r) for r in rows[:limit]], next_cursor=newest_next_cursor(rows, limit))


# Declared before /{webhook_id}, which would otherwise read "event-types" as an id (a 404).
@router.get(
    "/event-types",
    response_model=WebhookEventTypes,
    operation_id="listWebhookEventTypes",
    dependencies=[Depends(get_tenant_id)],
)
async def list_event_types() -> WebhookEventTypes:
    """The values `event_types` accepts, each with what it means: `*` first, then by name."""
    names = sorted(EVENT_TYPE_DESCRIPTIONS, key=lambda t: (t != ALL_EVENTS, t))
    return WebhookEventTypes(
        items=[WebhookEventType(type=t, description=EVENT_TYPE_DESCRIPTIONS[t]) for t in names]
    )


@router.get("/{webhook_id}", response_model=WebhookPublic, operation_id="getWebhook", responses=_NOT_FOUND)
async def get_webhook(webhook_id: str, db: TenantDbDep) -> WebhookPublic:
    """One endpoint (never its secret)."""
    return _public(await _endpoint(db, webhook_id))


@router.patch(
    "/{webhook_id}",
    response_model=WebhookPublic,
    operation_id="updateWebhook",
    responses={**_NOT_FOUND, 422: _BAD_ENDPOINT},
)
async def update_webhook(
    webhook_id: str, body: WebhookPatch, db: TenantDbDep, settings: SettingsDep, client: TemporalDep
) -> WebhookPublic:
    """Changes the URL, event types, description or status (paused: nothing is sent until active)."""
    wid = parse_id(webhook_id, "webhook")
    changes: dict[str, Any] = {}
    sent = body.model_fields_set
    if "url" in sent:
        if body.url is None:
            raise errors.unprocessable(["body", "url"], "the URL cannot be removed")
        await _checked_url(body.url, settings)
        changes["url"] = body.url
    if "event_types" in sent:
        if body.event_types is None:
            raise errors.unprocessable(["body", "event_types"], "name at least one event type")
        changes["event_types"] = _checked_types(body.event_types)
    if "description" in sent:
        changes["description"] = body.description
    if "status" in sent:
        if body.status is None:
            raise errors.unprocessable(["body", "status"], "status is active or paused")
        changes["status"] = body.status
        # A pause or a resume ends a failing streak: the next failure starts a new one.
        changes["failing_since"] = None
    async with db.tx() as session:
        row = await get_endpoint(session=session, endpoint_id=wid, lock=True)
        if row is None:
            raise errors.not_found("webhook", webhook_id)
        if changes:
            row = await update_endpoint(session=session, row=row, changes=changes)
    if changes:
        try:
            await _wake(client, settings, row)
        except TEMPORAL_ERRORS as exc:
            # The workflow reads the row at every poll: it follows the change once Temporal is back.
            log.warning("webhook %s changed but its workflow was not woken (%s)", row.id, exc)
    return _public(row)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="deleteWebhook",
    responses=_NOT_FOUND,
)
async def delete_webhook(webhook_id: str, db: TenantDbDep, client: TemporalDep) -> Response:
    """Deletes the endpoint and its deliveries; its workflow ends at its next poll."""
    wid = parse_id(webhook_id, "webhook")
    async with db.tx() as session:
        found = await delete_endpoint(session=session, endpoint_id=wid)
    if not found:
        raise errors.not_found("webhook", webhook_id)
    try:
        await client.get_workflow_handle(webhook_workflow_id(str(db.tenant_id), str(wid))).signal(
            WEBHOOK_WAKE_SIGNAL
        )
    except TEMPORAL_ERRORS as exc:
        log.info("webhook %s deleted; its workflow ends at its next poll (%s)", wid, exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookSecretRotated,
    operation_id="rotateWebhookSecret",
    responses=_NOT_FOUND,
)
async def rotate_secret(
    webhook_id: str, db: TenantDbDep, box: BoxDep, settings: SettingsDep
) -> WebhookSecretRotated:
    """A new secret (shown once); the previous one keeps signing beside it for 24 h."""
    wid = parse_id(webhook_id, "webhook")
    secret = generate_secret()
    until = datetime.now(UTC) + timedelta(hours=settings.webhook_previous_secret_hours)
    async with db.tx() as session:
        row = await get_endpoint(session=session, endpoint_id=wid, lock=True)
        if row is None:
            raise errors.not_found("webhook", webhook_id)
        await update_endpoint(
            session=session,
            row=row,
            changes={
                "previous_secret_encrypted": row.secret_encrypted,
                "previous_secret_expires_at": until,
                "secret_encrypted": box.seal(secret),
            },
        )
    return WebhookSecretRotated(secret=secret, previous_secret_expires_at=until)


async def _ask(
    client: Client, settings: Settings, row: WebhookEndpoint, update: str, arg: Any, result: type
) -> Any:
    """Runs one update of the endpoint's workflow (started if it is not running)."""
    try:
        # No wake signal: the update wakes the workflow once it has done its part.
        handle = await _wake(client, settings, row, signal=False)
        return await handle.execute_update(update, arg, result_type=result)
    except TEMPORAL_ERRORS as exc:
        log.warning("webhook %s: update %s not answered (%s)", row.id, update, exc)
        raise errors.unavailable("Temporal is unreachable; retry", retry_after=True) from None


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookTestSent,
    operation_id="testWebhook",
    responses={
        **_NOT_FOUND,
        409: problem(
            "a paused endpoint",
            "the endpoint is paused; set its status to active first",
            code="webhook_paused",
        ),
    },
)
async def send_test(
    webhook_id: str, db: TenantDbDep, settings: SettingsDep, client: TemporalDep
) -> WebhookTestSent:
    """Writes a `webhook.test` event for this endpoint; its workflow sends it at once."""
    row = await _endpoint(db, webhook_id)
    refusal = test_refusal(row.status)
    if refusal is not None:
        raise errors.conflict(refusal, code="webhook_paused")
    result: SendTestResult = await _ask(
        client, settings, row, WEBHOOK_TEST_UPDATE, SendTestInput(), SendTestResult
    )
    return WebhookTestSent(event_id=str(result.event_id))


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[WebhookDeliveryPublic],
    operation_id="listWebhookDeliveries",
    responses={**_NOT_FOUND, 422: invalid_cursor()},
)
async def list_deliveries(
    webhook_id: str,
    db: TenantDbDep,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
    status_filter: Annotated[
        Literal["pending", "delivered", "failed"] | None,
        Query(alias="status", description="only deliveries in this status, e.g. the failed ones to retry"),
    ] = None,
) -> Page[WebhookDeliveryPublic]:
    """The endpoint's deliveries, newest first (optionally only those in one status)."""
    row = await _endpoint(db, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id)
    if status_filter is not None:
        query = query.where(WebhookDelivery.status == status_filter)
    stmt = newest_first(query, WebhookDelivery, cursor, limit)
    async with db.tx() as session:
        rows = list((await session.scalars(stmt)).all())
    return Page(items=[_delivery(d) for d in rows[:limit]], next_cursor=newest_next_cursor(rows, limit))


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookRequeued,
    operation_id="retryWebhookDelivery",
    responses={
        404: not_found("webhook or delivery"),
        409: problem("a pending delivery", "this delivery is still pending", code="delivery_pending"),
    },
)
async def retry_delivery(
    webhook_id: str, delivery_id: str, db: TenantDbDep, settings: SettingsDep, client: TemporalDep
) -> WebhookRequeued:
    """Sends a delivered or failed delivery again (the same webhook-id)."""
    row = await _endpoint(db, webhook_id)
    did = parse_id(delivery_id, "delivery")
    result: RequeueResult = await _ask(
        client, settings, row, WEBHOOK_RETRY_UPDATE, RetryDeliveryInput(delivery_id=str(did)), RequeueResult
    )
    if not result.found:
        raise errors.not_found("delivery", delivery_id)
    if result.refused:
        raise errors.conflict(result.refused, code="delivery_pending")
    return WebhookRequeued(requeued=result.requeued, added=result.added)


@router.post(
    "/{webhook_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookRequeued,
    operation_id="replayWebhook",
    responses={
        **_NOT_FOUND,
        422: invalid(
            "an invalid body, a time without a time zone, or a window that ends before it starts",
            [{"loc": ["body", "until"], "msg": "until must be after since", "type": "value_error"}],
        ),
    },
)
async def replay(
    webhook_id: str, body: WebhookReplay, db: TenantDbDep, settings: SettingsDep, client: TemporalDep
) -> WebhookRequeued:
    """Sends the endpoint's matching events of [since, until) again, each under its own webhook-id."""
    for name, value in (("since", body.since), ("until", body.until)):
        if value is not None and value.tzinfo is None:
            raise errors.unprocessable(["body", name], "give a time zone, e.g. 2026-12-01T00:00:00Z")
    if body.until is not None and body.until <= body.since:
        raise errors.unprocessable(["body", "until"], "until must be after since")
    row = await _endpoint(db, webhook_id)
    result: RequeueResult = await _ask(
        client,
        settings,
        row,
        WEBHOOK_REPLAY_UPDATE,
        ReplayInput(since=body.since, until=body.until),
        RequeueResult,
    )
    if not result.found:
        raise errors.not_found("webhook", webhook_id)
    return WebhookRequeued(requeued=result.requeued, added=result.added)
