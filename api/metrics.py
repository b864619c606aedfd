"""Prometheus metrics of the API process: HTTP requests, Temporal client calls, the DB pool.

Served at `SPONSORFLOW_API_METRICS_PATH` (default /metrics, no auth; empty turns it off) from a
registry of the app's own, so the apps the tests build side by side in one process count apart.

- HTTP: requests by method, route TEMPLATE (`/api/v1/deals/{campaign_id}/stage`, read from the
  route Starlette matched, never the raw path) and status; latency by method and route; requests
  in flight. A path no route matched is `unmatched`, so a scan of random URLs adds one series.
- Temporal: latency of every start, update, signal, query, describe, cancel and terminate call of
  the API's client by operation and workflow type, and the failed ones by error (a client
  interceptor, installed by settings.connect_temporal).
- The DB pool: connections checked out, idle, the pool's size and its overflow, read at scrape.

Cheap on the request path: one in-flight gauge, a counter and a histogram child looked up in a
dict keyed by the label values (created once per label set), no path parsing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, TypeVar

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from temporalio import client as tc
from temporalio.service import RPCError

# The `_created` timestamp series double what a scrape carries and no query here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

# Seconds. The PATCH budget (SPONSORFLOW_UPDATE_BUDGET_SECONDS, 20 s) needs the top buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The first segment of a workflow id names its type (workflows/starters.py builds the ids).
WORKFLOW_TYPES = {
    "deal": "DealWorkflow",
    "io": "IoBookingWorkflow",
    "import": "CsvImportWorkflow",
    "match": "MatchRecalculationWorkflow",
    "maintenance": "MaintenanceWorkflow",
}


def workflow_type_of(workflow_id: str) -> str:
    """The workflow type a workflow id belongs to (`other` for an id of no known shape)."""
    return WORKFLOW_TYPES.get(workflow_id.partition("/")[0], "other")


def error_kind(exc: BaseException) -> str:
    """A short, bounded name for why a Temporal client call failed (the `error` label)."""
    if isinstance(exc, RPCError):
        return f"rpc_{exc.status.name.lower()}"
    if isinstance(exc, tc.WorkflowUpdateFailedError):
        # Rarely here: an update's refusal (the API's 409) comes with its handle's result, which
        # the caller reads after this interceptor returned; an RPC-level update failure lands here.
        return "update_failed"
    if isinstance(exc, tc.WorkflowUpdateRPCTimeoutOrCancelledError):
        return "update_timeout"
    if isinstance(exc, tc.WorkflowQueryRejectedError):
        return "query_rejected"
    if isinstance(exc, tc.WorkflowQueryFailedError):
        return "query_failed"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"  # the caller gave up (the API's write budget ran out)
    name = type(exc).__name__
    return "already_started" if name == "WorkflowAlreadyStartedError" else name


class ApiMetrics:
    """The API's metrics in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "sponsorflow_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=reg,
        )
        self.duration = Histogram(
            "sponsorflow_http_request_duration_seconds",
            "Time from the request's arrival to the end of its answer, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "sponsorflow_http_requests_in_flight", "HTTP requests being served right now.", registry=reg
        )
        self.temporal_duration = Histogram(
            "sponsorflow_temporal_client_request_duration_seconds",
            "Latency of the API's Temporal client calls (failed ones too), by operation and workflow type.",
            ["operation", "workflow_type"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.temporal_errors = Counter(
            "sponsorflow_temporal_client_errors",
            "Temporal client calls that raised, by operation, workflow type and error.",
            ["operation", "workflow_type", "error"],
            registry=reg,
        )
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        # Children by label values: `labels()` parses its arguments and takes a lock each call.
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._duration_children: dict[tuple[str, str], Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Counts one answered request and its latency."""
        key = (method, route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(method, route, str(status))
        counter.inc()
        hkey = (method, route)
        histogram = self._duration_children.get(hkey)
        if histogram is None:
            histogram = self._duration_children[hkey] = self.duration.labels(method, route)
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The template of the route that served `scope` (after routing), never the raw path."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    if scope.get("endpoint") is not None:
        # A mounted app (the static files): Starlette set its prefix as the root path.
        return f"{scope.get('root_path', '')}/{{path}}"
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (also one that raised: a 500)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless an answer starts: the error middleware outside renders a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics = self.metrics
        metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            method = scope["method"]
            metrics.observe_request(
                method if method in _METHODS else "OTHER", route_template(scope), status, elapsed
            )


class PoolCollector(Collector):
    """The app's SQLAlchemy pool, read when Prometheus scrapes (nothing before the lifespan)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def describe(self) -> list[Any]:
        """Nothing up front: the engine exists only once the lifespan ran."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge per pool figure."""
        engine = getattr(self._app.state, "engine", None)
        pool = getattr(getattr(engine, "sync_engine", None), "pool", None)
        if pool is None or not hasattr(pool, "checkedout"):
            return
        figures = {
            "sponsorflow_db_pool_checked_out": ("Connections lent to requests right now.", pool.checkedout()),
            "sponsorflow_db_pool_idle": ("Open connections waiting in the pool.", pool.checkedin()),
            "sponsorflow_db_pool_size": ("Connections the pool keeps (db_pool_size).", pool.size()),
            "sponsorflow_db_pool_overflow": (
                "Connections open beyond the pool size right now (at most the pool size again).",
                max(0, pool.overflow()),
            ),
        }
        for name, (doc, value) in figures.items():
            yield GaugeMetricFamily(name, doc, value=value)


class TemporalClientMetrics(tc.Interceptor):
    """Times the API's Temporal client calls (a client interceptor, no workflow sees it)."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def intercept_client(self, next: tc.OutboundInterceptor) -> tc.OutboundInterceptor:
        """Wraps the client's outbound calls."""
        return _TimedOutbound(next, self._metrics)


class _TimedOutbound(tc.OutboundInterceptor):
    def __init__(self, next: tc.OutboundInterceptor, metrics: ApiMetrics) -> None:
        super().__init__(next)
        self._metrics = metrics
        self._children: dict[tuple[str, str], Any] = {}

    async def _timed(self, operation: str, workflow_type: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except BaseException as exc:
            self._metrics.temporal_errors.labels(operation, workflow_type, error_kind(exc)).inc()
            raise
        finally:
            key = (operation, workflow_type)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._metrics.temporal_duration.labels(operation, workflow_type)
            child.observe(time.perf_counter() - started)

    async def start_workflow(self, input: tc.StartWorkflowInput) -> tc.WorkflowHandle[Any, Any]:
        return await self._timed("start", input.workflow, super().start_workflow(input))

    async def start_update_with_start_workflow(
        self, input: tc.StartWorkflowUpdateWithStartInput
    ) -> tc.WorkflowUpdateHandle[Any]:
        return await self._timed(
            "update_with_start",
            input.start_workflow_input.workflow,
            super().start_update_with_start_workflow(input),
        )

    async def start_workflow_update(self, input: tc.StartWorkflowUpdateInput) -> tc.WorkflowUpdateHandle[Any]:
        return await self._timed("update", workflow_type_of(input.id), super().start_workflow_update(input))

    async def signal_workflow(self, input: tc.SignalWorkflowInput) -> None:
        await self._timed("signal", workflow_type_of(input.id), super().signal_workflow(input))

    async def query_workflow(self, input: tc.QueryWorkflowInput) -> Any:
        return await self._timed("query", workflow_type_of(input.id), super().query_workflow(input))

    async def describe_workflow(self, input: tc.DescribeWorkflowInput) -> tc.WorkflowExecutionDescription:
        return await self._timed("describe", workflow_type_of(input.id), super().describe_workflow(input))

    async def cancel_workflow(self, input: tc.CancelWorkflowInput) -> None:
        await self._timed("cancel", workflow_type_of(input.id), super().cancel_workflow(input))

    async def terminate_workflow(self, input: tc.TerminateWorkflowInput) -> None:
        await self._timed("terminate", workflow_type_of(input.id), super().terminate_workflow(input))


def install(app: FastAPI, *, path: str) -> ApiMetrics:
    """Adds the middleware and, unless `path` is empty, the scrape route; returns the metrics.

    The Temporal client interceptor is `TemporalClientMetrics(app.state.metrics)`, passed to
    settings.connect_temporal in the lifespan.
    """
    metrics = ApiMetrics()
    metrics.registry.register(PoolCollector(app))
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if path:

        async def scrape(request: Request) -> Response:
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

        app.add_route(path, scrape, methods=["GET"], include_in_schema=False)
    return metrics


__all__ = [
    "ApiMetrics",
    "MetricsMiddleware",
    "TemporalClientMetrics",
    "install",
    "route_template",
    "workflow_type_of",
]
