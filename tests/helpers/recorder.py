"""`make record-histories`: runs every replay scenario against real servers and ADDS its history to
tests/histories/<workflow type>/, never overwriting a file.

    python -m tests.helpers.recorder                 # every scenario
    python -m tests.helpers.recorder --only DealWorkflow/noop --only CsvImportWorkflow
    python -m tests.helpers.recorder --force         # record even where nothing changed
    python -m tests.helpers.recorder --dry-run      # run and replay them, write nothing
    python -m tests.helpers.recorder --list          # the scenarios, and what each records

Rules:
- a scenario without a recording is written as `<scenario>.json`;
- a scenario whose commands differ from its newest recording gets `<scenario>@<UTC stamp>.json`
  beside the older files (with --force, every scenario does);
- a scenario whose commands are unchanged records nothing (the corpus holds one file per
  behaviour, not one per run);
- every history is replayed against today's code before it is written;
- at the end tests/workflow_contract.json is rewritten from today's code (payload schemas and
  patch ids), the one command that accepts a contract change.

It starts its own embedded PostgreSQL (a temporary directory), one Temporal dev server and a fresh
time-skipping test server per timer scenario, the same way tests/conftest.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from db.embedded import EmbeddedDatabase, ensure_database, start_server
from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from tests.helpers.histories import (
    HISTORIES,
    WORKFLOWS,
    command_sequence,
    load,
    new_path,
    newest,
    write_contract,
    write_new,
)
from tests.helpers.scenarios import SCENARIOS, Ctx, Scenario, dev_server_env, time_skipping_env


async def replay(history: WorkflowHistory) -> None:
    """Replays a history against today's code with every workflow registered."""
    await Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter).replay_workflow(history)


def selected(only: list[str]) -> list[Scenario]:
    """The scenarios whose id is, or starts with, one of `only` (all when empty)."""
    if not only:
        return list(SCENARIOS)
    picked = [s for s in SCENARIOS if any(s.id == o or s.id.startswith(o.rstrip("/") + "/") for o in only)]
    if not picked:
        raise SystemExit(f"no scenario matches {only}; see --list")
    return picked


def decide(scenario: Scenario, history: WorkflowHistory, *, force: bool) -> Path | None:
    """Where this recording goes, or None when the newest one already holds these commands."""
    last = newest(scenario.workflow_type, scenario.name)
    if last is not None and not force and command_sequence(load(last)) == command_sequence(history):
        return None
    return new_path(scenario.workflow_type, scenario.name)


async def record(
    scenarios: list[Scenario], db: EmbeddedDatabase, *, force: bool, dry_run: bool = False
) -> list[str]:
    """Runs the scenarios and writes what changed; returns one line per scenario."""
    lines: list[str] = []
    engine = make_engine(url=db.app_url, pool_size=20)
    sm = make_sessionmaker(engine=engine)
    try:
        async with dev_server_env() as dev:
            for sc in scenarios:
                t0 = time.monotonic()
                if sc.server == "time-skipping":
                    async with time_skipping_env() as ts:
                        history = await sc.drive(Ctx(db, ts, sm))
                else:
                    history = await sc.drive(Ctx(db, dev, sm))
                await replay(history)
                path = decide(sc, history, force=force)
                took = time.monotonic() - t0
                if path is None:
                    lines.append(f"  unchanged  {sc.id} ({took:.1f}s)")
                elif dry_run:
                    lines.append(f"  would record {path.name} ({took:.1f}s): {command_sequence(history)}")
                else:
                    write_new(path, history)
                    lines.append(f"  recorded   {path.relative_to(HISTORIES.parent.parent)} ({took:.1f}s)")
                print(lines[-1], flush=True)
    finally:
        await engine.dispose()
    return lines


def run(scenarios: list[Scenario], *, force: bool, dry_run: bool) -> list[str]:
    """An embedded PostgreSQL in a temporary directory, migrated, for one recording session."""
    root = Path(tempfile.mkdtemp(prefix="sf-record-"))
    server = start_server(pgdata=root / "pg")
    try:
        db = ensure_database(server=server, name="sponsorflow_record", app_role="sponsorflow_app")
        upgrade(url=db.owner_url)  # Alembic runs its own event loop: before ours starts
        return asyncio.run(record(scenarios, db, force=force, dry_run=dry_run))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.helpers.recorder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--only", action="append", default=[], help="a scenario id or a workflow type")
    parser.add_argument("--force", action="store_true", help="record even where the commands are unchanged")
    parser.add_argument("--dry-run", action="store_true", help="run and replay, write nothing")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--contract-only", action="store_true", help="only rewrite tests/workflow_contract.json"
    )
    args = parser.parse_args(argv)
    # The scenarios fail activities on purpose (retries, file errors, cancellations): the SDK logs
    # each with its traceback, which would bury the report.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.id:55} {s.server:14} {s.about}")
        return 0
    if not args.contract_only:
        t0 = time.monotonic()
        lines = run(selected(args.only), force=args.force, dry_run=args.dry_run)
        print(f"{len(lines)} scenarios in {time.monotonic() - t0:.0f}s:")
        print("\n".join(lines))
        if args.dry_run:
            return 0
    print(f"wrote {write_contract().relative_to(HISTORIES.parent.parent)}")
    return 0


if __name__ == "__main__":
    from settings import exit_skipping_teardown

    code = main()
    sys.stdout.flush()
    # The SDK's Rust threads can abort the interpreter's teardown (README, "The sponsorflow command").
    exit_skipping_teardown(code)
