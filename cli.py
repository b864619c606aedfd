"""The `sponsorflow` command: up, worker, api, migrate, tenant create."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from settings import Settings, get_settings

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Database:
    """Where the app role and the schema owner connect."""

    app_url: str
    owner_url: str
    server: Any = None


def resolve_database(settings: Settings) -> Database:
    """Returns the configured database, or starts (or joins) the embedded one under data_dir."""
    if settings.database_url:
        return Database(
            app_url=settings.database_url,
            owner_url=settings.migration_database_url or settings.database_url,
        )
    from db.embedded import ensure_database, start_server

    server = start_server(settings.data_dir.resolve() / "pg")
    db = ensure_database(server, "sponsorflow", settings.db_app_role)
    return Database(app_url=db.app_url, owner_url=db.owner_url, server=server)


def migrate(settings: Settings) -> Database:
    """Runs the migrations as the schema owner and returns the database."""
    from db.migrate import upgrade

    db = resolve_database(settings)
    upgrade(db.owner_url, app_role=settings.db_app_role)
    return db


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found; run `make install` (it comes from the pip package)")
    return found


def _wait_port(host: str, port: int, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see its log under the data dir")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not open {host}:{port} within {timeout:.0f}s")


def _wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with code {proc.returncode}; see api.log under the data dir")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemExit(f"the API was not ready within {timeout:.0f}s: {last}")


def _admin_token(settings: Settings, data_dir: Path) -> str:
    if settings.admin_token:
        return settings.admin_token
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = settings.admin_token_or_generate()
    path.write_text(token)
    path.chmod(0o600)
    return token


def up(settings: Settings) -> int:
    """Starts the whole dev stack in the foreground; Ctrl-C stops everything it started."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print("\nstopping ...", flush=True)
        for _name, child in reversed(procs):
            if child.poll() is None:
                child.terminate()
        for name, child in reversed(procs):
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", flush=True)
                child.kill()
        if db is not None and db.server is not None:
            db.server.cleanup()

    db: Database | None = None
    signal.signal(signal.SIGINT, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        token = _admin_token(settings, data_dir)
        print(f"starting PostgreSQL (data in {data_dir / 'pg'}) ...", flush=True)
        db = migrate(settings)
        env = dict(os.environ)
        env.update(
            SPONSORFLOW_DATABASE_URL=db.app_url,
            SPONSORFLOW_ADMIN_TOKEN=token,
            SPONSORFLOW_DATA_DIR=str(data_dir),
        )
        if not settings.temporal_address:
            print("starting the Temporal dev server ...", flush=True)
            from workflows.search_attributes import cli_flags

            temporal = subprocess.Popen(
                [
                    _bin("temporal"),
                    "server",
                    "start-dev",
                    "--db-filename",
                    str(data_dir / "temporal.db"),
                    "--port",
                    str(settings.temporal_port),
                    "--ui-port",
                    str(settings.temporal_ui_port),
                    "--namespace",
                    settings.temporal_namespace,
                    "--log-level",
                    "warn",
                    *cli_flags(),
                ],
                stdout=open(logs / "temporal.log", "ab"),  # noqa: SIM115 - lives as long as the child
                stderr=subprocess.STDOUT,
            )
            procs.append(("temporal", temporal))
            _wait_port("127.0.0.1", settings.temporal_port, 60, "the Temporal dev server", temporal)
            env["SPONSORFLOW_TEMPORAL_ADDRESS"] = f"127.0.0.1:{settings.temporal_port}"
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env=env,
            cwd=HERE,
            stdout=open(logs / "worker.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(("worker", worker))
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:app_factory",
                "--host",
                settings.api_host,
                "--port",
                str(settings.api_port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=HERE,
            stdout=open(logs / "api.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(("api", api))
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        _wait_ready(api_url, 60, api)
        demo_key = None
        if settings.demo:
            from api.demo_seed import seed_demo

            demo_key = seed_demo(api_url, token, data_dir)
        print(
            "\nsponsorflow is up\n"
            f"  API            {api_url}\n"
            f"  API docs       {api_url}/docs\n"
            f"  Temporal UI    {settings.ui_base_url}\n"
            f"  admin token    {token}\n"
            + (f"  demo API key   {demo_key}\n" if demo_key else "")
            + f"  logs           {logs}\n"
            "Press Ctrl-C to stop everything.",
            flush=True,
        )
        while True:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"{name} exited with code {p.returncode}; stopping", flush=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop()


def tenant_create(settings: Settings, name: str) -> int:
    """Creates a tenant and prints its first API key (shown once)."""
    from db.engine import make_engine, make_sessionmaker
    from db.tenants import create_tenant

    db = resolve_database(settings)

    async def run() -> None:
        engine = make_engine(db.app_url, pool_size=1)
        try:
            tenant = await create_tenant(sm=make_sessionmaker(engine), name=name)
        finally:
            await engine.dispose()
        print(json.dumps({"id": str(tenant.id), "name": tenant.name, "api_key": tenant.api_key}))

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs one command."""
    parser = argparse.ArgumentParser(prog="sponsorflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole dev stack (PostgreSQL, Temporal, worker, API, demo data)")
    sub.add_parser("worker", help="run the Temporal worker")
    sub.add_parser("api", help="run the HTTP API")
    sub.add_parser("migrate", help="apply database migrations")
    tenant = sub.add_parser("tenant", help="manage tenants")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_sub.add_parser("create", help="create a tenant and print its API key")
    create.add_argument("name")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "up":
        return up(settings)
    if args.command == "worker":
        import worker

        worker.main()
        return 0
    if args.command == "api":
        import uvicorn

        uvicorn.run("api.main:app_factory", factory=True, host=settings.api_host, port=settings.api_port)
        return 0
    if args.command == "migrate":
        migrate(settings)
        print("database is at the latest migration")
        return 0
    if args.command == "tenant":
        return tenant_create(settings, args.name)
    return 2


if __name__ == "__main__":
    sys.exit(main())
