"""Fixtures shared by the suite: an isolated leadsync configuration per test, and real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from leadsync.config import Settings, get_settings
from leadsync.storage.db import get_engine
from leadsync.storage.migrate import upgrade
from leadsync.worker import tasks
from leadsync.worker.celery_app import reconfigure

if TYPE_CHECKING:
    from tests.support.hubspot_emulator import HubSpotEmulator
    from tests.support.services import SmtpSink


def apply_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Set environment variables and drop every cache that read the old ones."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for cached in (get_settings, tasks.crm_client, tasks.crm_mapping, tasks.mail_transport):
        cached.cache_clear()
    if get_engine.cache_info().currsize:
        get_engine().dispose()  # the cached engine for the old DATABASE_URL
    get_engine.cache_clear()
    settings = get_settings()
    reconfigure(settings)
    return settings


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """An empty embedded setup in a temporary folder: SQLite, filesystem broker, .eml outbox."""
    return {
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'leadsync.db'}",
        "BROKER_URL": "filesystem://",
        "HUBSPOT_ACCESS_TOKEN": "",
        "SMTP_HOST": "",
        "LOG_LEVEL": "INFO",
    }


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
