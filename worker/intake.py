"""Turning one stored submission into a contact and the actions it calls for, in one transaction.

Example:
    >>> with session_scope() as session:
    ...     result = process_submission(session, submission_id, settings)
    >>> result.email_send_ids      # packet emails to enqueue after the commit
    ['9c1e...']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.contacts import lock_or_create_contact
from leadsync.storage.models import (
    Contact,
    CrmStatus,
    EmailSend,
    EmailStatus,
    Submission,
    SubmissionStatus,
    new_id,
    utcnow,
)
from leadsync.worker.merge import (
    FORM_STAGE,
    later_stage,
    merge_fields,
    packet_due,
    submission_values,
    subscribes,
)
from leadsync.worker.privacy import suppressed_before

PACKET = "info_packet"
CONFIRM = "newsletter_confirm"


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
    """Dedupe, merge and decide; the caller commits. Safe to run twice: the second run skips."""
    now = now or utcnow()
    submission = session.scalars(select(Submission).where(Submission.id == submission_id).with_for_update()).first()
    if submission is None or submission.status != SubmissionStatus.PENDING:
        return IntakeResult(skipped=True)
    if suppressed_before(session, submission.email, submission.received_at):
        session.delete(submission)  # in flight when the person was forgotten: it must not bring them back
        return IntakeResult(skipped=True)

    contact, created = lock_or_create_contact(session, submission.email, now)
    crm_changed = _merge_into(contact, submission) or created
    result = IntakeResult(contact_id=contact.id, contact_created=created)

    if submission.form == PACKET:
        contact.packet_requested_at = submission.received_at
        crm_changed = True
        window = timedelta(days=settings.packet_resend_window_days)
        send = _queue_email(session, PACKET, contact, submission, now, window, settings)
        if send is not None:
            result.email_send_ids.append(send.id)

    if subscribes(submission.form, submission.fields) and contact.newsletter_status != "subscribed":
        # Double opt-in: pending until the person confirms. Repeat sign-ups (or a bot list-bombing a
        # stranger's address) resend the confirmation at most once per window.
        if contact.newsletter_status != "pending":
            contact.newsletter_status, crm_changed = "pending", True
        window = timedelta(hours=settings.optin_resend_window_hours)
        send = _queue_email(session, CONFIRM, contact, submission, now, window, settings)
        if send is not None:
            result.email_send_ids.append(send.id)

    if crm_changed:
        contact.crm_version += 1
        contact.crm_status = CrmStatus.PENDING
        contact.crm_changed_at = now
    result.crm_changed = crm_changed

    contact.last_seen_at = max(contact.last_seen_at, submission.received_at)
    contact.submissions_count += 1
    submission.status = SubmissionStatus.PROCESSED
    submission.processed_at = now
    submission.contact_id = contact.id
    return result


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
    settings: Settings,
) -> EmailSend | None:
    """Queue an email of `kind` unless one was queued or sent within `window`.

    The contact row is locked by the caller, so two workers cannot both find "none yet".
    """
    last = session.scalar(
        select(func.max(EmailSend.created_at)).where(
            EmailSend.contact_id == contact.id,
            EmailSend.kind == kind,
            EmailSend.status != EmailStatus.FAILED,
        )
    )
    if not packet_due(last, now, window):
        return None
    if _daily_cap_reached(session, contact, now, settings):
        return None
    send_id = new_id()
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "leadsync.local"
    send = EmailSend(
        id=send_id,
        kind=kind,
        contact_id=contact.id,
        submission_id=submission.id,
        message_id=f"<{send_id}.{'packet' if kind == PACKET else 'confirm'}@{domain}>",
        status=EmailStatus.PENDING,
        created_at=now,
    )
    session.add(send)
    return send


def _daily_cap_reached(session: Session, contact: Contact, now: datetime, settings: Settings) -> bool:
    """EMAIL_DAILY_CAP_PER_RECIPIENT emails of any kind already went to this address in the last 24 hours.

    Why: the per-kind windows each allow one email, but kinds add up, and a window set to 0 allows any number;
    whatever gets through the forms' spam rules, nobody receives more than the cap from us in a day.
    """
    sent = session.scalar(
        select(func.count()).where(
            EmailSend.contact_id == contact.id,
            EmailSend.created_at > now - timedelta(days=1),
            EmailSend.status != EmailStatus.FAILED,
        )
    )
    return (sent or 0) >= settings.email_daily_cap_per_recipient
