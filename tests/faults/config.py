"""Knobs of the fault suite: environment variables `SPONSORFLOW_FAULTS_*`, read once per run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAULTS = (
    "temporal_kill",
    "postgres_restart",
    "worker_freeze_one",
    "worker_freeze_all",
    "worker_kill",
    "api_kill",
    "webhook_receiver_hang",
)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    value = float(raw)
    if value < 0:
        raise SystemExit(f"{name} must not be negative, got {raw!r}")
    return value


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


def _list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if not raw:
        return default
    items = tuple(x.strip() for x in raw.split(",") if x.strip())
    unknown = sorted(set(items) - set(FAULTS))
    if unknown:
        raise SystemExit(f"{name}: unknown faults {unknown}; known: {', '.join(FAULTS)}")
    return items


@dataclass(frozen=True)
class Config:
    """One run's knobs (the defaults keep the whole suite near 5 minutes on a 2-core machine)."""

    faults: tuple[str, ...] = FAULTS
    # The fault list this many times over (a longer soak; the import runs in the first round only).
    rounds: int = 1
    # Load: clients moving their own deal, clients reporting deliveries on their own IO.
    deal_clients: int = 12
    delivery_clients: int = 3
    think_s: float = 0.25
    delivery_think_s: float = 0.5
    client_timeout_s: float = 30.0
    # After "no answer": this many retries of the same request (same key and tag), backing off.
    no_answer_retries: int = 6
    retry_backoff_s: float = 1.0
    # Timeline.
    baseline_s: float = 10.0
    quiet_s: float = 15.0
    temporal_down_s: float = 10.0
    # Longer than the API's retry budget for a stage change (about 20 s today).
    freeze_s: float = 25.0
    # How long up may take to bring a killed child back before the suite calls it a violation.
    restart_timeout_s: float = 45.0
    settle_timeout_s: float = 90.0
    settle_poll_s: float = 5.0
    # The import: rows of a `shows` CSV (plus a few bad rows), run during this fault.
    import_rows: int = 6000
    import_bad_rows: int = 7
    import_fault: str = "worker_kill"
    import_chunk_rows: int = 500
    import_heartbeat_s: int = 10
    import_timeout_s: float = 120.0
    workers: int = 2
    # Webhooks: two endpoints with receivers in the suite (tests/faults/hooks.py); after the
    # deals settled, how long every event may take to reach them.
    webhooks: bool = True
    webhook_settle_timeout_s: float = 180.0
    # The checkout whose `cli up` runs (default: this one), e.g. an older commit to compare with.
    app_dir: Path = ROOT
    output: Path = field(default_factory=lambda: ROOT / "test-output")

    @classmethod
    def from_env(cls) -> Config:
        """Reads the knobs from `SPONSORFLOW_FAULTS_*` (and the output dir from SPONSORFLOW_TEST_OUTPUT)."""
        p = "SPONSORFLOW_FAULTS_"
        d = cls()
        out = os.environ.get("SPONSORFLOW_TEST_OUTPUT")
        import_fault = os.environ.get(p + "IMPORT_FAULT", d.import_fault)
        if import_fault not in FAULTS:
            raise SystemExit(f"{p}IMPORT_FAULT: unknown fault {import_fault!r}; known: {', '.join(FAULTS)}")
        return cls(
            faults=_list(p + "LIST", d.faults),
            rounds=max(1, _int(p + "ROUNDS", d.rounds)),
            deal_clients=_int(p + "DEAL_CLIENTS", d.deal_clients),
            delivery_clients=_int(p + "DELIVERY_CLIENTS", d.delivery_clients),
            think_s=_float(p + "THINK_S", d.think_s),
            delivery_think_s=_float(p + "DELIVERY_THINK_S", d.delivery_think_s),
            client_timeout_s=_float(p + "CLIENT_TIMEOUT_S", d.client_timeout_s),
            no_answer_retries=_int(p + "NO_ANSWER_RETRIES", d.no_answer_retries),
            retry_backoff_s=_float(p + "RETRY_BACKOFF_S", d.retry_backoff_s),
            baseline_s=_float(p + "BASELINE_S", d.baseline_s),
            quiet_s=_float(p + "QUIET_S", d.quiet_s),
            temporal_down_s=_float(p + "TEMPORAL_DOWN_S", d.temporal_down_s),
            freeze_s=_float(p + "FREEZE_S", d.freeze_s),
            restart_timeout_s=_float(p + "RESTART_TIMEOUT_S", d.restart_timeout_s),
            settle_timeout_s=_float(p + "SETTLE_TIMEOUT_S", d.settle_timeout_s),
            settle_poll_s=_float(p + "SETTLE_POLL_S", d.settle_poll_s),
            import_rows=_int(p + "IMPORT_ROWS", d.import_rows),
            import_bad_rows=_int(p + "IMPORT_BAD_ROWS", d.import_bad_rows),
            import_fault=import_fault,
            import_chunk_rows=_int(p + "IMPORT_CHUNK_ROWS", d.import_chunk_rows),
            import_heartbeat_s=_int(p + "IMPORT_HEARTBEAT_S", d.import_heartbeat_s),
            import_timeout_s=_float(p + "IMPORT_TIMEOUT_S", d.import_timeout_s),
            workers=_int(p + "WORKERS", d.workers),
            webhooks=os.environ.get(p + "WEBHOOKS", "1").lower() not in ("0", "false", "no"),
            webhook_settle_timeout_s=_float(p + "WEBHOOK_SETTLE_TIMEOUT_S", d.webhook_settle_timeout_s),
            app_dir=Path(os.environ.get(p + "APP_DIR") or d.app_dir).resolve(),
            output=Path(out) if out else d.output,
        )
