"""SMTP as relays expect (issue 13, item 4): STARTTLS and implicit TLS with a verified certificate, and
never a login in clear text to a host that is not this machine.

Real servers: aiosmtpd with a STARTTLS-only listener (require_starttls, auth_require_tls) and an implicit
TLS listener, each with a certificate from a throwaway private CA made here with openssl; SMTP_CA_FILE
points at that CA. What counts is what the server saw: `SmtpSink.commands` (every verb the client sent)
and whether each accepted message came over TLS and after AUTH.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import DeadLetter, EmailAttempt, EmailSend
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import ConnectionPlan, PermanentMailError, SmtpTransport, plan_connection
from tests.conftest import apply_settings
from tests.support.services import SmtpSink, TestCertificate, make_test_certificate
from tests.worker.helpers import process, submit

LOGIN = ("mailer", "s3cret-relay-password")


@pytest.fixture
def backend() -> str:
    """Only the embedded backend: the SMTP conversation does not depend on the database."""
    return "embedded"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> TestCertificate:
    return make_test_certificate(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def starttls_sink(certificate: TestCertificate) -> Iterator[SmtpSink]:
    with SmtpSink(auth=LOGIN, tls="starttls", certificate=certificate) as sink:
        yield sink


@pytest.fixture
def implicit_sink(certificate: TestCertificate) -> Iterator[SmtpSink]:
    with SmtpSink(auth=LOGIN, tls="implicit", certificate=certificate) as sink:
        yield sink


@pytest.fixture
def plain_sink() -> Iterator[SmtpSink]:
    """A server without STARTTLS that offers AUTH in clear text: a client must not take the offer."""
    with SmtpSink(auth=LOGIN) as sink:
        yield sink


def relay_settings(monkeypatch, base_env, sink: SmtpSink, host: str = "127.0.0.1", **env: str) -> Settings:
    return apply_settings(
        monkeypatch,
        {
            **base_env,
            "SMTP_HOST": host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USERNAME": LOGIN[0],
            "SMTP_PASSWORD": LOGIN[1],
            "SMTP_TIMEOUT": "5",
            **env,
        },
    )


def send_packet(settings: Settings) -> tuple[str, str]:
    """Queue and deliver one packet email the production way; (send id, delivery status)."""
    [send_id] = process(submit("info-packet", email="ann@example.org", first_name="Ann"), settings).email_send_ids
    return send_id, deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status


def attempt_outcomes(send_id: str) -> list[tuple[str, str | None]]:
    with session_scope() as session:
        rows = session.scalars(select(EmailAttempt).where(EmailAttempt.send_id == send_id).order_by(EmailAttempt.id))
        return [(row.outcome, row.error) for row in rows]


# --------------------------------------------------------------------------- the decision, as a unit


@pytest.mark.parametrize(
    ("host", "port", "security", "expected"),
    [
        ("smtp.postmarkapp.com", 587, "auto", ConnectionPlan("starttls", True, False)),
        ("email-smtp.eu-west-1.amazonaws.com", 465, "auto", ConnectionPlan("implicit", True, False)),
        ("smtp.mailgun.org", 2525, "tls", ConnectionPlan("implicit", True, False)),
        ("smtp.mailgun.org", 465, "starttls", ConnectionPlan("starttls", True, False)),
        ("127.0.0.1", 587, "auto", ConnectionPlan("starttls", False, True)),  # opportunistic on loopback
        ("127.0.0.53", 25, "auto", ConnectionPlan("starttls", False, True)),
        ("::1", 25, "auto", ConnectionPlan("starttls", False, True)),
        ("[::1]", 25, "auto", ConnectionPlan("starttls", False, True)),
        ("localhost", 25, "auto", ConnectionPlan("starttls", False, True)),
        ("localhost", 25, "starttls", ConnectionPlan("starttls", True, True)),
        ("localhost", 25, "none", ConnectionPlan("none", False, True)),
        # Names are never resolved, so none of these counts as this machine.
        ("localhost.evil.example", 587, "auto", ConnectionPlan("starttls", True, False)),
        ("127.0.0.1.nip.io", 587, "auto", ConnectionPlan("starttls", True, False)),
        ("mailpit", 1025, "auto", ConnectionPlan("starttls", True, False)),
        ("10.0.0.5", 587, "auto", ConnectionPlan("starttls", True, False)),
    ],
)
def test_connection_plan(host: str, port: int, security, expected: ConnectionPlan) -> None:
    assert plan_connection(host, port, security, has_credentials=True) == expected


@pytest.mark.parametrize("host", ["smtp.postmarkapp.com", "mailpit", "10.0.0.5", "localhost.evil.example"])
def test_a_clear_text_login_to_a_non_local_host_is_refused_permanently(host: str) -> None:
    with pytest.raises(PermanentMailError, match=f"SMTP_SECURITY=none would send .* in clear text to {host}"):
        plan_connection(host, 587, "none", has_credentials=True)
    # Without credentials plain text is the operator's explicit choice (a mail catcher in a dev compose).
    assert plan_connection(host, 1025, "none", has_credentials=False) == ConnectionPlan("none", False, False)
    # A login in clear text to this machine never leaves it.
    assert plan_connection("127.0.0.1", 25, "none", has_credentials=True).tls == "none"


# --------------------------------------------------------------------------- against real servers


def test_starttls_relay_gets_the_login_only_inside_verified_tls(
    settings: Settings, monkeypatch, base_env, starttls_sink: SmtpSink, certificate: TestCertificate
) -> None:
    configured = relay_settings(monkeypatch, base_env, starttls_sink, SMTP_CA_FILE=str(certificate.ca))
    assert configured.smtp_security == "auto"  # the default: STARTTLS on any port but 465
    send_id, status = send_packet(configured)
    assert status == "sent", attempt_outcomes(send_id)
    [mail] = starttls_sink.received
    assert mail.tls and mail.authenticated and mail.rcpt_tos == ("ann@example.org",)
    assert starttls_sink.commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]  # AUTH only after the handshake


def test_implicit_tls_relay_with_login(
    settings: Settings, monkeypatch, base_env, implicit_sink: SmtpSink, certificate: TestCertificate
) -> None:
    configured = relay_settings(
        monkeypatch, base_env, implicit_sink, SMTP_SECURITY="tls", SMTP_CA_FILE=str(certificate.ca)
    )
    send_id, status = send_packet(configured)
    assert status == "sent", attempt_outcomes(send_id)
    [mail] = implicit_sink.received
    assert mail.tls and mail.authenticated
    assert "STARTTLS" not in implicit_sink.commands and implicit_sink.commands[:2] == ["EHLO", "AUTH"]


def test_an_unknown_ca_is_a_temporary_failure_before_any_login(
    settings: Settings, monkeypatch, base_env, starttls_sink: SmtpSink
) -> None:
    configured = relay_settings(monkeypatch, base_env, starttls_sink)  # system CAs: ours is not among them
    send_id, status = send_packet(configured)
    assert status == "retry"
    [(outcome, error)] = attempt_outcomes(send_id)
    assert outcome == "temporary" and "CERTIFICATE_VERIFY_FAILED" in (error or "")
    assert "AUTH" not in starttls_sink.commands and "MAIL" not in starttls_sink.commands
    assert starttls_sink.received == []


def test_a_certificate_for_another_host_name_is_refused(
    settings: Settings, monkeypatch, base_env, tmp_path: Path
) -> None:
    other = make_test_certificate(tmp_path / "other", names=("relay.clinic.example",))
    with SmtpSink(auth=LOGIN, tls="implicit", certificate=other) as sink:
        configured = relay_settings(monkeypatch, base_env, sink, SMTP_SECURITY="tls", SMTP_CA_FILE=str(other.ca))
        send_id, status = send_packet(configured)
        assert status == "retry"
        [(_, error)] = attempt_outcomes(send_id)
        assert "IP address mismatch" in (error or "") or "hostname mismatch" in (error or ""), error
        assert sink.commands == [] and sink.received == []  # the handshake failed: not even EHLO


def test_required_starttls_not_offered_sends_no_credentials_and_no_mail(
    settings: Settings, monkeypatch, base_env, plain_sink: SmtpSink
) -> None:
    # A loopback host forced to STARTTLS stands for a remote relay whose STARTTLS offer was stripped on the path.
    configured = relay_settings(monkeypatch, base_env, plain_sink, SMTP_SECURITY="starttls")
    send_id, status = send_packet(configured)
    assert status == "retry"  # as Postfix defers: a downgrade on the path may pass; 2 days of retries
    [(outcome, error)] = attempt_outcomes(send_id)
    assert outcome == "temporary" and "does not offer STARTTLS" in (error or "")
    assert plain_sink.commands == ["EHLO"] and plain_sink.received == []  # no AUTH, no MAIL


def test_a_clear_text_login_to_a_remote_host_fails_permanently_without_connecting(
    settings: Settings, monkeypatch, base_env, plain_sink: SmtpSink
) -> None:
    configured = relay_settings(monkeypatch, base_env, plain_sink, host="smtp.clinic.invalid", SMTP_SECURITY="none")
    send_id, status = send_packet(configured)
    assert status == "failed"
    [(outcome, error)] = attempt_outcomes(send_id)
    assert outcome == "permanent" and "in clear text to smtp.clinic.invalid: refused" in (error or "")
    with session_scope() as session:
        assert session.get_one(EmailSend, send_id).status == "failed"
        [letter] = session.scalars(select(DeadLetter).where(DeadLetter.ref == send_id)).all()
        assert "SMTP_SECURITY=none" in letter.error  # what `leadsync failed list` shows the operator
    assert plain_sink.commands == []


def test_loopback_without_starttls_is_opportunistic(
    settings: Settings, monkeypatch, base_env, plain_sink: SmtpSink
) -> None:
    # A local Postfix without a certificate: plain text that never leaves the machine, the login included.
    configured = relay_settings(monkeypatch, base_env, plain_sink)
    send_id, status = send_packet(configured)
    assert status == "sent", attempt_outcomes(send_id)
    [mail] = plain_sink.received
    assert not mail.tls and mail.authenticated
