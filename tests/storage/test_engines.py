"""One engine (one connection pool) a database in each process, however it is asked for: a worker child
disposes of the pool it inherited, so that must be the pool its sessions use (worker/tasks.py)."""

from __future__ import annotations

from leadsync.config import Settings
from leadsync.storage.db import dispose_engines, get_engine, get_sessionmaker


def test_every_way_of_asking_gives_the_one_engine_its_sessions_use(settings: Settings) -> None:
    engine = get_engine()
    assert get_engine(None) is engine and get_engine(settings.sqlalchemy_url) is engine
    with get_sessionmaker()() as session:
        assert session.get_bind() is engine


def test_dispose_engines_forgets_them(settings: Settings) -> None:
    engine = get_engine()
    dispose_engines()
    assert get_engine() is not engine
    with get_sessionmaker()() as session:
        assert session.get_bind() is get_engine()
