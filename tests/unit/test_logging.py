"""Structured logs, redaction, the traceparent header and the tracing switches (telemetry.py).

No server: a small FastAPI app through httpx's ASGI transport, the SDK's ActivityEnvironment for
an activity's log lines, and records shaped as the SDK's workflow logger makes them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio import activity
from temporalio.testing import ActivityEnvironment

import telemetry
from settings import Settings

KEY = "sf_1f2e3d4c_" + "Zx9" * 14
ADMIN = "admin-token-0123456789"
TENANT = str(uuid.uuid4())


def _settings(**values: Any) -> Settings:
    return Settings(admin_token=ADMIN, **values)


def _json_logger(settings: Settings, name: str = "sponsorflow.test") -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(f"{name}.{uuid.uuid4().hex[:6]}")
    logger.handlers = [telemetry.log_handler(settings, service="unit", stream=out)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, out


@pytest.mark.parametrize(
    "line",
    [
        f"key {KEY} rejected",
        f"Authorization: Bearer {KEY}",
        f"{{'authorization': 'Bearer {ADMIN}', 'host': 'x'}}",
        f"[(b'authorization', b'Bearer {KEY}')]",
        f"cookie: theme=dark; sf_session={KEY}.sig",
        f"Set-Cookie: sf_session=abc{ADMIN}; Path=/",
        f"admin token is {ADMIN}",
        f"connect postgresql+asyncpg://sponsorflow_app:{ADMIN}@127.0.0.1/db failed",
        f'{{"secret": "whsec_{ADMIN}"}}',
    ],
)
def test_secrets_never_reach_a_line(line: str) -> None:
    redacted = telemetry.redactor(_settings())(line)
    assert KEY not in redacted and ADMIN not in redacted and KEY[12:] not in redacted
    assert telemetry.REDACTED in redacted


def test_the_webhook_secret_key_never_reaches_a_line() -> None:
    key = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8="
    redacted = telemetry.redactor(_settings(webhook_secret_key=key))(f"decrypting with {key} failed")
    assert key not in redacted and telemetry.REDACTED in redacted


def test_redaction_keeps_what_is_not_secret() -> None:
    redact = telemetry.redactor(_settings())
    assert redact(f"key {KEY}") == f"key sf_1f2e3d4c_{telemetry.REDACTED}"  # the listed prefix stays
    plain = "COPY sf_campaign_stage FROM stdin; deal moved lead -> qualified (tenant 1f2e3d4c)"
    assert redact(plain) == plain


def test_json_lines_parse_and_are_redacted_text_stays_the_terminal_format() -> None:
    logger, out = _json_logger(_settings(log_format="json"))
    try:
        raise RuntimeError(f"boom with {KEY}")
    except RuntimeError:
        logger.exception("failed for key %s", KEY, extra={"rows": 3})
    (line,) = out.getvalue().splitlines()
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["service"] == "unit" and data["rows"] == 3
    assert data["message"] == f"failed for key sf_1f2e3d4c_{telemetry.REDACTED}"
    assert "RuntimeError" in data["exc"] and KEY not in line
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", data["ts"])

    text_logger, text_out = _json_logger(_settings())
    text_logger.warning("key %s", KEY)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    expected = f"^{stamp} WARNING {re.escape(text_logger.name)} key sf_1f2e3d4c_\\[REDACTED\\]$"
    assert re.match(expected, text_out.getvalue().strip())


async def test_an_activity_line_carries_workflow_run_and_tenant() -> None:
    logger, out = _json_logger(_settings(log_format="json"))
    env = ActivityEnvironment()
    wf_id = f"deal/{TENANT}/{uuid.uuid4()}"
    env.info = dataclasses.replace(
        env.info, workflow_id=wf_id, workflow_run_id="run-1", activity_type="record_stage_change"
    )

    @activity.defn
    async def record() -> None:
        logger.info("plain logger inside an activity")
        # What temporalio.activity.logger is, on this test's logger.
        activity.LoggerAdapter(logger, None).info("the SDK's activity logger")

    await env.run(record)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line["workflow_id"] == wf_id and line["run_id"] == "run-1"
        assert line["tenant_id"] == TENANT and line["activity_type"] == "record_stage_change"


def test_a_workflow_line_carries_what_the_sdk_puts_in_extra() -> None:
    logger, out = _json_logger(_settings(log_format="json"))
    # What temporalio.workflow.logger adds (workflow_info_on_extra): `temporal_workflow`.
    details = {
        "attempt": 1,
        "namespace": "default",
        "run_id": "run-9",
        "task_queue": "sponsorflow",
        "workflow_id": f"io/{TENANT}/{uuid.uuid4()}",
        "workflow_type": "IoBookingWorkflow",
        "update_name": "report_delivery",
    }
    logger.warning("delivery report dropped", extra={"temporal_workflow": details})
    line = json.loads(out.getvalue())
    assert line["workflow_id"] == details["workflow_id"] and line["run_id"] == "run-9"
    assert line["workflow_type"] == "IoBookingWorkflow" and line["update_name"] == "report_delivery"
    assert line["tenant_id"] == TENANT
    assert "temporal_workflow" not in line


def test_tenant_of_workflow_ids() -> None:
    assert telemetry.tenant_of_workflow(f"deal/{TENANT}/x") == TENANT
    assert telemetry.tenant_of_workflow(f"match/{TENANT}-2026-11-25T00:00:00Z") == TENANT
    assert telemetry.tenant_of_workflow(f"match/{TENANT}") == TENANT
    assert telemetry.tenant_of_workflow("maintenance/sponsorflow") is None
    assert telemetry.tenant_of_workflow(None) is None


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        telemetry.bind(tenant_id=TENANT, workflow_id=f"deal/{TENANT}/{thing_id}")
        logging.getLogger("sponsorflow.api.test").warning("inside %s", thing_id)
        return {"id": thing_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("unhandled")

    telemetry.install_http(app, settings)
    return app


async def test_every_response_has_a_traceparent_and_json_mode_an_access_line() -> None:
    settings = _settings(log_format="json")
    assert not telemetry.tracing_enabled(settings)
    out = io.StringIO()
    handler = telemetry.log_handler(settings, service="unit", stream=out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        transport = httpx.ASGITransport(app=_app(settings), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/things/42")
            incoming = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
            continued = await http.get("/things/43", headers={"traceparent": incoming})
            failed = await http.get("/boom")
    finally:
        root.removeHandler(handler)
    # Tracing off: a trace id all the same, flagged "not recorded" (00).
    m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-00", r.headers["traceparent"])
    assert m is not None
    assert continued.headers["traceparent"].split("-")[1] == "ab" * 16  # the caller's trace goes on
    assert failed.status_code == 500 and "traceparent" in failed.headers  # even an unhandled error

    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    inside = next(x for x in lines if x["message"] == "inside 42")
    assert inside["trace_id"] == m.group(1) and inside["tenant_id"] == TENANT
    access = [x for x in lines if x["logger"] == "sponsorflow.access"]
    first = next(x for x in access if x["trace_id"] == m.group(1))
    assert first["http"]["route"] == "/things/{thing_id}" and first["http"]["status"] == 200
    assert first["http"]["method"] == "GET" and first["http"]["path"] == "/things/42"
    assert first["workflow_id"] == f"deal/{TENANT}/42" and first["tenant_id"] == TENANT
    assert any(x["http"]["status"] == 500 and x["http"]["route"] == "/boom" for x in access)


async def test_text_mode_writes_no_access_line() -> None:
    settings = _settings()
    out = io.StringIO()
    handler = telemetry.log_handler(settings, service="unit", stream=out)
    logging.getLogger().addHandler(handler)
    try:
        transport = httpx.ASGITransport(app=_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert "traceparent" in (await http.get("/things/1")).headers
    finally:
        logging.getLogger().removeHandler(handler)
    assert "sponsorflow.access" not in out.getvalue()
    assert "WARNING sponsorflow.api.test inside 1" in out.getvalue()


def test_the_switches_of_tracing(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not telemetry.tracing_enabled(Settings())  # off by default
    assert telemetry.temporal_plugins(Settings()) == []
    assert telemetry.tracing_enabled(Settings(trace_file=tmp_path / "t.jsonl"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    s = Settings()
    assert telemetry.tracing_enabled(s) and telemetry._otlp_endpoint(s) == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not telemetry.tracing_enabled(Settings())
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not telemetry.tracing_enabled(Settings(trace_file=tmp_path / "t.jsonl"))
    monkeypatch.setenv("SPONSORFLOW_LOG_FORMAT", "JSON")
    monkeypatch.setenv("SPONSORFLOW_TRACE_FILE", "")
    s = Settings()
    assert s.log_format == "json" and s.trace_file is None


def test_ups_own_lines_in_a_childs_log_follow_its_format(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import Backoff, Child

    def child(json_log: bool) -> Child:
        return Child(
            "api", [], tmp_path / f"api-{json_log}.log", Backoff(0.5, 30, 60), grace=1, json_log=json_log
        )

    child(True).note("api exited with code 1; restarting in 0.5 s (restart 1)")
    child(False).note("api restarted (pid 42)")
    line = json.loads((tmp_path / "api-True.log").read_text())
    assert (
        line["logger"] == "sponsorflow.up"
        and line["child"] == "api"
        and line["message"].startswith("api exited")
    )
    assert (tmp_path / "api-False.log").read_text().endswith(" sponsorflow up: api restarted (pid 42)\n")
    assert "api restarted (pid 42)" in capsys.readouterr().out


async def test_a_process_never_logs_the_urls_httpx_calls() -> None:
    """A chat incoming-webhook URL's path is its secret: httpx's per-request INFO line (method and
    full URL) must not reach the process's log, while warnings still would."""
    secret_path = "/services/T000/B000/" + "s3cr3t" * 4
    root = logging.getLogger()
    saved = (
        list(root.handlers),
        root.level,
        {n: logging.getLogger(n).level for n in telemetry.QUIET_LOGGERS},
    )
    out = io.StringIO()
    try:
        telemetry.configure_logging(_settings(), service="unit", level="INFO")
        root.handlers[0].setStream(out)  # type: ignore[attr-defined]

        async def hook(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

        async with httpx.AsyncClient(transport=httpx.MockTransport(hook)) as http:
            assert (await http.post("https://hooks.example.com" + secret_path)).status_code == 200
        logging.getLogger("httpx").warning("a warning still shows")
        logging.getLogger("sponsorflow.webhooks").info("our own INFO lines still show")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    text = out.getvalue()
    assert secret_path not in text and "HTTP Request" not in text, text
    assert "a warning still shows" in text and "our own INFO lines still show" in text
