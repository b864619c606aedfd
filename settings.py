"""One Settings class: every knob is an environment variable prefixed SPONSORFLOW_ (plus ENABLE_*)."""

from __future__ import annotations

import atexit
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import quote

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ADMIN_TOKEN = "changethis"
DEFAULT_WEBHOOK_SECRET_KEY = "development-webhook-secret-key"
HERE = Path(__file__).resolve().parent


def _flag(name: str) -> AliasChoices:
    return AliasChoices(name, f"SPONSORFLOW_{name}")


class Settings(BaseSettings):
    """Runtime configuration of the API, the worker and the `sponsorflow` CLI."""

    model_config = SettingsConfigDict(
        env_prefix="SPONSORFLOW_", env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: str = "development"
    data_dir: Path = Path(".data")

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # Unset: the embedded PostgreSQL under data_dir. Set: connect as the application role.
    database_url: str | None = None
    # Owner connection used only by migrations (RLS does not bind the owner).
    migration_database_url: str | None = None
    db_app_role: str = "sponsorflow_app"
    db_pool_size: int = 10
    # Largest accepted upload; beyond it the API answers 413.
    max_upload_mb: int = 200
    # Rows per committed import chunk, and how soon a killed import worker is noticed.
    import_chunk_rows: int = 10_000
    import_heartbeat_seconds: int = 30
    # How long POST /etl/upload retries an ambiguous workflow start (same id, so never two runs)
    # before it describes the workflow and decides 202 or 503 (at most 60: see domain.imports.workflow).
    import_start_budget_seconds: float = Field(10.0, ge=0, le=60)
    # An import still pending/running this long after its upload has its workflow described
    # when its status is read (at most once per this interval per API process), so a workflow
    # terminated or timed out in Temporal ends the import `failed` at once.
    import_stale_after_seconds: float = Field(10.0, ge=0)
    # How long an API process trusts a verified API key before asking the database again.
    api_key_cache_seconds: float = 30.0
    # How long a write sent through Temporal (stage change, IO delivery, cancel, booking) is waited
    # for before the API fences it off and answers 503 (not applied, and never will be).
    update_budget_seconds: float = Field(20.0, gt=0, le=300)

    # `sponsorflow up`: how many worker processes it runs on the one task queue (worker-1, ...).
    workers: int = Field(1, ge=1, le=16)
    # After SIGTERM a worker stops polling and gives running activities this long to finish before
    # they are cancelled; under docker-compose.yml's stop_grace_period (30 s) for the worker.
    worker_shutdown_seconds: float = Field(25.0, ge=0)
    # The worker's cyclic-GC young-generation threshold after it freezes its start-up heap
    # (worker.tune_gc): fewer, larger collections while imports hold chunks of parsed rows.
    # 0 keeps CPython's defaults (700) and nothing frozen.
    worker_gc_threshold: int = Field(50_000, ge=0, le=10_000_000)
    # How long a workflow task may wait on the sticky queue of the worker that has the workflow
    # cached before any worker may take it: the delay a SIGKILLed worker's workflows see.
    worker_sticky_timeout_seconds: float = Field(3.0, gt=0)
    # After SIGTERM the API finishes requests in flight (and ends open event streams) within this.
    api_shutdown_seconds: int = Field(8, ge=0)
    # `up` restarts a worker, API or Temporal dev server child that dies: after this delay,
    # doubling per crash up to the maximum, back to the first once the child stayed up long enough.
    up_restart_backoff_seconds: float = Field(0.5, gt=0)
    up_restart_backoff_max_seconds: float = Field(30.0, gt=0)
    up_restart_reset_seconds: float = Field(60.0, gt=0)

    # Worker versioning (README "Releasing a workflow change"): a worker is the version
    # `<worker_deployment>:<build id>` of a Temporal Worker Deployment. Unset build id: the package
    # version plus the git revision ("0.1.0+abc1234"), the version alone without git. Off: an
    # unversioned worker (the tests' in-process workers; never mix both kinds on one task queue).
    worker_versioning: bool = True
    worker_deployment: str = Field("sponsorflow", min_length=1, max_length=200, pattern=r"^[^.\s]+$")
    worker_build_id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S+$")
    # Make this worker's version the deployment's current one once it polls. Unset: yes in
    # development (`sponsorflow up` sets it anyway), no elsewhere, where the release procedure does
    # it (`temporal worker deployment set-current-version`).
    worker_promote: bool | None = None

    # Observability (README "Operations"): the API's Prometheus scrape path (empty: none), and the
    # host:port of each worker's (the Temporal SDK's runtime metrics and the product's; empty: none).
    # `up` gives worker N the port + N - 1.
    api_metrics_path: str = Field("/metrics", pattern=r"^(/[^\s?#]*)?$")
    worker_metrics_address: str = Field("127.0.0.1:9464", pattern=r"^(\S+:\d{1,5})?$")

    temporal_address: str | None = None
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    # The dev server's SQLite file in WAL mode: stage changes measured 30-40% faster on the bench
    # machine, but off by default (see the README's benchmark section for why).
    temporal_dev_wal: bool = False
    # The dev servers `up` and the tests start set the system search attribute
    # TemporalReportedProblems on a running workflow after this many consecutive failed or timed-out
    # workflow tasks (a non-determinism error, say), and clear it on its next successful task.
    # 0: off (the dev server's own default). Production clusters set the same dynamic config value
    # (system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute).
    temporal_dev_task_problems_threshold: int = Field(1, ge=0, le=1000)
    temporal_namespace: str = "default"
    temporal_task_queue: str = "sponsorflow"
    temporal_tls: bool = False
    temporal_tls_cert_path: Path | None = None
    temporal_tls_key_path: Path | None = None
    temporal_api_key: str | None = None
    temporal_ui_url: str | None = None

    admin_token: str | None = None
    demo: bool = True

    # Signs the web app's session cookies. Unset: derived from the admin token and the database URL,
    # which every API process of one deployment shares. Set it explicitly in production.
    session_secret: str | None = None
    # How long a web sign-in lasts.
    session_hours: float = 12.0
    # Mark session cookies Secure (set true behind HTTPS).
    session_cookie_secure: bool = False

    # Per-stage stall limits in days, e.g. SPONSORFLOW_STALL_DAYS='{"lead": 7}'.
    stall_days: dict[str, int] = Field(default_factory=dict)
    # Continue-as-new after this many stage moves in one run, to keep histories small.
    deal_moves_per_run: int = 200
    # Continue-as-new after this many delivery reports in one IO run.
    io_reports_per_run: int = 500
    # Hours between reminders (io.delivery_reminder) while an IO awaits a CPM delivery report.
    io_delivery_reminder_hours: float = Field(72.0, gt=0)
    # How often each tenant's Temporal Schedule recalculates its matches.
    match_recalc_every_hours: float = 24.0
    # The maintenance singleton (workflows/maintenance.py): seconds between its rounds (a durable
    # timer), rounds per run before it continues as new, and every how many rounds it reconciles
    # the match schedules and sweeps open deals for missing workflows (also on its first round).
    maintenance_seconds: float = Field(30.0, ge=1)
    maintenance_rounds_per_run: int = Field(100, ge=1)
    maintenance_schedules_every_rounds: int = Field(10, ge=1)
    maintenance_sweep_every_rounds: int = Field(20, ge=1)
    # Deal drift: rows changed since the last round are compared with their workflows, except the
    # last few seconds (a move in flight); each window overlaps the previous one by this much,
    # and looks back at most this far (also the first window of a fresh singleton).
    maintenance_drift_settle_seconds: float = Field(5.0, ge=0)
    maintenance_drift_overlap_seconds: float = Field(120.0, ge=0)
    maintenance_drift_max_lookback_hours: float = Field(24.0, gt=0)
    # How often each worker makes sure the singleton runs (and retries after a failed start).
    maintenance_ensure_seconds: float = Field(300.0, gt=0)

    # Logs (telemetry.py): `text`, the terminal's `time LEVEL logger message`, or `json`, one object
    # per line with the trace, tenant, workflow and run ids (and an access line per HTTP request).
    log_format: Literal["text", "json"] = "text"
    # The worker's and the CLI's log level; the API's is `sponsorflow api --log-level` (default this).
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Traces (off unless asked for): every finished span of this process appended to this file as
    # one JSON line, for reading one trace without a collector (README "Traces").
    trace_file: Path | None = None
    # The standard OpenTelemetry variables that turn tracing on (the SDK reads the others itself:
    # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS ...).
    otel_sdk_disabled: bool = Field(False, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))
    otel_traces_exporter: str | None = Field(None, validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"))
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )

    enable_etl_csv_upload: bool = Field(True, validation_alias=_flag("ENABLE_ETL_CSV_UPLOAD"))
    enable_deal_pipeline: bool = Field(True, validation_alias=_flag("ENABLE_DEAL_PIPELINE"))
    enable_io_bookings: bool = Field(True, validation_alias=_flag("ENABLE_IO_BOOKINGS"))
    enable_matchmaking: bool = Field(True, validation_alias=_flag("ENABLE_MATCHMAKING"))
    enable_webhooks: bool = Field(True, validation_alias=_flag("ENABLE_WEBHOOKS"))

    # Webhooks (README "Webhooks"). The key that encrypts endpoint secrets at rest (any string;
    # unset: a development key, refused outside development: no webhook runs without a real one).
    webhook_secret_key: str | None = None
    # Allow URLs resolving to loopback, private or link-local addresses (unset: only in
    # development); the cloud metadata address is refused always.
    webhook_allow_private: bool | None = None
    # One attempt's HTTP timeout; retries with exponential backoff and jitter from the initial
    # delay up to the maximum interval, for this many hours after the first attempt.
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    # How long a worker reuses a host's checked addresses (each attempt connects to one of them,
    # never to a fresh lookup, so a cached answer cannot be rebound).
    webhook_dns_cache_seconds: float = Field(30.0, ge=0)
    webhook_retry_hours: float = Field(72.0, gt=0)
    webhook_retry_initial_seconds: float = Field(5.0, gt=0)
    webhook_retry_max_interval_seconds: float = Field(3600.0, gt=0)
    # Per endpoint: deliveries in flight at once (one per entity), the outbox poll after work and
    # when idle, the settle time of old cursor observations (below), when
    # a delivery retrying this long marks the endpoint failing, and the history length at which
    # its workflow continues as new.
    webhook_max_in_flight: int = Field(8, ge=1, le=100)
    # Deliveries of one entity sent by one activity, in order (a failure retries from there).
    webhook_batch_size: int = Field(20, ge=1, le=200)
    webhook_poll_seconds: float = Field(1.0, gt=0)
    webhook_idle_poll_seconds: float = Field(5.0, gt=0)
    # Only for cursor observations recorded before the webhook-snapshot-horizon patch (running
    # workflows, continue-as-new inputs of older runs): those are final this long after they were
    # made. Newer ones are final on the claims' PostgreSQL snapshot horizon, with no time bet.
    webhook_outbox_settle_seconds: float = Field(300.0, ge=0)
    webhook_failing_after_seconds: float = Field(30.0, gt=0)
    webhook_history_limit: int = Field(10_000, ge=100)
    # An endpoint whose every attempt failed for this long is paused with a webhook.disabled event.
    webhook_disable_after_hours: float = Field(120.0, gt=0)
    # After a rotation the previous secret keeps signing beside the new one for this long.
    webhook_previous_secret_hours: float = Field(24.0, ge=0)
    # Delivered and failed deliveries are deleted by the maintenance round after this many days
    # (0: kept forever); pending ones always stay.
    webhook_delivery_retention_days: float = Field(30.0, ge=0)

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _asyncpg_url(cls, v: str | None) -> str | None:
        """Normalises any PostgreSQL URL to the asyncpg driver SQLAlchemy needs."""
        if v is None:
            return None
        for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
            if v.startswith(prefix):
                return "postgresql+asyncpg://" + v[len(prefix) :]
        if v.startswith("postgresql://"):
            return "postgresql+asyncpg://" + v[len("postgresql://") :]
        return v

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        """SPONSORFLOW_LOG_FORMAT=JSON and SPONSORFLOW_LOG_LEVEL=INFO mean the same as lower case."""
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator(
        "trace_file",
        "otel_traces_exporter",
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_traces_endpoint",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        """An empty variable (a compose default, say) means unset."""
        return None if v == "" else v

    @field_validator("worker_build_id", mode="before")
    @classmethod
    def _empty_build_id_is_unset(cls, v: Any) -> Any:
        """An empty SPONSORFLOW_WORKER_BUILD_ID (a compose default, say) means the default build id."""
        return None if v == "" else v

    @field_validator("stall_days")
    @classmethod
    def _known_stages(cls, v: dict[str, int]) -> dict[str, int]:
        """Rejects stall limits for stages that cannot stall."""
        bad = set(v) - {"lead", "qualified", "proposal", "negotiation"}
        if bad:
            raise ValueError(f"stall_days names stages that cannot stall: {sorted(bad)}")
        if any(d <= 0 for d in v.values()):
            raise ValueError("stall_days must be positive")
        return v

    @model_validator(mode="after")
    def _no_default_secrets(self) -> Settings:
        """Refuses the placeholder admin token anywhere but development."""
        if self.environment != "development" and self.admin_token in (None, DEFAULT_ADMIN_TOKEN):
            raise ValueError("SPONSORFLOW_ADMIN_TOKEN must be set to a real secret outside development")
        return self

    @model_validator(mode="after")
    def _retention_outlives_retries(self) -> Settings:
        """A delivery is kept at least as long as it may still be retried (a batch-mate pruned while
        its entity's head retries would read as gone)."""
        days = self.webhook_delivery_retention_days
        if days and days * 24 <= self.webhook_retry_hours:
            raise ValueError(
                f"SPONSORFLOW_WEBHOOK_DELIVERY_RETENTION_DAYS ({days:g}) must be 0 (keep) or longer than "
                f"the retry window, SPONSORFLOW_WEBHOOK_RETRY_HOURS ({self.webhook_retry_hours:g} h)"
            )
        return self

    @property
    def webhook_secret_key_value(self) -> str:
        """The key endpoint secrets are encrypted with (ValueError: the default outside development)."""
        if self.webhook_secret_key:
            return self.webhook_secret_key
        if self.environment != "development":
            raise ValueError(
                "SPONSORFLOW_WEBHOOK_SECRET_KEY must be set to a real secret outside development"
            )
        return DEFAULT_WEBHOOK_SECRET_KEY

    @property
    def webhook_private_allowed(self) -> bool:
        """Whether webhook URLs may resolve to private addresses (unset: only in development)."""
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.environment == "development"

    @property
    def temporal_target(self) -> str:
        """The host:port the Temporal client connects to."""
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def ui_base_url(self) -> str:
        """Base URL of the Temporal Web UI, for links from the API."""
        return self.temporal_ui_url or f"http://127.0.0.1:{self.temporal_ui_port}"

    @property
    def build_id(self) -> str:
        """This worker's build id: the configured one, else the package version (+ git revision)."""
        return self.worker_build_id or default_build_id()

    @property
    def promotes(self) -> bool:
        """Whether the worker makes its own version current (unset: only in development)."""
        return self.worker_promote if self.worker_promote is not None else self.environment == "development"

    def worker_metrics_address_for(self, index: int) -> str:
        """Worker `index`'s (1, 2, ...) metrics address under `up`: the configured port + index - 1."""
        if not self.worker_metrics_address:
            return ""
        host, _, port = self.worker_metrics_address.rpartition(":")
        return f"{host}:{int(port) + index - 1}"

    def dev_server_flags(self) -> list[str]:
        """The dynamic config flags of `temporal server start-dev` (the task problems threshold)."""
        key = "system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute"
        return ["--dynamic-config-value", f"{key}={self.temporal_dev_task_problems_threshold}"]

    def workflow_url(self, workflow_id: str) -> str:
        """Link to one workflow in the Temporal Web UI."""
        return (
            f"{self.ui_base_url}/namespaces/{quote(self.temporal_namespace, safe='')}"
            f"/workflows/{quote(workflow_id, safe='')}"
        )

    def session_key(self) -> bytes:
        """The HMAC key of the web session cookies (same in every API process of a deployment)."""
        material = self.session_secret or f"{self.admin_token or ''}|{self.database_url or ''}"
        return hashlib.sha256(f"sponsorflow-session|{material}".encode()).digest()

    def admin_token_or_generate(self) -> str:
        """Returns the configured admin token, or a fresh random one for this stack."""
        return self.admin_token or secrets.token_urlsafe(24)


def package_version() -> str:
    """The installed sponsorflow package's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sponsorflow")
    except PackageNotFoundError:
        return "0.0.0"


def git_revision(repo: Path = HERE) -> str | None:
    """The short git revision of `repo`'s HEAD, or None outside a git checkout (an image, say)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


@lru_cache
def default_build_id(repo: Path = HERE) -> str:
    """The package version plus the git revision ("0.1.0+abc1234"); the version alone without git."""
    rev = git_revision(repo)
    return f"{package_version()}+{rev}" if rev else package_version()


@lru_cache
def get_settings() -> Settings:
    """Returns the process-wide settings, read once from the environment."""
    return Settings()


async def connect_temporal(
    settings: Settings, *, lazy: bool = False, runtime: Any = None, interceptors: Sequence[Any] = ()
) -> Any:
    """Connects the one Temporal client of a process (pydantic converter, TLS/API key if set).

    `runtime`: the SDK runtime (the worker's forwards the SDK core's logs and serves its metrics;
    None: the default one). `interceptors`: client interceptors (the API's metrics).
    """
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.service import TLSConfig

    import telemetry

    tls: bool | TLSConfig = settings.temporal_tls
    if settings.temporal_tls_cert_path and settings.temporal_tls_key_path:
        tls = TLSConfig(
            client_cert=settings.temporal_tls_cert_path.read_bytes(),
            client_private_key=settings.temporal_tls_key_path.read_bytes(),
        )
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls if settings.temporal_api_key is None else (tls or True),
        api_key=settings.temporal_api_key,
        lazy=lazy,
        runtime=runtime,
        # Also: the request's log lines name the workflow (telemetry); with tracing on, the SDK's
        # OpenTelemetry plugin (spans and context propagation, client and worker).
        interceptors=[*interceptors, *telemetry.temporal_interceptors(settings)],
        plugins=telemetry.temporal_plugins(settings),
    )


def exit_skipping_teardown(code: int) -> NoReturn:
    """Ends a process that has used a Temporal client, without interpreter teardown.

    The SDK's Rust runtime keeps threads that may still call into Python while
    the interpreter finalizes; now and then that aborts a process whose work is
    done ("Fatal Python error: PyGILState_Release", SIGABRT; temporalio/sdk-python
    issue 300; about 3 short-lived runs in 100 here). The exit handlers run
    first (logging's flush, the embedded PostgreSQL's stop-when-last-user-leaves),
    so nothing printed or logged is lost and no server is left behind.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
