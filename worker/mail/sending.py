"""Sending queued emails exactly once: a state machine in the database, worked in batches.

    pending/retry --claim--> sending --SMTP accepted--> sent
                                     --4xx/connection--> retry (backoff) ... --> failed (past the retry budget)
                                     --5xx-------------> failed
             (a message that cannot be written on the wire, e.g. a non-ASCII mailbox name) ---> failed

The claim is one conditional UPDATE over locked rows, so a redelivered task or a second worker finds nothing
to do. The one window SMTP cannot close: the server accepted the message and the worker died before
committing `sent`. The row stays `sending`; after EMAIL_CLAIM_LEASE_SECONDS (10 minutes, far longer than any
SMTP conversation) the sweeper hands it out again and the person may get a second copy (with the same
Message-ID, so most mail clients fold them).

Batches (`deliver_batch`, issue 18): one transaction claims up to RECORD_EVERY emails (their own, then any
other due ones, oldest first, up to `drain`), they go out over the transport's held connection, and one
transaction records their outcomes and claims the next RECORD_EVERY. Per email that was two transactions and
~8 statements (24 emails/s measured); now it is ~6 statements and one commit per 25 emails. The price is the
window above: it spans at most RECORD_EVERY messages (~80 ms at 300 emails/s) instead of one, and a SIGKILL
leaves at most RECORD_EVERY claimed rows to the lease. Each row still moves through the same states one by one.

Example:
    >>> outcome = deliver(session_factory, send_id, transport, settings)
    >>> outcome.status
    'sent'
    >>> report = deliver_batch(session_factory, [send_id, other_id], transport, settings, drain=100)
    >>> {send_id: d.status for send_id, d in report.deliveries.items()}   # plus any due emails it drained
    {'3f2a...': 'sent', '9c1e...': 'skipped'}
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import ColumnElement, func, insert, or_, select, update
from sqlalchemy.orm import Session

from leadsync import logs
from leadsync.backoff import jittered
from leadsync.config import Settings
from leadsync.storage.models import Contact, EmailAttempt, EmailSend, EmailStatus, utcnow
from leadsync.worker import dead_letters
from leadsync.worker.mail.compose import compose
from leadsync.worker.mail.transport import MailError, MailTransport, PermanentMailError, TemporaryMailError

log = logging.getLogger(__name__)

# Outcomes are committed every 25 messages: 4 commits a 100-message batch instead of 100, and a worker killed
# mid-batch leaves at most 25 rows `sending` (accepted ones then get their one second copy after the lease).
RECORD_EVERY = 25


@dataclass(frozen=True)
class Delivery:
    status: str  # sent | retry | failed | skipped
    retry_in: float | None = None  # seconds, for status == retry
    error: str | None = None
    submission_id: str | None = None  # the lead's, for the log lines about this email


@dataclass
class BatchReport:
    """What `deliver_batch` did: a Delivery for each of its own ids and each drained email, and the emails it
    did not claim because building them raised something unexpected (left as they were, for a retry alone)."""

    deliveries: dict[str, Delivery] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)
    dry: bool = False  # the last look for other due emails found fewer than it asked for


@dataclass(frozen=True)
class _Claimed:
    send_id: str
    submission_id: str | None
    attempt_id: int
    attempts: int
    created_at: datetime
    message: EmailMessage | PermanentMailError
    claimed_at: datetime  # our claim's stamp: a renewal compares it, so a claim another batch took is seen


_Outcomes = list[tuple[_Claimed, Delivery, MailError | None]]  # the error for all but a `sent`


def backoff(attempt: int, base: float = 5.0, cap: float = 900.0) -> float:
    """Exponential backoff with full jitter: 5 s, 10 s, 20 s ... capped, randomized so retries spread."""
    return jittered(attempt, base, cap, floor=base / 2)


def _claimable(now: datetime, lease: timedelta) -> ColumnElement[bool]:
    """A named email may be taken: queued, scheduled for a retry, or held by a claim older than the lease."""
    return or_(
        EmailSend.status.in_([EmailStatus.PENDING, EmailStatus.RETRY]),
        (EmailSend.status == EmailStatus.SENDING) & (EmailSend.claimed_at < now - lease),
    )


def _due(now: datetime) -> ColumnElement[bool]:
    """An unnamed email a batch may drain: queued, or a retry whose backoff is over (expired claims are the
    sweeper's, after the lease)."""
    return or_(
        EmailSend.status == EmailStatus.PENDING,
        (EmailSend.status == EmailStatus.RETRY)
        & (func.coalesce(EmailSend.next_attempt_at, EmailSend.created_at) <= now),
    )


def claim(session: Session, send_id: str, now: datetime, lease: timedelta) -> bool:
    """Take the send for this worker; False when it is sent, failed or held by a live claim."""
    result = session.execute(
        update(EmailSend)
        .where(EmailSend.id == send_id, _claimable(now, lease))
        .values(status=EmailStatus.SENDING, claimed_at=now, attempts=EmailSend.attempts + 1)
    )
    return result.rowcount == 1


def _claim_batch(
    session: Session, named: Sequence[str], extra: int, now: datetime, settings: Settings, report: BatchReport
) -> list[_Claimed]:
    """Claim the `named` emails that are claimable and up to `extra` other due ones, with an attempt row each.

    PostgreSQL: the named rows are locked in id order (two batches naming the same rows cannot deadlock),
    the extras with SKIP LOCKED (a batch never waits for another's); each is then re-checked by its WHERE.
    SQLite: `BEGIN IMMEDIATE` (storage/db.py) already serializes writers; FOR UPDATE renders as nothing.
    """
    lease = timedelta(seconds=settings.email_claim_lease_seconds)
    query = select(EmailSend, Contact).join(Contact, Contact.id == EmailSend.contact_id)
    rows = []
    if named:
        mine = query.where(EmailSend.id.in_(named), _claimable(now, lease)).order_by(EmailSend.id)
        rows += session.execute(mine.with_for_update(of=EmailSend)).all()
    if extra > 0:
        others = query.where(_due(now), EmailSend.id.not_in(named)).order_by(EmailSend.created_at).limit(extra)
        found = session.execute(others.with_for_update(of=EmailSend, skip_locked=True)).all()
        report.dry = len(found) < extra  # nothing more is due (or the rest is another batch's)
        rows += found
    built: list[tuple[EmailSend, EmailMessage | PermanentMailError]] = []
    for send, contact in rows:
        try:
            built.append((send, compose(send.kind, contact, send.message_id, settings)))
        except PermanentMailError as error:  # e.g. an address that cannot go on the wire as ASCII
            built.append((send, error))
        except Exception as error:  # a broken template, a missing packet PDF: not claimed, retried alone
            report.errors[send.id] = error
    if not built:
        return []
    ids = [send.id for send, _ in built]
    session.execute(
        update(EmailSend)
        .where(EmailSend.id.in_(ids))
        .values(status=EmailStatus.SENDING, claimed_at=now, attempts=EmailSend.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    attempt_rows = [{"send_id": send.id, "attempt": send.attempts + 1, "started_at": now} for send, _ in built]
    inserted = session.execute(insert(EmailAttempt).returning(EmailAttempt.id, EmailAttempt.send_id), attempt_rows)
    attempt_ids = {send_id: attempt_id for attempt_id, send_id in inserted}
    return [
        _Claimed(send.id, send.submission_id, attempt_ids[send.id], send.attempts + 1, send.created_at, message, now)
        for send, message in built
    ]


def deliver_batch(
    session_factory: Callable[[], Session],
    send_ids: Sequence[str],
    transport: MailTransport,
    settings: Settings,
    drain: int = 0,
) -> BatchReport:
    """Claim, send and record `send_ids` and, up to `drain` emails in all, any other due emails.

    Call it inside `transport.batch()` for one SMTP connection. Every attempt leaves a row in `email_attempts`.
    """
    named = list(dict.fromkeys(send_ids))
    limit = max(len(named), drain)
    report = BatchReport()
    claimed_total, position = 0, 0

    def next_chunk(session: Session) -> list[_Claimed]:
        """The next claimed emails: named ones first (skipping past any already sent), then other due ones."""
        nonlocal claimed_total, position
        while True:
            chunk_named = named[position : position + RECORD_EVERY]
            position += len(chunk_named)
            room = RECORD_EVERY - len(chunk_named) if position >= len(named) else 0
            extra = min(room, limit - claimed_total - len(chunk_named))
            chunk = _claim_batch(session, chunk_named, extra, utcnow(), settings, report)
            claimed_total += len(chunk)
            for send_id in chunk_named:
                report.deliveries.setdefault(send_id, Delivery("skipped"))
            if chunk or position >= len(named):
                return chunk

    with session_factory() as session, session.begin():
        chunk = next_chunk(session)
    while chunk:
        outcomes = _send_chunk(chunk, transport, settings, report, lambda rest: _renew(session_factory, rest, settings))
        with session_factory() as session, session.begin():
            _record(session, outcomes)
            more = position < len(named) or (claimed_total < limit and not report.dry)
            chunk = next_chunk(session) if more else []
        for claimed, delivery, _ in outcomes:
            report.deliveries[claimed.send_id] = delivery
    for send_id in report.errors:
        report.deliveries.pop(send_id, None)
    return report


def deliver(
    session_factory: Callable[[], Session], send_id: str, transport: MailTransport, settings: Settings
) -> Delivery:
    """Claim, send and record one email (a batch of one: two transactions)."""
    report = deliver_batch(session_factory, [send_id], transport, settings)
    if send_id in report.errors:
        raise report.errors[send_id]
    return report.deliveries[send_id]


def _renew(session_factory: Callable[[], Session], rest: list[_Claimed], settings: Settings) -> list[_Claimed]:
    """The claims of `rest` (claimed, not sent yet) that are still ours, re-stamped once past half the lease.

    A batch waits behind a slow server for every message before it; if that outlasts the lease, the rows still
    waiting may have been claimed by another batch (or swept): sending them too would send them twice. The
    renewal is a compare-and-set on our own claim stamp, so a row taken meanwhile is dropped from this batch.
    """
    lease = timedelta(seconds=settings.email_claim_lease_seconds)
    now = utcnow()
    due = [c for c in rest if now - c.claimed_at >= lease / 2]
    if not due:
        return rest
    with session_factory() as session, session.begin():
        kept = set(
            session.scalars(
                update(EmailSend)
                .where(
                    EmailSend.id.in_([c.send_id for c in due]),
                    EmailSend.status == EmailStatus.SENDING,
                    EmailSend.claimed_at.in_({c.claimed_at for c in due}),
                )
                .values(claimed_at=now)
                .returning(EmailSend.id)
                .execution_options(synchronize_session=False)
            )
        )
    lost = [c.send_id for c in due if c.send_id not in kept]
    if lost:
        log.warning("%d claimed emails outlived their lease in a slow batch; another batch has them", len(lost))
    renewed = {c.send_id for c in due}
    return [
        c if c.send_id not in renewed else dataclasses.replace(c, claimed_at=now) for c in rest if c.send_id not in lost
    ]


def _send_chunk(
    chunk: list[_Claimed],
    transport: MailTransport,
    settings: Settings,
    report: BatchReport,
    renew: Callable[[list[_Claimed]], list[_Claimed]] | None = None,
) -> _Outcomes:
    """Send each claimed email still ours (`renew`); an unexpected error still returns what was sent before it."""
    outcomes: _Outcomes = []
    index = 0
    while index < len(chunk):
        if renew is not None:
            chunk = chunk[:index] + renew(chunk[index:])
            if index >= len(chunk):
                break
        claimed = chunk[index]
        index += 1
        logs.bind(submission_id=claimed.submission_id, email_send_id=claimed.send_id)
        try:
            if isinstance(claimed.message, PermanentMailError):
                raise claimed.message
            transport.send(claimed.message)
        except (TemporaryMailError, PermanentMailError) as error:
            outcomes.append((claimed, _failure(claimed, error, settings), error))
            continue
        except Exception as error:
            # Its outcome is unknown: it stays `sending` until the lease, as a worker dying here would leave it.
            # Those not tried yet are retried at once; those sent are recorded, so none goes twice.
            log.exception("email %s: unexpected error while sending", claimed.send_id)
            report.errors[claimed.send_id] = error
            stopped = TemporaryMailError("not sent: the batch stopped at an unexpected error")
            outcomes += [
                (rest, Delivery(EmailStatus.RETRY, 0.0, str(stopped), rest.submission_id), stopped)
                for rest in chunk[index:]
            ]
            break
        outcomes.append((claimed, Delivery(EmailStatus.SENT, submission_id=claimed.submission_id), None))
    logs.unbind("submission_id", "email_send_id")
    return outcomes


def _failure(claimed: _Claimed, error: MailError, settings: Settings) -> Delivery:
    # Temporary failures are retried for a time budget, not a count: an SMTP outage of an hour
    # must not turn into lost packets.
    expired = (utcnow() - claimed.created_at).total_seconds() > settings.email_give_up_after_seconds
    if isinstance(error, PermanentMailError) or expired:
        return Delivery(EmailStatus.FAILED, None, str(error), claimed.submission_id)
    delay = backoff(claimed.attempts, base=settings.email_retry_base_seconds, cap=settings.email_retry_max_seconds)
    return Delivery(EmailStatus.RETRY, delay, str(error), claimed.submission_id)


def _record(session: Session, outcomes: _Outcomes) -> None:
    """All of a chunk's outcomes in the caller's transaction: the sent ones in two statements."""
    now = utcnow()
    sent = [claimed for claimed, _, error in outcomes if error is None]
    if sent:
        session.execute(
            update(EmailSend)
            .where(EmailSend.id.in_([claimed.send_id for claimed in sent]))
            .values(status=EmailStatus.SENT, sent_at=now, last_error=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(EmailAttempt)
            .where(EmailAttempt.id.in_([claimed.attempt_id for claimed in sent]))
            .values(finished_at=now, outcome="sent")
            .execution_options(synchronize_session=False)
        )
    for claimed in sent:
        logs.bind(submission_id=claimed.submission_id)  # the lead's id on this email's line, even in a batch
        log.info("email %s sent (attempt %d)", claimed.send_id, claimed.attempts)
    logs.unbind("submission_id")
    for claimed, delivery, error in outcomes:
        if error is not None:
            _record_failure(session, claimed, delivery, error, now)


def _record_failure(session: Session, claimed: _Claimed, delivery: Delivery, error: MailError, now: datetime) -> None:
    send = session.get_one(EmailSend, claimed.send_id)
    attempt = session.get_one(EmailAttempt, claimed.attempt_id)
    attempt.finished_at = now
    attempt.outcome = "permanent" if isinstance(error, PermanentMailError) else "temporary"
    attempt.smtp_code, attempt.error = error.code, str(error)
    send.last_error = str(error)
    if delivery.retry_in is None:
        send.status = EmailStatus.FAILED
        dead_letters.record(session, "email", send.id, "leadsync.send_email", str(error), send.attempts)
    else:
        send.status, send.next_attempt_at = EmailStatus.RETRY, now + timedelta(seconds=delivery.retry_in)
