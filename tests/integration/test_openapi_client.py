"""A client generated from the OpenAPI document (openapi-python-client) creates a deal and moves it.

The client is generated at test time into a temporary directory from the app's /openapi.json, with
nothing downloaded, and talks HTTP to the real app (uvicorn over loopback, its worker, PostgreSQL,
Temporal). It finds the operations by their operationIds, authenticates through the document's
bearer scheme, sends Idempotency-Key and If-Match as documented headers and parses the documented
error shapes (409 transition detail, 412 precondition detail) into their models.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from tests.helpers.live_api import serve_api

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "sponsorflow_generated_client"


async def generate_client(spec: dict[str, Any], workdir: Path) -> Path:
    """Runs openapi-python-client on the document; returns the directory holding the package."""
    (workdir / "openapi.json").write_text(json.dumps(spec))
    # No post-hooks: the generator would format with ruff from PATH, which changes nothing we test.
    (workdir / "config.json").write_text(json.dumps({"package_name_override": PACKAGE, "post_hooks": []}))
    proc = await asyncio.create_subprocess_exec(
        str(GENERATOR),
        "generate",
        "--path",
        "openapi.json",
        "--config",
        "config.json",
        "--meta",
        "none",
        "--output-path",
        f"out/{PACKAGE}",
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    # The generator warns about any part of the document it could not turn into code.
    assert "Unable to" not in text and "Error(s) encountered" not in text, text
    return workdir / "out"


@pytest.fixture
def importable() -> Iterator[list[Path]]:
    """Directories to import generated packages from, removed again afterwards."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        sys.path.remove(str(p))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def load(root: Path, importable: list[Path], name: str) -> ModuleType:
    """Imports a module of the generated package."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
        importable.append(root)
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_generated_client_creates_a_deal_and_moves_it(
    database: EmbeddedDatabase, client: Client, sm: SessionMaker, tmp_path: Path, importable: list[Path]
) -> None:
    async with serve_api(database, client, sm) as live:
        async with httpx.AsyncClient(base_url=live.base_url) as plain:
            spec = (await plain.get("/openapi.json")).json()
        root = await generate_client(spec, tmp_path)

        def op(tag: str, operation: str) -> ModuleType:
            return load(root, importable, f"api.{tag}.{operation}")

        models = load(root, importable, "models")
        api_client = load(root, importable, "client").AuthenticatedClient(
            base_url=live.base_url, token=live.tenant.api_key, raise_on_unexpected_status=True
        )
        async with api_client as c:
            created_adv = await op("catalog", "create_advertiser").asyncio_detailed(
                client=c, body=models.AdvertiserCreate(name="Acme Mattress", domain="acme.example")
            )
            assert created_adv.status_code == 201, created_adv.content
            advertiser = created_adv.parsed
            assert isinstance(advertiser, models.AdvertiserPublic)

            key = f"gen-{uuid.uuid4()}"
            body = models.DealCreate(
                advertiser_id=uuid.UUID(advertiser.id), name="Spring host-read flight", value_usd=12000
            )
            created = await op("deals", "create_deal").asyncio_detailed(
                client=c, body=body, idempotency_key=key
            )
            assert created.status_code == 201, created.content
            deal = created.parsed
            assert isinstance(deal, models.DealPublic)
            assert deal.stage == models.Stage.LEAD and deal.probability == 10

            # The same Idempotency-Key answers the deal it created, creating nothing.
            again = await op("deals", "create_deal").asyncio_detailed(
                client=c, body=body, idempotency_key=key
            )
            assert again.status_code == 201 and again.parsed.id == deal.id

            read = await op("deals", "get_deal").asyncio_detailed(deal.id, client=c)
            assert read.status_code == 200 and isinstance(read.parsed, models.DealPublic)
            etag = read.headers["ETag"]

            moved = await op("deals", "change_deal_stage").asyncio_detailed(
                deal.id, client=c, body=models.StageChange(stage=models.Stage.QUALIFIED), if_match=etag
            )
            assert moved.status_code == 200, moved.content
            assert isinstance(moved.parsed, models.DealPublic)
            assert moved.parsed.stage == models.Stage.QUALIFIED and moved.parsed.probability == 25
            assert [(h.from_, h.to) for h in moved.parsed.history][-1] == (
                models.Stage.LEAD,
                models.Stage.QUALIFIED,
            )

            # The old ETag names a stage entry the deal has left: 412, parsed as documented.
            stale = await op("deals", "change_deal_stage").asyncio_detailed(
                deal.id, client=c, body=models.StageChange(stage=models.Stage.PROPOSAL), if_match=etag
            )
            assert stale.status_code == 412
            assert isinstance(stale.parsed, models.PreconditionFailed)
            assert stale.parsed.current_stage == models.Stage.QUALIFIED
            assert stale.headers["ETag"] == stale.parsed.etag and stale.parsed.code == "stage_moved"

            # A forbidden move: 409 with the transition detail, parsed as documented.
            refused = await op("deals", "change_deal_stage").asyncio_detailed(
                deal.id, client=c, body=models.StageChange(stage=models.Stage.WON)
            )
            assert refused.status_code == 409
            assert isinstance(refused.parsed, models.TransitionConflict)
            assert refused.parsed.current_stage == models.Stage.QUALIFIED
            assert models.Stage.PROPOSAL in refused.parsed.allowed_stages

            unknown = await op("deals", "get_deal").asyncio_detailed(str(uuid.uuid4()), client=c)
            assert unknown.status_code == 404 and isinstance(unknown.parsed, models.Problem)

        # Without the key: the documented 401, parsed as a Problem.
        anonymous = load(root, importable, "client").Client(base_url=live.base_url)
        async with anonymous as a:
            denied = await op("deals", "list_deals").asyncio_detailed(client=a)
            assert denied.status_code == 401 and isinstance(denied.parsed, models.Problem)
