"""The whole pipeline with real processes: `leadsync web`, `leadsync worker`, an SMTP server, the HubSpot
emulator; submissions go in over HTTP and we assert what reached the database, the inbox and HubSpot."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from leadsync.storage.models import Contact, EmailSend, Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(
    tmp_path: Path, base_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    """web + one worker (with beat), on the embedded default and on Redis + PostgreSQL."""
    env = {
        **base_env,
        **services_env(smtp, hubspot),
    }
    running = LeadsyncStack(env, tmp_path).start()
    yield running
    running.stop()
    print(running.logs())  # pytest shows it when the test failed


def count(stack: LeadsyncStack, statement) -> int:
    engine = create_engine(stack.env["DATABASE_URL"])
    try:
        with Session(engine) as session:
            return session.scalar(statement) or 0
    finally:
        engine.dispose()


def all_processed(stack: LeadsyncStack, total: int) -> bool:
    return count(stack, select(func.count()).where(Submission.status == "processed")) == total


def all_synced(stack: LeadsyncStack) -> bool:
    return count(stack, select(func.count()).where(Contact.crm_status != "synced")) == 0


def test_one_person_submitting_20_times_gets_one_contact_one_email_one_record(
    stack: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    variants = ["ann@example.org", "Ann@Example.org", " ANN@EXAMPLE.ORG ", "ann@EXAMPLE.org"]
    for index in range(20):
        response = stack.post(
            "info-packet", {"email": variants[index % 4], "first_name": "Ann", "phone": f"555-{index}"}
        )
        assert response.status_code == 202, response.text

    wait_for(lambda: all_processed(stack, 20), what="20 submissions processed")
    [message] = smtp.wait_for(1, timeout=15)
    wait_for(lambda: hubspot.contact_by_email("ann@example.org"), timeout=15, what="the HubSpot record")
    wait_for(lambda: all_synced(stack), timeout=15, what="the contact synced")

    assert count(stack, select(func.count()).select_from(Contact)) == 1
    assert count(stack, select(func.count()).select_from(EmailSend)) == 1
    assert len(smtp.messages) == 1
    assert message["To"] == "ann@example.org"
    attachments = list(message.iter_attachments())
    assert [part.get_content_type() for part in attachments] == ["application/pdf"]
    assert attachments[0].get_content().startswith(b"%PDF")
    assert {part.get_content_type() for part in message.walk()} >= {"text/plain", "text/html"}
    record = hubspot.contact_by_email("ann@example.org")
    assert len(hubspot.contacts) == 1
    assert record["properties"]["firstname"] == "Ann"
    assert record["properties"]["lifecyclestage"] == "lead"
    with Session(create_engine(stack.env["DATABASE_URL"])) as session:
        contact = session.scalars(select(Contact)).one()
        assert contact.hubspot_id == record["id"]
        assert contact.submissions_count == 20
        assert contact.phone == "555-19"  # the newest value won


def test_ten_people_get_ten_contacts_ten_emails_ten_records(
    stack: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    for index in range(10):
        response = stack.post("info-packet", {"email": f"person{index}@example.org", "first_name": f"P{index}"})
        assert response.status_code == 202
    messages = smtp.wait_for(10, timeout=20)
    wait_for(lambda: len(hubspot.contacts) == 10, timeout=20, what="10 HubSpot records")
    wait_for(lambda: all_synced(stack), timeout=15, what="all contacts synced")
    assert sorted(m["To"] for m in messages) == sorted(f"person{i}@example.org" for i in range(10))
    assert count(stack, select(func.count()).select_from(Contact)) == 10
    assert len(smtp.messages) == 10 and len(hubspot.contacts) == 10


def test_invalid_input_through_the_real_server_is_4xx_and_stores_nothing(stack: LeadsyncStack) -> None:
    cases = [
        ("info-packet", {"json": {"email": "nope"}}),
        ("newsletter", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        ("newsletter", {"content": b"x" * 100_000, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        ("newsletter", {"data": {"email": "a@b"}, "headers": {"Accept": "text/html"}}),
    ]
    for form, kwargs in cases:
        response = stack.client.post(f"/forms/{form}", **kwargs)
        assert 400 <= response.status_code < 500, (kwargs, response.status_code, response.text)
    assert count(stack, select(func.count()).select_from(Submission)) == 0


def test_packet_email_is_a_readable_message(stack: LeadsyncStack, smtp: SmtpSink) -> None:
    # A name with markup is refused at the form now (422, tests/security/test_spam_rules.py); `&` still escapes.
    stack.post("info-packet", {"email": "dee@example.org", "first_name": "Dee & Co", "interest": "knees & hips"})
    [message] = smtp.wait_for(1, timeout=15)
    assert message["Subject"] == "Your FREE information packet, Dee & Co"
    assert message["Message-ID"].endswith("@clinic.example>")
    html = message.get_body(("html",)).get_content()
    assert "Dee &amp; Co" in html and "knees &amp; hips" in html  # escaped, never markup
    assert "Dee & Co" in message.get_body(("plain",)).get_content()
    assert io.BytesIO(next(message.iter_attachments()).get_content()).read(4) == b"%PDF"
