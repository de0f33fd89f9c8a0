"""The production commands as production runs them: `leadsync web --workers 2`, `leadsync beat` and a
`leadsync worker` (no --beat) as three separate processes on Redis + PostgreSQL. Posts flow end to end:
every lead stored once, emailed once (raw bytes at the SMTP server) and created once in HubSpot; the CRM
flush and the sweeper only run because the standalone beat schedules them.

Example:
    .venv/bin/pytest tests/integration/test_production_commands.py -q
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from leadsync.storage.models import Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration

LEADS = 30


@pytest.fixture
def production(
    tmp_path: Path, production_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    env = {**production_env, **services_env(smtp, hubspot), "SWEEP_INTERVAL_SECONDS": "1"}
    stack = LeadsyncStack(env, tmp_path, workers=1, web_workers=2, separate_beat=True).start()
    yield stack
    stack.stop()
    print(stack.logs())  # captured: shown only when the test failed


def test_web_with_2_workers_beat_and_a_worker_as_separate_processes_deliver_every_post_once(
    production: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    emails = [f"prod{i}@example.org" for i in range(LEADS)]

    def post(email: str) -> int:
        # A new connection per post: the kernel spreads them over both uvicorn workers.
        with httpx.Client(base_url=production.url, timeout=10) as client:
            return client.post("/forms/info-packet", json={"email": email, "first_name": "Prod"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(post, emails)) == [202] * LEADS

    wait_for(lambda: set(hubspot.created) >= set(emails), timeout=60, what="every lead created in HubSpot")
    wait_for(lambda: len(smtp.received) >= LEADS, timeout=60, what="every packet at the SMTP server")
    copies = Counter(rcpt for mail in smtp.received for rcpt in mail.rcpt_tos)
    assert copies == Counter(emails)  # each lead emailed once
    for mail in smtp.received:  # the packet on the wire, addressed to its lead, with its Message-ID
        assert mail.rcpt_tos[0].encode() in mail.raw and b"\r\nMessage-ID: <" in mail.raw
    assert hubspot.created == dict.fromkeys(emails, 1) and hubspot.writes == dict.fromkeys(emails, 1)
    engine = create_engine(production.env["DATABASE_URL"])
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == LEADS
        assert session.scalar(select(func.count()).where(Submission.status != "processed")) == 0
    engine.dispose()

    # The topology really was the one named: two uvicorn server processes, beat alone scheduling, a worker
    # without an embedded beat.
    web_log = (production.workdir / "web.log").read_text()
    assert len(set(re.findall(r"Started server process \[(\d+)\]", web_log))) == 2
    beat_log = (production.workdir / "beat.log").read_text()
    assert "Scheduler: Sending due task" in beat_log and "leadsync.flush_crm" in beat_log
    assert "beat: Starting" not in (production.workdir / "worker0.log").read_text()
