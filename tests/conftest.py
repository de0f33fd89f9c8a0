"""Fixtures shared by the suite: an isolated leadsync configuration per test, and real servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from leadsync.config import Settings, get_settings
from leadsync.storage.db import dispose_engines, get_engine
from leadsync.storage.migrate import upgrade
from leadsync.worker import tasks
from leadsync.worker.celery_app import reconfigure
from leadsync.worker.crm import clients
from tests.support.stack import TEST_SECRET

if TYPE_CHECKING:
    from tests.support.hubspot_emulator import HubSpotEmulator
    from tests.support.services import PostgresServer, RedisServer, SmtpSink


def apply_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Set environment variables and drop every cache that read the old ones."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for cached in (get_settings, clients.crm_client, clients.crm_mapping, tasks.mail_transport):
        cached.cache_clear()
    dispose_engines()  # the engines for the old DATABASE_URL
    settings = get_settings()
    reconfigure(settings)
    return settings


BACKENDS = ("embedded", "redis-postgres")
# Every process and in-process Settings of the suite signs with TEST_SECRET (FORM_TOKEN_SECRET is required
# outside dev mode, at least 32 bytes); tests/security/test_red_team.py uses other secrets on purpose.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    from tests.support.services import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    from tests.support.services import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs twice: on the embedded default and on Redis + PostgreSQL."""
    return request.param


@pytest.fixture
def base_env(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """An empty leadsync setup: SQLite + filesystem broker, or a fresh PostgreSQL database + a flushed Redis."""
    env = {
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'leadsync.db'}",
        "BROKER_URL": "filesystem://",
        "HUBSPOT_ACCESS_TOKEN": "",
        "SMTP_HOST": "",
        "LOG_LEVEL": "INFO",
        "FORM_TOKEN_SECRET": TEST_SECRET,
        "FORM_TOKEN_SECRET_PREVIOUS": "",
        # Off unless a test sets them: many tests post often from one client (tests/security sets them).
        "RATE_LIMIT_PER_IP": "",
        "RATE_LIMIT_PER_EMAIL": "",
    }
    if backend == "embedded":
        yield env
    else:
        yield {**env, **request.getfixturevalue("production_env")}


@pytest.fixture
def production_env(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> Iterator[dict[str, str]]:
    """The production pair for one test: a fresh PostgreSQL database and a flushed Redis (both restarted
    first if an earlier fault-injection test left them stopped), dropped afterwards."""
    if not redis_server.running:
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield {
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": postgres_server.create_database(name),
        "BROKER_URL": redis_server.url,
    }
    dispose_engines()
    for server in (postgres_server, redis_server):
        if not server.running:  # this test stopped it
            server.start()
    postgres_server.drop_database(name)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> Iterator[Settings]:
    """Settings for an isolated embedded setup with the schema migrated."""
    configured = apply_settings(monkeypatch, base_env)
    upgrade()
    yield configured
    get_engine().dispose()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    from tests.support.services import SmtpSink

    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def hubspot() -> Iterator[HubSpotEmulator]:
    from tests.support.hubspot_emulator import HubSpotEmulator

    emulator = HubSpotEmulator(token="test-token").start()
    yield emulator
    emulator.stop()
