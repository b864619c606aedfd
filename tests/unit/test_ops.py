"""The operations pack (ops/): Prometheus scrape config, alert rules, Grafana provisioning and dashboard.

Parsed only (promtool and Grafana are not installed here): every expression parses as PromQL
(`promql-parser`, the Rust parser Prometheus-compatible tools use) and names only metrics the
API and the workers export. The catalogue of names is read from the code that exports them
(the API's registry, the product counters' names) plus the Temporal SDK's own, which the SDK
core exports and only a running worker shows (listed here from a scrape of one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

import activities.metrics as product
from api.metrics import ApiMetrics, PoolCollector
from worker import NONDETERMINISM_METRIC

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS = OPS / "prometheus" / "prometheus.yml"
ALERTS = OPS / "prometheus" / "alerts.yml"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards"
DASHBOARD = OPS / "grafana" / "dashboards" / "sponsorflow.json"
PATCH_ROUTE = "/api/v1/deals/{campaign_id}/stage"

# The Temporal SDK core's metrics as the worker's PrometheusConfig names them (counters `_total`,
# durations `_seconds`): the ones a scrape of a running worker showed, plus the failure and
# completion counters that appear only once something failed or completed.
SDK_COUNTERS = (
    "activity_execution_cancelled",
    "activity_execution_failed",
    "activity_task_received",
    "local_activity_execution_cancelled",
    "local_activity_execution_failed",
    "local_activity_total",
    "long_request",
    "long_request_failure",
    "request",
    "request_failure",
    "sticky_cache_hit",
    "sticky_cache_miss",
    "sticky_cache_total_forced_eviction",
    "worker_start",
    "workflow_cancelled",
    "workflow_completed",
    "workflow_continue_as_new",
    "workflow_failed",
    "workflow_task_execution_failed",
    "workflow_task_queue_poll_empty",
    "workflow_task_queue_poll_succeed",
)
SDK_HISTOGRAMS = (
    "activity_execution_latency",
    "activity_schedule_to_start_latency",
    "activity_succeed_endtoend_latency",
    "local_activity_execution_latency",
    "local_activity_succeed_endtoend_latency",
    "long_request_latency",
    "request_latency",
    "workflow_endtoend_latency",
    "workflow_task_execution_latency",
    "workflow_task_replay_latency",
    "workflow_task_schedule_to_start_latency",
)
SDK_GAUGES = ("num_pollers", "sticky_cache_size", "worker_task_slots_available", "worker_task_slots_used")
# Prometheus's own series about every scrape.
SYNTHETIC = ("up", "scrape_duration_seconds", "scrape_samples_scraped")


def _histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


def api_metric_names() -> set[str]:
    """Every series name the API's registry exports (families read from the code, not a list)."""
    metrics = ApiMetrics()
    app = FastAPI()
    # A real engine's pool (never connected): PoolCollector reads its figures at scrape time.
    app.state.engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    metrics.registry.register(PoolCollector(app))
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= _histogram(family.name)
        else:
            names.add(family.name)
        names |= {s.name for s in family.samples}
    return names


def worker_metric_names() -> set[str]:
    names = {f"temporal_{n}_total" for n in SDK_COUNTERS} | {f"temporal_{n}" for n in SDK_GAUGES}
    for n in SDK_HISTOGRAMS:
        names |= _histogram(f"temporal_{n}_seconds")
    for n in (product.STAGE_MOVES, product.STALLS, product.IMPORT_ROWS, product.IMPORT_ROW_ERRORS):
        names.add(f"{n}_total")
    for n in (product.IO_DELIVERIES, product.IO_MAKEGOODS, product.IO_INVOICES, NONDETERMINISM_METRIC):
        names.add(f"{n}_total")
    for n in (product.WEBHOOK_ATTEMPTS, product.WEBHOOK_FAILED):
        names.add(f"{n}_total")
    names |= _histogram(f"{product.MATCH_PHASE}_seconds")
    return names


@pytest.fixture(scope="module")
def catalogue() -> set[str]:
    return api_metric_names() | worker_metric_names() | set(SYNTHETIC)


