"""Test helpers shared by several test modules (moved from tests/integration/test_matching.py)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Stack
from workflows.matching import MatchRecalculationWorkflow

ALIGNED = {
    "name": "Founders Daily",
    "avg_downloads": 40000,
    "cpm_usd": 25,
    "categories": ["Business", "Technology"],
    "geo": {"US": 0.8, "CA": 0.1},
    "age": {"25-34": 0.6, "35-44": 0.3},
    "brand_safety": {"debated_social_issues": "low"},
}


MISALIGNED = {
    "name": "Garden Hour",
    "avg_downloads": 5000,
    "cpm_usd": 18,
    "categories": ["Leisure"],
    "geo": {"GB": 0.9},
    "age": {"55+": 0.8},
}


FINTECH = {
    "name": "Ledgerly",
    "domain": "ledgerly.example",
    "target_categories": ["Business", "Technology"],
    "target_geo": ["US", "CA"],
    "target_age": ["25-34", "35-44"],
    "brand_safety_tolerance": "medium",
    "budget_usd": 50000,
}


async def recalculate(stack: Stack, h: dict[str, str]) -> dict[str, Any]:
    r = await stack.http.post("/api/match/recalculate", headers=h)
    assert r.status_code == 202, r.text
    body = dict(r.json())
    handle = stack.client.get_workflow_handle_for(
        MatchRecalculationWorkflow.run, body["workflow_id"], run_id=body["run_id"]
    )
    result = await handle.result()
    body["result"] = result
    return body


async def matches(stack: Stack, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await stack.http.get("/api/v1/matches", params=params, headers=h)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])
