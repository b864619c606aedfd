"""Traces and structured logs of the API, the worker and the CLI, set up once per process (issue 16).

Tracing is off unless SPONSORFLOW_TRACE_FILE names a file (spans as JSON lines) or the standard
OTEL_* variables ask for an exporter (OTLP over HTTP). Off costs nothing but one small ASGI
middleware: no tracer provider, no instrumentation, no Temporal interceptor that makes spans.

Logs: text by default, JSON lines with SPONSORFLOW_LOG_FORMAT=json, both through one redaction
pass (API keys, bearer tokens, session cookies, the admin token never reach a log line).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import temporalio.activity
import temporalio.client
import temporalio.workflow
from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider

    from settings import Settings

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

# ---------------------------------------------------------------------------------------------
# The request a log line belongs to (API process): trace id, tenant, workflow touched.


@dataclass
class RequestContext:
    """What the logs of one HTTP request carry; filled in as the request learns it."""

    trace_id: str
    span_id: str
    method: str
    path: str
    sampled: bool = False
    tenant_id: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None


_request: ContextVar[RequestContext | None] = ContextVar("sponsorflow_request", default=None)


def current_request() -> RequestContext | None:
    """The HTTP request this code runs for, if any."""
    return _request.get()


def bind(*, tenant_id: object = None, workflow_id: str | None = None, run_id: str | None = None) -> None:
    """Records what the current request learned (its tenant, the first workflow it touched)."""
    ctx = _request.get()
    if ctx is None:
        return
    if tenant_id is not None:
        ctx.tenant_id = str(tenant_id)
    if workflow_id is not None and ctx.workflow_id is None:
        ctx.workflow_id = workflow_id
    if run_id is not None and ctx.run_id is None:
        ctx.run_id = run_id


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _incoming_trace_id(scope: MutableMapping[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            m = _TRACEPARENT.match(value.decode("latin-1").strip().lower())
            if m and m.group(1) != "0" * 32:
                return m.group(1)
    return None


class RequestTelemetry:
    """ASGI middleware, outermost: a `traceparent` on every response, the request's context for its logs.

    With tracing on, the header names the request's server span (flag 01 when sampled; the
    FastAPI instrumentation hands the span over in `_on_server_span`). With tracing off it
    still names a trace id (the client's, if it sent a traceparent, else a fresh one) with flag
    00, "not recorded": every log line of the request carries that id, so a client quoting the
    header finds the request's lines either way. In JSON log mode it also writes one access
    line per request (method, route template, status, duration, tenant, workflow).
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        self.log = logging.getLogger("sponsorflow.access")
        if access_log:
            # Whatever the root level (`up` runs the API at warning): JSON mode has its access lines.
            self.log.setLevel(logging.INFO)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(
            trace_id=_incoming_trace_id(scope) or os.urandom(16).hex(),
            span_id=os.urandom(8).hex(),
            method=scope["method"],
            path=scope["path"],
        )
        token = _request.set(ctx)
        status = 500
        started = time.perf_counter()

        async def send_with_header(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                value = f"00-{ctx.trace_id}-{ctx.span_id}-{'01' if ctx.sampled else '00'}".encode()
                message = {**message, "headers": [*message.get("headers", ()), (b"traceparent", value)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            if self.access_log:
                route = scope.get("route")
                self.log.info(
                    "%s %s %s",
                    ctx.method,
                    ctx.path,
                    status,
                    extra={
                        "http": {
                            "method": ctx.method,
                            "route": getattr(route, "path", None),
                            "path": ctx.path,
                            "status": status,
                            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        }
                    },
                )
            _request.reset(token)


def _on_server_span(span: Any, scope: MutableMapping[str, Any]) -> None:
    """FastAPI instrumentation hook: the request's ids become its server span's."""
    ctx = _request.get()
    sc = span.get_span_context() if span is not None else None
    if ctx is not None and sc is not None and sc.is_valid:
        ctx.trace_id, ctx.span_id = format(sc.trace_id, "032x"), format(sc.span_id, "016x")
        ctx.sampled = bool(sc.trace_flags.sampled)


def install_http(app: Any, settings: Settings) -> None:
    """Server spans (when tracing is on) and, around everything, `RequestTelemetry`.

    Outside Starlette's ServerErrorMiddleware too, so even an unhandled 500 carries the header.
    """
    instrument_app(app, settings)
    build = app.build_middleware_stack
    access_log = settings.log_format == "json"

    def build_with_telemetry() -> Any:
        return RequestTelemetry(build(), access_log=access_log)

    app.build_middleware_stack = build_with_telemetry


class _BindWorkflowIds(temporalio.client.Interceptor):
    """Client interceptor: the request's log lines name the workflow it started or updated."""

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        return _BindingOutbound(next)


class _BindingOutbound(temporalio.client.OutboundInterceptor):
    async def start_workflow(self, input: temporalio.client.StartWorkflowInput) -> Any:
        handle = await super().start_workflow(input)
        bind(workflow_id=input.id, run_id=handle.result_run_id)
        return handle

    async def start_workflow_update(self, input: temporalio.client.StartWorkflowUpdateInput) -> Any:
        bind(workflow_id=input.id, run_id=input.run_id)
        return await super().start_workflow_update(input)

    async def start_update_with_start_workflow(
        self, input: temporalio.client.StartWorkflowUpdateWithStartInput
    ) -> Any:
        bind(workflow_id=input.start_workflow_input.id)
        return await super().start_update_with_start_workflow(input)

    async def signal_workflow(self, input: temporalio.client.SignalWorkflowInput) -> None:
        bind(workflow_id=input.id, run_id=input.run_id)
        await super().signal_workflow(input)


# ---------------------------------------------------------------------------------------------
# Tracing


def tracing_enabled(settings: Settings) -> bool:
    """Whether this process exports spans: a trace file, or an OTLP exporter asked for by OTEL_*."""
    if settings.otel_sdk_disabled:
        return False
    return settings.trace_file is not None or _otlp_endpoint(settings) is not None or _console(settings)


def _exporter_names(settings: Settings) -> set[str]:
    return {n.strip().lower() for n in (settings.otel_traces_exporter or "").split(",") if n.strip()}


def _console(settings: Settings) -> bool:
    return "console" in _exporter_names(settings)


def _otlp_endpoint(settings: Settings) -> str | None:
    """The OTLP/HTTP traces URL, or None when OTLP is not asked for.

    The spec's default exporter is OTLP, but a development stack exports nothing unless told:
    OTLP is on once an endpoint is set or OTEL_TRACES_EXPORTER says `otlp` (then the SDK's
    default, http://localhost:4318/v1/traces).
    """
    names = _exporter_names(settings)
    if "none" in names:
        return None
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    if "otlp" in names:
        return "http://localhost:4318/v1/traces"
    return None


class JsonLinesSpanExporter:
    """Appends each finished span to a file as one JSON line (SPONSORFLOW_TRACE_FILE).

    One line per span, ids as the hex a `traceparent` carries, so `grep <trace id>` finds a
    request's spans from every process that writes to the same file (one write per batch).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        data = "".join(json.dumps(span_record(s), default=str, separators=(",", ":")) + "\n" for s in spans)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: every batch opens and closes the file."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every export is written at once."""
        return True


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSON line of one span in the trace file."""
    ctx = span.get_span_context()
    assert ctx is not None
    start, end = span.start_time, span.end_time
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start": _iso(start),
        "end": _iso(end),
        "duration_ms": round((end - start) / 1e6, 3) if start is not None and end is not None else None,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "at": _iso(e.timestamp), **dict(e.attributes or {})} for e in span.events
        ],
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
            }
            for link in span.links
        ],
    }


_provider: ReplaySafeTracerProvider | None = None
_exporting: set[str] = set()
_setup_lock = threading.Lock()


def tracer_provider(settings: Settings, *, service: str = "sponsorflow") -> ReplaySafeTracerProvider | None:
    """This process's tracer provider (the global one), set up on first use; None when tracing is off.

    The SDK's replay-safe provider (temporalio.contrib.opentelemetry.create_tracer_provider):
    deterministic span ids inside workflows and no span twice when a workflow replays. The global
    provider can be set once per process; a second Settings naming another trace file adds its
    exporter to the same provider (the tests do).
    """
    global _provider
    if not tracing_enabled(settings):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from temporalio.contrib.opentelemetry import create_tracer_provider

    with _setup_lock:
        if _provider is None:
            logging.getLogger("opentelemetry.context").addFilter(_evicted_workflow_detach)
            # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over the default name.
            attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
            _provider = create_tracer_provider(resource=Resource.create(attrs))
            trace.set_tracer_provider(_provider)
        wanted: list[tuple[str, Callable[[], Any]]] = []
        if settings.trace_file is not None:
            path = settings.trace_file.expanduser().resolve()
            wanted.append((f"file:{path}", lambda: JsonLinesSpanExporter(path)))
        endpoint = _otlp_endpoint(settings)
        if endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            wanted.append((f"otlp:{endpoint}", lambda: OTLPSpanExporter(endpoint=endpoint)))
        if _console(settings):
            wanted.append(("console", ConsoleSpanExporter))
        for key, make in wanted:
            if key not in _exporting:
                _exporting.add(key)
                # Batched: exporting never runs on a request's or a workflow task's path.
                # OTEL_BSP_SCHEDULE_DELAY etc. tune it; the file gets a short default delay.
                delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else 500
                _provider.add_span_processor(BatchSpanProcessor(make(), schedule_delay_millis=delay))
        return _provider


def _evicted_workflow_detach(record: logging.LogRecord) -> bool:
    """Drops OpenTelemetry's "Failed to detach context" for a workflow evicted from the cache.

    The workflow's long-lived span is closed by garbage collection in another context when its
    workflow leaves the worker's cache (a worker stopping, an eviction): harmless (the span is
    not ended, and the workflow's next task replays it), but an ERROR with a traceback each time.
    """
    if record.getMessage() != "Failed to detach context" or not record.exc_info:
        return True
    tb = record.exc_info[2]
    while tb is not None:
        if "temporalio" in tb.tb_frame.f_code.co_filename:
            return False
        tb = tb.tb_next
    # The traceback of the ValueError itself starts in detach(); its context names the workflow.
    cause = record.exc_info[1].__context__ if record.exc_info[1] is not None else None
    tb = cause.__traceback__ if cause is not None else None
    while tb is not None:
        if "temporalio" in tb.tb_frame.f_code.co_filename:
            return False
        tb = tb.tb_next
    return True


def add_span_processor(processor: SpanProcessor, settings: Settings) -> None:
    """Adds a span processor to this process's provider (tests: an in-memory exporter)."""
    provider = tracer_provider(settings)
    if provider is None:
        raise RuntimeError("tracing is off for these settings")
    provider.add_span_processor(processor)


def flush_traces() -> None:
    """Exports every span still queued (tests, and before a short-lived process ends)."""
    if _provider is not None:
        _provider.force_flush()


def temporal_interceptors(settings: Settings) -> list[temporalio.client.Interceptor]:
    """The interceptors every Temporal client of the project carries."""
    return [_BindWorkflowIds()]


def temporal_plugins(settings: Settings) -> list[Any]:
    """The SDK's OpenTelemetry plugin when tracing is on (client, worker and the sandbox).

    `OpenTelemetryPlugin`, not the older `TracingInterceptor`: the latter parents an update's
    handler on the span that *started* the workflow and only links the update's caller, so a
    PATCH of a deal created last week would be split over two traces. The plugin's interceptor
    runs each handler under the context its own caller sent (the update's headers), so the
    HTTP request, the update, the activity it runs and the activity's SQL are one trace. It
    also lets `opentelemetry` through the workflow sandbox. It adds headers only: the workflows'
    commands are unchanged (the replay corpus replays without it).
    """
    if tracer_provider(settings) is None:
        return []
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return [OpenTelemetryPlugin(add_temporal_spans=True)]


def instrument_app(app: Any, settings: Settings) -> None:
    """Server spans for every route but the probes and /metrics (FastAPI instrumentation)."""
    provider = tracer_provider(settings, service="sponsorflow-api")
    if provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="/healthz,/readyz,/metrics,/static/",
        server_request_hook=_on_server_span,
        # One span per request, not one more per ASGI message.
        exclude_spans=["receive", "send"],
    )


def instrument_engine(engine: AsyncEngine, settings: Settings) -> None:
    """A span per SQL statement of `engine` (statement text with placeholders, never parameters)."""
    provider = tracer_provider(settings)
    if provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    # The instrumentor patches create_engine once per process, which misses db.engine's import
    # of create_async_engine; the engine tracer it uses attaches to the one engine we pass.
    connections = get_meter(SQLAlchemyInstrumentor.__module__).create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(  # type: ignore[no-untyped-call]
        provider.get_tracer(SQLAlchemyInstrumentor.__module__), engine.sync_engine, connections
    )


# ---------------------------------------------------------------------------------------------
# Logging

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "[REDACTED]"
# Header-like pairs in any form (an HTTP header line, a dict's repr, JSON): the whole value goes.
_SECRET_PAIR = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-csrf-token|x-api-key|api[_-]?key|"
    r"admin[_-]?token|session[_-]?secret|password|secret)(['\"]?\s*[:=]\s*)"
    r"(?:b?(['\"])(?:(?!\3).)*\3|[^\s,;}\])'\"]+(?:[ ][^\s,;}\])'\"]+)?)"
)


def _redact_pair(m: re.Match[str]) -> str:
    quote = m.group(3) or ""
    return f"{m.group(1)}{m.group(2)}{quote}{REDACTED}{quote}"


_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Credentials after an auth scheme, first: the whole credential goes, API key prefix included.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=\-]+"), rf"\1\2{REDACTED}"),
    # API keys (sf_<prefix>_<secret>): the prefix is public (GET /api/v1/keys lists it), and names the key.
    (re.compile(r"\bsf_([0-9a-f]{8})_[A-Za-z0-9_\-]{8,}"), rf"sf_\1_{REDACTED}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_\-]+"), f"whsec_{REDACTED}"),
    (re.compile(r"\b(sf_session|sf_signin)(['\"]?\s*[:=]\s*['\"]?)[^'\";\s,}]+"), rf"\1\2{REDACTED}"),
    # user:password@ in URLs (a database URL in an error message).
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s'\"]+:)[^@\s'\"]+@"), rf"\1{REDACTED}@"),
]


