"""Alembic, driven from code: `reversals migrate` and the tests use the same call."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from worker.settings import get_settings, to_sqlalchemy_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    url = to_sqlalchemy_url(database_url or get_settings().database_url)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
