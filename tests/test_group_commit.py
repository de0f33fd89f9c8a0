"""Group commit: submissions arriving together share one transaction and one broker message."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.forms.group_commit import GroupCommit
from leadsync.forms.submit import store_batch
from leadsync.storage.submissions import NewSubmission
from leadsync.worker.signatures import enqueue_submissions
from tests.test_forms_api import queued_tasks, submissions


def new(n: int, **extra: object) -> NewSubmission:
    return NewSubmission(form="info_packet", email=f"p{n}@example.org", fields={"first_name": "P"}, raw={}, **extra)


def published_ids(settings: Settings) -> list[str]:
    return [submission_id for message in queued_tasks(settings) for submission_id in message_args(message)[0]]


def message_args(message: dict) -> list:
    """The task arguments of a queued Celery message (protocol 2: base64 JSON body [args, kwargs, embed])."""
    import base64
    import json

    return json.loads(base64.b64decode(message["body"]))[0]


def test_requests_queued_together_are_one_transaction_and_one_message(settings: Settings) -> None:
    commits = GroupCommit(store_batch, enqueue_submissions)
    batch = [new(n) for n in range(40)]
    batch += [new(1, idempotency_key="k-1", request_hash="h"), new(1, idempotency_key="k-1", request_hash="h")]
    batch += [new(90, spam_reason="honeypot"), new(91, spam_reason="too_fast")]

    async def post_all() -> list:
        return await asyncio.gather(*(commits.store(item) for item in batch))

    outcomes = asyncio.run(post_all())

    assert commits.batches == 1
    stored = submissions()
    assert len(stored) == 43  # 40 + one for the key (its repeat replays it) + 2 spam
    assert outcomes[41].created is False and outcomes[41].submission_id == outcomes[40].submission_id
    [message] = queued_tasks(settings)
    assert message["headers"]["task"] == "leadsync.process_submissions"
    # Every new non-spam submission published once; spam and replays never.
    assert sorted(message_args(message)[0]) == sorted(s.id for s in stored if s.status == "pending")
    assert len(message_args(message)[0]) == 41


def test_a_failed_commit_fails_every_request_in_the_batch_and_the_writer_goes_on(settings: Settings) -> None:
    calls = []

    def store_or_fail(items: list[NewSubmission]) -> list:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("database away")
        return store_batch(items)

    commits = GroupCommit(store_or_fail, enqueue_submissions)

    async def scenario() -> tuple[list, object]:
        first = await asyncio.gather(*(commits.store(new(n)) for n in range(5)), return_exceptions=True)
        later = await commits.store(new(6))
        return first, later

    first, later = asyncio.run(scenario())
    assert all(isinstance(result, RuntimeError) for result in first)
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
