"""Access, erasure and retention on a real database, and erasure reaching the HubSpot emulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from sqlalchemy import func, select

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Contact, EmailAttempt, EmailSend, Submission, Suppression
from leadsync.worker.crm.mapping import load_mapping
from leadsync.worker.crm.sync import flush_pending
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import FolderTransport
from leadsync.worker.privacy import purge_old_submissions
from leadsync.worker.tasks import crm_client
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.worker.helpers import process, submit


def count(model) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def person(settings: Settings, address: str = "ann@example.org") -> None:
    process(submit("newsletter", email=address, first_name="Ann", utm_source="fb"), settings)
    [send_id] = process(
        submit("info-packet", email=address, first_name="Ann", phone="555 0100"), settings
    ).email_send_ids
    deliver(get_sessionmaker(), send_id, FolderTransport(settings.mail_outbox_dir), settings)


def test_export_person_prints_everything_held(settings: Settings) -> None:
    person(settings)
    person(settings, "someone.else@example.org")
    result = CliRunner().invoke(main, ["export-person", "Ann@Example.org"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["contact"]["email"] == "ann@example.org" and data["contact"]["phone"] == "555 0100"
    assert [s["form"] for s in data["submissions"]] == ["newsletter", "info_packet"]
    assert all(s["consent"]["text_version"] for s in data["submissions"])  # the consent record
    assert {e["kind"] for e in data["emails"]} == {"newsletter_confirm", "info_packet"}
    sent = next(e for e in data["emails"] if e["kind"] == "info_packet")
    assert [a["outcome"] for a in sent["attempts"]] == ["sent"]
    assert "someone.else" not in result.output


def test_forget_erases_every_row_and_keeps_only_a_hash(settings: Settings) -> None:
    person(settings)
    person(settings, "keep@example.org")
    result = CliRunner().invoke(main, ["forget", "ANN@example.org", "--yes"])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        assert session.scalars(select(Contact.email)).all() == ["keep@example.org"]
        assert set(session.scalars(select(Submission.email))) == {"keep@example.org"}
        assert session.scalar(select(func.count()).select_from(EmailSend)) == 2  # keep@: packet + confirmation
        [suppression] = session.scalars(select(Suppression)).all()
        assert "ann" not in suppression.email_hash and len(suppression.email_hash) == 64
    assert count(EmailAttempt) == 1
    assert CliRunner().invoke(main, ["export-person", "ann@example.org"]).exit_code != 0


def test_a_submission_in_flight_when_forgotten_does_not_bring_them_back(settings: Settings) -> None:
    earlier = datetime.now(UTC) - timedelta(seconds=5)
    CliRunner().invoke(main, ["forget", "ann@example.org", "--yes"])
    in_flight = submit("info-packet", received_at=earlier, email="ann@example.org", first_name="Ann")
    assert process(in_flight, settings).skipped
    assert count(Contact) == 0 and count(Submission) == 0
    # A new sign-up after the erasure is a new, deliberate request: it counts.
    assert not process(submit("newsletter", email="ann@example.org"), settings).skipped
    assert count(Contact) == 1


def test_forget_reaches_hubspot(settings: Settings, monkeypatch, base_env, hubspot: HubSpotEmulator) -> None:
    settings = apply_settings(
        monkeypatch, {**base_env, "HUBSPOT_ACCESS_TOKEN": "test-token", "HUBSPOT_BASE_URL": hubspot.url}
    )
    person(settings)
    crm = crm_client()
    assert crm is not None
    crm.bootstrap(load_mapping(settings.hubspot_mapping_path))
    flush_pending(get_sessionmaker(), crm, load_mapping(settings.hubspot_mapping_path), settings)
    assert hubspot.contact_by_email("ann@example.org") is not None
    result = CliRunner().invoke(main, ["forget", "ann@example.org", "--yes"])
    assert result.exit_code == 0 and "GDPR delete done" in result.output, result.output
    assert hubspot.contact_by_email("ann@example.org") is None
    assert hubspot.count("gdpr-delete") == 1


def test_retention_purges_old_raw_submissions_but_not_pending_work(settings: Settings) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    processed = submit("info-packet", received_at=old, email="old@example.org", first_name="Old")
    [send_id] = process(processed, settings).email_send_ids
    pending = submit("newsletter", received_at=old, email="stuck@example.org")
    fresh = submit("newsletter", email="new@example.org")
    with session_scope() as session:
        assert purge_old_submissions(session, retention_days=365) == 1
    with session_scope() as session:
        assert set(session.scalars(select(Submission.id))) == {pending, fresh}
        assert session.get_one(EmailSend, send_id).submission_id is None  # the email record stays
        assert session.scalars(select(Contact.email)).all() == ["old@example.org"]
