"""Schemathesis, every check and every phase (stateful links too), against the real app: zero failures.

The API is served over loopback by uvicorn with its worker, against the session's PostgreSQL and
Temporal dev server, and authenticated with a real tenant's key (the admin token for creating
tenants). Settings that the document cannot state are in tests/integration/schemathesis.toml,
each with its reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.helpers.live_api import serve_api

CONFIG = Path(__file__).with_name("schemathesis.toml")
ST = Path(sys.executable).parent / "st"
# Examples per operation in the fuzzing phase: the coverage phase already sends every boundary and
# every documented answer's trigger it can derive; this keeps the run around half a minute here.
MAX_EXAMPLES = int(os.environ.get("SPONSORFLOW_SCHEMATHESIS_EXAMPLES", "20"))
SEED = os.environ.get("SPONSORFLOW_SCHEMATHESIS_SEED", "20260101")


async def run_schemathesis(
    base_url: str, env: dict[str, str], workdir: Path
) -> tuple[int, str, dict[str, Any]]:
    """Runs `st run` with every check; returns its exit code, its output and its JSON report."""
    report = workdir / "report.json"
    proc = await asyncio.create_subprocess_exec(
        str(ST),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        cwd=workdir,  # its caches stay out of the work tree
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=150)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), json.loads(report.read_text())


async def test_schemathesis_finds_no_failure(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, tmp_path: Path
) -> None:
    async with serve_api(database, client, sm) as live:
        assert live.settings.admin_token
        code, out, report = await run_schemathesis(
            live.base_url,
            {"SF_TENANT_KEY": live.tenant.api_key, "SF_ADMIN_TOKEN": live.settings.admin_token},
            tmp_path,
        )
    operations, cases, phases = report["operations"], report["test_cases"], report["phases"]
    print(
        f"schemathesis: {operations['tested']}/{operations['total']} operations, "
        f"{cases['generated']} cases, {cases['with_failures']} with failures, "
        f"{len(report['failures'])} failures, {len(report['errors'])} errors, "
        f"{report['running_time']:.1f} s; phases "
        + ", ".join(f"{name} {p['status']}" for name, p in phases.items())
    )
    summary = out[out.find("=== FAILURES ===") :] if "=== FAILURES ===" in out else out[-4000:]
    assert code == 0 and not report["failures"] and not report["errors"], summary
    # Every operation was exercised, and the stateful phase ran the links.
    assert operations["tested"] == operations["total"] >= 35, operations
    assert phases["stateful"]["status"] == "success", phases
    assert phases["coverage"]["status"] == "success" and phases["fuzzing"]["status"] == "success", phases
    assert cases["generated"] > 1000, cases
