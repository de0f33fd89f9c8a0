"""Acceptance: two real `leadsync worker` processes share one HubSpot budget.

A backlog of new contacts lands at once (as after an outage or a token fix); both workers flush it in
full batches through the real client to the emulator enforcing HubSpot's rolling 10-second window,
sharing the Redis limiter.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, select
from sqlalchemy.orm import Session

from leadsync.config import get_settings
from leadsync.storage.contacts import new_contact_values
from leadsync.storage.models import Contact, utcnow
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.mapping import load_mapping
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.stack import LeadsyncStack, wait_for

# Redis + PostgreSQL, as in production. (The embedded default's file limiter is shared by separate
# processes too: tests/worker/test_crm_ratelimit.py shows it at the limiter, without a whole stack.)
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", ["redis-postgres"])]


def seed_pending(url: str, count: int) -> None:
    """`count` new contacts pending CRM sync, committed in one transaction."""
    now = utcnow()
    rows = [
        new_contact_values(
            f"lead{i}@example.org",
            now,
            first_name=f"Lead{i}",
            lifecycle_stage="lead",
            packet_requested_at=now,
            submissions_count=1,
        )
        for i in range(count)
    ]
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(insert(Contact), rows)
    finally:
        engine.dispose()


def unsynced(url: str) -> int:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return session.scalar(select(func.count()).where(Contact.crm_status != "synced")) or 0
    finally:
        engine.dispose()


@pytest.fixture
def portal() -> Iterator[HubSpotEmulator]:
    """HubSpot Free/Starter: 100 requests per rolling 10 s (the test may lower it)."""
    with HubSpotEmulator(token="test-token", rate_limit=100, record_bodies=False) as emulator:
        yield emulator


def run_backlog(
    tmp_path: Path,
    base_env: dict[str, str],
    portal: HubSpotEmulator,
    contacts: int,
    extra: dict[str, str],
    bootstrap: bool = True,
) -> LeadsyncStack:
    env = {
        **base_env,
        "HUBSPOT_ACCESS_TOKEN": "test-token",
        "HUBSPOT_BASE_URL": portal.url,
        "CRM_FLUSH_INTERVAL_SECONDS": "0.5",
        **extra,
    }
    stack = LeadsyncStack(env, tmp_path, workers=2).start()
    try:
        if bootstrap:  # deployment runs it once, so the workers never race to create properties
            done = subprocess.run(
                [sys.executable, "-m", "leadsync", "hubspot", "bootstrap"],
                env=stack.env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=True,
            )
            assert "created: group leadsync" in done.stdout
        seed_pending(env["DATABASE_URL"], contacts)
        wait_for(lambda: unsynced(env["DATABASE_URL"]) == 0, timeout=90, interval=0.25, what="the backlog synced")
    except BaseException:
        stack.stop()
        print(stack.logs())
        raise
    stack.stop()
    return stack


def test_two_workers_sync_3000_new_contacts_in_full_batches(
    tmp_path: Path, base_env: dict[str, str], portal: HubSpotEmulator
) -> None:
    stack = run_backlog(tmp_path, base_env, portal, 3000, {"HUBSPOT_RATE_LIMIT": "100"})
    upserts = portal.calls("batch/upsert")
    assert len(upserts) <= 33, [c.inputs for c in upserts]
    assert all(call.inputs <= 100 for call in upserts)
    assert portal.count(status=429) <= 0.01 * portal.count()
    assert len(portal.contacts) == 3000
    logs = [log.read_text(errors="replace") for log in stack._logs if log.name.startswith("worker")]
    assert all("'claimed': 100" in text for text in logs), "both workers flushed batches"


def test_two_workers_at_the_ceiling_never_overrun_the_window(
    tmp_path: Path, base_env: dict[str, str], portal: HubSpotEmulator
) -> None:
    # A smaller app limit and batch so the window fills within the test: 25 calls against 20 per 10 s.
    # The properties were made by another app (HubSpot counts each app's requests apart).
    portal.set_token("setup-app")
    HubSpotCrm("setup-app", portal.url, timeout=5).bootstrap(load_mapping(get_settings().hubspot_mapping_path))
    portal.set_token("test-token")
    portal.rate_limit = 20
    extra = {"HUBSPOT_RATE_LIMIT": "20", "CRM_BATCH_SIZE": "10"}
    run_backlog(tmp_path, base_env, portal, 250, extra, bootstrap=False)
    calls = [c for c in portal.calls() if "batch/" in c.path]
    assert portal.count(status=429) <= 0.01 * len(calls)
    assert len(calls) == 25
    admitted = sorted(c.time for c in calls if c.status != 429)
    first_window = [t for t in admitted if t < admitted[0] + 10]
    assert len(first_window) <= 20
    assert admitted[-1] - admitted[0] >= 10  # it did have to wait for the window
    assert len(portal.contacts) == 250
