"""SMTP PIPELINING (RFC 2920): with a relay that offers it, MAIL, RCPT and DATA leave in one write; without, one
command at a time; refusals read from a pipelined group are the same errors, and the connection stays usable.

Against the real SmtpSink (aiosmtpd), which offers PIPELINING as relays do, notes the commands that arrived
before the reply to the one ahead of them (`early`), and, when it does not offer PIPELINING, refuses a client
that pipelines anyway (554, as Postfix does). One branch aiosmtpd cannot reach (a relay that takes DATA after
refusing every recipient) is played by a scripted relay on a socket.

Example:
    .venv/bin/pytest tests/worker/test_smtp_pipelining.py -q -p no:cacheprovider
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from leadsync.config import Settings
from leadsync.worker.mail.transport import PermanentMailError, SmtpTransport, TemporaryMailError, plan_connection
from tests.support.services import LOOPBACK, SmtpSink, free_port


def transport_to(host: str, port: int, **extra: object) -> SmtpTransport:
    return SmtpTransport(Settings(_env_file=None, smtp_host=host, smtp_port=port, **extra))  # type: ignore[call-arg]


def message(n: int, body: str = "Your packet is attached.\n") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Clinic <info@clinic.example>"
    mail["To"] = f"reader{n}@example.org"
    mail["Subject"] = f"Packet {n}"
    mail["Message-ID"] = f"<{n}.packet@clinic.example>"
    mail.set_content(body)
    return mail


def send_all(transport: SmtpTransport, mails: list[EmailMessage]) -> list[str]:
    """Each message's outcome over one held connection: "sent", or the class of the error."""
    outcomes = []
    with transport.batch():
        for mail in mails:
            try:
                transport.send(mail)
                outcomes.append("sent")
            except (PermanentMailError, TemporaryMailError) as error:
                outcomes.append(type(error).__name__)
    return outcomes


def test_a_relay_offering_pipelining_gets_mail_rcpt_and_data_together(smtp: SmtpSink) -> None:
    mails = [message(n) for n in range(3)]
    mails[1] = message(1, body=".a line that starts with a dot\n..and one with two\n.\n")
    assert send_all(transport_to(smtp.host, smtp.port), mails) == ["sent"] * 3

    # MAIL and RCPT of each message reached the server before their replies were sent: one write, one wait.
    assert smtp.early == ["MAIL", "RCPT"] * 3
    assert smtp.commands == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * 3
    assert [mail.rcpt_tos for mail in smtp.received] == [(f"reader{n}@example.org",) for n in range(3)]
    # Dot-stuffing (RFC 5321 4.5.2) undone by the server: the body arrives as written, the lone "." included.
    assert b"\r\n.a line that starts with a dot\r\n..and one with two\r\n.\r\n" in smtp.received[1].raw


def test_an_smtputf8_envelope_is_left_to_smtplib_one_command_at_a_time(smtp: SmtpSink) -> None:
    smtp_client = transport_to(smtp.host, smtp.port)._open(plan_connection(smtp.host, smtp.port, "auto", False))
    smtp_client.sendmail("a@clinic.example", ["jörg@example.org"], b"Subject: x\r\n\r\nhi\r\n", ["SMTPUTF8"])
    smtp_client.quit()
    assert smtp.early == [] and [mail.rcpt_tos for mail in smtp.received] == [("jörg@example.org",)]


def test_a_relay_without_pipelining_gets_one_command_at_a_time() -> None:
    sink = SmtpSink(pipelining=False).start()  # refuses a client that pipelines anyway (554)
    try:
        assert send_all(transport_to(sink.host, sink.port), [message(n) for n in range(3)]) == ["sent"] * 3
        assert sink.early == [] and len(sink.received) == 3
        assert sink.commands == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * 3
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("code", "at", "error"),
    [
        (550, "RCPT", "PermanentMailError"),
        (451, "RCPT", "TemporaryMailError"),
        (554, "DATA", "PermanentMailError"),
        (452, "DATA", "TemporaryMailError"),
    ],
)
def test_a_refusal_in_a_pipelined_group_is_classified_and_the_connection_goes_on(
    smtp: SmtpSink, code: int, at: str, error: str
) -> None:
    smtp.fail_next(1, code=code, at=at)  # type: ignore[arg-type]
    transport = transport_to(smtp.host, smtp.port)
    assert send_all(transport, [message(n) for n in range(3)]) == [error, "sent", "sent"]
    assert transport.connections == 1 and "RSET" in smtp.commands  # reset, not reconnected
    assert [mail.rcpt_tos for mail in smtp.received] == [("reader1@example.org",), ("reader2@example.org",)]


def test_a_421_in_a_pipelined_group_closes_and_the_next_message_goes_over_a_fresh_connection(smtp: SmtpSink) -> None:
    smtp.fail_next(1, code=421, text="4.3.2 Service shutting down", at="RCPT")  # the server is closing
    transport = transport_to(smtp.host, smtp.port)
    assert send_all(transport, [message(n) for n in range(2)]) == ["TemporaryMailError", "sent"]
    assert transport.connections == 2 and "RSET" not in smtp.commands  # closed, not reset
    assert [mail.rcpt_tos for mail in smtp.received] == [("reader1@example.org",)]


def test_a_sender_refused_in_a_pipelined_group_sends_nothing() -> None:
    sink = SmtpSink(auth=("leadsync", "s3cret")).start()  # MAIL before AUTH: 530, then RCPT and DATA refused
    try:
        transport = transport_to(sink.host, sink.port)
        assert send_all(transport, [message(0)]) == ["PermanentMailError"]
        assert sink.received == [] and sink.early == ["MAIL", "RCPT"]
    finally:
        sink.close()


class ScriptedRelay:
    """A relay on a socket that offers PIPELINING, refuses every recipient and still answers DATA with 354 (RFC
    2920 3.1 allows it): the client must end that DATA with a lone "." and never send its message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.after_354 = b""
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 relay.test ESMTP\r\n")
            lines.readline()  # EHLO
            connection.sendall(b"250-relay.test\r\n250 PIPELINING\r\n")
            group = [lines.readline() for _ in range(3)]  # MAIL, RCPT, DATA, sent together
            assert [line.split(b":")[0].split()[0] for line in group] == [b"MAIL", b"RCPT", b"DATA"], group
            connection.sendall(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
            self.after_354 = lines.readline()
            connection.sendall(b"554 5.5.1 No valid recipients\r\n")
            for line in iter(lines.readline, b""):  # RSET, QUIT
                connection.sendall(b"221 2.0.0 Bye\r\n" if line.upper().startswith(b"QUIT") else b"250 2.0.0 Ok\r\n")

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    relay = ScriptedRelay()
    yield relay
    relay.close()


def test_data_taken_after_every_recipient_was_refused_is_ended_empty(relay: ScriptedRelay) -> None:
    transport = transport_to(LOOPBACK, relay.port)
    assert send_all(transport, [message(0)]) == ["PermanentMailError"]  # the 550: the recipient does not exist
    assert relay.after_354 == b".\r\n"  # the lone dot, not the message
