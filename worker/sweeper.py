"""The outbox sweeper: finds work the database says is due but the broker may never have seen.

A submission is committed before it is published, so a broker outage, a lost message or a killed
worker leaves a row behind, never a lost lead. The sweeper (every `SWEEP_INTERVAL_SECONDS` from
beat, and once when a worker starts) publishes those rows again; the tasks are idempotent, so a
message that was not lost after all does no harm.

Example:
    >>> due = find_due_work(session, utcnow(), settings)
    >>> due.submissions, due.emails
    (['3f2a...'], [])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.models import EmailSend, EmailStatus, Submission, SubmissionStatus

BATCH = 1000


@dataclass
class DueWork:
    submissions: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)


def find_due_work(session: Session, now: datetime, settings: Settings) -> DueWork:
    """Submissions and emails that are due and not (recently) handed to the broker."""
    grace = now - timedelta(seconds=settings.sweep_grace_seconds)
    lease = timedelta(seconds=settings.email_claim_lease_seconds)
    # After a successful publish, wait this long (SWEEP_REQUEUE_SECONDS) before assuming the message was lost.
    requeue_after = timedelta(seconds=settings.sweep_requeue_seconds)
    submissions = session.scalars(
        select(Submission.id)
        .where(
            Submission.status == SubmissionStatus.PENDING,
            Submission.received_at < grace,
            or_(Submission.enqueued_at.is_(None), Submission.enqueued_at < now - requeue_after),
        )
        .order_by(Submission.received_at)
        .limit(BATCH)
    ).all()
    emails = session.scalars(
        select(EmailSend.id)
        .where(
            or_(
                and_(
                    EmailSend.status.in_([EmailStatus.PENDING, EmailStatus.RETRY]),
                    func.coalesce(EmailSend.next_attempt_at, EmailSend.created_at) < grace,
                ),
                # A claim older than its lease: the worker died mid-send (see mail/sending.py).
                and_(EmailSend.status == EmailStatus.SENDING, EmailSend.claimed_at < now - lease),
            )
        )
        .order_by(EmailSend.created_at)
        .limit(BATCH)
    ).all()
    return DueWork(list(submissions), list(emails))


def mark_published(
    session_factory: Callable[[], Session],
    now: datetime,
    submissions: Iterable[str],
    emails: Iterable[str],
    requeue_after: timedelta,
) -> None:
    """Remember what reached the broker, so the next sweep does not publish it again before `requeue_after`."""
    submissions, emails = list(submissions), list(emails)
    with session_factory() as session, session.begin():
        if submissions:
            session.execute(update(Submission).where(Submission.id.in_(submissions)).values(enqueued_at=now))
        if emails:
            session.execute(
                update(EmailSend)
                .where(EmailSend.id.in_(emails), EmailSend.status != EmailStatus.SENDING)
                .values(next_attempt_at=now + requeue_after)
            )
