"""The metrics' own parts: route templates and label bounds, workflow types from ids, error kinds,
the settings and the URLs `up` prints (both endpoints in the real stack: tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode

from activities import metrics as product_metrics
from api import metrics
from cli import metrics_lines
from settings import Settings


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/deals/{campaign_id}")
    async def read(campaign_id: str) -> dict[str, str]:
        return {"id": campaign_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    metrics.install(app, path="/metrics")
    return app


def _requests(text: str) -> dict[tuple[str, str, str], float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["sponsorflow_http_requests"].samples
        if s.name == "sponsorflow_http_requests_total"
    }


async def test_routes_are_templates_and_unknown_paths_and_methods_share_one_series() -> None:
    app = _app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for deal in ("d-1", "d-2", "d-3"):
            assert (await http.get(f"/api/v1/deals/{deal}")).status_code == 200
        for junk in ("/wp-admin", "/.env", "/a/b/c"):
            assert (await http.get(junk)).status_code == 404
        assert (await http.request("BREW", "/api/v1/deals/d-1")).status_code == 405
        assert (await http.get("/boom")).status_code == 500
        text = (await http.get("/metrics")).text
    assert _requests(text) == {
        ("GET", "/api/v1/deals/{campaign_id}", "200"): 3,
        ("GET", "unmatched", "404"): 3,
        ("OTHER", "/api/v1/deals/{campaign_id}", "405"): 1,
        # An exception no handler answered: the error middleware outside says 500, and so do we.
        ("GET", "/boom", "500"): 1,
    }
    assert "_created" not in text


async def test_in_flight_counts_requests_being_served() -> None:
    app = FastAPI()
    release = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await release.wait()
        return {"ok": True}

    metrics.install(app, path="/metrics")
    transport = httpx.ASGITransport(app=app)

    async def in_flight() -> float:
        text = (await http.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return float(families["sponsorflow_http_requests_in_flight"].samples[0].value)

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert await in_flight() == 1  # the scrape itself
        pending = [asyncio.create_task(http.get("/slow")) for _ in range(3)]
        for _ in range(100):
            if await in_flight() == 4:  # the three slow ones and the scrape
                break
            await asyncio.sleep(0.01)
        assert await in_flight() == 4
        release.set()
        await asyncio.gather(*pending)
        assert await in_flight() == 1


def test_an_empty_path_serves_no_metrics_route() -> None:
    app = FastAPI()
    metrics.install(app, path="")
    assert not any(getattr(r, "path", None) == "/metrics" for r in app.routes)


@pytest.mark.parametrize(
    ("workflow_id", "expected"),
    [
        ("deal/t-1/c-1", "DealWorkflow"),
        ("io/t-1/i-1", "IoBookingWorkflow"),
        ("import/t-1/i-1", "CsvImportWorkflow"),
        ("match/t-1", "MatchRecalculationWorkflow"),
        ("match/t-1-2026-11-25T00:00:00Z", "MatchRecalculationWorkflow"),
        ("maintenance/sponsorflow", "MaintenanceWorkflow"),
        ("something-else", "other"),
    ],
)
def test_the_workflow_type_comes_from_the_id_never_the_tenant(workflow_id: str, expected: str) -> None:
    assert metrics.workflow_type_of(workflow_id) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RPCError("gone", RPCStatusCode.UNAVAILABLE, b""), "rpc_unavailable"),
        (RPCError("slow", RPCStatusCode.DEADLINE_EXCEEDED, b""), "rpc_deadline_exceeded"),
        (asyncio.CancelledError(), "cancelled"),
        (ValueError("x"), "ValueError"),
    ],
)
def test_error_kinds_are_short_and_bounded(exc: BaseException, expected: str) -> None:
    assert metrics.error_kind(exc) == expected


def test_the_metrics_settings() -> None:
    s = Settings()
    assert (s.api_metrics_path, s.worker_metrics_address) == ("/metrics", "127.0.0.1:9464")
    assert [s.worker_metrics_address_for(n) for n in (1, 2, 3)] == [
        "127.0.0.1:9464",
        "127.0.0.1:9465",
        "127.0.0.1:9466",
    ]
    off = Settings(api_metrics_path="", worker_metrics_address="")
    assert off.worker_metrics_address_for(2) == ""
    assert Settings(worker_metrics_address="0.0.0.0:9100").worker_metrics_address_for(2) == "0.0.0.0:9101"
    for bad in ({"api_metrics_path": "metrics"}, {"worker_metrics_address": "9464"}):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_up_prints_every_metrics_url() -> None:
    lines = metrics_lines(Settings(workers=2), "http://127.0.0.1:8000")
    assert lines == [
        "API metrics    http://127.0.0.1:8000/metrics",
        "worker metrics http://127.0.0.1:9464/metrics  (worker-1)",
        "worker metrics http://127.0.0.1:9465/metrics  (worker-2)",
    ]
    assert metrics_lines(Settings(workers=2, api_metrics_path="", worker_metrics_address=""), "x") == []


def test_product_metrics_count_nothing_outside_an_activity() -> None:
    # A helper called from a script or a unit test has no meter: a no-op, not an error.
    product_metrics.stage_moved("lead", "qualified")
    product_metrics.import_chunk_committed("shows", 3, {"name": 1, None: 1})
    product_metrics.match_phases({"load": 0.1})


def test_match_phase_buckets_reach_minutes() -> None:
    buckets: Any = product_metrics.BUCKETS[product_metrics.MATCH_PHASE]
    assert buckets == sorted(buckets) and buckets[-1] >= 300


def test_a_webhook_attempt_is_labelled_by_what_it_met() -> None:
    result = product_metrics.webhook_result
    assert result(204, None) == "delivered"
    assert result(302, "HTTP 302: a redirect, which is not followed") == "http_3xx"
    assert result(404, "HTTP 404") == "http_4xx"
    assert result(429, "HTTP 429") == "http_429"
    assert result(503, "HTTP 503") == "http_5xx"
    assert result(None, "no answer within 10 s (ReadTimeout)") == "timeout"
    assert result(None, "could not connect (refused, unreachable or TLS failure)") == "connection"
    assert result(None, "the connection closed without a complete answer") == "connection"
    assert result(None, "address refused: 127.0.0.1 is a loopback address") == "refused"
