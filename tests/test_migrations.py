"""The Alembic history builds exactly the schema the models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from leadsync.config import Settings
from leadsync.storage.db import get_engine
from leadsync.storage.models import Base


def test_the_migrations_and_the_models_agree(settings: Settings) -> None:
    with get_engine().connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []  # a model change without its migration (or the reverse) shows up here
