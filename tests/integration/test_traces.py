"""One trace per request, from HTTP through Temporal to SQL, and JSON logs that carry the ids.

A real in-process API and worker (real PostgreSQL, real Temporal dev server) with tracing on:
SPONSORFLOW_TRACE_FILE set, plus an in-memory exporter on the process's tracer provider. The
worker's client carries the SDK's OpenTelemetry plugin, as `sponsorflow worker` does.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

import telemetry
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker, make_engine, make_sessionmaker
from db.tenants import NewTenant, create_tenant
from settings import Settings, connect_temporal
from tests.conftest import make_settings
from tests.helpers.factories import make_advertiser, make_deal, move
from workflows.deals import DealWorkflow
from workflows.starters import deal_workflow_id

# The process's tracer provider is global and set once: one in-memory exporter for the module.
_EXPORTER = InMemorySpanExporter()


@dataclass
class Traced:
    """A traced API + worker, the spans they export and the JSON log lines they write."""

    settings: Settings
    http: httpx.AsyncClient
    sm: SessionMaker
    logs: io.StringIO

    def spans(self, trace_id: str) -> list[ReadableSpan]:
        """Every finished span of one trace (hex id, as the traceparent carries it)."""
        telemetry.flush_traces()
        return [s for s in _EXPORTER.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (each must parse)."""
        return [json.loads(line) for line in self.logs.getvalue().splitlines() if line.strip()]


@pytest.fixture
async def traced(database: EmbeddedDatabase, client: Client, tmp_path: Path) -> AsyncIterator[Traced]:
    from api.main import create_app
    from worker import build_worker

    settings = make_settings(
        database,
        client,
        trace_file=tmp_path / "traces.jsonl",
        log_format="json",
        admin_token="test-admin-token-that-is-long",
    )
    if not getattr(_EXPORTER, "_sf_added", False):
        telemetry.add_span_processor(SimpleSpanProcessor(_EXPORTER), settings)
        _EXPORTER._sf_added = True  # type: ignore[attr-defined]
    _EXPORTER.clear()
    # The worker's own client and engine, traced as `sponsorflow worker` traces them.
    worker_client = await connect_temporal(settings)
    engine = make_engine(url=database.app_url, pool_size=5)
    telemetry.instrument_engine(engine, settings)
    sm = make_sessionmaker(engine=engine)
    logs = io.StringIO()
    handler = telemetry.log_handler(settings, service="test", stream=logs)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    app = create_app(settings)
    try:
        async with build_worker(worker_client, settings, sm), app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
                yield Traced(settings=settings, http=http, sm=sm, logs=logs)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        await engine.dispose()


async def _tenant(t: Traced) -> tuple[NewTenant, dict[str, str]]:
    tenant = await create_tenant(sm=t.sm, name=f"Traced {uuid.uuid4().hex[:6]}")
    return tenant, {"Authorization": f"Bearer {tenant.api_key}"}


def _trace_id(r: httpx.Response) -> str:
    version, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    return trace_id


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names, parent = [], span.parent
    while parent is not None and parent.span_id in by_id:
        up = by_id[parent.span_id]
        names.append(up.name)
        parent = up.parent
    return names


async def test_a_patch_is_one_trace_from_http_through_the_update_and_activity_to_sql(
    traced: Traced, client: Client
) -> None:
    tenant, h = await _tenant(traced)
    adv = await make_advertiser(traced.http, h)
    deal = await make_deal(traced.http, h, advertiser=adv)

    r = await move(traced.http, h, deal["id"], "qualified")
    assert r.status_code == 200, r.text
    trace_id = _trace_id(r)
    assert r.headers["traceparent"].endswith("-01")  # sampled: its spans were recorded
    spans = traced.spans(trace_id)
    by_id = {s.context.span_id: s for s in spans}
    names = [s.name for s in spans]

    # The API's server span is the root, and every span of the trace hangs under it.
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["PATCH /api/v1/deals/{campaign_id}/stage"], names
    assert format(roots[0].context.span_id, "016x") == r.headers["traceparent"].split("-")[2]
    assert all(s.parent is None or s.parent.span_id in by_id for s in spans), names
    # The Temporal client call, the workflow's update handler and the activity it runs.
    handler = next(s for s in spans if s.name == "HandleUpdate:change_stage")
    activity = next(s for s in spans if s.name == "RunActivity:record_stage_change")
    assert handler.attributes is not None
    assert handler.attributes["temporalWorkflowID"] == deal_workflow_id(str(tenant.id), deal["id"])
    assert any(n.startswith(("StartWorkflowUpdate:", "StartUpdateWithStartWorkflow:")) for n in names), names
    assert "HandleUpdate:change_stage" in _ancestors(activity, by_id)
    # The activity's SQL (the stage write) is in the same trace, under the activity.
    sql_under_activity = [
        s
        for s in spans
        if s.attributes
        and s.attributes.get("db.system") == "postgresql"
        and activity.name in _ancestors(s, by_id)
    ]
    assert sql_under_activity, names
    assert any(
        "UPDATE" in str(s.attributes.get("db.statement", "")) for s in sql_under_activity if s.attributes
    )
    # ... and the API's own SQL (the key lookup) too, under the server span only.
    api_sql = [s for s in spans if s.attributes and s.attributes.get("db.system") == "postgresql"]
    assert len(api_sql) > len(sql_under_activity)

    # The plugin adds headers, never commands: the traced history replays on an untraced worker.
    history = await client.get_workflow_handle(deal_workflow_id(str(tenant.id), deal["id"])).fetch_history()
    replayer = Replayer(workflows=[DealWorkflow], data_converter=pydantic_data_converter)
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None


