"""Sending one queued email exactly once: a state machine in the database.

    pending/retry --claim--> sending --SMTP accepted--> sent
                                     --4xx/connection--> retry (backoff) ... --> failed (past the retry budget)
                                     --5xx-------------> failed
             (a message that cannot be written on the wire, e.g. a non-ASCII mailbox name) ---> failed

The claim is one conditional UPDATE, so a redelivered task or a second worker finds nothing to do.
The one window SMTP cannot close: the server accepted the message and the worker died before
committing `sent`. The row stays `sending`; after EMAIL_CLAIM_LEASE_SECONDS (10 minutes, far longer
than any SMTP conversation) the sweeper hands it out again and
the person may get a second copy (with the same Message-ID, so most mail clients fold them). We keep
that window to the few milliseconds between the server's 250 and our commit.

Example:
    >>> outcome = deliver(session_factory, send_id, transport, settings)
    >>> outcome.status
    'sent'
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from leadsync import logs
from leadsync.config import Settings
from leadsync.storage.models import Contact, EmailAttempt, EmailSend, EmailStatus, utcnow
from leadsync.worker import dead_letters
from leadsync.worker.mail.compose import compose
from leadsync.worker.mail.transport import MailTransport, PermanentMailError, TemporaryMailError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    status: str  # sent | retry | failed | skipped
    retry_in: float | None = None  # seconds, for status == retry
    error: str | None = None


def backoff(attempt: int, base: float = 5.0, cap: float = 900.0) -> float:
    """Exponential backoff with full jitter: 5 s, 10 s, 20 s ... capped, randomized so retries spread."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


def claim(session: Session, send_id: str, now: datetime, lease: timedelta) -> bool:
    """Take the send for this worker; False when it is sent, failed or held by a live claim."""
    result = session.execute(
        update(EmailSend)
        .where(
            EmailSend.id == send_id,
            or_(
                EmailSend.status.in_([EmailStatus.PENDING, EmailStatus.RETRY]),
                (EmailSend.status == EmailStatus.SENDING) & (EmailSend.claimed_at < now - lease),
            ),
        )
        .values(status=EmailStatus.SENDING, claimed_at=now, attempts=EmailSend.attempts + 1)
    )
    return result.rowcount == 1


def deliver(
    session_factory: Callable[[], Session], send_id: str, transport: MailTransport, settings: Settings
) -> Delivery:
    """Claim, send and record one email; every attempt leaves a row in `email_attempts`."""
    now = utcnow()
    with session_factory() as session, session.begin():
        if not claim(session, send_id, now, timedelta(seconds=settings.email_claim_lease_seconds)):
            return Delivery("skipped")
        send = session.get_one(EmailSend, send_id)
        logs.bind(submission_id=send.submission_id)  # the lead's id on this email's lines, even in a batch
        contact = session.get_one(Contact, send.contact_id)
        attempt = EmailAttempt(send_id=send_id, attempt=send.attempts, started_at=now)
        session.add(attempt)
        session.flush()
        attempt_id, attempts, message_id, created_at = attempt.id, send.attempts, send.message_id, send.created_at
        try:
            message: EmailMessage | PermanentMailError = compose(send.kind, contact, message_id, settings)
        except PermanentMailError as error:  # e.g. an address that cannot go on the wire as ASCII
            message = error

    try:
        if isinstance(message, PermanentMailError):
            raise message
        transport.send(message)
    except (TemporaryMailError, PermanentMailError) as error:
        # Temporary failures are retried for a time budget, not a count: an SMTP outage of an hour
        # must not turn into lost packets.
        expired = (utcnow() - created_at).total_seconds() > settings.email_give_up_after_seconds
        permanent = isinstance(error, PermanentMailError) or expired
        delay = None
        if not permanent:
            delay = backoff(attempts, base=settings.email_retry_base_seconds, cap=settings.email_retry_max_seconds)
        _record(session_factory, send_id, attempt_id, error, delay)
        return Delivery(EmailStatus.FAILED if permanent else EmailStatus.RETRY, delay, str(error))
    _record(session_factory, send_id, attempt_id, None, None)
    log.info("email %s sent (attempt %d)", send_id, attempts)
    return Delivery(EmailStatus.SENT)


def _record(
    session_factory: Callable[[], Session],
    send_id: str,
    attempt_id: int,
    error: TemporaryMailError | PermanentMailError | None,
    retry_in: float | None,
) -> None:
    now = utcnow()
    with session_factory() as session, session.begin():
        send = session.get_one(EmailSend, send_id)
        attempt = session.get_one(EmailAttempt, attempt_id)
        attempt.finished_at = now
        if error is None:
            send.status, send.sent_at, send.last_error = EmailStatus.SENT, now, None
            attempt.outcome = "sent"
            return
        attempt.outcome = "permanent" if isinstance(error, PermanentMailError) else "temporary"
        attempt.smtp_code, attempt.error = error.code, str(error)
        send.last_error = str(error)
        if retry_in is None:
            send.status = EmailStatus.FAILED
            dead_letters.record(session, "email", send_id, "leadsync.send_email", str(error), send.attempts)
        else:
            send.status, send.next_attempt_at = EmailStatus.RETRY, now + timedelta(seconds=retry_in)
