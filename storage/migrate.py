"""`leadsync db upgrade`: Alembic migrations, the same history for SQLite and PostgreSQL.

Example:
    >>> from leadsync.storage.migrate import upgrade
    >>> upgrade("sqlite:///var/leadsync.db")
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config

from leadsync.config import get_settings


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("leadsync.storage") / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", (url or get_settings().sqlalchemy_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` (default: the configured one) up to `revision`."""
    command.upgrade(alembic_config(url), revision)


def revision(message: str, url: str | None = None) -> None:
    """Autogenerate a new migration from the models (a developer's command)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
