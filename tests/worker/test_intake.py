"""Dedupe, merge and the packet decision on a real database (SQLite here; PostgreSQL in the topology tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from leadsync.config import Settings
from leadsync.storage.db import session_scope
from leadsync.storage.models import Contact, EmailSend, Submission
from tests.worker.helpers import process, submit


def contacts() -> list[Contact]:
    with session_scope() as session:
        return list(session.scalars(select(Contact)))


def test_repeated_submissions_merge_into_one_contact(settings: Settings) -> None:
    first = process(submit("newsletter", email="Ann@Example.org", first_name="Ann", utm_source="fb"), settings)
    second = process(
        submit("info-packet", email="ann@example.org ", first_name="Annie", phone="555", interest="knees"), settings
    )
    assert first.contact_created and not second.contact_created
    assert first.contact_id == second.contact_id
    [contact] = contacts()
    assert (contact.email, contact.first_name, contact.phone, contact.utm_source) == (
        "ann@example.org",
        "Annie",
        "555",
        "fb",  # newer non-empty values win, older ones stay
    )
    assert contact.lifecycle_stage == "lead" and contact.newsletter_status == "pending"  # until confirmed
    assert contact.submissions_count == 2
    with session_scope() as session:  # the history of submissions is kept
        rows = session.scalars(select(Submission).where(Submission.contact_id == contact.id)).all()
        assert {row.status for row in rows} == {"processed"} and len(rows) == 2


def test_processing_twice_does_nothing_the_second_time(settings: Settings) -> None:
    submission_id = submit("info-packet", email="bo@example.org", first_name="Bo")
    first = process(submission_id, settings)
    again = process(submission_id, settings)
    assert len(first.email_send_ids) == 1
    assert again.skipped and again.email_send_ids == []
    assert contacts()[0].submissions_count == 1


def test_one_packet_per_person_within_the_window(settings: Settings) -> None:
    sends = []
    for name in ("Cy", "CY", "cy"):
        sends += process(submit("info-packet", email=f"{name}@example.org", first_name=name), settings).email_send_ids
    assert len(sends) == 1
    with session_scope() as session:
        assert session.scalar(select(EmailSend.message_id)).endswith(".packet@clinic.example>")


def test_a_request_after_the_window_sends_a_new_packet(settings: Settings) -> None:
    [old] = process(submit("info-packet", email="di@example.org", first_name="Di"), settings).email_send_ids
    with session_scope() as session:
        session.get_one(EmailSend, old).created_at = datetime.now(UTC) - timedelta(days=31)
    assert len(process(submit("info-packet", email="di@example.org", first_name="Di"), settings).email_send_ids) == 1


def kinds(send_ids: list[str]) -> list[str]:
    with session_scope() as session:
        return [session.get_one(EmailSend, send_id).kind for send_id in send_ids]


def test_newsletter_sends_a_confirmation_not_a_packet(settings: Settings) -> None:
    result = process(submit("newsletter", email="ed@example.org"), settings)
    assert kinds(result.email_send_ids) == ["newsletter_confirm"] and result.crm_changed
    [contact] = contacts()
    assert contact.lifecycle_stage == "subscriber" and contact.crm_status == "pending"
    assert contact.newsletter_status == "pending"


def test_repeat_sign_ups_resend_the_confirmation_at_most_once_per_window(settings: Settings) -> None:
    sends = []
    for _ in range(5):  # a bot list-bombing one address, or an impatient person
        sends += process(submit("newsletter", email="flo@example.org"), settings).email_send_ids
    assert kinds(sends) == ["newsletter_confirm"]
    with session_scope() as session:
        session.get_one(EmailSend, sends[0]).created_at = datetime.now(UTC) - timedelta(hours=25)
    assert len(process(submit("newsletter", email="flo@example.org"), settings).email_send_ids) == 1


def test_a_confirmed_subscriber_signing_up_again_gets_nothing(settings: Settings) -> None:
    process(submit("newsletter", email="gil@example.org"), settings)
    with session_scope() as session:
        session.scalars(select(Contact)).one().newsletter_status = "subscribed"
    assert process(submit("newsletter", email="gil@example.org"), settings).email_send_ids == []


def test_packet_request_with_newsletter_opt_in_sends_packet_and_confirmation(settings: Settings) -> None:
    result = process(submit("info-packet", email="hal@example.org", first_name="Hal", newsletter_opt_in="on"), settings)
    assert sorted(kinds(result.email_send_ids)) == ["info_packet", "newsletter_confirm"]


def test_an_older_submission_processed_late_does_not_overwrite_newer_values(settings: Settings) -> None:
    now = datetime.now(UTC)
    older = submit(
        "info-packet", received_at=now - timedelta(hours=1), email="fi@example.org", first_name="Old", phone="1"
    )
    newer = submit("info-packet", received_at=now, email="fi@example.org", first_name="New")
    process(newer, settings)
    process(older, settings)
    [contact] = contacts()
    assert contact.first_name == "New" and contact.phone == "1"


def test_contact_changes_mark_it_pending_for_the_crm(settings: Settings) -> None:
    process(submit("newsletter", email="gu@example.org"), settings)
    with session_scope() as session:
        contact = session.scalars(select(Contact)).one()
        contact.crm_status, contact.crm_synced_version = "synced", contact.crm_version
    unchanged = process(submit("newsletter", email="gu@example.org"), settings)
    assert not unchanged.crm_changed and contacts()[0].crm_status == "synced"
    changed = process(submit("newsletter", email="gu@example.org", first_name="Gus"), settings)
    assert changed.crm_changed and contacts()[0].crm_status == "pending"
