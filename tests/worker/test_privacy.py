"""Access, erasure and retention on a real database, and erasure reaching the HubSpot emulator, also while a
CRM flush is writing the same person."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Base, Contact, EmailAttempt, EmailSend, Erasure, Submission, Suppression
from leadsync.storage.submissions import NewSubmission, store_submission
from leadsync.worker import dead_letters, erasure
from leadsync.worker.crm.clients import crm_client
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.mapping import load_mapping
from leadsync.worker.crm.sync import flush_pending
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import FolderTransport
from leadsync.worker.privacy import purge_old_submissions
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.stack import wait_for
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


def test_forget_erases_every_row_file_and_copy_and_keeps_only_a_keyed_hash(settings: Settings) -> None:
    person(settings)
    person(settings, "keep@example.org")
    outbox = settings.mail_outbox_dir
    assert sum("ann@example.org" in path.read_text(errors="replace") for path in outbox.glob("*.eml")) == 1
    stray = outbox / "left-by-an-older-version.eml"  # a file no email row names any more: found by recipient
    stray.write_text("To: Ann <ANN@example.org>\nSubject: x\n\nbody\n")
    with get_sessionmaker()() as session:  # a spam row, another person's message naming her, a dead letter
        store_submission(
            session,
            NewSubmission(
                form="newsletter",
                email="ann@example.org",
                fields={},
                raw={"email": "ann@example.org", "website": "x"},
                spam_reason="honeypot",
            ),
        )
        store_submission(
            session,
            NewSubmission(
                form="info_packet",
                email="keep@example.org",
                fields={"message": "my wife is Ann@Example.org"},
                raw={"message": "my wife is Ann@Example.org"},
            ),
        )
        [keep_id] = session.scalars(select(Contact.id).where(Contact.email == "keep@example.org"))
        keep_row = session.scalars(select(Contact).where(Contact.id == keep_id)).one()
        keep_row.message = "also: ann@example.org"
        session.commit()
        dead_letters.record(
            session, "crm", str(keep_id), "leadsync.flush_crm", "INVALID_EMAIL: ann@example.org rejected"
        )
        session.commit()
    result = CliRunner().invoke(main, ["forget", "ANN@example.org", "--yes"])
    assert result.exit_code == 0, result.output
    assert "3 submissions, 2 emails, 2 outbox files, blanked in 3 other rows" in result.output
    assert "HubSpot: not configured" in result.output
    with session_scope() as session:
        assert session.scalars(select(Contact.email)).all() == ["keep@example.org"]
        assert set(session.scalars(select(Submission.email))) == {"keep@example.org"}
        assert session.scalar(select(func.count()).select_from(EmailSend)) == 2  # keep@: packet + confirmation
        [suppression] = session.scalars(select(Suppression)).all()
        assert suppression.email_hash == hmac.new(settings.signing_key, b"ann@example.org", "sha256").hexdigest()
        assert suppression.email_hash != hashlib.sha256(b"ann@example.org").hexdigest()
        assert suppression.scheme == "hmac-sha256"
        assert session.scalar(select(func.count()).select_from(Erasure)) == 0  # no HubSpot: nothing owed
        keep = session.scalars(select(Contact).where(Contact.email == "keep@example.org")).one()
        assert keep.message == "also: [erased]" and keep.crm_status == "pending"  # HubSpot gets the blank too
    assert count(EmailAttempt) == 1
    assert not stray.exists()
    assert all("ann@example.org" not in path.read_text(errors="replace").lower() for path in outbox.glob("*.eml"))
    assert len(list(outbox.glob("*.eml"))) == 1  # keep@'s packet stays
    # No stored copy of the address anywhere: every table's rows, as text.
    with session_scope() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(table.select()):
                assert "ann@example.org" not in str(tuple(row)).lower(), (table.name, row)
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


def test_legacy_unkeyed_suppressions_are_still_honoured_and_replaced_by_a_new_forget(settings: Settings) -> None:
    """Rows from before revision 0008 cannot be re-keyed: they keep suppressing until forgotten again."""
    legacy = hashlib.sha256(b"ann@example.org").hexdigest()
    with session_scope() as session:
        session.add(Suppression(email_hash=legacy, reason="erasure", scheme="sha256"))
    earlier = datetime.now(UTC) - timedelta(seconds=5)
    in_flight = submit("info-packet", received_at=earlier, email="ann@example.org", first_name="Ann")
    assert process(in_flight, settings).skipped
    assert CliRunner().invoke(main, ["forget", "ann@example.org", "--yes"]).exit_code == 0
    with session_scope() as session:
        assert [row.scheme for row in session.scalars(select(Suppression))] == ["hmac-sha256"]


def synced_person(settings: Settings) -> HubSpotCrm:
    person(settings)
    crm = crm_client()
    assert crm is not None
    crm.bootstrap(load_mapping(settings.hubspot_mapping_path))
    assert flush_pending(get_sessionmaker(), crm, load_mapping(settings.hubspot_mapping_path), settings).synced == 1
    return crm


@pytest.fixture
def with_hubspot(settings: Settings, monkeypatch, base_env, hubspot: HubSpotEmulator) -> Settings:
    return apply_settings(
        monkeypatch, {**base_env, "HUBSPOT_ACCESS_TOKEN": "test-token", "HUBSPOT_BASE_URL": hubspot.url}
    )


def test_forget_deletes_in_hubspot_by_record_id_and_by_email(with_hubspot: Settings, hubspot: HubSpotEmulator) -> None:
    synced_person(with_hubspot)
    record = hubspot.contact_by_email("ann@example.org")
    assert record is not None
    with hubspot.lock:  # a colleague changed her email in HubSpot: only the record id still finds her
        hubspot.contacts[record["id"]]["properties"]["email"] = "ann.lee@work.example"
        hubspot._by_email.pop("ann@example.org", None)
    result = CliRunner().invoke(main, ["forget", "ann@example.org", "--yes"])
    assert result.exit_code == 0 and "GDPR delete done (by record id and by email)" in result.output, result.output
    assert record["id"] not in hubspot.contacts
    purges = [call for call in hubspot.calls("gdpr-delete") if call.status == 204]
    assert len(purges) == 2  # by record id, then by email
    assert "ann@example.org" in hubspot.erased_emails
    assert count(Erasure) == 0  # done: the address is gone from the job table too


def in_flight(hubspot: HubSpotEmulator) -> int:
    """Requests the emulator is holding right now (uvicorn's running request tasks)."""
    server = hubspot._server
    return len(server.server_state.tasks) if server is not None else 0


def flush_in_thread(settings: Settings, crm: HubSpotCrm) -> tuple[threading.Thread, list]:
    reports: list = []
    mapping = load_mapping(settings.hubspot_mapping_path)
    thread = threading.Thread(target=lambda: reports.append(flush_pending(get_sessionmaker(), crm, mapping, settings)))
    thread.start()
    return thread, reports


def test_a_flush_in_flight_does_not_re_create_a_person_deleted_meanwhile(
    with_hubspot: Settings, hubspot: HubSpotEmulator
) -> None:
    """The update by record id is out when `forget` deletes the record: HubSpot answers OBJECT_NOT_FOUND,
    and the flush's fallback (an upsert by email) must not bring her back."""
    crm = synced_person(with_hubspot)
    process(submit("newsletter", email="ann@example.org", first_name="Annie"), with_hubspot)  # a change to sync
    upserts_before = len(hubspot.calls("batch/upsert"))  # the first sync created her
    hubspot.delay_next(1, 1.0)
    thread, reports = flush_in_thread(with_hubspot, crm)
    wait_for(lambda: in_flight(hubspot) == 1, timeout=10, interval=0.01, what="the update call held by HubSpot")
    result = CliRunner().invoke(main, ["forget", "ann@example.org", "--yes"])
    assert "HubSpot: not done yet (checked again after" in result.output, result.output  # the flush held her
    assert [call.status for call in hubspot.calls("gdpr-delete")] == [204, 204]  # by id and by email, at once
    thread.join(timeout=30)
    assert reports and reports[0].claimed == 1
    assert [call.status for call in hubspot.calls("batch/update")] == [207]  # landed on a deleted record
    assert len(hubspot.calls("batch/upsert")) == upserts_before  # and was not turned into an upsert
    assert hubspot.contact_by_email("ann@example.org") is None and hubspot.contacts == {}
    with session_scope() as session:
        hold_until = session.scalars(select(Erasure.hold_until)).one()
    assert erasure.run(get_sessionmaker(), crm, now=hold_until + timedelta(seconds=1))[0].done
    assert count(Erasure) == 0


def test_a_write_that_lands_while_forgetting_is_deleted_again(with_hubspot: Settings, hubspot: HubSpotEmulator) -> None:
    """The upsert creating her is out when `forget` runs: the record it creates is deleted by the job, which
    stays (shown in `leadsync status`) until the flush's lease has run out and HubSpot was checked again."""
    person(with_hubspot)
    crm = crm_client()
    assert crm is not None
    crm.bootstrap(load_mapping(with_hubspot.hubspot_mapping_path))
    hubspot.delay_next(1, 1.0)
    thread, _ = flush_in_thread(with_hubspot, crm)
    wait_for(lambda: in_flight(hubspot) == 1, timeout=10, interval=0.01, what="the upsert held by HubSpot")
    result = CliRunner().invoke(main, ["forget", "ann@example.org", "--yes"])
    assert "HubSpot: not done yet (checked again after" in result.output, result.output
    thread.join(timeout=30)
    [upsert] = hubspot.calls("batch/upsert")
    assert upsert.status == 200  # it landed after the delete by email: HubSpot holds her again, for now
    written = hubspot.contact_by_email("ann@example.org")
    assert written is not None
    with session_scope() as session:
        [job] = session.scalars(select(Erasure)).all()
        assert job.hubspot_ids["ids"] == [written["id"]]  # the flush handed its record to the job
        hold_until = job.hold_until
    assert hold_until is not None
    report = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert report["erasures"]["pending"] == 1
    erasure.run(get_sessionmaker(), crm)  # the worker's next round (every flush_crm)
    assert hubspot.contact_by_email("ann@example.org") is None and hubspot.contacts == {}
    assert count(Erasure) == 1  # still owed: checked once more when the lease is over
    assert erasure.run(get_sessionmaker(), crm, now=hold_until + timedelta(seconds=1))[0].done
    assert count(Erasure) == 0 and hubspot.contacts == {}


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
