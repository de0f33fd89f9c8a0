"""How a group commit's batch travels to PostgreSQL, read from the wire (libpq's protocol trace of the
connection): a batch of new leads is one statement with no BEGIN or COMMIT around it, and is still all or
nothing; a batch with spam or an Idempotency-Key keeps its transaction (several statements that must land
together)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import DBAPIError

from leadsync.config import Settings
from leadsync.forms.submit import store_batch
from leadsync.storage.db import get_engine, get_sessionmaker
from leadsync.storage.models import Submission
from leadsync.storage.submissions import NewSubmission

pytestmark = pytest.mark.parametrize("backend", ["redis-postgres"], indirect=True)


def lead(index: int, **extra: object) -> NewSubmission:
    return NewSubmission("info_packet", f"lead{index}@example.org", {"first_name": "Ann"}, {}, **extra)  # type: ignore[arg-type]


@pytest.fixture
def wire(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    """Every message the client sends to PostgreSQL while a test runs, as libpq traces it."""
    path = tmp_path / "wire.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    pool = get_engine().pool

    def trace(dbapi_connection: object, *_: object) -> None:
        dbapi_connection.pgconn.trace(fd)  # type: ignore[attr-defined]

    def untrace(dbapi_connection: object, *_: object) -> None:
        dbapi_connection.pgconn.untrace()  # type: ignore[attr-defined]

    event.listen(pool, "checkout", trace)
    event.listen(pool, "checkin", untrace)
    yield path
    event.remove(pool, "checkout", trace)
    event.remove(pool, "checkin", untrace)
    os.close(fd)


def sent(path: Path) -> list[str]:
    """The statements the client sent, in order (simple Query messages and the extended protocol's Parse)."""
    found = re.findall(r"\tF\t\d+\t(?:Query|Parse)\t (?:\"\" )?\"([^\"]*)", path.read_text())
    return [statement.split()[0].upper() for statement in found]


def stored() -> int:
    with get_sessionmaker()() as session:
        return session.scalar(select(func.count()).select_from(Submission)) or 0


def test_a_batch_of_new_leads_is_one_statement_without_begin_or_commit(wire: Path) -> None:
    outcomes = store_batch([lead(index) for index in range(5)])
    assert sent(wire) == ["INSERT"]
    assert [o.created for o in outcomes] == [True] * 5 and stored() == 5


def test_a_batch_of_new_leads_is_still_all_or_nothing(wire: Path) -> None:
    # The fourth row's form does not fit its column: the one statement fails, and none of the five is stored.
    batch = [lead(index) for index in range(5)]
    batch[3] = NewSubmission("x" * 40, "lead3@example.org", {}, {})
    with pytest.raises(DBAPIError):
        store_batch(batch)
    assert sent(wire) == ["INSERT"] and stored() == 0
    store_batch([lead(9)])  # the connection went back to the pool fit for the next batch
    assert stored() == 1


@pytest.mark.parametrize(
    "extra",
    [{"idempotency_key": "key-1", "request_hash": "h" * 64}, {"spam_reason": "honeypot"}],
    ids=["with a key", "with spam"],
)
def test_a_batch_with_a_key_or_spam_keeps_its_transaction(wire: Path, extra: dict[str, str]) -> None:
    store_batch([lead(0), lead(1, **extra)])
    statements = sent(wire)
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT" and "INSERT" in statements
    assert stored() == 2