# ---------------------------------------------------------------------------- PromQL


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector of a parsed PromQL expression."""
    if isinstance(node, promql.VectorSelector):
        yield node
    elif isinstance(node, promql.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(node, promql.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, promql.ParenExpr | promql.UnaryExpr | promql.SubqueryExpr):
        yield from selectors(node.expr)


def parse(expr: str) -> Any:
    """Parses one PromQL expression (Grafana's `$__rate_interval` as a 5m range)."""
    return promql.parse(expr.replace("$__rate_interval", "5m"))


def metric_names(expr: str) -> set[str]:
    names = set()
    for selector in selectors(parse(expr)):
        assert selector.name, f"a selector without a metric name in {expr!r}"
        names.add(selector.name)
    return names


def label_values(expr: str, label: str) -> set[str]:
    """The values `label` is matched against (=, =~) anywhere in `expr`."""
    return {
        m.value
        for selector in selectors(parse(expr))
        for m in selector.matchers.matchers
        if m.name == label and m.op in (promql.MatchOp.Equal, promql.MatchOp.Re)
    }


def test_the_checks_catch_a_wrong_name_and_a_bad_expression(catalogue: set[str]) -> None:
    assert metric_names("sum(rate(sponsorflow_http_requests_total[5m]))") <= catalogue
    assert not metric_names("rate(sponsorflow_http_request_total[5m])") <= catalogue  # a typo
    assert not metric_names("sponsorflow_deal_stage_moves") <= catalogue  # no _total
    with pytest.raises(Exception):  # noqa: B017 - the parser raises a bare ValueError-like error
        parse("sum(rate(sponsorflow_http_requests_total[5m])")
    assert "temporal_workflow_task_execution_failed_total" in catalogue
    assert "sponsorflow_match_recalculation_phase_duration_seconds_bucket" in catalogue
    assert "sponsorflow_db_pool_checked_out" in catalogue


# ---------------------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    groups = doc["groups"]
    assert groups and all(g.get("name") and g.get("rules") for g in groups)
    return [rule for group in groups for rule in group["rules"]]


def test_scrape_config_names_the_api_the_workers_and_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {"sponsorflow-api", "sponsorflow-worker"}
    api = jobs["sponsorflow-api"]
    assert api["metrics_path"] == "/metrics"
    assert [t for sc in api["static_configs"] for t in sc["targets"]] == ["api:8000"]
    (dns,) = jobs["sponsorflow-worker"]["dns_sd_configs"]
    assert dns["port"] == 9464 and dns["type"] == "A" and dns["names"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    for job in jobs.values():
        assert re.fullmatch(r"[a-zA-Z_][\w-]*", job["job_name"])


def test_every_alert_parses_uses_known_metrics_and_says_what_to_do(
    rules: list[dict[str, Any]], catalogue: set[str]
) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        alert = rule["alert"]
        assert re.fullmatch(r"Sponsorflow[A-Z]\w+", alert), alert
        unknown = metric_names(rule["expr"]) - catalogue
        assert not unknown, f"{alert} uses metrics nobody exports: {sorted(unknown)}"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), alert
        annotations = rule["annotations"]
        assert len(annotations.get("summary", "")) > 20, f"{alert} has no summary"
        assert len(annotations.get("runbook", "")) > 20, f"{alert} has no runbook"
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), alert


def test_the_alerts_cover_what_issue_16_asks(rules: list[dict[str, Any]]) -> None:
    used: dict[str, set[str]] = {rule["alert"]: metric_names(rule["expr"]) for rule in rules}
    every = set().union(*used.values())
    for name in (
        "sponsorflow_workflow_nondeterminism_total",
        "temporal_workflow_task_execution_failed_total",
        "temporal_activity_execution_failed_total",
        "temporal_workflow_task_schedule_to_start_latency_seconds_bucket",
        "temporal_activity_schedule_to_start_latency_seconds_bucket",
        "sponsorflow_import_row_errors_total",
        "sponsorflow_import_rows_total",
        "sponsorflow_http_requests_total",
        "sponsorflow_http_request_duration_seconds_bucket",
        "sponsorflow_deal_stalls_total",
        "sponsorflow_temporal_client_errors_total",
        "up",
    ):
        assert name in every, f"no alert on {name}"
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    # The PATCH alerts select the route template the API labels (never a raw path).
    for alert in ("SponsorflowStageChangeErrors", "SponsorflowStageChangeSlow"):
        assert label_values(by_name[alert], "route") == {PATCH_ROUTE}, alert
    assert "rpc_unavailable" in "".join(label_values(by_name["SponsorflowTemporalUnreachable"], "error"))


def test_the_patch_route_the_alerts_watch_exists() -> None:
    from api.main import create_app

    # The route label is the route's template, as the OpenAPI document names its path.
    paths = create_app().openapi()["paths"]
    assert "patch" in paths[PATCH_ROUTE]