class Redactor:
    """Replaces every secret in a text: known secret values and anything shaped like one."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Short values would blank out ordinary words; real secrets are long.
        self.literals = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for literal in self.literals:
            if literal in text:
                text = text.replace(literal, REDACTED)
        text = _SECRET_PAIR.sub(_redact_pair, text)
        for pattern, repl in _SECRET_PATTERNS:
            text = pattern.sub(repl, text)
        return text


_TENANT_IN_WORKFLOW_ID = re.compile(
    r"^[a-z][a-z-]*/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:[/\-]|$)"
)


def tenant_of_workflow(workflow_id: str | None) -> str | None:
    """The tenant a workflow id embeds (deal/<tenant>/<deal>, match/<tenant>-<time>, ...)."""
    m = _TENANT_IN_WORKFLOW_ID.match(workflow_id or "")
    return m.group(1) if m else None


def log_context(record: logging.LogRecord) -> dict[str, Any]:
    """The ids a log line carries: trace, tenant, workflow and run (those known where it was logged)."""
    out: dict[str, Any] = {}
    wf = getattr(record, "temporal_workflow", None)
    act = getattr(record, "temporal_activity", None)
    core = getattr(getattr(record, "temporal_log", None), "fields", None)
    if isinstance(wf, dict):
        out.update(
            workflow_id=wf.get("workflow_id"),
            run_id=wf.get("run_id"),
            workflow_type=wf.get("workflow_type"),
            update_name=wf.get("update_name"),
        )
    elif isinstance(act, dict):
        out.update(
            workflow_id=act.get("workflow_id"),
            run_id=act.get("workflow_run_id"),
            workflow_type=act.get("workflow_type"),
            activity_type=act.get("activity_type"),
        )
    elif temporalio.activity.in_activity():
        info = temporalio.activity.info()
        out.update(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            workflow_type=info.workflow_type,
            activity_type=info.activity_type,
        )
    elif temporalio.workflow.in_workflow():
        winfo = temporalio.workflow.info()
        out.update(workflow_id=winfo.workflow_id, run_id=winfo.run_id, workflow_type=winfo.workflow_type)
    elif isinstance(core, dict):
        out.update(workflow_id=core.get("workflow_id"), run_id=core.get("run_id"))
    req = _request.get()
    if req is not None:
        if out.get("workflow_id") is None:
            out["workflow_id"], out["run_id"] = req.workflow_id, req.run_id
        out["tenant_id"] = req.tenant_id
    span = trace.get_current_span().get_span_context()
    span_ids = (format(span.trace_id, "032x"), format(span.span_id, "016x")) if span.is_valid else None
    if req is not None:
        # Inside a request its trace id is the one the response's traceparent names (a span of
        # another trace, e.g. one a test or a library left current, must not take its place).
        out["trace_id"] = req.trace_id
        out["span_id"] = span_ids[1] if span_ids and span_ids[0] == req.trace_id else req.span_id
    elif span_ids is not None:
        out["trace_id"], out["span_id"] = span_ids
    if not out.get("tenant_id"):
        out["tenant_id"] = tenant_of_workflow(out.get("workflow_id"))
    return {k: v for k, v in out.items() if v is not None}


# LogRecord attributes that are not a caller's `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "temporal_workflow",
    "temporal_activity",
    "temporal_log",
    "workflow_info",
    "activity_info",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, the ids, extras, exception."""

    def __init__(self, *, service: str, redact: Redactor) -> None:
        super().__init__()
        self.service = service
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        """The record as one redacted JSON line."""
        line: dict[str, Any] = {
            "ts": _iso(int(record.created * 1e9)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            **log_context(record),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return self.redact(json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """The terminal's format (`time LEVEL logger message`), redacted."""

    def __init__(self, *, redact: Redactor) -> None:
        super().__init__(_TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        """The record as one redacted text line (plus its traceback)."""
        return self.redact(super().format(record))


def redactor(settings: Settings) -> Redactor:
    """The redaction of this process: the patterns plus the secrets its settings hold."""
    return Redactor(
        [
            settings.admin_token,
            settings.session_secret,
            settings.temporal_api_key,
            settings.webhook_secret_key,
        ]
    )


def log_handler(settings: Settings, *, service: str, stream: Any = None) -> logging.Handler:
    """The one handler of a process: to stderr, JSON or text as SPONSORFLOW_LOG_FORMAT says."""
    handler = logging.StreamHandler(stream)
    redact = redactor(settings)
    handler.setFormatter(
        JsonFormatter(service=service, redact=redact)
        if settings.log_format == "json"
        else TextFormatter(redact=redact)
    )
    return handler


# Libraries whose INFO lines carry what must not be logged (request URLs): warnings and up only.
QUIET_LOGGERS = ("httpx", "httpcore")


def configure_logging(settings: Settings, *, service: str, level: str | int | None = None) -> logging.Handler:
    """Routes every logger of the process (ours, the SDK's, uvicorn's) to one redacting handler."""
    handler = log_handler(settings, service=service)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level if level is not None else settings.log_level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers would bypass the redaction and the JSON format.
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for name in QUIET_LOGGERS:
        # httpx logs every request with its full URL at INFO: a webhook URL's path can be its
        # secret (a chat incoming-webhook URL is), and a fan-out would log a line per attempt.
        # The attempt's outcome is in webhook_deliveries and the metrics instead.
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler


def _level(level: str | int) -> int:
    return level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]


def read_trace(path: Path, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace in a trace file (lines that do not parse are skipped)."""
    spans = []
    needle = f'"trace_id":"{trace_id}"'
    with path.open(encoding="utf-8") as f:
        for line in f:
            if needle in line:
                try:
                    spans.append(json.loads(line))
                except ValueError:
                    continue
    return spans
