"""A person's rights over their data: export everything held (`leadsync export-person`), erase it
(`leadsync forget`), and retention (raw submissions older than RAW_RETENTION_DAYS are purged by beat).

`forget` deletes, in one transaction, every row about the address (submissions, spam ones included, the
contact, its emails and SMTP attempts, dead letters) and blanks the address wherever it sits inside someone
else's rows (a raw payload, a message, a dead letter's error text). Its `.eml` files leave the outbox
(`erase_outbox`), and HubSpot's delete becomes a durable job (worker/erasure.py).

It keeps one thing: a suppression entry, HMAC-SHA256 of the address keyed by the signing key, so a
submission that was already in flight when the person was forgotten cannot bring them back, and nobody
without the secret can test an address against the table. Entries are checked under every key in
`signing_keys` (current first, then the previous one during a rotation). Entries written before revision
0008 are an unkeyed sha256 (scheme `sha256`): they cannot be re-keyed, so they are still checked (dropping
them could let in-flight work resurrect the person) and are replaced when the address is forgotten again.

Example:
    >>> with session_scope() as session:
    ...     report = forget(session, "ann@example.org", suppression_keys(settings))
    >>> report.submissions, report.hubspot_id
    (3, '151')
    >>> erase_outbox(settings.mail_outbox_dir, "ann@example.org", report.message_ids)
    2
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.contacts import mark_for_sync
from leadsync.storage.models import (
    Contact,
    DeadLetter,
    EmailAttempt,
    EmailSend,
    Submission,
    SubmissionStatus,
    Suppression,
    SuppressionScheme,
    utcnow,
)

ERASED = "[erased]"
HEADER_BYTES = 64 * 1024  # an .eml's headers are in its first few KB; the PDF attachment is not read


def suppression_keys(settings: Settings) -> list[bytes]:
    """The keys suppression entries are made with: the current signing key first, then previous ones."""
    keys = getattr(settings, "signing_keys", None)  # added with FORM_TOKEN_SECRET rotation
    return list(keys) if keys else [settings.signing_key]


def email_key(key: bytes, email: str) -> str:
    """The keyed, non-reversible stand-in for an address: 64 hex characters of HMAC-SHA256."""
    return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()


def _legacy_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _row(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    values = {}
    for column in obj.__table__.columns:
        if column.key in skip:
            continue
        value = getattr(obj, column.key)
        values[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return values


def export_person(session: Session, email: str) -> dict[str, Any] | None:
    """Everything held about `email` (normalized by the caller), as JSON-ready data; None if nothing."""
    contact = session.scalars(select(Contact).where(Contact.email == email)).first()
    submissions = session.scalars(select(Submission).where(Submission.email == email).order_by(Submission.received_at))
    submissions = list(submissions)
    if contact is None and not submissions:
        return None
    sends = []
    if contact is not None:
        for send in session.scalars(select(EmailSend).where(EmailSend.contact_id == contact.id)):
            attempts = session.scalars(select(EmailAttempt).where(EmailAttempt.send_id == send.id))
            sends.append({**_row(send), "attempts": [_row(a) for a in attempts]})
    return {
        "email": email,
        "contact": _row(contact, skip=("crm_claimed_until",)) if contact else None,
        "submissions": [_row(s) for s in submissions],  # each with its consent record
        "emails": sends,
    }


@dataclass(frozen=True)
class Forgotten:
    found: bool
    submissions: int
    emails: int
    hubspot_id: str | None  # for the HubSpot delete by record id (worker/erasure.py)
    message_ids: list[str] = field(default_factory=list)  # their .eml files leave the outbox
    redacted: int = 0  # other people's rows the address was blanked in
    leased_until: datetime | None = None  # a CRM flush held the contact: HubSpot is checked again after it


def forget(session: Session, email: str, keys: list[bytes], now: datetime | None = None) -> Forgotten:
    """Erase every row about `email` (the caller commits) and leave a keyed suppression entry."""
    now = now or utcnow()
    contact = session.scalars(select(Contact).where(Contact.email == email).with_for_update()).first()
    submission_ids = list(session.scalars(select(Submission.id).where(Submission.email == email)))
    send_ids: list[str] = []
    message_ids: list[str] = []
    hubspot_id = leased_until = None
    if contact is not None:
        hubspot_id = contact.hubspot_id
        if contact.crm_claimed_until is not None and contact.crm_claimed_until > now:
            leased_until = contact.crm_claimed_until
        sends = session.execute(select(EmailSend.id, EmailSend.message_id).where(EmailSend.contact_id == contact.id))
        for send_id, message_id in sends:
            send_ids.append(send_id)
            message_ids.append(message_id)
        session.execute(delete(EmailAttempt).where(EmailAttempt.send_id.in_(send_ids)))
        session.execute(delete(EmailSend).where(EmailSend.contact_id == contact.id))
    refs = [*submission_ids, *send_ids, *([str(contact.id)] if contact else [])]
    session.execute(delete(DeadLetter).where(DeadLetter.ref.in_(refs)))
    # Another person's emails pointing at these submissions keep their row, not the link.
    session.execute(update(EmailSend).where(EmailSend.submission_id.in_(submission_ids)).values(submission_id=None))
    session.execute(delete(Submission).where(Submission.email == email))
    if contact is not None:
        session.delete(contact)
    redacted = _redact_elsewhere(session, email)
    session.execute(
        delete(Suppression).where(
            Suppression.email_hash == _legacy_hash(email), Suppression.scheme == SuppressionScheme.LEGACY
        )
    )
    keyed = email_key(keys[0], email)
    if session.get(Suppression, keyed) is None:
        session.add(Suppression(email_hash=keyed, reason="erasure", created_at=now, scheme=SuppressionScheme.HMAC))
    found = contact is not None or bool(submission_ids)
    return Forgotten(found, len(submission_ids), len(send_ids), hubspot_id, message_ids, redacted, leased_until)


def _needles(email: str) -> list[str]:
    """The address as it appears in text and inside a JSON document (non-ASCII escaped)."""
    plain = email.lower()
    escaped = json.dumps(plain)[1:-1].lower()
    return [plain] if escaped == plain else [plain, escaped]


def _blank(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(ERASED, value)
    if isinstance(value, dict):
        return {key: _blank(item, pattern) for key, item in value.items()}
    if isinstance(value, list):
        return [_blank(item, pattern) for item in value]
    return value


def _redact_elsewhere(session: Session, email: str) -> int:
    """Blank the address inside other people's rows (a friend's address typed into a message, a bot's
    payload, an error text). A scan of those tables: erasure is rare, and retention bounds submissions."""
    pattern = re.compile(re.escape(email), re.IGNORECASE)
    needles = _needles(email)

    def mentions(*columns: Any) -> Any:
        return or_(*(func.lower(column).contains(needle, autoescape=True) for column in columns for needle in needles))

    count = 0
    in_submissions = mentions(cast(Submission.raw, Text), cast(Submission.fields, Text))
    for row in session.scalars(select(Submission).where(in_submissions)):
        row.raw, row.fields = _blank(row.raw, pattern), _blank(row.fields, pattern)
        count += 1
    for contact in session.scalars(select(Contact).where(mentions(Contact.message, Contact.interest))):
        contact.message, contact.interest = _blank(contact.message, pattern), _blank(contact.interest, pattern)
        # HubSpot holds the old text: the next flush writes the blanked one.
        mark_for_sync(contact, utcnow())
        count += 1
    for letter in session.scalars(select(DeadLetter).where(mentions(DeadLetter.error))):
        letter.error = _blank(letter.error, pattern)
        count += 1
    return count


def eml_name(message_id: str) -> str:
    """The outbox file of a Message-ID: the rule of FolderTransport (worker/mail/transport.py)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>")) + ".eml"


