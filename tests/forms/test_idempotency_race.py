"""Two web processes storing one Idempotency-Key at the same moment: one submission, one answer for both.

Each "process" is its own engine and session in its own thread (a separate database connection, as a second
uvicorn worker has). On PostgreSQL the race is forced: an engine event holds each INSERT until both sides have
read the key and found nothing, so both insert, the unique index lets one in and the other takes
`store_submissions`' IntegrityError fallback. On SQLite the race cannot happen: every transaction starts with
`BEGIN IMMEDIATE` (storage/db.py), so the second reader waits for the first writer and finds its row; the test
shows the same answer there.

Example:
    .venv/bin/pytest tests/forms/test_idempotency_race.py -q
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.db import make_engine
from leadsync.storage.models import Submission
from leadsync.storage.submissions import NewSubmission, StoreOutcome, store_submission

KEY = "0f7c2a9e-race-key"


def post(n: int) -> NewSubmission:
    """The same request twice (a browser retry sent to two web processes): same key, same body hash."""
    return NewSubmission(
        form="info_packet",
        email="race@example.org",
        fields={"first_name": "Ann", "copy": n},
        raw={},
        idempotency_key=KEY,
        request_hash="same-body",
    )


def test_two_concurrent_posts_with_one_key_store_one_submission(settings: Settings) -> None:
    url = settings.sqlalchemy_url
    postgres = url.startswith("postgresql")
    both_read = threading.Barrier(2, timeout=20)
    inserts: list[str] = []
    failed_inserts: list[str] = []

    def store(n: int) -> StoreOutcome:
        engine = make_engine(url)
        if postgres:

            @event.listens_for(engine, "before_cursor_execute")
            def hold_insert(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                if statement.startswith("INSERT INTO submissions"):
                    inserts.append(f"process {n}")
                    both_read.wait()  # both have looked the key up and found nothing

            @event.listens_for(engine, "handle_error")
            def seen_error(context: Any) -> None:
                if "idempotency" in str(context.original_exception).lower():
                    failed_inserts.append(f"process {n}")

        else:
            both_read.wait()  # start together; BEGIN IMMEDIATE orders them
        try:
            with Session(engine, expire_on_commit=False) as session:
                return store_submission(session, post(n))
        finally:
            engine.dispose()

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(store, (1, 2)))

    check = make_engine(url)
    with Session(check) as session:
        rows = session.execute(select(Submission.id, Submission.fields).where(Submission.idempotency_key == KEY)).all()
        total = session.scalar(select(func.count()).select_from(Submission))
    check.dispose()
    assert total == 1 and len(rows) == 1, rows
    assert {outcome.submission_id for outcome in outcomes} == {rows[0].id}  # the same answer for both
    assert sorted(outcome.created for outcome in outcomes) == [False, True]
    assert not any(outcome.key_conflict for outcome in outcomes)
    if postgres:  # the race really happened: both inserted, the unique index refused one
        assert len(inserts) == 2 and len(failed_inserts) == 1, (inserts, failed_inserts)
