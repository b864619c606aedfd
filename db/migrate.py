"""Runs Alembic programmatically (the CLI, `make up` and the tests share this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(*, url: str, app_role: str = "sponsorflow_app") -> Config:
    """Returns an Alembic config pointed at `url` (the schema owner's connection)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["app_role"] = app_role
    return cfg


def upgrade(*, url: str, revision: str = "head", app_role: str = "sponsorflow_app") -> None:
    """Migrates the database up to `revision`; a no-op when it is already there."""
    command.upgrade(alembic_config(url=url, app_role=app_role), revision)


def downgrade(*, url: str, revision: str = "base", app_role: str = "sponsorflow_app") -> None:
    """Migrates the database down to `revision`."""
    command.downgrade(alembic_config(url=url, app_role=app_role), revision)
