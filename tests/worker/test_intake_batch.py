"""A group commit's batch processed in one transaction decides exactly as one-by-one processing would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from leadsync.config import Settings
from leadsync.storage.db import session_scope
from leadsync.storage.models import Contact, EmailSend, Submission
from leadsync.worker.intake import process_submissions
from leadsync.worker.privacy import forget, suppression_keys
from tests.worker.helpers import submit

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def process_batch(ids: list[str], settings: Settings) -> list:
    with session_scope() as session:
        return process_submissions(session, ids, settings)


def state() -> tuple[list[tuple], list[tuple]]:
    with session_scope() as session:
        contacts = [
            (c.email, c.first_name, c.phone, c.lifecycle_stage, c.newsletter_status, c.submissions_count)
            for c in session.scalars(select(Contact).order_by(Contact.email))
        ]
        emails = sorted(
            (session.get_one(Contact, e.contact_id).email, e.kind) for e in session.scalars(select(EmailSend))
        )
    return contacts, emails


def test_one_person_many_times_in_one_batch_is_one_contact_and_one_packet(settings: Settings) -> None:
    ids = [
        submit("info-packet", received_at=T0, email="Ann@Example.org", first_name="Ann"),
        submit(
            "info-packet", received_at=T0 + timedelta(seconds=1), email="ann@example.org", first_name="Ann", phone="555"
        ),
        submit("newsletter", received_at=T0 + timedelta(seconds=2), email="ANN@example.org", first_name="Annie"),
        submit("info-packet", received_at=T0 + timedelta(seconds=3), email="bob@example.org", first_name="Bob"),
    ]
    results = process_batch(ids, settings)

    assert [r.contact_created for r in results] == [True, False, False, True]  # in the order of the ids
    assert results[0].contact_id == results[1].contact_id == results[2].contact_id != results[3].contact_id
    contacts, emails = state()
    assert contacts == [
        ("ann@example.org", "Annie", "555", "lead", "pending", 3),  # newest non-empty wins, in received order
        ("bob@example.org", "Bob", None, "lead", "none", 1),
    ]
    assert emails == [
        ("ann@example.org", "info_packet"),
        ("ann@example.org", "newsletter_confirm"),
        ("bob@example.org", "info_packet"),
    ]
    assert [len(r.email_send_ids) for r in results] == [1, 0, 1, 1]


def test_a_batch_processed_again_changes_nothing(settings: Settings) -> None:
    ids = [submit("info-packet", email=f"p{n}@example.org", first_name="P") for n in range(5)]
    process_batch(ids, settings)
    before = state()
    again = process_batch([*ids, "no-such-id"], settings)
    assert all(result.skipped for result in again) and len(again) == 6
    assert state() == before


def test_the_batch_matches_one_by_one_processing_of_the_same_submissions(settings: Settings) -> None:
    def make() -> list[str]:
        return [
            submit("newsletter", received_at=T0, email="c@example.org", first_name="Cy"),
            submit(
                "info-packet",
                received_at=T0 + timedelta(seconds=1),
                email="c@example.org",
                first_name="Cy",
                interest="knees",
            ),
            submit("info-packet", received_at=T0 + timedelta(seconds=2), email="d@example.org", first_name="Di"),
            submit("info-packet", received_at=T0 + timedelta(seconds=3), email="d@example.org", first_name="Dee"),
        ]

    for submission_id in make():
        process_batch([submission_id], settings)
    one_by_one = state()
    with session_scope() as session:
        for table in (EmailSend, Submission, Contact):
            session.query(table).delete()
    process_batch(make(), settings)
    assert state() == one_by_one


def test_the_daily_cap_counts_the_emails_queued_earlier_in_the_same_batch(settings: Settings) -> None:
    settings = settings.model_copy(update={"packet_resend_window_days": 0, "optin_resend_window_hours": 0})
    ids = [submit("info-packet", email="cap@example.org", first_name="C") for _ in range(6)]
    process_batch(ids, settings)
    _, emails = state()
    assert len(emails) == settings.email_daily_cap_per_recipient


def test_a_forgotten_person_in_flight_is_not_brought_back_by_the_batch(settings: Settings) -> None:
    with session_scope() as session:
        forget(session, "gone@example.org", suppression_keys(settings), now=T0 + timedelta(hours=1))
    # Received before the erasure, stored after it (it was in flight): the suppression entry catches it.
    gone = submit("info-packet", received_at=T0, email="gone@example.org", first_name="G")
    stays = submit("info-packet", received_at=T0, email="stays@example.org", first_name="S")
    results = process_batch([gone, stays], settings)
    assert results[0].skipped and not results[1].skipped
    contacts, _ = state()
    assert [c[0] for c in contacts] == ["stays@example.org"]
    with session_scope() as session:
        assert session.get(Submission, gone) is None
