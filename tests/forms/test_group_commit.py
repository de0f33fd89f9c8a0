"""Group commit: submissions arriving together share one transaction and one broker message.

"One transaction" is observed from the database's side: SQLAlchemy's engine events record every statement
sent and every COMMIT/ROLLBACK, and on PostgreSQL the rows' `xmin` (the id of the transaction that wrote
them) must be one and the same.

Example:
    with Transactions(Engine) as seen: ...; assert seen.committed == [["SELECT ...", "INSERT INTO submissions"]]
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from leadsync.config import Settings
from leadsync.forms import group_commit
from leadsync.forms.app import create_app
from leadsync.forms.group_commit import GroupCommit
from leadsync.forms.submit import store_batch
from leadsync.storage.db import get_engine
from leadsync.storage.submissions import NewSubmission, StoreOutcome
from leadsync.worker.enqueue import enqueue_submissions
from tests.forms.test_forms_api import queued_tasks, submissions
from tests.forms.test_overload import wait_until


def new(n: int, **extra: object) -> NewSubmission:
    return NewSubmission(form="info_packet", email=f"p{n}@example.org", fields={"first_name": "P"}, raw={}, **extra)


def published_ids(settings: Settings) -> list[str]:
    return [submission_id for message in queued_tasks(settings) for submission_id in message_args(message)[0]]


def message_args(message: dict) -> list:
    """The task arguments of a queued Celery message (protocol 2: base64 JSON body [args, kwargs, embed])."""
    import base64
    import json

    return json.loads(base64.b64decode(message["body"]))[0]


class Transactions:
    """Statements sent, grouped by the transaction they ended in (COMMIT or ROLLBACK).

    Listening on the Engine class catches every engine of the process (the writer's own is cached per
    call signature, so `get_engine()` in a test is not necessarily the object the writer uses).
    """

    def __init__(self, engine: Engine | type[Engine]) -> None:
        self.engine = engine
        self.current: list[str] = []
        self.committed: list[list[str]] = []
        self.rolled_back: list[list[str]] = []
        self._hooks: list[tuple[str, Any]] = [
            ("before_cursor_execute", self._statement),
            ("commit", lambda conn: self._end(self.committed)),
            ("rollback", lambda conn: self._end(self.rolled_back)),
        ]

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        self.current.append(" ".join(words[:3]) if words[:2] == ["INSERT", "INTO"] else words[0])

    def _end(self, into: list[list[str]]) -> None:
        if self.current:  # a pool's reset rollback of an idle connection is not a transaction of ours
            into.append(self.current)
        self.current = []

    def writes(self, transactions: list[list[str]]) -> list[list[str]]:
        return [[s for s in statements if s.startswith("INSERT")] for statements in transactions]

    def __enter__(self) -> Transactions:
        for name, hook in self._hooks:
            event.listen(self.engine, name, hook)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for name, hook in self._hooks:
            event.remove(self.engine, name, hook)


def writer_transactions(settings: Settings) -> int:
    """PostgreSQL: how many transactions wrote the stored submissions (`xmin`); SQLite has no such column."""
    with get_engine().connect() as connection:
        return connection.scalar(text("SELECT count(DISTINCT xmin::text) FROM submissions")) or 0


def test_requests_queued_together_are_one_transaction_and_one_message(settings: Settings) -> None:
    commits = GroupCommit(store_batch, enqueue_submissions)
    batch = [new(n) for n in range(40)]
    batch += [new(1, idempotency_key="k-1", request_hash="h"), new(1, idempotency_key="k-1", request_hash="h")]
    batch += [new(90, spam_reason="honeypot"), new(91, spam_reason="too_fast")]

    async def post_all() -> list:
        return await asyncio.gather(*(commits.store(item) for item in batch))

    with Transactions(Engine) as seen:
        outcomes = asyncio.run(post_all())

    assert commits.batches == 1
    # The database saw one COMMIT (nothing rolled back), holding one counter upsert per spam reason in the batch
    # (honeypot, too_fast: spam is counted, storage/submissions.py) and one multi-row INSERT of all 43.
    spam_upserts = ["INSERT INTO spam_counts"] * 2
    assert seen.writes(seen.committed) == [[*spam_upserts, "INSERT INTO submissions"]] and seen.rolled_back == []
    if settings.database_url.startswith("postgresql"):
        assert writer_transactions(settings) == 1  # every row carries the same writing transaction id
    stored = submissions()
    assert len(stored) == 43  # 40 + one for the key (its repeat replays it) + 2 spam
    assert outcomes[41].created is False and outcomes[41].submission_id == outcomes[40].submission_id
    [message] = queued_tasks(settings)
    assert message["headers"]["task"] == "leadsync.process_submissions"
    # Every new non-spam submission published once; spam and replays never.
    assert sorted(message_args(message)[0]) == sorted(s.id for s in stored if s.status == "pending")
    assert len(message_args(message)[0]) == 41


def test_a_failed_commit_fails_every_request_in_the_batch_and_the_writer_goes_on(settings: Settings) -> None:
    commits = GroupCommit(store_batch, enqueue_submissions)
    # The database itself refuses the batch: one row breaks a NOT NULL constraint inside the multi-row INSERT.
    batch = [new(n) for n in range(5)]
    batch[3] = NewSubmission(form=None, email="p3@example.org", fields={}, raw={})  # type: ignore[arg-type]

    async def scenario() -> tuple[list, object]:
        first = await asyncio.gather(*(commits.store(item) for item in batch), return_exceptions=True)
        later = await commits.store(new(6))
        return first, later

    with Transactions(Engine) as seen:
        first, later = asyncio.run(scenario())
    assert all(isinstance(result, IntegrityError) for result in first)  # the database's refusal, for all five
    assert seen.writes(seen.rolled_back) == [["INSERT INTO submissions"]]  # sent, refused, rolled back
    assert seen.writes(seen.committed) == [["INSERT INTO submissions"]]  # then the next batch alone
    assert later.created and [s.email for s in submissions()] == ["p6@example.org"]  # nothing half-written
    assert published_ids(settings) == [later.submission_id]


@pytest.mark.parametrize("requests", [60])
def test_concurrent_http_posts_are_all_stored_and_each_published_once(settings: Settings, requests: int) -> None:
    app = create_app(settings)

    async def post_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            return await asyncio.gather(
                *(
                    client.post("/forms/info-packet", data={"email": f"v{n}@example.org", "first_name": "V"})
                    for n in range(requests)
                )
            )

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [202] * requests
    answered = {r.json()["id"] for r in responses}
    assert {s.id for s in submissions()} == answered  # every 202 is a committed row
    assert sorted(published_ids(settings)) == sorted(answered)  # each published exactly once
    commits = app.state.group_commit
    assert len(queued_tasks(settings)) == commits.batches <= requests


def _recording_writer(release: threading.Event) -> tuple[GroupCommit, list[int]]:
    """A GroupCommit whose store records each batch's size and holds until `release` is set."""
    sizes: list[int] = []

    def store(batch: Sequence[NewSubmission]) -> list[StoreOutcome]:
        sizes.append(len(batch))
        release.wait(10)
        return [StoreOutcome(created=True, submission_id=item.email) for item in batch]

    return GroupCommit(store, lambda ids: True), sizes