async def test_the_trace_file_holds_parseable_json_lines_of_the_request(traced: Traced) -> None:
    _, h = await _tenant(traced)
    adv = await make_advertiser(traced.http, h)
    deal = await make_deal(traced.http, h, advertiser=adv)
    r = await move(traced.http, h, deal["id"], "proposal")
    assert r.status_code == 200, r.text
    trace_id = _trace_id(r)
    telemetry.flush_traces()
    assert traced.settings.trace_file is not None
    lines = [json.loads(line) for line in traced.settings.trace_file.read_text().splitlines()]
    mine = [s for s in lines if s["trace_id"] == trace_id]
    assert {"PATCH /api/v1/deals/{campaign_id}/stage", "HandleUpdate:change_stage"} <= {
        s["name"] for s in mine
    }
    ids = {s["span_id"] for s in mine}
    assert sum(1 for s in mine if s["parent_id"] is None) == 1
    assert all(s["parent_id"] is None or s["parent_id"] in ids for s in mine)
    assert all(s["duration_ms"] >= 0 and s["start"] <= s["end"] for s in mine)
    # `sponsorflow trace` prints the same trace as a tree.
    from cli import print_trace

    out, err = io.StringIO(), io.StringIO()
    assert print_trace(traced.settings.trace_file, r.headers["traceparent"], out, err) == 0, err.getvalue()
    printed = out.getvalue().splitlines()
    assert printed[0].startswith(f"trace {trace_id}: {len(mine)} spans")
    assert "PATCH /api/v1/deals/{campaign_id}/stage" in printed[1]
    assert any(
        line.endswith("  RunActivity:record_stage_change") or "RunActivity:record" in line for line in printed
    )


async def test_json_logs_carry_the_ids_and_never_the_key(traced: Traced) -> None:
    tenant, h = await _tenant(traced)
    adv = await make_advertiser(traced.http, h)
    deal = await make_deal(traced.http, h, advertiser=adv)
    # A request that presents the key in every place a careless log line could pick it up.
    r = await traced.http.patch(
        f"/api/v1/deals/{deal['id']}/stage",
        json={"stage": "won"},  # forbidden from lead: a 409 with a logged rejection path
        headers={**h, "Cookie": f"sf_session=forged-{tenant.api_key}"},
    )
    assert r.status_code == 409, r.text
    careless = logging.getLogger("sponsorflow.test")
    careless.warning("headers seen: %s; admin %s", dict(r.request.headers), traced.settings.admin_token)
    careless.warning("presented %s", tenant.api_key)
    r2 = await move(traced.http, h, deal["id"], "qualified")
    assert r2.status_code == 200
    trace_id = _trace_id(r2)

    raw = traced.logs.getvalue()
    assert tenant.api_key not in raw
    assert tenant.api_key.split("_", 2)[2] not in raw  # not even the secret part
    assert "test-admin-token-that-is-long" not in raw
    assert f"sf_{tenant.api_key.split('_')[1]}_[REDACTED]" in raw  # the public prefix stays

    lines = traced.log_lines()
    access = [x for x in lines if x["logger"] == "sponsorflow.access"]
    patch = next(x for x in access if x.get("trace_id") == trace_id)
    assert patch["http"] == {
        "method": "PATCH",
        "route": "/api/v1/deals/{campaign_id}/stage",
        "path": f"/api/v1/deals/{deal['id']}/stage",
        "status": 200,
        "duration_ms": patch["http"]["duration_ms"],
    }
    assert patch["tenant_id"] == str(tenant.id)
    assert patch["workflow_id"] == deal_workflow_id(str(tenant.id), deal["id"])
    assert patch["level"] == "INFO" and patch["service"] == "test"
    assert any(x["http"]["status"] == 409 and x["tenant_id"] == str(tenant.id) for x in access)
