"""Production topology: several worker processes on Redis + PostgreSQL racing on the same person."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from leadsync.storage.models import Contact, EmailSend, Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration

# Celery's line for a finished task, e.g. "Task leadsync.process_submissions[3f..] succeeded in 0.04s: {'processed': 5"
_BATCH_DONE = re.compile(r"Task leadsync\.process_submissions\[[^\]]+\] succeeded in [0-9.e-]+s: \{'processed': (\d+)")
_SINGLE_DONE = re.compile(r"Task leadsync\.process_submission\[[^\]]+\] succeeded in [0-9.e-]+s: \{'skipped': False")


def intake_done(log: str) -> int:
    """Submissions this worker's log says it processed (batches, plus the one-by-one fallback)."""
    return sum(int(n) for n in _BATCH_DONE.findall(log)) + len(_SINGLE_DONE.findall(log))


@pytest.fixture
def two_workers(
    tmp_path: Path, production_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    # Group commits of at most 5: the 50 posts become at least 10 messages, so both workers get some
    # and race on the one person inside overlapping batches.
    env = {**production_env, **services_env(smtp, hubspot), "INTAKE_BATCH_MAX": "5"}
    stack = LeadsyncStack(env, tmp_path, workers=2, concurrency=2).start()
    yield stack
    stack.stop()
    print(stack.logs())


def test_50_concurrent_duplicate_posts_with_2_workers_give_1_contact_1_email_1_record(
    two_workers: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    def post(index: int) -> int:
        email = "Zoe@Example.org" if index % 2 else "zoe@example.org"
        with httpx.Client(base_url=two_workers.url, timeout=10) as client:
            response = client.post(
                "/forms/info-packet", json={"email": email, "first_name": "Zoe", "phone": str(index)}
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(post, range(50)))
    assert statuses == [202] * 50

    engine = create_engine(two_workers.env["DATABASE_URL"])

    def scalar(statement) -> int:
        with Session(engine) as session:
            return session.scalar(statement) or 0

    wait_for(
        lambda: scalar(select(func.count()).where(Submission.status == "processed")) == 50,
        timeout=30,
        what="50 submissions processed",
    )
    smtp.wait_for(1, timeout=15)
    wait_for(
        lambda: scalar(select(func.count()).where(Contact.crm_status == "synced")) == 1,
        timeout=15,
        what="the contact synced",
    )
    # Both workers really took part (the race was real): each one's own task lines, not its start-up banner
    # (which lists the task names too), and together they account for every submission exactly once.
    per_worker = [intake_done(log.read_text()) for log in sorted(two_workers.workdir.glob("worker*.log"))]
    assert len(per_worker) == 2 and all(per_worker), per_worker
    assert sum(per_worker) == 50
    assert hubspot.created == {"zoe@example.org": 1}
    assert scalar(select(func.count()).select_from(Contact)) == 1
    assert scalar(select(func.count()).select_from(EmailSend)) == 1
    assert len(smtp.messages) == 1
    assert len(hubspot.contacts) == 1 and hubspot.contact_by_email("zoe@example.org") is not None
    engine.dispose()
