"""The deal pipeline through HTTP, against real PostgreSQL and a real Temporal dev server."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from temporalio.service import RPCError

from db.deals import get_deal, insert_deal
from db.engine import tenant_tx
from db.models import DealStageHistory, Event
from domain.deals import ChangeStageInput, DealState
from domain.stages import ALL_STAGES, Stage, allowed_targets
from tests.conftest import Stack
from tests.helpers.factories import make_advertiser, make_deal, make_show, move
from worker import reconcile_deal_workflows
from workflows import search_attributes as sa
from workflows.deals import DealWorkflow
from workflows.starters import deal_workflow_id

# How to bring a fresh (lead) deal to each stage through allowed moves.
PATH_TO = {
    Stage.LEAD: [],
    Stage.QUALIFIED: [Stage.QUALIFIED],
    Stage.PROPOSAL: [Stage.PROPOSAL],
    Stage.NEGOTIATION: [Stage.NEGOTIATION],
    Stage.WON: [Stage.PROPOSAL, Stage.WON],
    Stage.LOST: [Stage.LOST],
}


async def _events(stack: Stack, tenant_id: uuid.UUID, deal_id: str, type_: str) -> int:
    async with tenant_tx(sm=stack.sm, tenant_id=tenant_id) as s:
        return int(
            await s.scalar(
                select(func.count()).select_from(Event).where(Event.entity_id == deal_id, Event.type == type_)
            )
            or 0
        )


async def test_every_transition_through_http(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    adv = await make_advertiser(stack.http, h)
    show = await make_show(stack.http, h)

    async def check(current: Stage, target: Stage) -> None:
        deal = await make_deal(stack.http, h, advertiser=adv, show=show)
        for step in PATH_TO[current]:
            r = await move(stack.http, h, deal["id"], step, "no budget" if step is Stage.LOST else None)
            assert r.status_code == 200, r.text
        before = await _events(stack, tenant.id, deal["id"], "deal.stage_changed")
        reason = "went with a competitor" if target is Stage.LOST else None
        r = await move(stack.http, h, deal["id"], target, reason)
        after = await _events(stack, tenant.id, deal["id"], "deal.stage_changed")
        stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
        label = f"{current.value} -> {target.value}"
        if current is target:
            assert r.status_code == 200, label
            assert after == before, f"no-op {label} emitted an event"
            assert stored["stage"] == current.value
        elif target in allowed_targets(current):
            assert r.status_code == 200, f"{label}: {r.text}"
            assert r.json()["stage"] == target.value
            assert stored["stage"] == target.value
            assert after == before + 1, label
            assert stored["history"][-1]["from"] == current.value
            assert stored["history"][-1]["to"] == target.value
        else:
            assert r.status_code == 409, f"{label}: {r.status_code} {r.text}"
            body = r.json()
            assert isinstance(body["detail"], str) and body["code"] == "stage_not_allowed"
            assert body["allowed_stages"] == [s.value for s in allowed_targets(current)]
            assert stored["stage"] == current.value
            assert after == before, f"rejected {label} emitted an event"

    pairs = list(itertools.product(ALL_STAGES, ALL_STAGES))
    # Bounded fan-out keeps the 2-core machine responsive while covering all 36 pairs.
    sem = asyncio.Semaphore(6)

    async def guarded(c: Stage, t: Stage) -> None:
        async with sem:
            await check(c, t)

    await asyncio.gather(*(guarded(c, t) for c, t in pairs))


async def test_deal_shape_history_and_weighted_value(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, value_usd=12000)
    assert deal["stage"] == "lead" and deal["probability"] == 10
    assert deal["weighted_value_usd"] == 1200
    assert (await move(stack.http, h, deal["id"], "proposal")).status_code == 200
    r = await move(stack.http, h, deal["id"], "lost", "Budget moved to Q3")
    body = r.json()
    assert (
        body["stage"] == "lost" and body["probability"] == 0 and body["lost_reason"] == "Budget moved to Q3"
    )
    assert [(e["from"], e["to"]) for e in body["history"]] == [
        (None, "lead"),
        ("lead", "proposal"),
        ("proposal", "lost"),
    ]
    assert body["history"][-1]["reason"] == "Budget moved to Q3"
    assert body["days_in_stage"] == 0
    events = (await stack.http.get(f"/api/v1/events?entity_id={deal['id']}", headers=h)).json()["items"]
    assert [e["type"] for e in events] == ["deal.created", "deal.stage_changed", "deal.stage_changed"]
    assert events[2]["payload"]["from"] == "proposal" and events[2]["payload"]["to"] == "lost"


async def test_reopening_a_lost_deal_starts_a_new_run(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    assert (await move(stack.http, h, deal["id"], "lost", "no reply")).status_code == 200
    wid = deal_workflow_id(str(tenant.id), deal["id"])
    first = await stack.client.get_workflow_handle(wid).describe()
    await stack.client.get_workflow_handle(wid).result()  # the lost deal's run has ended
    r = await move(stack.http, h, deal["id"], "lead")
    assert r.status_code == 200, r.text
    assert r.json()["lost_reason"] is None
    second = await stack.client.get_workflow_handle(wid).describe()
    assert second.run_id != first.run_id
    assert second.status is not None and second.status.name == "RUNNING"
    state = await stack.client.get_workflow_handle(wid).query(DealWorkflow.state)
    assert state.stage is Stage.LEAD


async def test_update_with_start_on_a_postgres_only_deal(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    adv = await make_advertiser(stack.http, h, name="Acme")
    show = await make_show(stack.http, h, name="The Daily Grind")
    # As an import will: the row exists, no workflow was ever started.
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        campaign = await insert_deal(
            session=s,
            tenant_id=tenant.id,
            advertiser_id=uuid.UUID(adv["id"]),
            show_id=uuid.UUID(show["id"]),
            name="Imported",
            value_usd=Decimal("18400"),
            stage=Stage.QUALIFIED,
            at=datetime.now(UTC),
        )
    wid = deal_workflow_id(str(tenant.id), str(campaign.id))
    r = await move(stack.http, h, str(campaign.id), "proposal")
    assert r.status_code == 200, r.text
    assert r.json()["history"][-1] == {
        "from": "qualified",
        "to": "proposal",
        "at": r.json()["history"][-1]["at"],
        "reason": None,
    }
    desc = await stack.client.get_workflow_handle(wid).describe()
    assert await desc.static_summary() == "Deal: Acme x The Daily Grind, $18,400"
    state = await stack.client.get_workflow_handle(wid).query(DealWorkflow.state)
    assert state.stage is Stage.PROPOSAL


async def test_worker_start_gives_open_deals_without_a_workflow_their_workflow(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    adv = await make_advertiser(stack.http, h, name="Acme")
    posted = await make_deal(stack.http, h, advertiser=adv)
    # Rows whose workflow never started (as when Temporal was down at POST time): one open, one won.
    rows = {}
    for name, stage in (("Orphan", Stage.PROPOSAL), ("Closed", Stage.WON)):
        async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
            c = await insert_deal(
                session=s,
                tenant_id=tenant.id,
                advertiser_id=uuid.UUID(adv["id"]),
                show_id=None,
                name=name,
                value_usd=Decimal("9000"),
                stage=stage,
                at=datetime.now(UTC),
            )
        rows[name] = deal_workflow_id(str(tenant.id), str(c.id))
    posted_run = (await stack.client.get_workflow_handle(posted["workflow_id"]).describe()).run_id

    async def sweep() -> dict[uuid.UUID, int]:
        return await reconcile_deal_workflows(stack.client, stack.settings, stack.sm, tenant_ids=[tenant.id])

    assert await sweep() == {tenant.id: 1}
    orphan = await stack.client.get_workflow_handle(rows["Orphan"]).describe()
    assert orphan.status is not None and orphan.status.name == "RUNNING"
    assert await orphan.static_summary() == "Deal: Acme x Orphan, $9,000"
    assert orphan.typed_search_attributes.get(sa.DEAL_STAGE) == "proposal"
    state = await stack.client.get_workflow_handle(rows["Orphan"]).query(DealWorkflow.state)
    assert state.stage is Stage.PROPOSAL
    # The running one is left as it was; the closed deal gets no workflow.
    assert (await stack.client.get_workflow_handle(posted["workflow_id"]).describe()).run_id == posted_run
    with pytest.raises(RPCError, match="not found"):
        await stack.client.get_workflow_handle(rows["Closed"]).describe()
    # A second sweep finds nothing to do (even if visibility does not list the new run yet).
    assert await sweep() == {}
    assert (await stack.client.get_workflow_handle(rows["Orphan"]).describe()).run_id == orphan.run_id


async def test_fifty_concurrent_patches_keep_one_chain(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    rng = random.Random(7)
    targets = [rng.choice(["lead", "qualified", "proposal", "negotiation", "won", "lost"]) for _ in range(50)]
    responses = await asyncio.gather(
        *(move(stack.http, h, deal["id"], t, "lost it" if t == "lost" else None) for t in targets)
    )
    assert all(r.status_code < 500 for r in responses), [r.text for r in responses if r.status_code >= 500]
    assert {r.status_code for r in responses} <= {200, 409}
    body = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
    history = body["history"]
    for prev, cur in itertools.pairwise(history):
        assert cur["from"] == prev["to"], "\n".join(str(x) for x in history)
    events = (
        await stack.http.get(
            f"/api/v1/events?entity_id={deal['id']}&type=deal.stage_changed&limit=200", headers=h
        )
    ).json()["items"]
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in events] == [
        (x["from"], x["to"]) for x in history[1:]
    ]
    assert history[-1]["to"] == body["stage"]
    # Every 200 answered with a history that was true at that moment: a prefix of the final one.
    for r in responses:
        if r.status_code == 200:
            answered = r.json()["history"]
            assert answered == history[: len(answered)], (
                r.headers.get("x-debug"),
                [(x["from"], x["to"], x["at"][17:]) for x in history],
            )
            assert answered[-1]["to"] == r.json()["stage"]
    wid = deal_workflow_id(str(tenant.id), deal["id"])
    if Stage(body["stage"]) in (Stage.WON, Stage.LOST):
        handle = stack.client.get_workflow_handle_for(DealWorkflow.run, wid)
        result = await asyncio.wait_for(handle.result(), 30)  # no run may linger on a closed deal
        assert result.stage.value == body["stage"]
    else:
        state: DealState = await stack.client.get_workflow_handle(wid).query(DealWorkflow.state)
        assert state.stage.value == body["stage"]
        assert state.probability == body["probability"]


async def test_ops_find_deals_by_stage(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    assert (await move(stack.http, h, deal["id"], "negotiation")).status_code == 200
    wid = deal_workflow_id(str(tenant.id), deal["id"])
    query = f'DealStage="negotiation" AND TenantId="{tenant.id}"'
    found: list[str] = []
    for _ in range(50):  # visibility is eventually consistent
        found = [w.id async for w in stack.client.list_workflows(query)]
        if wid in found:
            break
        await asyncio.sleep(0.2)
    assert found == [wid]


async def test_list_filters_and_paging(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    adv = await make_advertiser(stack.http, h)
    other = await make_advertiser(stack.http, h)
    show = await make_show(stack.http, h)
    ids = [(await make_deal(stack.http, h, advertiser=adv, show=show))["id"] for _ in range(5)]
    await make_deal(stack.http, h, advertiser=other, show=show)
    assert (await move(stack.http, h, ids[0], "qualified")).status_code == 200
    seen: list[str] = []
    cursor = None
    while True:
        params = {"advertiser_id": adv["id"], "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await stack.http.get("/api/v1/deals", params=params, headers=h)).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    q = (await stack.http.get("/api/v1/deals?stage=qualified", headers=h)).json()["items"]
    assert [d["id"] for d in q] == [ids[0]]
    r = await stack.http.get("/api/v1/deals?stage=closing", headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "stage"]


async def test_created_deal_has_a_running_workflow_with_search_attributes(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h, value_usd=5000)
    desc = await stack.client.get_workflow_handle(deal_workflow_id(str(tenant.id), deal["id"])).describe()
    attrs = {k.name: v for k, v in ((p.key, p.value) for p in desc.typed_search_attributes)}
    assert attrs["TenantId"] == str(tenant.id)
    assert attrs["DealStage"] == "lead"
    assert attrs["DealValue"] == 5000.0
    summary = await desc.static_summary()
    assert summary and summary.endswith("$5,000")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"advertiser_id": "not-a-uuid", "name": "x", "value_usd": 1}, "advertiser_id"),
        ({"advertiser_id": str(uuid.uuid4()), "name": "x", "value_usd": 1}, "advertiser_id"),
        ({"name": "x", "value_usd": 1}, "advertiser_id"),
        ({"advertiser_id": "ADV", "name": "x" * 301, "value_usd": 1}, "name"),
        ({"advertiser_id": "ADV", "name": "x", "value_usd": -5}, "value_usd"),
        ({"advertiser_id": "ADV", "name": "x", "value_usd": "lots"}, "value_usd"),
        ({"advertiser_id": "ADV", "name": "x", "value_usd": 1, "stage": "closing"}, "stage"),
        ({"advertiser_id": "ADV", "show_id": str(uuid.uuid4()), "name": "x", "value_usd": 1}, "show_id"),
        ({"advertiser_id": "ADV", "name": "x", "value_usd": 1, "colour": "red"}, "colour"),
    ],
)
async def test_bad_deal_input_is_a_clear_422_and_writes_nothing(
    stack: Stack, body: dict[str, object], field: str
) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    adv = await make_advertiser(stack.http, h)
    if body.get("advertiser_id") == "ADV":
        body = {**body, "advertiser_id": adv["id"]}
    r = await stack.http.post("/api/v1/deals", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"])
    assert (await stack.http.get("/api/v1/deals", headers=h)).json()["items"] == []


async def test_bad_stage_requests(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    r = await move(stack.http, h, deal["id"], "closing")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "stage"]
    r = await move(stack.http, h, deal["id"], "lost")
    assert r.status_code == 422 and "reason" in str(r.json()["detail"])
    r = await stack.http.patch(
        f"/api/v1/deals/{deal['id']}/stage",
        content=b'{"stage": ',
        headers={**h, "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert (await move(stack.http, h, str(uuid.uuid4()), "qualified")).status_code == 404
    assert (await move(stack.http, h, "nope", "qualified")).status_code == 404
    stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
    assert stored["stage"] == "lead" and len(stored["history"]) == 1


async def test_postgres_row_matches_workflow_after_moves(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    for stage in ("qualified", "proposal", "negotiation"):
        assert (await move(stack.http, h, deal["id"], stage)).status_code == 200
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        row = await get_deal(session=s, campaign_id=uuid.UUID(deal["id"]))
        n = await s.scalar(
            select(func.count())
            .select_from(DealStageHistory)
            .where(DealStageHistory.campaign_id == uuid.UUID(deal["id"]))
        )
    assert row is not None and row.deal.stage == "negotiation" and row.deal.probability == 75
    assert n == 4
    state = await stack.client.get_workflow_handle(deal_workflow_id(str(tenant.id), deal["id"])).query(
        DealWorkflow.state
    )
    assert state.stage_entered_at == row.deal.stage_changed_at


async def test_duplicate_external_id_is_409_and_keeps_one_deal(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    adv = await make_advertiser(stack.http, h)
    first = await make_deal(stack.http, h, advertiser=adv, external_id="crm-42")
    r = await stack.http.post(
        "/api/v1/deals",
        json={"advertiser_id": adv["id"], "name": "again", "value_usd": 1, "external_id": "crm-42"},
        headers=h,
    )
    assert r.status_code == 409 and "crm-42" in r.json()["detail"]
    items = (await stack.http.get("/api/v1/deals", headers=h)).json()["items"]
    assert [d["id"] for d in items] == [first["id"]]


async def test_a_deal_closed_elsewhere_is_answered_from_its_row(stack: Stack) -> None:
    """The API's cached workflow seed still says "open"; the deal was won meanwhile."""
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    deal = await make_deal(stack.http, h)
    assert (await move(stack.http, h, deal["id"], "proposal")).status_code == 200
    wid = deal_workflow_id(str(tenant.id), deal["id"])
    # Won through the SDK, behind the API's back.
    await stack.client.get_workflow_handle(wid).execute_update(
        DealWorkflow.change_stage, ChangeStageInput(stage=Stage.WON)
    )
    r = await move(stack.http, h, deal["id"], "lead")
    assert r.status_code == 409, r.text
    assert r.json()["current_stage"] == "won"
    assert r.json()["allowed_stages"] == []
    handle = stack.client.get_workflow_handle_for(DealWorkflow.run, wid)
    assert (await asyncio.wait_for(handle.result(), 30)).stage is Stage.WON  # no run lingers
    stored = (await stack.http.get(f"/api/v1/deals/{deal['id']}", headers=h)).json()
    assert stored["stage"] == "won" and [x["to"] for x in stored["history"]] == ["lead", "proposal", "won"]