def test_a_busy_batch_waits_for_the_posts_on_their_way(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long linger here (production's is 2 ms) so a slow test machine cannot miss it.
    monkeypatch.setattr(group_commit, "LINGER_SECONDS", 0.5)
    release = threading.Event()
    writer, sizes = _recording_writer(release)

    async def scenario() -> None:
        first = asyncio.create_task(writer.store(new(0)))  # alone: committed at once, held in the store
        await wait_until(lambda: sizes == [1], "the lone post was not committed at once")
        busy = [asyncio.create_task(writer.store(new(n))) for n in range(1, 1 + group_commit.LINGER_FROM)]
        await asyncio.sleep(0)  # queued behind the held commit
        release.set()
        await first
        await wait_until(lambda: writer._pending.empty(), "the writer did not take the busy batch")
        late = [asyncio.create_task(writer.store(new(n))) for n in (10, 11)]  # on their way: within the linger
        await asyncio.gather(*busy, *late)

    asyncio.run(scenario())
    assert sizes == [1, group_commit.LINGER_FROM + 2]


def test_a_few_posts_are_not_held_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "LINGER_SECONDS", 5.0)
    release = threading.Event()
    release.set()
    writer, sizes = _recording_writer(release)

    async def scenario() -> float:
        started = time.monotonic()
        await asyncio.gather(*(writer.store(new(n)) for n in range(group_commit.LINGER_FROM - 1)))
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 2.5  # not the 5 s linger
    assert sizes == [group_commit.LINGER_FROM - 1]
