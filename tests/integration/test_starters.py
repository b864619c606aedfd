"""workflows.starters against a real Temporal server: starts by type name carry the same options."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus

from domain.deals import DealWorkflowInput, deal_summary
from domain.stages import Stage
from workflows import search_attributes as sa
from workflows.starters import DEAL_WORKFLOW, deal_workflow_id, start_deal_workflows


def _seed(tenant_id: str, n: int) -> DealWorkflowInput:
    return DealWorkflowInput(
        tenant_id=tenant_id,
        campaign_id=str(uuid.uuid4()),
        name=f"Q3 flight {n}",
        advertiser_id=str(uuid.uuid4()),
        advertiser_name="Acme Mattress Co",
        show_id=None,
        value_usd=12_000 + n,
        stage=Stage.LEAD,
        stage_entered_at=datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


async def test_start_deal_workflows_counts_only_the_runs_it_started(client: Client) -> None:
    """A second pass over the same deals starts nothing and says so; the runs carry the deal's options."""
    # No worker polls this queue: the runs stay running, which is what the second pass must find.
    task_queue = f"tq-starters-{uuid.uuid4()}"
    tenant_id = str(uuid.uuid4())
    seeds = [_seed(tenant_id, n) for n in range(3)]
    try:
        assert await start_deal_workflows(client, seeds[:2], task_queue, concurrency=4) == 2
        # Two of these already run: only the third is new.
        assert await start_deal_workflows(client, seeds, task_queue, concurrency=4) == 1
        assert await start_deal_workflows(client, seeds, task_queue, concurrency=4) == 0
        for seed in seeds:
            desc = await client.get_workflow_handle(deal_workflow_id(tenant_id, seed.campaign_id)).describe()
            assert desc.workflow_type == DEAL_WORKFLOW
            assert desc.status == WorkflowExecutionStatus.RUNNING
            assert await desc.static_summary() == deal_summary(
                seed.name, seed.advertiser_name, seed.show_name, seed.value_usd
            )
            attrs = desc.typed_search_attributes
            assert attrs.get(sa.TENANT_ID) == tenant_id
            assert attrs.get(sa.DEAL_STAGE) == "lead"
            assert attrs.get(sa.DEAL_VALUE) == seed.value_usd
    finally:
        for seed in seeds:
            try:
                await client.get_workflow_handle(deal_workflow_id(tenant_id, seed.campaign_id)).terminate()
            except Exception:  # noqa: BLE001 - one that never started has nothing to end
                pass
