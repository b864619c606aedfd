"""Stage changes under faults: a 503 never lands, an orphaned write is adopted, If-Match, keys.

The worker is started and stopped by the test (a stopped worker is what a frozen or dead one
looks like to Temporal and to the API), against the session's real PostgreSQL and Temporal.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from temporalio.client import Client

from activities.deals import DealActivities
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, tenant_tx
from db.models import Deal, DealStageHistory, Event, WriteRequest
from domain.deals import ChangeStageInput, DealState, RecordStageChangeInput, RecordStageChangeResult
from domain.stages import Stage, probability
from tests.conftest import FAULT_BUDGET_S, Stack, stack_worker, start_stack
from tests.helpers.factories import make_deal, move
from workflows import search_attributes as sa
from workflows.deals import DealWorkflow
from workflows.starters import deal_workflow_id

BUDGET_S = FAULT_BUDGET_S


async def _moves(stack: Stack, tenant_id: uuid.UUID, deal_id: str) -> list[tuple[str | None, str]]:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
        rows = (
            await s.execute(
                select(DealStageHistory.from_stage, DealStageHistory.to_stage)
                .where(DealStageHistory.campaign_id == uuid.UUID(deal_id))
                .order_by(DealStageHistory.changed_at, DealStageHistory.id)
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


async def _events(stack: Stack, tenant_id: uuid.UUID, deal_id: str) -> int:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.entity_id == deal_id, Event.type == "deal.stage_changed")
        )
    return int(n or 0)


async def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.2)


async def _agrees(stack: Stack, tenant_id: uuid.UUID, deal_id: str) -> bool:
    """Row, the workflow's state query and its search attributes all show the same stage entry."""
    async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
        c = await s.get(Deal, uuid.UUID(deal_id))
        assert c is not None
        row = {"stage": c.stage, "stage_changed_at": c.stage_changed_at.isoformat()}
    handle = stack.client.get_workflow_handle(deal_workflow_id(str(tenant_id), deal_id))
    state = await handle.query(DealWorkflow.state, result_type=DealState)
    desc = await handle.describe()
    sa_stage = desc.typed_search_attributes.get(sa.DEAL_STAGE)
    sa_entered = desc.typed_search_attributes.get(sa.STAGE_ENTERED_AT)
    row_entered = datetime.fromisoformat(row["stage_changed_at"])
    return (
        state.stage.value == row["stage"] == sa_stage
        and state.stage_entered_at == row_entered
        and sa_entered is not None
        and abs((sa_entered - row_entered).total_seconds()) < 0.001
    )


async def _registered_request(stack: Stack, tenant_id: uuid.UUID, key: str) -> str:
    """The request id the API registered for an Idempotency-Key (while the request waits)."""
    for _ in range(100):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
            found = await s.scalar(
                select(WriteRequest.request_id).where(WriteRequest.idempotency_key.like(f"%:{key}"))
            )
        if found:
            return str(found)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no request registered for key {key}")


async def _write_behind(
    stack: Stack,
    tenant_id: uuid.UUID,
    deal_id: str,
    to: Stage,
    *,
    request_id: str | None = None,
    reason: str | None = None,
) -> RecordStageChangeResult:
    """Commits a move the way the stage write's local activity does, behind the workflow's back
    (what a write inside a workflow task the server then lost leaves)."""
    async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
        c = await s.get(Deal, uuid.UUID(deal_id))
        assert c is not None
        frm, entered = Stage(c.stage), c.stage_changed_at
    return await DealActivities(stack.sm).record_stage_change(
        RecordStageChangeInput(
            tenant_id=str(tenant_id),
            campaign_id=deal_id,
            from_stage=frm,
            from_entered_at=entered,
            to_stage=to,
            reason=reason,
            probability=probability(to),
            at=datetime.now(UTC),
            idempotency_key=f"deal/{deal_id}/{frm.value}@{entered.isoformat()}->{to.value}",
            request_id=request_id,
        )
    )


async def _setup(stack: Stack) -> tuple[Any, dict[str, str], dict[str, Any]]:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    async with stack_worker(stack):
        deal = await make_deal(stack.http, h)
        r = await move(stack.http, h, deal["id"], "qualified")
        assert r.status_code == 200, r.text
    return tenant, h, deal


