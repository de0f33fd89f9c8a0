"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

Example:
    >>> from leadsync.storage.db import session_scope
    >>> with session_scope() as session:
    ...     session.execute(text("select 1"))
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from leadsync.config import get_settings

# A pooled connection idle this long is pinged before use (see `_ping_after_idle`); under load a web's writer
# and a worker's connections come back within milliseconds, and a server restart takes longer than this.
PING_AFTER_IDLE_SECONDS = 1.0


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine set up for many processes writing at once.

    SQLite gets WAL (readers never block the writer), a busy timeout, and `BEGIN IMMEDIATE`
    so two processes never deadlock upgrading a read lock to a write lock.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, **kwargs)
        _ping_after_idle(engine)
        return engine

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below own transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _ping_after_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only when it sat idle PING_AFTER_IDLE_SECONDS or longer.

    Why not SQLAlchemy's pool_pre_ping: it pings on every checkout, a round trip before each group commit, and
    a post waits for its batch's whole commit, round trips included. Without it, in turns under `wrk -c64`:
    1,620-2,178 -> 2,073-2,420 req/s (4 pairs; docs/benchmarks.md "Sixth round"). A connection used a moment
    ago is as alive as a ping would show; the ones a restarted server, a failover or a firewall's idle
    timeout broke have sat idle, and are tested and replaced as before (DisconnectionError: the pool
    reconnects). A server lost within that moment shows on the statement itself: a batch of new leads is then
    sent again over a new connection (storage/submissions.py), anything else fails as it would mid-statement.
    """

    @event.listens_for(engine, "connect")  # a new connection has just answered
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", float("-inf")) < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise DisconnectionError(f"connection failed its ping after idling: {error!r}") from error


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the configured database): one a URL, however it is asked
    for. (An lru_cache on `url` held two for one database, `get_engine()` and `get_engine(None)`, and a
    worker child disposed of the one its sessions did not use.)"""
    url = url or get_settings().sqlalchemy_url
    engine = _ENGINES.get(url)
    if engine is None:  # two threads at once: both make one, one is kept (an engine connects only when used)
        engine = _ENGINES.setdefault(url, make_engine(url))
    return engine


def dispose_engines() -> None:
    """Close every engine made so far and forget them: the next `get_engine()` reads the settings again."""
    for engine in list(_ENGINES.values()):
        engine.dispose()
    _ENGINES.clear()
    _sessionmaker.cache_clear()


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return _sessionmaker(get_engine(url))


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """One sessionmaker an engine: each new one is a new Session subclass whose event dispatch SQLAlchemy builds
    again on its first session (~0.3 ms of CPU, a third of the web's commit of a batch before; docs/benchmarks.md).
    A new engine (tests switching databases, `dispose_engines()`) gets its own."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: commits on success, rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str | None = None) -> None:
    """Raises when the database does not answer."""
    with get_engine(url).connect() as connection:
        connection.execute(text("select 1"))
