"""Tables. Every side effect has a row saying whether it happened, so retries and second workers can check.

- `submissions`: every form post as received (the outbox: `status='pending'` until the worker took it).
- `contacts`: one row per person, unique by normalized email; CRM sync state lives on the row.
- `email_sends`: one row per email we decided to send (pending -> sending -> sent | failed).
- `email_attempts`: every SMTP attempt and its outcome.
- `dead_letters`: work that failed for good, for `leadsync failed list|retry|discard`.
- `suppressions`: forgotten people, as a keyed hash of the address only.
- `erasures`: HubSpot deletes still owed for forgotten people (retried until HubSpot confirms).
- `spam_counts`: spam posts counted per day, form and reason (only a small sample is kept as submissions).
- `crm_activities`: what a submission wrote on the contact's HubSpot timeline (note, task, form submission).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from leadsync.kinds import NewsletterStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class SubmissionStatus:
    PENDING = "pending"  # stored, not yet processed by the worker
    PROCESSED = "processed"
    SPAM = "spam"  # a sample of the day's spam (storage/submissions.py); never processed
    FAILED = "failed"  # processing raised an unexpected error; see dead_letters


class Submission(Base):
    __tablename__ = "submissions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    form: Mapped[str] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(320))  # normalized
    fields: Mapped[dict[str, Any]]  # validated, cleaned values
    raw: Mapped[dict[str, Any]]  # the payload as received
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    page_url: Mapped[str | None] = mapped_column(String(2048))
    utm: Mapped[dict[str, Any]]
    consent: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=SubmissionStatus.PENDING)
    spam_reason: Mapped[str | None] = mapped_column(String(32))  # honeypot, token_too_fast, ip_rate, ...
    enqueued_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))

    __table_args__ = (
        Index("ix_submissions_status_received", "status", "received_at"),
        Index("ix_submissions_contact", "contact_id"),
    )


class CrmStatus:
    PENDING = "pending"  # changed since the last successful sync
    SYNCED = "synced"
    REJECTED = "rejected"  # HubSpot refused the data; not retried until the contact changes


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(64))
    interest: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    hutk: Mapped[str | None] = mapped_column(String(128))
    page_url: Mapped[str | None] = mapped_column(String(2048))
    utm_source: Mapped[str | None] = mapped_column(String(255))
    utm_medium: Mapped[str | None] = mapped_column(String(255))
    utm_campaign: Mapped[str | None] = mapped_column(String(255))
    utm_term: Mapped[str | None] = mapped_column(String(255))
    utm_content: Mapped[str | None] = mapped_column(String(255))
    field_times: Mapped[dict[str, Any]]  # field -> ISO time of the submission that set it (newest wins)
    lifecycle_stage: Mapped[str] = mapped_column(String(32))
    newsletter_status: Mapped[str] = mapped_column(String(16), default=NewsletterStatus.NONE)  # see NewsletterStatus
    newsletter_confirmed_at: Mapped[datetime | None]  # the double opt-in click
    newsletter_unsubscribed_at: Mapped[datetime | None]
    packet_requested_at: Mapped[datetime | None]
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    submissions_count: Mapped[int] = mapped_column(default=0)

    crm_status: Mapped[str] = mapped_column(String(16), default=CrmStatus.PENDING)
    crm_version: Mapped[int] = mapped_column(default=1)  # bumped on every change that HubSpot should see
    crm_synced_version: Mapped[int] = mapped_column(default=0)
    crm_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    crm_claimed_until: Mapped[datetime | None]  # a flusher's lease on the row
    crm_synced_at: Mapped[datetime | None]
    crm_attempts: Mapped[int] = mapped_column(default=0)
    crm_error: Mapped[str | None] = mapped_column(Text)
    hubspot_id: Mapped[str | None] = mapped_column(String(64))
    hubspot_stage: Mapped[str | None] = mapped_column(String(32))  # the lifecycle stage last written to HubSpot
    # the newsletter status last pushed to HubSpot's communication preferences (HUBSPOT_SUBSCRIPTION_ID)
    hubspot_newsletter_status: Mapped[str | None] = mapped_column(String(16))
    # HUBSPOT_OWNER_IDS: the owner leadsync chose by round robin (sent once, only to a record without one)
    owner_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("ix_contacts_crm_pending", "crm_status", "crm_changed_at"),)


class EmailStatus:
    PENDING = "pending"
    SENDING = "sending"  # claimed by a worker; the SMTP conversation may be under way
    RETRY = "retry"  # a temporary failure; a retry is scheduled
    SENT = "sent"
    FAILED = "failed"  # permanent failure or attempts exhausted


class EmailSend(Base):
    __tablename__ = "email_sends"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    submission_id: Mapped[str | None] = mapped_column(ForeignKey("submissions.id"))
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    # The canonical mailbox, keyed (leadsync/mailbox.py `mailbox_key`): the daily cap counts every spelling.
    mailbox: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=EmailStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]  # when a scheduled retry is due; the sweeper waits for it
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)  # `leadsync packet resend --reason`: why staff sent it again

    __table_args__ = (
        Index("ix_email_sends_contact_kind", "contact_id", "kind", "created_at"),
        Index("ix_email_sends_status", "status", "created_at"),
        Index("ix_email_sends_submission", "submission_id"),  # deleting a submission checks this foreign key
        Index("ix_email_sends_mailbox", "mailbox", "created_at"),
    )


class EmailAttempt(Base):
    __tablename__ = "email_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    send_id: Mapped[str] = mapped_column(ForeignKey("email_sends.id"), index=True)
    attempt: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16), default="started")  # sent | temporary | permanent
    smtp_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)


class ServiceState(Base):
    """Small named facts the worker records for operations (e.g. HubSpot refusing our token)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeadLetterStatus:
    OPEN = "open"  # waiting for a human: `leadsync failed list`
    RETRIED = "retried"
    DISCARDED = "discarded"