async def test_a_retried_post_with_an_idempotency_key_creates_one_deal(stack: Stack) -> None:
    tenant = await stack.new_tenant()
    h = stack.auth(tenant)
    advertiser = await make_advertiser(stack.http, h)
    body = {"advertiser_id": advertiser["id"], "name": "Retried flight", "value_usd": 5000}
    key = {**h, "Idempotency-Key": "crm-sync-4711"}
    # A client retrying after a timeout, twice at once and once more later: one deal, one event.
    first, twin = await asyncio.gather(
        stack.http.post("/api/v1/deals", json=body, headers=key),
        stack.http.post("/api/v1/deals", json=body, headers=key),
    )
    later = await stack.http.post("/api/v1/deals", json=body, headers=key)
    assert {first.status_code, twin.status_code, later.status_code} == {201}
    assert first.json()["id"] == twin.json()["id"] == later.json()["id"]
    listed = (await stack.http.get("/api/v1/deals", headers=h)).json()["items"]
    assert [d["id"] for d in listed] == [first.json()["id"]]
    async with tenant_tx(sm=stack.sm, tenant_id=tenant.id) as s:
        created = await s.scalar(select(func.count()).select_from(Event).where(Event.type == "deal.created"))
    assert created == 1
    # Another key is another deal; the same key in another tenant is that tenant's own.
    other = await stack.http.post(
        "/api/v1/deals", json=body, headers={**h, "Idempotency-Key": "crm-sync-4712"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    t2 = await stack.new_tenant()
    adv2 = await make_advertiser(stack.http, stack.auth(t2))
    r = await stack.http.post(
        "/api/v1/deals",
        json={**body, "advertiser_id": adv2["id"]},
        headers={**stack.auth(t2), "Idempotency-Key": "crm-sync-4711"},
    )
    assert r.status_code == 201 and r.json()["id"] != first.json()["id"]
    r = await stack.http.post("/api/v1/deals", json=body, headers={**h, "Idempotency-Key": "x" * 201})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
