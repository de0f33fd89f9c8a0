"""The email state machine against a real SMTP server (aiosmtpd) and the .eml folder transport."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

from sqlalchemy import select

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import EmailAttempt, EmailSend, utcnow
from leadsync.worker.mail.addresses import outbox_file_name
from leadsync.worker.mail.sending import claim, deliver
from leadsync.worker.mail.transport import FolderTransport, SmtpTransport
from tests.conftest import apply_settings
from tests.support.services import SmtpSink
from tests.worker.helpers import process, submit


def queued_packet(settings: Settings, address: str = "ann@example.org") -> str:
    [send_id] = process(submit("info-packet", email=address, first_name="Ann"), settings).email_send_ids
    return send_id


def smtp_settings(monkeypatch, base_env, smtp: SmtpSink) -> Settings:
    return apply_settings(monkeypatch, {**base_env, "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port)})


def attempts(send_id: str) -> list[tuple[str, int | None]]:
    with session_scope() as session:
        rows = session.scalars(select(EmailAttempt).where(EmailAttempt.send_id == send_id).order_by(EmailAttempt.id))
        return [(row.outcome, row.smtp_code) for row in rows]


def status_of(send_id: str) -> str:
    with session_scope() as session:
        return session.get_one(EmailSend, send_id).status


def test_sent_once_even_when_delivered_twice(settings: Settings, monkeypatch, base_env, smtp: SmtpSink) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_id = queued_packet(settings)
    transport = SmtpTransport(settings)
    assert deliver(get_sessionmaker(), send_id, transport, settings).status == "sent"
    assert deliver(get_sessionmaker(), send_id, transport, settings).status == "skipped"  # a redelivered task
    [message] = smtp.wait_for(1)
    assert len(smtp.messages) == 1 and status_of(send_id) == "sent"
    assert attempts(send_id) == [("sent", None)]
    assert message["Message-ID"].startswith(f"<{send_id}.packet@")


def test_temporary_smtp_failure_schedules_a_retry_then_sends(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_id = queued_packet(settings)
    smtp.fail_next(1, code=451)
    first = deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings)
    assert first.status == "retry" and first.retry_in is not None and first.retry_in > 0
    assert status_of(send_id) == "retry"
    second = deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings)
    assert second.status == "sent"
    assert attempts(send_id) == [("temporary", 451), ("sent", None)]
    assert len(smtp.messages) == 1


def test_permanent_smtp_failure_is_not_retried(settings: Settings, monkeypatch, base_env, smtp: SmtpSink) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_id = queued_packet(settings)
    smtp.fail_next(1, code=550, text="5.1.1 No such user")
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "failed"
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "skipped"
    assert attempts(send_id) == [("permanent", 550)] and smtp.messages == []


def test_smtp_server_down_is_a_temporary_failure(settings: Settings, monkeypatch, base_env, smtp: SmtpSink) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_id = queued_packet(settings)
    smtp.stop()
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "retry"
    smtp.restart()
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "sent"
    assert len(smtp.wait_for(1)) == 1


def test_a_live_claim_blocks_a_second_worker_and_a_stale_one_does_not(settings: Settings) -> None:
    send_id = queued_packet(settings)
    now, lease = utcnow(), timedelta(minutes=10)
    with get_sessionmaker()() as session, session.begin():
        assert claim(session, send_id, now, lease)
    with get_sessionmaker()() as session, session.begin():
        assert not claim(session, send_id, now + lease / 2, lease)  # another worker holds it
    with get_sessionmaker()() as session, session.begin():
        assert claim(session, send_id, now + lease * 2, lease)  # the holder died long ago


def test_folder_transport_writes_a_complete_eml(settings: Settings) -> None:
    send_id = queued_packet(settings)
    transport = FolderTransport(settings.mail_outbox_dir)
    assert deliver(get_sessionmaker(), send_id, transport, settings).status == "sent"
    [path] = list(settings.mail_outbox_dir.glob("*.eml"))
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == "ann@example.org"
    assert [p.get_content_type() for p in message.iter_attachments()] == ["application/pdf"]
    assert not list(settings.mail_outbox_dir.glob(".*.tmp"))


def test_smtp_password_never_shows_in_repr(monkeypatch, base_env) -> None:
    settings = apply_settings(monkeypatch, {**base_env, "SMTP_HOST": "mail.example", "SMTP_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(SmtpTransport(settings)) and "hunter2" not in repr(settings)


def test_outbox_file_is_named_from_the_stored_message_id(settings: Settings, monkeypatch, base_env) -> None:
    # `forget` finds a person's .eml files by the Message-IDs stored in email_sends: same name, IDN domain or not.
    configured = apply_settings(monkeypatch, {**base_env, "MAIL_FROM": "Klinik <info@klinik-müller.example>"})
    send_id = queued_packet(configured)
    assert (
        deliver(get_sessionmaker(), send_id, FolderTransport(configured.mail_outbox_dir), configured).status == "sent"
    )
    with session_scope() as session:
        stored = session.get_one(EmailSend, send_id).message_id
    assert stored.endswith("@klinik-müller.example>")
    [path] = list(configured.mail_outbox_dir.glob("*.eml"))
    assert path.name == outbox_file_name(stored) == f"{send_id}.packet_xn--klinik-mller-klb.example.eml"