class DeadLetter(Base):
    """Work that failed for good (a 5xx from SMTP, retries exhausted, HubSpot refusing a contact, a bug).

    `kind` and `ref` name the row it is about: an email send, a submission or a contact.
    """

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # email | submission | crm
    ref: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16), default=DeadLetterStatus.OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_dead_letters_status", "status", "created_at"),
        Index("ix_dead_letters_ref", "kind", "ref"),
    )


class SuppressionScheme:
    HMAC = "hmac-sha256"  # HMAC-SHA256 of the address keyed by the signing key: useless without the secret
    LEGACY = "sha256"  # unkeyed, written before 0008: anyone could test an address against it (see privacy.py)


class Suppression(Base):
    """A forgotten person: only a keyed hash of the address, so old queued work cannot bring them back."""

    __tablename__ = "suppressions"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))  # erasure
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheme: Mapped[str] = mapped_column(String(16), default=SuppressionScheme.HMAC)


class Erasure(Base):
    """A HubSpot delete still owed for a forgotten person (worker/erasure.py): a durable job, retried by the
    worker until HubSpot confirms, then deleted. It is the one place the address stays in clear after
    `forget`, because HubSpot's GDPR delete by email needs it; it goes with the row."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email_key: Mapped[str] = mapped_column(String(64), unique=True)  # the suppression's keyed hash
    email: Mapped[str | None] = mapped_column(String(320))  # None once the delete by email is done
    hubspot_ids: Mapped[dict[str, Any]]  # {"ids": [record id, ...]} to delete by id
    version: Mapped[int] = mapped_column(default=1)  # bumped when a flush adds a record id while a run is out
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    hold_until: Mapped[datetime | None]  # a flush had the contact leased: delete once more after its lease
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_erasures_due", "next_attempt_at"),)


class SpamCount(Base):
    """Spam posts counted, not stored: one row a day, form and reason (honeypot, token_*, ip_rate, email_rate).

    A flood adds nothing here but a counter bump; only the first SPAM_SAMPLE_PER_DAY of each (day, form,
    reason) are kept as `submissions` rows, cut short, for operations to look at (storage/submissions.py).
    """

    __tablename__ = "spam_counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # UTC
    form: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)


class ActivityKind:
    NOTE = "note"  # a note on the contact's timeline (CRM v3 notes, association type 202)
    TASK = "task"  # "Follow up: information packet requested" for the owner (CRM v3 tasks, type 204)
    FORM = "form"  # the submission sent to HubSpot's Forms API (v3 integration submit), for attribution


class ActivityStatus:
    PENDING = "pending"  # not written yet, or written with an outcome we never heard (see `attempted_at`)
    DONE = "done"
    REJECTED = "rejected"  # HubSpot refused it (207/400 for this input); see `error` and `leadsync failed list`


class CrmActivity(Base):
    """One HubSpot write a submission calls for, keyed by (kind, submission): the idempotency key.

    `attempted_at` is set, and committed, before the write goes out: a row that has it but no `hubspot_id`
    may have landed (a worker killed mid-call, a timeout), so the next flush looks for it in HubSpot before
    writing again (worker/crm/activities.py). The text itself is not stored: it is built from the submission.
    """

    __tablename__ = "crm_activities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    submission_id: Mapped[str] = mapped_column(String(32))  # no foreign key: the history outlives retention
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=ActivityStatus.PENDING)
    hubspot_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    attempted_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("kind", "submission_id", name="uq_crm_activities_kind_submission"),
        Index("ix_crm_activities_due", "kind", "status", "id"),
        Index("ix_crm_activities_contact", "contact_id"),
    )
