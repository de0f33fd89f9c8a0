"""The sweeper's requeue path: a submission published once whose message the broker then lost (Redis killed
without AOF, a deleted queue file) is published again after SWEEP_REQUEUE_SECONDS, and not before.

Runs the real `leadsync.sweep` task body against the real broker (a folder, or Redis) on both backends; the
message is lost by deleting it from the broker, as a crash would.

Example:
    .venv/bin/pytest tests/worker/test_sweeper_requeue.py -q
"""

from __future__ import annotations

import time

import pytest
import redis

from leadsync.config import Settings
from leadsync.storage.db import session_scope
from leadsync.storage.models import Submission
from leadsync.worker import tasks
from tests.conftest import apply_settings
from tests.forms.test_forms_api import queued_tasks
from tests.forms.test_group_commit import message_args
from tests.worker.helpers import submit

REQUEUE = 3.0  # seconds; production's SWEEP_REQUEUE_SECONDS is 300


def queued_ids(settings: Settings) -> list[str]:
    return [sid for message in queued_tasks(settings) for sid in message_args(message)[0]]


def lose_every_message(settings: Settings) -> None:
    """What a broker crash does to messages not yet taken: gone."""
    if settings.celery_broker_url.startswith("redis://"):
        redis.Redis.from_url(settings.celery_broker_url).delete("intake")
    else:
        for path in (settings.var_dir / "broker" / "queue").glob("*.msg"):
            path.unlink()


def test_a_lost_message_is_published_again_after_the_requeue_time_and_not_before(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]
) -> None:
    settings = apply_settings(
        monkeypatch, {**base_env, "SWEEP_GRACE_SECONDS": "0", "SWEEP_REQUEUE_SECONDS": str(REQUEUE)}
    )
    sid = submit("info-packet", email="lost@example.org", first_name="Lou")

    assert tasks.sweep() == {"submissions": 1, "emails": 0}  # never published: the sweeper publishes it
    assert queued_ids(settings) == [sid]
    with session_scope() as session:
        published_at = session.get_one(Submission, sid).enqueued_at
    assert published_at is not None

    lose_every_message(settings)
    assert tasks.sweep() == {"submissions": 0, "emails": 0}  # published moments ago: not yet presumed lost
    assert queued_ids(settings) == []

    # Wait out the requeue time on the clock the sweeper reads (a deadline, not a guess), then sweep again.
    time.sleep(REQUEUE + 0.2)
    assert tasks.sweep() == {"submissions": 1, "emails": 0}
    assert queued_ids(settings) == [sid]  # the same submission, once
    with session_scope() as session:
        row = session.get_one(Submission, sid)
        assert row.status == "pending" and row.enqueued_at is not None and row.enqueued_at > published_at
    assert tasks.sweep() == {"submissions": 0, "emails": 0}  # and the new publish starts a new requeue time
