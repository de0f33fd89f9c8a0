"""Every email kind of config/emails.toml, sent the production way to a real SMTP server, as raw bytes.

One info-packet request with the newsletter box ticked makes one email of each kind (the packet and the
double opt-in confirmation); `every_kind` fails when emails.toml gains a kind this request does not
produce, so the wire and SpamAssassin tests cannot silently skip a new email.

Example:
    >>> mails = every_kind(settings, smtp)
    >>> mails["newsletter_confirm"].raw.startswith(b"Subject: ")
    True
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import EmailSend
from leadsync.worker.mail.addresses import wire_message_id
from leadsync.worker.mail.compose import email_config
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import SmtpTransport
from tests.support.services import ReceivedMail, SmtpSink
from tests.worker.helpers import process, submit

# Free text a visitor typed: none of it may appear in any email.
INTEREST = "knees and hips, see the offer"
MESSAGE = "Please call me after five, my cousin says hello"


def send_all(settings: Settings, address: str = "ann@example.org", **fields: Any) -> list[str]:
    """Store and process one info-packet request (newsletter ticked), deliver its emails; their send ids."""
    fields = {"first_name": "Ann", "interest": INTEREST, "message": MESSAGE, "newsletter_opt_in": "on", **fields}
    send_ids = process(submit("info-packet", email=address, **fields), settings).email_send_ids
    transport = SmtpTransport(settings)
    for send_id in send_ids:
        deliver(get_sessionmaker(), send_id, transport, settings)
    return send_ids


def every_kind(
    settings: Settings, smtp: SmtpSink, address: str = "ann@example.org", **fields: Any
) -> dict[str, ReceivedMail]:
    """kind -> the message the SMTP server accepted for it (envelope and raw bytes)."""
    send_ids = send_all(settings, address, **fields)
    smtp.wait_for(len(send_ids))
    with session_scope() as session:
        kinds = {
            wire_message_id(send.message_id): send.kind
            for send in session.scalars(select(EmailSend).where(EmailSend.id.in_(send_ids)))
        }
    mails = {kinds[str(mail.message["Message-ID"])]: mail for mail in smtp.received}
    missing = set(email_config()) - set(mails)
    assert not missing, f"emails.toml kinds {sorted(missing)} were not sent: make every_kind produce them"
    return mails


def header_block(raw: bytes) -> list[bytes]:
    """The raw header fields, each unfolded (continuation lines joined), in order."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def raw_header(raw: bytes, name: str) -> bytes | None:
    """The raw value of the top-level header `name` (unfolded), or None."""
    prefix = name.lower().encode() + b":"
    for field in header_block(raw):
        if field.lower().startswith(prefix):
            return field[len(prefix) :].strip()
    return None
