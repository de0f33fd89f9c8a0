"""The rate limits are counted by the group-commit writer, a batch at a time: one Redis script call a batch,
and within a batch the same rules, post by post in arrival order, as one post at a time (forms/ratelimit.py).

The posts pile up into one batch for real: a second connection holds an ACCESS EXCLUSIVE lock on
`submissions`, so the writer's first transaction waits inside PostgreSQL while the others queue behind it.

Example:
    .venv/bin/pytest tests/forms/test_batch_rate_limit.py -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis
from sqlalchemy import create_engine, select, text

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.storage.models import Submission
from tests.conftest import apply_settings
from tests.forms.test_overload import wait_until, waiting_on_locks


def script_calls(url: str) -> int:
    """EVALSHA + EVAL commands Redis ran since its stats were reset (what left the web for Redis); the first
    EVALSHA's NOSCRIPT (then SCRIPT LOAD, EVALSHA again: redis-py's Script) is a failed call, not counted."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(
        int(stat.get("calls", 0)) - int(stat.get("failed_calls", 0)) - int(stat.get("rejected_calls", 0))
        for stat in (stats.get(f"cmdstat_{name}", {}) for name in ("evalsha", "eval"))
    )


@pytest.mark.parametrize("backend", ["redis-postgres"])  # the table lock is PostgreSQL's, the counters Redis'
def test_one_script_call_a_batch_and_the_same_verdicts_as_one_post_at_a_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    settings = apply_settings(monkeypatch, {"RATE_LIMIT_PER_EMAIL": "2 per hour", "RATE_LIMIT_PER_IP": "6 per hour"})
    app = create_app(settings)
    commits = app.state.group_commit
    engine = create_engine(settings.database_url)
    redis.Redis.from_url(settings.celery_broker_url).config_resetstat()
    # In arrival order: (email, honeypot). The IP counts every post; the mailbox only posts not spam already.
    plan = [
        ("first@example.org", False),  # batch 1, held by the lock: IP 1
        ("ann@example.org", False),  # batch 2 from here: IP 2, ann 1
        ("ann+hp@example.org", True),  # honeypot: IP 3, not counted against ann (else ann+1 would be over)
        ("ann+1@example.org", False),  # IP 4, ann 2 (one mailbox however spelled)
        ("ann+2@example.org", False),  # IP 5, ann over: email_rate
        ("bo@example.org", False),  # IP 6, bo 1
        ("cy@example.org", False),  # IP over: ip_rate (and cy not counted)
    ]
    expected = [None, None, "honeypot", None, "email_rate", None, "ip_rate"]

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:

            def post(email: str, honeypot: bool) -> asyncio.Task[httpx.Response]:
                body = {"email": email, **({"website": "http://spam.example"} if honeypot else {})}
                return asyncio.create_task(client.post("/forms/newsletter", json=body))

            with engine.connect() as lock:
                lock.execute(text("LOCK TABLE submissions IN ACCESS EXCLUSIVE MODE"))
                tasks = [post(*plan[0])]
                await wait_until(lambda: waiting_on_locks(engine) == 1, "the writer never reached the database")
                for queued, (email, honeypot) in enumerate(plan[1:], start=1):
                    tasks.append(post(email, honeypot))  # one at a time: the batch keeps the arrival order
                    await wait_until(lambda n=queued: commits._pending.qsize() == n, f"post {queued} never queued")
                lock.rollback()
            answers = await asyncio.gather(*tasks)
        return [answer.status_code for answer in answers]

    assert asyncio.run(scenario()) == [202] * len(plan)  # spam or not, the bot cannot tell
    assert commits.batches == 2
    assert script_calls(settings.celery_broker_url) == 2  # one round trip a batch, not one a post
    with engine.connect() as connection:
        stored = dict(connection.execute(select(Submission.email, Submission.spam_reason)).all())
    engine.dispose()
    # Spam is stored as the day's sample (storage/submissions.py), so every post here has its row.
    assert stored == {email: reason for (email, _), reason in zip(plan, expected, strict=True)}
