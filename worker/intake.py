"""Turning stored submissions into contacts and the actions they call for, in one transaction.

Example:
    >>> with session_scope() as session:
    ...     result = process_submission(session, submission_id, settings)
    >>> result.email_send_ids      # packet emails to enqueue after the commit
    ['9c1e...']
    >>> with session_scope() as session:   # what the worker does with a group commit's message
    ...     results = process_submissions(session, submission_ids, settings)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.kinds import EmailKind, FormKind, NewsletterStatus
from leadsync.mailbox import mailbox_key
from leadsync.phones import to_e164
from leadsync.storage.contacts import lock_or_create_contacts, mark_for_sync
from leadsync.storage.models import (
    Contact,
    EmailSend,
    EmailStatus,
    Submission,
    SubmissionStatus,
    new_id,
    utcnow,
)
from leadsync.worker.email_decisions import packet_due, subscribes
from leadsync.worker.merge import FORM_STAGE, later_stage, merge_fields, submission_values
from leadsync.worker.privacy import suppressed_since, suppression_keys


@dataclass
class IntakeResult:
    skipped: bool = False  # already processed (a redelivered task) or unknown
    contact_id: int | None = None
    contact_created: bool = False
    crm_changed: bool = False
    email_send_ids: list[str] = field(default_factory=list)


def process_submission(
    session: Session, submission_id: str, settings: Settings, now: datetime | None = None
) -> IntakeResult:
    """Dedupe, merge and decide one submission; the caller commits. Safe to run twice: the second run skips."""
    return process_submissions(session, [submission_id], settings, now)[0]


def process_submissions(
    session: Session, submission_ids: Sequence[str], settings: Settings, now: datetime | None = None
) -> list[IntakeResult]:
    """The same, for many submissions in one transaction: one result each, in the order of the ids.

    Each is decided exactly as it would be alone, oldest first, but the rows it needs are read a
    batch at a time (a handful of queries for the whole batch instead of ten a submission).
    """
    now = now or utcnow()
    results = {submission_id: IntakeResult(skipped=True) for submission_id in submission_ids}
    submissions = session.scalars(
        select(Submission)
        .where(Submission.id.in_(list(results)), Submission.status == SubmissionStatus.PENDING)
        .order_by(Submission.received_at, Submission.id)  # one lock order for every worker: no deadlock
        .with_for_update()
    ).all()
    emails = {submission.email for submission in submissions}
    forgotten = suppressed_since(session, emails, suppression_keys(settings))
    live = []
    for submission in submissions:
        if submission.email in forgotten and submission.received_at <= forgotten[submission.email]:
            session.delete(submission)  # in flight when the person was forgotten: it must not bring them back
        else:
            live.append(submission)

    contacts, created = lock_or_create_contacts(session, {submission.email for submission in live}, now)
    history = EmailHistory.load(session, list(contacts.values()), now, settings.signing_key)
    for submission in live:
        contact = contacts[submission.email]
        first = submission.email in created
        created.discard(submission.email)  # a second submission of a new person merges into it
        results[submission.id] = _apply(session, submission, contact, first, history, settings, now)
    return [results[submission_id] for submission_id in submission_ids]


def _apply(
    session: Session,
    submission: Submission,
    contact: Contact,
    created: bool,
    history: EmailHistory,
    settings: Settings,
    now: datetime,
) -> IntakeResult:
    _phone_to_e164(submission, settings.phone_default_region)
    crm_changed = _merge_into(contact, submission) or created
    result = IntakeResult(contact_id=contact.id, contact_created=created)

    if submission.form == FormKind.INFO_PACKET:
        contact.packet_requested_at = submission.received_at
        crm_changed = True
        window = timedelta(days=settings.packet_resend_window_days)
        send = _queue_email(session, EmailKind.INFO_PACKET, contact, submission, now, window, history, settings)
        if send is not None:
            result.email_send_ids.append(send.id)

    if subscribes(submission.form, submission.fields) and contact.newsletter_status != NewsletterStatus.SUBSCRIBED:
        # Double opt-in: pending until the person confirms. Repeat sign-ups (or a bot list-bombing a
        # stranger's address) resend the confirmation at most once per window.
        if contact.newsletter_status != NewsletterStatus.PENDING:
            contact.newsletter_status, crm_changed = NewsletterStatus.PENDING, True
        window = timedelta(hours=settings.optin_resend_window_hours)
        send = _queue_email(session, EmailKind.NEWSLETTER_CONFIRM, contact, submission, now, window, history, settings)
        if send is not None:
            result.email_send_ids.append(send.id)

    if crm_changed:
        mark_for_sync(contact, now)
    result.crm_changed = crm_changed

    contact.last_seen_at = max(contact.last_seen_at, submission.received_at)
    contact.submissions_count += 1
    submission.status = SubmissionStatus.PROCESSED
    submission.processed_at = now
    submission.contact_id = contact.id
    return result


def _phone_to_e164(submission: Submission, region: str) -> None:
    """The form stored the number as typed (forms/schemas.py); from here on (the contact, the note sales
    read, HubSpot's form entry) it is E.164 when the numbering plan knows it (leadsync/phones.py)."""
    typed = (submission.fields or {}).get("phone")
    if isinstance(typed, str) and typed and (e164 := to_e164(typed, region)) != typed:
        submission.fields = {**submission.fields, "phone": e164}


def _merge_into(contact: Contact, submission: Submission) -> bool:
    incoming = submission_values(submission.form, submission.fields, submission.page_url, submission.utm)
    current = {name: getattr(contact, name) for name in incoming}
    merge = merge_fields(current, contact.field_times or {}, incoming, submission.received_at)
    for name, value in merge.changes.items():
        setattr(contact, name, value)
    contact.field_times = merge.times

    changed = bool(merge.changes)
    stage = later_stage(contact.lifecycle_stage, FORM_STAGE.get(submission.form, "subscriber"))
    if stage != contact.lifecycle_stage:
        contact.lifecycle_stage, changed = stage, True
    return changed


def _queue_email(
    session: Session,
    kind: str,
    contact: Contact,
    submission: Submission,
    now: datetime,
    window: timedelta,
    history: EmailHistory,
    settings: Settings,
) -> EmailSend | None:
    """Queue an email of `kind` unless one was queued or sent within `window`, or the daily cap is reached.

    The contact row is locked by the caller, so two workers cannot both find "none yet".
    """
    if not packet_due(history.last(contact.id, kind), now, window):
        return None
    # EMAIL_DAILY_CAP_PER_RECIPIENT: the per-kind windows each allow one email, but kinds add up, and a
    # window set to 0 allows any number; whatever gets through the spam rules, no mailbox gets more a day,
    # however the address is spelled (victim+1@, Victim@, v.ictim@gmail: leadsync/mailbox.py).
    if history.today(contact.id) >= settings.email_daily_cap_per_recipient:
        return None
    send_id = new_id()
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "leadsync.local"
    send = EmailSend(
        id=send_id,
        kind=kind,
        contact_id=contact.id,
        submission_id=submission.id,
        message_id=f"<{send_id}.{'packet' if kind == EmailKind.INFO_PACKET else 'confirm'}@{domain}>",
        mailbox=history.mailbox_of(contact.id),
        status=EmailStatus.PENDING,
        created_at=now,
    )
    session.add(send)
    history.record(contact.id, kind, now)
    return send


ADVISORY_LOCKS = (
    "SELECT count(pg_advisory_xact_lock(lock)) FROM (SELECT unnest(CAST(:locks AS bigint[])) AS lock ORDER BY lock) s"
)


@dataclass
class EmailHistory:
    """The emails (not failed) already queued or sent to the batch's contacts: the last of each kind per
    contact, and how many in the last 24 hours per canonical mailbox (every spelling of one inbox, other
    contacts included). Read in two queries, then kept up to date as the batch queues more."""

    last_by_kind: dict[tuple[int, str], datetime] = field(default_factory=dict)
    last_day: dict[str, int] = field(default_factory=dict)  # mailbox key -> emails in the last 24 h
    mailboxes: dict[int, str] = field(default_factory=dict)  # contact id -> mailbox key

    @classmethod
    def load(cls, session: Session, contacts: Sequence[Contact], now: datetime, key: bytes) -> EmailHistory:
        if not contacts:
            return cls()
        mailboxes = {contact.id: mailbox_key(contact.email, key) for contact in contacts}
        keys = sorted(set(mailboxes.values()))
        if session.get_bind().dialect.name == "postgresql":
            # Two workers with victim+1@ and victim+2@ in their batches hold different contact rows: a lock
            # per mailbox (sorted, taken last: no deadlock) makes the second count after the first commits.
            # SQLite needs none: the batch has written already, and SQLite has one writer at a time.
            # One statement for the whole batch (up to INTAKE_BATCH_MAX locks, in ascending order).
            locks = sorted({int(mailbox[:15], 16) for mailbox in keys})  # 60 bits: fits PostgreSQL's bigint
            session.execute(text(ADVISORY_LOCKS), {"locks": locks})
        ids = list(mailboxes)
        not_failed = EmailSend.status != EmailStatus.FAILED
        last = session.execute(
            select(EmailSend.contact_id, EmailSend.kind, func.max(EmailSend.created_at))
            .where(EmailSend.contact_id.in_(ids), not_failed)
            .group_by(EmailSend.contact_id, EmailSend.kind)
        )
        # Rows from before the mailbox column (NULL) still count for their own contact.
        day = session.execute(
            select(EmailSend.mailbox, EmailSend.contact_id, func.count())
            .where(
                or_(EmailSend.mailbox.in_(keys), EmailSend.contact_id.in_(ids)),
                not_failed,
                EmailSend.created_at > now - timedelta(days=1),
            )
            .group_by(EmailSend.mailbox, EmailSend.contact_id)
        )
        last_day: dict[str, int] = {}
        for mailbox, contact_id, count in day:
            if owner := mailbox or mailboxes.get(contact_id):
                last_day[owner] = last_day.get(owner, 0) + count
        return cls({(cid, kind): at for cid, kind, at in last}, last_day, mailboxes)

    def last(self, contact_id: int, kind: str) -> datetime | None:
        return self.last_by_kind.get((contact_id, kind))

    def mailbox_of(self, contact_id: int) -> str | None:
        return self.mailboxes.get(contact_id)

    def today(self, contact_id: int) -> int:
        return self.last_day.get(self.mailboxes.get(contact_id, ""), 0)

    def record(self, contact_id: int, kind: str, at: datetime) -> None:
        self.last_by_kind[(contact_id, kind)] = at
        mailbox = self.mailboxes.get(contact_id, "")
        self.last_day[mailbox] = self.last_day.get(mailbox, 0) + 1