# ---------------------------------------------------------------------------- Grafana


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def test_the_dashboard_is_provisioned_on_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    (datasource,) = [
        ds
        for path in sorted(DATASOURCES.glob("*.yml"))
        for ds in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = [
        p
        for path in sorted(DASHBOARD_PROVIDERS.glob("*.yml"))
        for p in yaml.safe_load(path.read_text())["providers"]
    ]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_every_panel_parses_and_uses_known_metrics(dashboard: dict[str, Any], catalogue: set[str]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - catalogue
            assert not unknown, f"panel {panel['title']!r} uses metrics nobody exports: {sorted(unknown)}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_dashboard_shows_what_issue_16_asks(dashboard: dict[str, Any]) -> None:
    shown = {
        name
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    wanted = {
        "sponsorflow_http_requests_total",
        "sponsorflow_http_request_duration_seconds_bucket",
        "sponsorflow_http_requests_in_flight",
        "sponsorflow_temporal_client_request_duration_seconds_bucket",
        "sponsorflow_temporal_client_errors_total",
        "sponsorflow_db_pool_checked_out",
        "temporal_workflow_task_execution_latency_seconds_bucket",
        "temporal_workflow_task_execution_failed_total",
        "temporal_workflow_task_schedule_to_start_latency_seconds_bucket",
        "temporal_activity_schedule_to_start_latency_seconds_bucket",
        "temporal_sticky_cache_size",
        "temporal_worker_task_slots_available",
        "sponsorflow_deal_stage_moves_total",
        "sponsorflow_deal_stalls_total",
        "sponsorflow_import_rows_total",
        "sponsorflow_import_row_errors_total",
        "sponsorflow_io_deliveries_reported_total",
        "sponsorflow_io_makegoods_booked_total",
        "sponsorflow_io_invoices_issued_total",
        "sponsorflow_match_recalculation_phase_duration_seconds_bucket",
        "sponsorflow_workflow_nondeterminism_total",
    }
    assert not wanted - shown, f"the dashboard shows nothing of {sorted(wanted - shown)}"
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert len(rows) >= 4, rows


def test_every_job_label_names_a_scrape_job(rules: list[dict[str, Any]], dashboard: dict[str, Any]) -> None:
    jobs = [job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]]
    exprs = [rule["expr"] for rule in rules]
    exprs += [t["expr"] for panel in panels(dashboard) for t in panel.get("targets", [])]
    matched = 0
    for expr in exprs:
        for value in label_values(expr, "job"):
            assert any(re.fullmatch(value, job) for job in jobs), (
                f"job {value!r} in {expr!r} is no scrape job"
            )
            matched += 1
    assert matched, "no expression selects a job"


def test_webhook_alerts_and_panels_watch_the_workers_webhook_counters(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    attempts, failed = f"{product.WEBHOOK_ATTEMPTS}_total", f"{product.WEBHOOK_FAILED}_total"
    by_name = {rule["alert"]: rule for rule in rules}
    assert metric_names(by_name["SponsorflowWebhookDeliveriesGivenUp"]["expr"]) == {failed}
    failing = by_name["SponsorflowWebhookAttemptsFailing"]
    assert metric_names(failing["expr"]) == {attempts}
    assert failing["for"] == "30m" and failing["labels"]["severity"] == "warning"
    assert "> 0.5" in failing["expr"]
    # "Failed" is every result but the one the worker counts a 2xx as.
    excluded = {
        m.value
        for selector in selectors(parse(failing["expr"]))
        for m in selector.matchers.matchers
        if m.name == "result" and m.op == promql.MatchOp.NotEqual
    }
    assert excluded == {product.webhook_result(200, None)} == {"delivered"}
    row = next(p for p in dashboard["panels"] if p["type"] == "row" and p["title"] == "Webhooks")
    below = [
        p for p in panels(dashboard) if p["type"] != "row" and p["gridPos"]["y"] == row["gridPos"]["y"] + 1
    ]
    exprs = {t["expr"] for p in below for t in p["targets"]}
    by_result = [parse(e) for e in exprs if metric_names(e) == {attempts} and "rate(" in e]
    grouped = [n.modifier.labels for n in by_result if isinstance(n, promql.AggregateExpr) and n.modifier]
    assert ["result"] in grouped, exprs
    assert any(metric_names(e) == {failed} and "increase(" in e for e in exprs), exprs
