"""Emails as they arrive on the wire: the raw bytes a real SMTP server (aiosmtpd) received, not a parsed view.

Python's parser decodes RFC 2047 encoded-words, so a List-Unsubscribe written as `=?utf-8?q?=3Chttps...`
looks right through it while Gmail and Yahoo see no URL (issue 14). Every check here reads the bytes.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from leadsync.config import Settings
from leadsync.config.settings import CONFIG_DIR
from leadsync.storage.db import session_scope
from leadsync.storage.models import EmailAttempt, EmailSend
from leadsync.worker.mail.compose import compose, email_config, greeting_name, load_email_config
from tests.conftest import apply_settings
from tests.support.services import SmtpSink
from tests.worker.mail_kinds import INTEREST, MESSAGE, every_kind, header_block, raw_header, send_all

STRUCTURED = (b"message-id", b"list-id", b"list-unsubscribe", b"list-unsubscribe-post", b"from", b"to", b"reply-to")


@pytest.fixture
def backend() -> str:
    """Only the embedded backend: what goes on the wire does not depend on the database."""
    return "embedded"


def wire_settings(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], smtp: SmtpSink, **env: str) -> Settings:
    return apply_settings(
        monkeypatch,
        {
            **base_env,
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "PUBLIC_BASE_URL": "https://clinic.example",
            "FORM_TOKEN_SECRET": "w" * 40,
            **env,
        },
    )


def test_list_unsubscribe_is_a_literal_url_on_the_wire(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    configured = wire_settings(monkeypatch, base_env, smtp)
    raw = every_kind(configured, smtp)["newsletter_confirm"].raw
    assert re.search(rb"\r\nList-Unsubscribe: <https://clinic\.example/newsletter/unsubscribe\?token=[\w.-]+>\r\n", raw)
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert b"\r\nList-Id: Clinic newsletter <newsletter.clinic.example>\r\n" in raw
    # The header's URL is the body's unsubscribe link (the same signed token), not a look-alike.
    url = raw_header(raw, "List-Unsubscribe").decode().strip("<>")
    text = next(p for p in every_part(raw) if p.get_content_type() == "text/plain").get_content()
    assert f"To stop all newsletter emails: {url}" in text


def test_structured_headers_are_plain_ascii_never_encoded_words(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    configured = wire_settings(monkeypatch, base_env, smtp, MAIL_REPLY_TO="Patient care <care@clinic.example>")
    for kind, mail in every_kind(configured, smtp).items():
        fields = {f.split(b":", 1)[0].lower(): f for f in header_block(mail.raw)}
        assert {b"message-id", b"from", b"to", b"reply-to", b"date", b"subject"} <= set(fields), kind
        for name in STRUCTURED:
            if name in fields:
                assert fields[name].isascii() and b"=?" not in fields[name], (kind, fields[name])
        assert fields[b"from"] == b"From: Regenerative Medicine Clinic <info@clinic.example>"
        assert fields[b"to"] == b"To: ann@example.org"  # the bare address: no visitor text in a header
        assert fields[b"reply-to"] == b"Reply-To: Patient care <care@clinic.example>"
        assert re.fullmatch(rb"Message-ID: <\w+\.(packet|confirm)@clinic\.example>", fields[b"message-id"])
        assert mail.mail_from == "info@clinic.example" and mail.rcpt_tos == ("ann@example.org",)


def test_idn_domains_go_as_punycode_and_non_ascii_only_inside_the_display_name(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    configured = wire_settings(monkeypatch, base_env, smtp, MAIL_FROM='"Klinik Müller" <info@klinik-müller.example>')
    for kind, mail in every_kind(configured, smtp, address="ann@bücher.example").items():
        sender = raw_header(mail.raw, "From")
        assert sender == b"Klinik =?utf-8?q?M=C3=BCller?= <info@xn--klinik-mller-klb.example>", kind
        assert b"=?" not in sender.rpartition(b"<")[2]  # the addr-spec: never an encoded-word
        assert raw_header(mail.raw, "To") == b"ann@xn--bcher-kva.example"
        assert raw_header(mail.raw, "Message-ID").endswith(b"@xn--klinik-mller-klb.example>"), kind
        # The envelope too: relays without SMTPUTF8 take only ASCII there.
        assert mail.mail_from == "info@xn--klinik-mller-klb.example"
        assert mail.rcpt_tos == ("ann@xn--bcher-kva.example",)
        assert b"=?" not in (raw_header(mail.raw, "List-Id") or b"")
    assert mail.message["From"].addresses[0].display_name == "Klinik Müller"  # what a mail client shows


def test_every_line_ends_in_crlf_and_fits_998_bytes(settings: Settings, monkeypatch, base_env, smtp: SmtpSink) -> None:
    # A long public URL makes a long List-Unsubscribe (one line, still < 998); long names fill the body.
    base = "https://clinic.example/" + "landing-page-" * 25
    configured = wire_settings(monkeypatch, base_env, smtp, PUBLIC_BASE_URL=base)
    for kind, mail in every_kind(configured, smtp, first_name="Bartholomew-Maximilian " * 4).items():
        assert mail.raw.endswith(b"\r\n"), kind
        lines = mail.raw[:-2].split(b"\r\n")
        assert not any(b"\n" in line or b"\r" in line for line in lines), f"{kind}: a bare LF or CR"
        assert max(len(line) for line in lines) <= 998, kind
        assert len(raw_header(mail.raw, "List-Unsubscribe") or b"") < 998
    assert len(raw_header(every_raw_confirm(smtp), "List-Unsubscribe")) > 400  # the long URL really was used


def test_subjects_are_fixed_and_visitor_free_text_never_reaches_an_email(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    configured = wire_settings(monkeypatch, base_env, smtp)
    for kind, mail in every_kind(configured, smtp).items():
        assert raw_header(mail.raw, "Subject") == email_config()[kind]["subject"].encode()
        bodies = " ".join(p.get_content() for p in every_part(mail.raw) if p.get_content_maintype() == "text")
        for typed in (INTEREST, MESSAGE, "knees", "cousin"):
            assert typed not in bodies and typed.encode() not in mail.raw, (kind, typed)
        assert "Hello Ann," in bodies  # the greeting: the one place a first name goes


@pytest.mark.parametrize(
    "subject", ["Your FREE information packet, {{ first_name }}", "Hi {% if x %}x{% endif %}", "Two\nlines"]
)
def test_a_subject_with_template_syntax_is_refused(tmp_path: Path, subject: str) -> None:
    path = tmp_path / "emails.toml"
    path.write_text(f'[info_packet]\nsubject = {json.dumps(subject)}\nhtml = "a.html"\ntext = "a.txt"\n')
    with pytest.raises(ValueError, match="subject must be fixed text on one line"):
        load_email_config(path)
    assert set(load_email_config(CONFIG_DIR / "emails.toml")) == {"info_packet", "newsletter_confirm"}  # shipped: fine


@pytest.mark.parametrize(
    "first_name",
    [
        "Your refund: visit http://evil.example/claim",
        "evil.example",
        "Ann ann@evil.example",
        "<b>Ann</b>",
        "Ann\r\nBcc: victim@example.org",
        "A" * 61,
    ],
)
def test_a_first_name_that_is_not_plainly_a_name_is_left_out(settings: Settings, first_name: str) -> None:
    # The form refuses such names (tests/security); this is the second line for rows stored before.
    contact = SimpleNamespace(id=1, email="ann@example.org", first_name=first_name, interest=None, message=None)
    for kind in email_config():
        message = compose(kind, contact, message_id="<x.packet@clinic.example>", settings=settings)
        raw = message.as_bytes()
        assert message["Subject"] == email_config()[kind]["subject"]
        assert b"evil" not in raw and b"Bcc" not in raw and b"<b>" not in raw and b"&lt;b&gt;" not in raw
        assert "Hello,\n" in message.get_body(("plain",)).get_content()


def test_a_plain_name_is_greeted_and_escaped_in_html(settings: Settings) -> None:
    assert [greeting_name(n) for n in ("Ann", "Mary-Jane", "O'Brien", "J. R.", "José", "李")] == [
        "Ann",
        "Mary-Jane",
        "O'Brien",
        "J. R.",
        "José",
        "李",
    ]
    contact = SimpleNamespace(id=1, email="ann@example.org", first_name="O'Brien")
    message = compose("info_packet", contact, message_id="<x.packet@clinic.example>", settings=settings)
    assert "Hello O&#39;Brien," in message.get_body(("html",)).get_content()
    assert "Hello O'Brien," in message.get_body(("plain",)).get_content()


def test_a_non_ascii_mailbox_name_fails_permanently_with_a_clear_error(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    configured = wire_settings(monkeypatch, base_env, smtp)
    send_ids = send_all(configured, address="jürgen@example.org")
    with session_scope() as session:
        sends = session.scalars(select(EmailSend).where(EmailSend.id.in_(send_ids))).all()
        assert {send.status for send in sends} == {"failed"}
        assert all("SMTPUTF8" in (send.last_error or "") for send in sends)
        outcomes = session.scalars(select(EmailAttempt.outcome).where(EmailAttempt.send_id.in_(send_ids))).all()
        assert set(outcomes) == {"permanent"}
    assert smtp.received == [] and smtp.commands == []  # nothing reached the server


# --------------------------------------------------------------------------- helpers


def every_part(raw: bytes) -> list[EmailMessage]:
    return list(email.message_from_bytes(raw, policy=email.policy.default).walk())


def every_raw_confirm(smtp: SmtpSink) -> bytes:
    return next(mail.raw for mail in smtp.received if raw_header(mail.raw, "List-Unsubscribe"))


def test_each_mime_boundary_only_delimits_its_parts_and_nested_ones_differ(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    # compose sets the boundaries itself (Python's generator would check each against the text with a regex).
    mails = list(every_kind(wire_settings(monkeypatch, base_env, smtp), smtp).values())
    for mail in mails:
        boundaries = re.findall(rb'boundary="([^"]+)"', mail.raw)
        assert boundaries and len(set(boundaries)) == len(boundaries), boundaries  # each level its own
        for boundary in boundaries:
            lines = [line for line in mail.raw.split(b"\r\n") if boundary in line and b"boundary=" not in line]
            assert lines and set(lines) <= {b"--" + boundary, b"--" + boundary + b"--"}, lines
        parsed = email.message_from_bytes(mail.raw, policy=email.policy.default)
        assert "text/plain" in [part.get_content_type() for part in parsed.walk()]
    assert any(len(re.findall(rb'boundary="', mail.raw)) == 2 for mail in mails)  # the packet: mixed(alternative)


def test_a_replaced_packet_pdf_goes_out_in_the_next_email(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink, tmp_path: Path
) -> None:
    packet = tmp_path / "packet.pdf"
    packet.write_bytes(b"%PDF-1.4 first version\n%%EOF\n")
    configured = wire_settings(monkeypatch, base_env, smtp, INFO_PACKET_PATH=str(packet))

    def attachment(address: str) -> bytes:
        smtp.clear()
        raw = every_kind(configured, smtp, address)["info_packet"].raw
        [pdf] = [p for p in email.message_from_bytes(raw, policy=email.policy.default).walk() if p.get_filename()]
        return pdf.get_content()

    assert attachment("first@example.org") == packet.read_bytes()
    packet.write_bytes(b"%PDF-1.4 second version, staff updated it\n%%EOF\n")
    assert attachment("second@example.org") == b"%PDF-1.4 second version, staff updated it\n%%EOF\n"
