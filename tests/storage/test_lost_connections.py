"""A pooled PostgreSQL connection that dies: pinged and replaced after it idled (storage/db.py), and a batch of
new leads sent again when its one statement lost the connection, stored once whether or not the lost
attempt had landed (storage/submissions.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage import db
from leadsync.storage.db import get_engine, make_engine
from leadsync.storage.models import Submission
from leadsync.storage.submissions import NewSubmission, store_submissions

pytestmark = pytest.mark.parametrize("backend", ["redis-postgres"], indirect=True)


def lead(index: int, **extra: str) -> NewSubmission:
    return NewSubmission("info_packet", f"lost{index}@example.org", {"first_name": "Ann"}, {}, **extra)  # type: ignore[arg-type]


def libpq_url(settings: Settings) -> str:
    return make_url(settings.sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def kill_other_backends(settings: Settings) -> None:
    """Terminate every other session of the test's database (as a restart or a failover would), and wait."""
    with psycopg.connect(libpq_url(settings), autocommit=True) as admin:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        for (pid,) in admin.execute(sql).fetchall():
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while admin.execute(sql).fetchall() and time.monotonic() < deadline:
            time.sleep(0.05)


def stored(settings: Settings) -> list[str]:
    with psycopg.connect(libpq_url(settings)) as reader:
        return [email for (email,) in reader.execute("SELECT email FROM submissions ORDER BY email").fetchall()]


def used_once() -> None:
    """Check a connection out and back in, so the pool holds one that was used a moment ago."""
    with Session(get_engine()) as session:
        session.scalar(select(func.count()).select_from(Submission))


def test_a_connection_that_idled_is_pinged_and_replaced(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every checkout counts as after an idle spell
    used_once()
    kill_other_backends(settings)
    # A batch with an Idempotency-Key is a transaction, never sent twice: it lands only if the ping replaced it.
    with Session(get_engine()) as session:
        outcomes = store_submissions(session, [lead(0, idempotency_key="k0", request_hash="h" * 64)])
    assert outcomes[0].created and stored(settings) == ["lost0@example.org"]


def test_a_connection_used_a_moment_ago_is_not_pinged(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    used_once()
    kill_other_backends(settings)
    with Session(get_engine()) as session, pytest.raises(DBAPIError) as lost:
        store_submissions(session, [lead(0, idempotency_key="k0", request_hash="h" * 64)])
    assert lost.value.connection_invalidated and stored(settings) == []


def test_a_batch_of_new_leads_that_lost_its_connection_is_sent_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    used_once()
    kill_other_backends(settings)
    with Session(get_engine()) as session:
        outcomes = store_submissions(session, [lead(index) for index in range(3)])
    assert [o.created for o in outcomes] == [True] * 3
    assert stored(settings) == [f"lost{index}@example.org" for index in range(3)]


class CutAfterCommit:
    """A TCP relay to PostgreSQL that, once armed, drops the connection in place of the server's answer to
    an INSERT: the statement has committed (the answer is flushed only after the commit), the client never
    learns it."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = False
        self.cut = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if answers and self.armed and b"INSERT 0 " in chunk:
                    self.armed = False
                    self.cut += 1
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):  # shutdown, not only close: it wakes the other direction's recv
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay(settings: Settings) -> Iterator[CutAfterCommit]:
    relay = CutAfterCommit(make_url(settings.sqlalchemy_url).port or 5432)
    yield relay
    relay.close()


def test_a_batch_whose_commit_answer_was_lost_is_stored_once(
    settings: Settings, relay: CutAfterCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = make_engine(make_url(settings.sqlalchemy_url).set(port=relay.port).render_as_string(hide_password=False))
    try:
        relay.armed = True
        with Session(engine) as session:
            outcomes = store_submissions(session, [lead(index) for index in range(3)])
    finally:
        engine.dispose()
    assert relay.cut == 1  # the first attempt committed and its answer never came
    assert [o.created for o in outcomes] == [True] * 3
    assert stored(settings) == [f"lost{index}@example.org" for index in range(3)]  # once each
