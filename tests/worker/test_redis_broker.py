"""The Redis transport's publishing client (worker/redis_broker.py): one a pool, every message still on the
wire, and a broker that went away and came back is published to again.

Runs against the suite's real Redis; the messages are read back with LRANGE, as a worker's BRPOP sees them.

Example:
    .venv/bin/pytest tests/worker/test_redis_broker.py -q
"""

from __future__ import annotations

import uuid

import pytest
import redis

from leadsync.config import Settings
from leadsync.worker.celery_app import app, celery_config
from leadsync.worker.enqueue import enqueue_submissions
from tests.forms.test_forms_api import queued_tasks
from tests.forms.test_group_commit import message_args
from tests.support.services import RedisServer

pytestmark = pytest.mark.parametrize("backend", ["redis-postgres"])


def count_clients(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every redis.Redis built from now on (kombu builds them through the class it holds, redis.Redis)."""
    built: list[object] = []
    original = redis.Redis.__init__

    def counting(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    return built


def test_many_publishes_build_one_client_and_every_message_lands(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    assert app.conf.broker_url.startswith("leadsync-redis://")
    built = count_clients(monkeypatch)
    batches = [[uuid.uuid4().hex for _ in range(16)] for _ in range(20)]
    assert all(enqueue_submissions(ids) for ids in batches)

    # Two: the channel's own (kombu opens it with a PING through it) and the publishing one. kombu's own
    # transport built one more a message (21 here).
    assert len(built) == 2
    landed = [message_args(message)[0] for message in reversed(queued_tasks(settings))]  # LPUSH: newest first
    assert landed == batches


def test_a_broker_that_restarts_is_published_to_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str, redis_server: RedisServer
) -> None:
    assert enqueue_submissions(["before"])
    redis_server.stop()
    try:
        assert not enqueue_submissions(["while-down"])  # fails fast; the sweeper publishes it later
    finally:
        redis_server.start()
    # The pooled connections died with the server: the cached client's pool reconnects (or kombu's new one).
    assert enqueue_submissions(["after"])
    assert [message_args(message)[0] for message in queued_tasks(settings)] == [["after"]]


def test_rediss_urls_stay_on_kombus_own_transport(settings: Settings, backend: str) -> None:
    tls = settings.model_copy(update={"broker_url": "rediss://default:pw@cache.example:25061/2"})
    assert celery_config(tls)["broker_url"] == "rediss://default:pw@cache.example:25061/2"


def test_after_kombu_drops_its_pools_the_publisher_follows_the_new_one(settings: Settings, backend: str) -> None:
    # kombu drops a channel's pools in a forked child (Celery's prefork pool) and keeps the channel.
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        assert app.send_task("leadsync.process_submissions", args=[["one"]], queue="intake", producer=producer)
        first = channel._create_client()
        channel._after_fork()
        assert app.send_task("leadsync.process_submissions", args=[["two"]], queue="intake", producer=producer)
        assert channel._create_client() is not first
        assert channel._create_client().connection_pool is channel.pool
    assert [message_args(message)[0] for message in queued_tasks(settings)] == [["two"], ["one"]]
