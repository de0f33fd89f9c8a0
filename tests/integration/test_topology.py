"""Production topology: several worker processes on Redis + PostgreSQL racing on the same person."""

from __future__ import annotations

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
    # Both workers really took part (the race was real), and the result is still one of each.
    logs = [log.read_text() for log in two_workers.workdir.glob("worker*.log")]
    assert all("leadsync.process_submissions" in text and "succeeded" in text for text in logs)
    assert scalar(select(func.count()).select_from(Contact)) == 1
    assert scalar(select(func.count()).select_from(EmailSend)) == 1
    assert len(smtp.messages) == 1
    assert len(hubspot.contacts) == 1 and hubspot.contact_by_email("zoe@example.org") is not None
    engine.dispose()
