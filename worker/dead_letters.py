"""The dead-letter table: work that failed for good, kept for a human to retry or discard.

Retrying is safe to run twice: one conditional UPDATE moves a letter from `open` to `retried`, and
only the caller that moved it re-queues the work (whose own claim logic then runs it once).

Example:
    >>> with session_scope() as session:
    ...     record(session, "email", send_id, "leadsync.send_email", "SMTP 550: no such user", attempts=1)
    >>> retry(get_sessionmaker(), [letter_id])      # -> the work to publish again
    Requeue(submissions=[], emails=['9c1e...'], crm=False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from leadsync.storage.contacts import sync_pending_values
from leadsync.storage.models import (
    Contact,
    CrmStatus,
    DeadLetter,
    DeadLetterStatus,
    EmailSend,
    EmailStatus,
    Submission,
    SubmissionStatus,
    utcnow,
)


def record(session: Session, kind: str, ref: str, task: str, error: str, attempts: int = 1) -> None:
    """Add a dead letter, or refresh the open one about the same row (no duplicates for one failure)."""
    letter = session.scalars(
        select(DeadLetter).where(DeadLetter.kind == kind, DeadLetter.ref == ref, DeadLetter.status == "open")
    ).first()
    if letter is None:
        session.add(DeadLetter(kind=kind, ref=ref, task=task, error=error[:4000], attempts=attempts))
    else:
        letter.error, letter.attempts = error[:4000], attempts


def open_letters(session: Session, include_resolved: bool = False) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.created_at)
    if not include_resolved:
        query = query.where(DeadLetter.status == DeadLetterStatus.OPEN)
    return list(session.scalars(query))


@dataclass
class Requeue:
    """What a retry put back and must now be published."""

    submissions: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    crm: bool = False
    skipped: list[int] = field(default_factory=list)  # not open (already retried or discarded) or unknown


def retry(session_factory: Callable[[], Session], ids: Iterable[int]) -> Requeue:
    """Put the failed work back in its queue state; each letter is retried at most once."""
    out = Requeue()
    now = utcnow()
    for letter_id in ids:
        with session_factory() as session, session.begin():
            moved = session.execute(
                update(DeadLetter)
                .where(DeadLetter.id == letter_id, DeadLetter.status == DeadLetterStatus.OPEN)
                .values(status=DeadLetterStatus.RETRIED, resolved_at=now)
            ).rowcount
            if moved != 1:
                out.skipped.append(letter_id)
                continue
            letter = session.get_one(DeadLetter, letter_id)
            if letter.kind == "email":
                # A fresh time budget from now; the claim still guarantees one send.
                session.execute(
                    update(EmailSend)
                    .where(EmailSend.id == letter.ref, EmailSend.status == EmailStatus.FAILED)
                    .values(status=EmailStatus.PENDING, next_attempt_at=None, created_at=now, last_error=None)
                )
                out.emails.append(letter.ref)
            elif letter.kind == "submission":
                session.execute(
                    update(Submission)
                    .where(Submission.id == letter.ref, Submission.status == SubmissionStatus.FAILED)
                    .values(status=SubmissionStatus.PENDING, enqueued_at=None)
                )
                out.submissions.append(letter.ref)
            elif letter.kind == "crm":
                session.execute(
                    update(Contact)
                    .where(Contact.id == int(letter.ref), Contact.crm_status == CrmStatus.REJECTED)
                    .values(**sync_pending_values(now), crm_claimed_until=None)
                )
                out.crm = True
    return out


def retry_and_publish(session_factory: Callable[[], Session], ids: Iterable[int]) -> Requeue:
    """`retry`, then publish the work again at once (`leadsync failed retry`); a publish that fails is the
    sweeper's to redo, as the rows say pending."""
    from leadsync.worker import enqueue  # the broker, only for callers that publish

    requeue = retry(session_factory, ids)
    for submission_id in requeue.submissions:
        enqueue.enqueue_submission(submission_id)
    enqueue.enqueue_emails(requeue.emails)
    if requeue.crm:
        enqueue.enqueue_crm_flush()
    return requeue


def discard(session_factory: Callable[[], Session], ids: Iterable[int]) -> list[int]:
    """Close letters without retrying; returns the ids that were open."""
    closed = []
    with session_factory() as session, session.begin():
        for letter_id in ids:
            moved = session.execute(
                update(DeadLetter)
                .where(DeadLetter.id == letter_id, DeadLetter.status == DeadLetterStatus.OPEN)
                .values(status=DeadLetterStatus.DISCARDED, resolved_at=utcnow())
            ).rowcount
            if moved == 1:
                closed.append(letter_id)
    return closed
