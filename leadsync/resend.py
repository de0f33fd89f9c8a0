"""`leadsync packet resend EMAIL --reason TEXT`: the packet again, for "it went to spam", within the daily cap.

The packet's own window (PACKET_RESEND_WINDOW_DAYS) is what staff override here; the per-mailbox daily cap
(EMAIL_DAILY_CAP_PER_RECIPIENT) is not: it protects the inbox and the sender's reputation whoever asks.
The send is a normal `email_sends` row (so the worker sends it exactly like the first, and the sweeper picks
it up if the broker is down) carrying the reason, shown by `leadsync contacts show`.

Example:
    >>> with session_scope() as session:
    ...     outcome = resend_packet(session, "ann@example.org", "went to spam", settings)
    >>> outcome.send_id is not None, outcome.refused
    (True, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.kinds import EmailKind
from leadsync.storage.models import Contact, EmailSend, EmailStatus, new_id, utcnow
from leadsync.worker.intake import EmailHistory

REASON_MAX = 500


@dataclass(frozen=True)
class ResendOutcome:
    send_id: str | None
    refused: str | None  # why nothing was queued


def resend_packet(
    session: Session, email: str, reason: str, settings: Settings, now: datetime | None = None
) -> ResendOutcome:
    """Queue the packet email again for this contact (the caller commits, then enqueues `send_id`)."""
    now = now or utcnow()
    reason = " ".join(reason.split())[:REASON_MAX]
    if not reason:
        return ResendOutcome(None, "give a reason (--reason), e.g. 'went to spam'")
    # Locked like the intake locks it: a request arriving now cannot both count "below the cap".
    contact = session.scalars(select(Contact).where(Contact.email == email).with_for_update()).one_or_none()
    if contact is None:
        return ResendOutcome(None, f"no contact {email}")
    if contact.packet_requested_at is None:
        return ResendOutcome(None, f"{email} never asked for the information packet")
    history = EmailHistory.load(session, [contact], now, settings.signing_key)
    if history.today(contact.id) >= settings.email_daily_cap_per_recipient:
        cap = settings.email_daily_cap_per_recipient
        return ResendOutcome(None, f"daily cap reached: {cap} emails to this mailbox in 24 hours (try tomorrow)")
    send_id = new_id()
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "leadsync.local"
    session.add(
        EmailSend(
            id=send_id,
            kind=EmailKind.INFO_PACKET,
            contact_id=contact.id,
            submission_id=None,
            message_id=f"<{send_id}.packet@{domain}>",
            mailbox=history.mailbox_of(contact.id),
            status=EmailStatus.PENDING,
            created_at=now,
            reason=f"resend: {reason}",
        )
    )
    return ResendOutcome(send_id, None)