def _addressed_to(path: Path, email: str) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(HEADER_BYTES)
    except OSError:  # sent and removed meanwhile
        return False
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    fields = [str(value) for name in ("to", "cc", "bcc") for value in headers.get_all(name, [])]
    return any(address.strip().lower() == email.lower() for _, address in getaddresses(fields))


def erase_outbox(folder: Path, email: str, message_ids: Iterable[str] = ()) -> int:
    """Delete the person's `.eml` files (by the Message-IDs of their email rows, and any other file
    addressed to them, e.g. one whose row went earlier); returns how many were deleted."""
    if not folder.is_dir():
        return 0
    names = {eml_name(message_id) for message_id in message_ids}
    removed = 0
    for path in folder.iterdir():
        if not path.name.endswith((".eml", ".eml.tmp")):
            continue
        if path.name in names or path.name.lstrip(".").removesuffix(".tmp") in names or _addressed_to(path, email):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def suppressed_since(session: Session, emails: Iterable[str], keys: list[bytes]) -> dict[str, datetime]:
    """When each forgotten one of `emails` was forgotten: a submission received before that was in flight
    then, and must not bring them back. Checked under every key, and against legacy unkeyed entries."""
    by_hash: dict[str, str] = {}
    for email in emails:
        for key in keys:
            by_hash[email_key(key, email)] = email
        by_hash[_legacy_hash(email)] = email
    if not by_hash:
        return {}
    entries = session.scalars(select(Suppression).where(Suppression.email_hash.in_(list(by_hash))))
    found: dict[str, datetime] = {}
    for entry in entries:
        email = by_hash[entry.email_hash]
        found[email] = max(found.get(email, entry.created_at), entry.created_at)
    return found


def purge_old_submissions(session: Session, retention_days: float, now: datetime | None = None) -> int:
    """Delete raw submissions older than the retention period (contacts and email records stay)."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    # Pending rows are work still to do, whatever their age.
    old = select(Submission.id).where(Submission.received_at < cutoff, Submission.status != SubmissionStatus.PENDING)
    ids = list(session.scalars(old.limit(10_000)))
    if not ids:
        return 0
    session.execute(update(EmailSend).where(EmailSend.submission_id.in_(ids)).values(submission_id=None))
    session.execute(delete(Submission).where(Submission.id.in_(ids)))
    return len(ids)
