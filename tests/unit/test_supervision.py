"""`sponsorflow up`'s restart policy and the shutdown budgets it must agree with."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cli import Backoff, exit_description
from settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    b = Backoff(initial=0.5, maximum=30, reset_after=60)
    assert [b.after_exit(uptime=1) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.after_exit(uptime=60) == 0.5
    assert b.after_exit(uptime=59) == 1


def test_exit_description_names_the_signal() -> None:
    assert exit_description(-9) == "code -9 (SIGKILL)"
    assert exit_description(-15) == "code -15 (SIGTERM)"
    assert exit_description(1) == "code 1"
    assert exit_description(0) == "code 0"


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)", value)
    assert m, value
    return float(m[1]) * (60 if m[2] == "m" else 1)


def test_worker_drains_within_the_compose_grace_period() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("worker-v1", "worker-v2"):
        grace = _seconds(services[name]["stop_grace_period"])
        env = services[name].get("environment") or {}
        drain = float(env.get("SPONSORFLOW_WORKER_SHUTDOWN_SECONDS", Settings().worker_shutdown_seconds))
        # The drain plus closing the engine and the client must fit before docker's SIGKILL.
        assert drain + 3 <= grace
    # The API (compose default: 10 s) likewise.
    api_grace = _seconds(services["api"].get("stop_grace_period", "10s"))
    assert Settings().api_shutdown_seconds + 1 <= api_grace


def test_workers_knob_is_validated() -> None:
    assert Settings().workers == 1
    assert Settings(workers=2).workers == 2
    try:
        Settings(workers=0)
    except ValueError as exc:
        assert "workers" in str(exc)
    else:
        raise AssertionError("workers=0 accepted")