async def test_a_503_never_lands_when_the_worker_comes_back(api_only: Stack) -> None:
    stack = api_only
    tenant, h, deal = await _setup(stack)
    # The worker is gone: the update waits in Temporal past the API's budget.
    r = await move(stack.http, h, deal["id"], "proposal", "ghost?")
    assert r.status_code == 503, r.text
    assert "never will be" in r.json()["detail"]
    assert r.headers.get("Retry-After")
    before = await _moves(stack, tenant.id, deal["id"])
    # The worker returns and finds the queued update: it is refused, not applied.
    async with stack_worker(stack):
        handle = stack.client.get_workflow_handle(deal_workflow_id(str(tenant.id), deal["id"]))

        # Wait until the worker has handled the queued update (its refusal is in the history).
        async def refused() -> bool:
            history = await handle.fetch_history()
            return any(
                e.HasField("workflow_execution_update_completed_event_attributes") for e in history.events
            )

        await _until(refused)
        assert await _moves(stack, tenant.id, deal["id"]) == before
        await _until(lambda: _agrees(stack, tenant.id, deal["id"]))
        assert await _moves(stack, tenant.id, deal["id"]) == [(None, "lead"), ("lead", "qualified")]
        assert await _events(stack, tenant.id, deal["id"]) == 1
        stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
        assert stored["stage"] == "qualified"
        # The deal still moves normally afterwards.
        r = await move(stack.http, h, deal["id"], "negotiation")
        assert r.status_code == 200, r.text
        assert r.json()["stage"] == "negotiation"
        assert await _moves(stack, tenant.id, deal["id"]) == [
            (None, "lead"),
            ("lead", "qualified"),
            ("qualified", "negotiation"),
        ]


async def test_a_write_that_won_the_race_is_answered_200_and_adopted(api_only: Stack) -> None:
    """The stage write committed (e.g. inside a workflow task the server then lost) while the API
    waited: the give-up finds it applied, answers 200, and the workflow adopts the row."""
    stack = api_only
    tenant, h, deal = await _setup(stack)
    key = f"k-{uuid.uuid4()}"
    patch = asyncio.create_task(
        stack.http.patch(
            f"/api/v1/deals/{deal['id']}/stage",
            json={"stage": "proposal", "reason": "orphan"},
            headers={**h, "Idempotency-Key": key},
        )
    )
    # Find the request id the API registered for this key, and commit its write the way the
    # local activity would have, behind the workflow's back.
    request_id = await _registered_request(stack, tenant.id, key)
    result = await _write_behind(
        stack, tenant.id, deal["id"], Stage.PROPOSAL, request_id=request_id, reason="orphan"
    )
    assert result.outcome == "applied"
    r = await patch
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == "proposal"
    # The workflow learns of its own write by itself (the API's resync nudge), once it runs.
    async with stack_worker(stack):
        await _until(lambda: _agrees(stack, tenant.id, deal["id"]))
        # A retry with the same key answers what happened, writing nothing.
        again = await stack.http.patch(
            f"/api/v1/deals/{deal['id']}/stage",
            json={"stage": "proposal", "reason": "orphan"},
            headers={**h, "Idempotency-Key": key},
        )
        assert again.status_code == 200, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["stage"] == "proposal"
    assert await _moves(stack, tenant.id, deal["id"]) == [
        (None, "lead"),
        ("lead", "qualified"),
        ("qualified", "proposal"),
    ]
    assert await _events(stack, tenant.id, deal["id"]) == 2


async def test_a_redelivered_update_adopts_its_own_write(api_only: Stack) -> None:
    """The update whose write committed in a lost task comes again: it adopts, writes nothing."""
    stack = api_only
    tenant, h, deal = await _setup(stack)
    request_id = f"req-{uuid.uuid4().hex}"
    await _write_behind(stack, tenant.id, deal["id"], Stage.NEGOTIATION, request_id=request_id)
    handle = stack.client.get_workflow_handle(deal_workflow_id(str(tenant.id), deal["id"]))
    async with stack_worker(stack):
        result = await handle.execute_update(
            DealWorkflow.change_stage,
            ChangeStageInput(stage=Stage.NEGOTIATION, request_id=request_id),
            id=request_id,
        )
        assert result.changed
        assert result.state.stage is Stage.NEGOTIATION
        await _until(lambda: _agrees(stack, tenant.id, deal["id"]))
    assert await _events(stack, tenant.id, deal["id"]) == 2


