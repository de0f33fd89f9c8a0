"""A person's rights over their data: export everything held (`leadsync export-person`), erase it
(`leadsync forget`), and retention (raw submissions older than RAW_RETENTION_DAYS are purged by beat).

Erasure keeps one thing: a hash of the address in `suppressions`, so a submission that was already in
flight when the person was forgotten cannot bring them back.

Example:
    >>> with session_scope() as session:
    ...     report = forget(session, "ann@example.org")
    >>> report.submissions, report.hubspot_id
    (3, '151')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from leadsync.signing import email_hash
from leadsync.storage.models import (
    Contact,
    DeadLetter,
    EmailAttempt,
    EmailSend,
    Submission,
    SubmissionStatus,
    Suppression,
    utcnow,
)


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
    hubspot_id: str | None  # for the HubSpot GDPR delete that follows the commit


def forget(session: Session, email: str, now: datetime | None = None) -> Forgotten:
    """Erase every row about `email` in one transaction and leave a hashed suppression entry."""
    now = now or utcnow()
    contact = session.scalars(select(Contact).where(Contact.email == email).with_for_update()).first()
    submission_ids = list(session.scalars(select(Submission.id).where(Submission.email == email)))
    send_ids: list[str] = []
    hubspot_id = None
    if contact is not None:
        hubspot_id = contact.hubspot_id
        send_ids = list(session.scalars(select(EmailSend.id).where(EmailSend.contact_id == contact.id)))
        session.execute(delete(EmailAttempt).where(EmailAttempt.send_id.in_(send_ids)))
        session.execute(delete(EmailSend).where(EmailSend.contact_id == contact.id))
    refs = [*submission_ids, *send_ids, *([str(contact.id)] if contact else [])]
    session.execute(delete(DeadLetter).where(DeadLetter.ref.in_(refs)))
    session.execute(delete(Submission).where(Submission.email == email))
    if contact is not None:
        session.delete(contact)
    hashed = email_hash(email)
    if session.get(Suppression, hashed) is None:
        session.add(Suppression(email_hash=hashed, reason="erasure", created_at=now))
    return Forgotten(contact is not None or bool(submission_ids), len(submission_ids), len(send_ids), hubspot_id)


def suppressed_since(session: Session, emails: Iterable[str]) -> dict[str, datetime]:
    """When each forgotten one of `emails` was forgotten: a submission received before that was in flight
    then, and must not bring them back."""
    by_hash = {email_hash(email): email for email in emails}
    if not by_hash:
        return {}
    entries = session.scalars(select(Suppression).where(Suppression.email_hash.in_(list(by_hash))))
    return {by_hash[entry.email_hash]: entry.created_at for entry in entries}


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
