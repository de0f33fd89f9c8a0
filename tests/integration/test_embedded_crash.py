"""Crash drill on the embedded default (SQLite + filesystem broker, what `leadsync dev` runs): the worker is
SIGKILLed twice in the middle of 300 posts, the web process keeps accepting. Measured: what a `leadsync dev`
user can lose (nothing: every 202 ends as its email and its HubSpot record; the outbox sweeper brings back
the messages the killed worker had taken) and what can arrive twice (a send accepted by the SMTP server and
killed before `sent` was committed: one second copy, same Message-ID; never a third, never a second record).

Example:
    .venv/bin/pytest tests/integration/test_embedded_crash.py -q -s   # -s prints the figures
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from leadsync.storage.models import EmailAttempt, EmailSend, Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, count, services_env, wait_for

pytestmark = pytest.mark.integration

POSTS = 300
KILL_AT, RESTART_AT = (100, 200), (150, 250)  # post numbers: the worker is down for 50 posts each time
SWEEP, GRACE, LEASE = 1.0, 2.0, 4.0  # seconds; production's are 15, 30 and 600 (CRM lease 180)
DUPLICATE_WINDOW = LEASE + SWEEP + GRACE + 2.0  # a later copy would need one more lease + sweep + grace


@pytest.fixture
def dev_stack(
    tmp_path: Path, base_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    env = {
        **base_env,
        **services_env(smtp, hubspot),
        "SWEEP_INTERVAL_SECONDS": str(SWEEP),
        "SWEEP_GRACE_SECONDS": str(GRACE),
        "EMAIL_CLAIM_LEASE_SECONDS": str(LEASE),
        "CRM_LEASE_SECONDS": str(LEASE),
        "EMAIL_RETRY_BASE_SECONDS": "1",
    }
    running = LeadsyncStack(env, tmp_path).start()
    yield running
    running.stop()
    print(running.logs())  # captured: shown only when the test failed


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_dev_worker_sigkilled_twice_in_300_posts_loses_nothing(
    dev_stack: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    url = dev_stack.env["DATABASE_URL"]
    assert url.startswith("sqlite") and dev_stack.env["BROKER_URL"] == "filesystem://"
    started = time.monotonic()
    emails = [f"dev{i}@example.org" for i in range(POSTS)]
    for i, email in enumerate(emails):
        if i in KILL_AT:
            dev_stack.kill_worker(len(dev_stack.workers) - 1)  # SIGKILL, pool and beat with it
        if i in RESTART_AT:
            dev_stack.start_worker(beat=True)
        assert dev_stack.post("info-packet", {"email": email, "first_name": "Dev"}).status_code == 202

    wait_for(
        lambda: count(url, select(func.count()).where(EmailSend.status == "sent")) == POSTS,
        timeout=120,
        what="every accepted lead emailed (recorded sent)",
    )
    wait_for(lambda: set(hubspot.created) >= set(emails), timeout=60, what="every lead in HubSpot")
    recovered = time.monotonic() - started
    time.sleep(DUPLICATE_WINDOW)  # no event marks a copy that never comes: watch the whole window

    assert count(url, select(func.count()).select_from(Submission)) == POSTS
    copies = Counter(rcpt for mail in smtp.received for rcpt in mail.rcpt_tos)
    assert set(copies) == set(emails) and set(copies.values()) <= {1, 2}  # nobody lost, never a third
    twice = sorted(email for email, n in copies.items() if n == 2)
    for email in twice:  # a second copy is the same message (same Message-ID): a mail client shows one
        assert len({str(m.message["Message-ID"]) for m in smtp.received if m.rcpt_tos == (email,)}) == 1
    interrupted = count(url, select(func.count()).where(EmailAttempt.outcome == "started"))
    assert len(twice) <= interrupted  # each second copy follows an attempt whose outcome the kill swallowed
    assert hubspot.created == dict.fromkeys(emails, 1)  # one record each
    assert set(hubspot.writes.values()) <= {1, 2}
    print(
        f"\nleadsync dev (SQLite + filesystem broker), worker SIGKILLed at posts {KILL_AT}, back at {RESTART_AT}: "
        f"{POSTS} accepted, 0 lost, {len(twice)} emailed twice (same Message-ID; {interrupted} sends interrupted), "
        f"{sum(n == 2 for n in hubspot.writes.values())} HubSpot records written twice, 0 created twice; "
        f"all delivered {recovered:.1f}s after the first post"
    )