async def test_resync_adopts_a_row_moved_behind_the_workflows_back(api_only: Stack) -> None:
    stack = api_only
    tenant, h, deal = await _setup(stack)
    await _write_behind(stack, tenant.id, deal["id"], Stage.PROPOSAL)
    handle = stack.client.get_workflow_handle(deal_workflow_id(str(tenant.id), deal["id"]))
    async with stack_worker(stack):
        assert not await _agrees(stack, tenant.id, deal["id"])
        await handle.signal(DealWorkflow.resync)
        await _until(lambda: _agrees(stack, tenant.id, deal["id"]))
        state = await handle.query(DealWorkflow.state, result_type=DealState)
        assert state.stage is Stage.PROPOSAL
        # The stall timer runs for the adopted entry: a move from it is judged from proposal.
        r = await move(stack.http, h, deal["id"], "won")
        assert r.status_code == 200, r.text


async def test_if_match_moves_only_an_unmoved_deal(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    got = await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)
    tag = got.headers["ETag"]
    assert tag.startswith('"lead.')
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "qualified"}, headers={**h, "If-Match": tag}
    )
    assert r.status_code == 200, r.text
    new_tag = r.headers["ETag"]
    assert new_tag != tag and new_tag.startswith('"qualified.')
    # The old tag no longer matches: 412, nothing changed.
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "proposal"}, headers={**h, "If-Match": tag}
    )
    assert r.status_code == 412, r.text
    assert r.json()["current_stage"] == "qualified"
    assert r.json()["etag"] == new_tag
    for garbage in ('"nonsense"', '"lead.x"', '"qualified.1", "lead.2"', '"lead.300000000000000000"'):
        r = await stack.http.patch(
            f"/api/v1/deals/{deal['id']}/stage",
            json={"stage": "proposal"},
            headers={**h, "If-Match": garbage},
        )
        assert r.status_code == 412, (garbage, r.text)
    stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
    assert stored["stage"] == "qualified" and len(stored["history"]) == 2
    # `*` and the current tag both pass; a closed deal checks its tag too.
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "proposal"}, headers={**h, "If-Match": "*"}
    )
    assert r.status_code == 200, r.text
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage",
        json={"stage": "won"},
        headers={**h, "If-Match": r.headers["ETag"]},
    )
    assert r.status_code == 200, r.text
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "won"}, headers={**h, "If-Match": new_tag}
    )
    assert r.status_code == 412, r.text


async def test_if_match_races_a_concurrent_move(stack: Stack) -> None:
    """Two clients holding the same ETag: exactly one move wins, the other gets 412."""
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    tag = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).headers["ETag"]
    answers = await asyncio.gather(
        *(
            stack.http.patch(
                f"/api/v1/deals/{deal['id']}/stage", json={"stage": target}, headers={**h, "If-Match": tag}
            )
            for target in ("qualified", "proposal", "negotiation", "lost")
        )
    )
    codes = sorted(a.status_code for a in answers)
    # `lost` without a reason is a 422 before anything else; of the other three, one wins.
    assert codes == [200, 412, 412, 422], [a.text for a in answers]
    stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
    assert len(stored["history"]) == 2


async def test_idempotency_key_on_a_stage_change(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    headers = {**h, "Idempotency-Key": "move-1"}
    first = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "proposal"}, headers=headers
    )
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    # Moved on by someone else; the retry of the first request still answers (nothing written).
    r = await move(stack.http, h, deal["id"], "negotiation")
    assert r.status_code == 200
    again = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "proposal"}, headers=headers
    )
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["stage"] == "negotiation"
    assert await _events(stack, tenant.id, deal["id"]) == 2
    # The same key for another request is refused, naming the header.
    other = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage", json={"stage": "lead"}, headers=headers
    )
    assert other.status_code == 422, other.text
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # Keys are per deal: the same key on another deal is a new request.
    deal2 = await make_deal(stack.http, h)
    r = await stack.http.patch(
        f"/api/v1/deals/{deal2['id']}/stage", json={"stage": "proposal"}, headers=headers
    )
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers


async def test_a_retry_fences_off_the_attempt_it_replaces(api_only: Stack) -> None:
    """No answer (the API is slow or died), the client retries with its key: the first attempt
    can no longer land behind the second's back; exactly one move is written."""
    stack = api_only
    tenant, h, deal = await _setup(stack)
    headers = {**h, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    url = f"/api/v1/deals/{deal['id']}/stage"
    first = asyncio.create_task(
        stack.http.patch(url, json={"stage": "proposal", "reason": "r"}, headers=headers)
    )
    await asyncio.sleep(0.3)
    second = asyncio.create_task(
        stack.http.patch(url, json={"stage": "proposal", "reason": "r"}, headers=headers)
    )
    await asyncio.sleep(0.3)
    async with stack_worker(stack):
        a, b = await first, await second
        assert b.status_code == 200, b.text
        assert b.json()["stage"] == "proposal"
        # The first was fenced by the retry: it answers 503 (not applied), or, if its own
        # update was the one that got written before the fence, it is the replayed answer.
        assert a.status_code in (200, 503), a.text
        await _until(lambda: _agrees(stack, tenant.id, deal["id"]))
    assert await _moves(stack, tenant.id, deal["id"]) == [
        (None, "lead"),
        ("lead", "qualified"),
        ("qualified", "proposal"),
    ]
    assert await _events(stack, tenant.id, deal["id"]) == 2


async def test_the_fence_decides_once(sm: SessionMaker, stack: Stack) -> None:
    """Claim and abandon race on the same request: exactly one wins, both see the same answer."""
    from db.fences import abandon_request, claim_request

    tenant = await stack.new_tenant()
    for _ in range(20):
        rid = f"req-{uuid.uuid4().hex}"

        async def claim(rid: str = rid) -> str:
            async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
                return (
                    await claim_request(
                        session=s, tenant_id=tenant.id, request_id=rid, entity_type="deal", entity_id="x"
                    )
                ).outcome

        async def abandon(rid: str = rid) -> str:
            async with tenant_tx(sm=sm, tenant_id=tenant.id) as s:
                return await abandon_request(
                    session=s, tenant_id=tenant.id, request_id=rid, entity_type="deal", entity_id="x"
                )

        c, a = await asyncio.gather(claim(), abandon())
        assert (c, a) in {("claimed", "applied"), ("abandoned", "abandoned")}, (c, a)
        assert (await claim()) in {"applied", "abandoned"}


async def test_a_move_judged_from_a_missed_write_is_repaired_and_retried(api_only: Stack) -> None:
    """The workflow missed a write (row: proposal, workflow: qualified); `won` is allowed from the
    row's stage: the API sees the workflow judge from another stage, has it resync, and retries."""
    stack = api_only
    tenant, h, deal = await _setup(stack)
    await _write_behind(stack, tenant.id, deal["id"], Stage.PROPOSAL)
    async with stack_worker(stack):
        r = await move(stack.http, h, deal["id"], "won")
        assert r.status_code == 200, r.text
        assert r.json()["stage"] == "won"
    assert await _moves(stack, tenant.id, deal["id"]) == [
        (None, "lead"),
        ("lead", "qualified"),
        ("qualified", "proposal"),
        ("proposal", "won"),
    ]


async def test_if_match_on_a_move_that_landed_unanswered_is_200_not_412(api_only: Stack) -> None:
    """The attempt's write committed but its answer was lost: the next look at the row fails the
    If-Match, yet the move is this request's own, so the fence turns the 412 into a 200."""
    stack = api_only
    tenant, h, deal = await _setup(stack)
    got = await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)
    key = f"k-{uuid.uuid4()}"
    patch = asyncio.create_task(
        stack.http.patch(
            f"/api/v1/deals/{deal['id']}/stage",
            json={"stage": "proposal"},
            headers={**h, "Idempotency-Key": key, "If-Match": got.headers["ETag"]},
        )
    )
    request_id = await _registered_request(stack, tenant.id, key)
    await _write_behind(stack, tenant.id, deal["id"], Stage.PROPOSAL, request_id=request_id)
    r = await patch
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == "proposal"


async def test_a_nul_in_the_reason_is_a_422(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    r = await move(stack.http, h, deal["id"], "lost", "budget\x00cut")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "reason"]


async def test_temporal_never_reached_is_a_503_not_a_500(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker
) -> None:
    """An API whose Temporal has been down since it started (its lazy client never connected)."""
    async for stack in start_stack(
        database, client, sm, worker=False, temporal_address="127.0.0.1:1", update_budget_seconds=1.0
    ):
        tenant = await stack.new_tenant()
        h = stack.auth(tenant)
        deal = await make_deal(stack.http, h)  # the row is the record: 201 without Temporal
        r = await move(stack.http, h, deal["id"], "qualified")
        assert r.status_code == 503, r.text
        assert "never will be" in r.json()["detail"]
        stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
        assert stored["stage"] == "lead"
