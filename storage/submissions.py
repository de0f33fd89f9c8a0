"""Writing a submission on the request path: one INSERT, one transaction, idempotent by key.

Example:
    >>> outcome = store_submission(session, NewSubmission(form="newsletter", email="a@b.org", ...))
    >>> outcome.created, outcome.submission.id
    (True, '3f2a...')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from leadsync.storage.models import Submission, SubmissionStatus


@dataclass(frozen=True)
class NewSubmission:
    """What the HTTP edge hands to storage: validated values plus request metadata."""

    form: str
    email: str
    fields: dict[str, Any]
    raw: dict[str, Any]
    ip: str | None = None
    user_agent: str | None = None
    page_url: str | None = None
    utm: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    spam: bool = False
    spam_reason: str | None = None  # why it is spam (forms/spam.py); set means spam
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    submission: Submission
    created: bool  # False: the Idempotency-Key was seen before; `submission` is the first one
    key_conflict: bool = False  # the key was seen before with a different request


def store_submission(session: Session, new: NewSubmission) -> StoreOutcome:
    """Insert `new` and commit; an Idempotency-Key seen before returns the original instead."""
    if new.idempotency_key:
        existing = _by_key(session, new.idempotency_key)
        if existing is not None:
            return _replay(existing, new)
    submission = Submission(
        form=new.form,
        email=new.email,
        fields=new.fields,
        raw=new.raw,
        ip=new.ip,
        user_agent=new.user_agent,
        page_url=new.page_url,
        utm=new.utm,
        consent=new.consent,
        idempotency_key=new.idempotency_key,
        request_hash=new.request_hash,
        status=SubmissionStatus.SPAM if new.spam or new.spam_reason else SubmissionStatus.PENDING,
        spam_reason=new.spam_reason or ("honeypot" if new.spam else None),
    )
    session.add(submission)
    try:
        session.commit()
    except IntegrityError:
        # Two requests with the same key raced; the unique index let exactly one in.
        session.rollback()
        existing = _by_key(session, new.idempotency_key) if new.idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, new)
    return StoreOutcome(submission, created=True)


def _by_key(session: Session, key: str) -> Submission | None:
    return session.scalars(select(Submission).where(Submission.idempotency_key == key)).first()


def _replay(existing: Submission, new: NewSubmission) -> StoreOutcome:
    same = existing.form == new.form and existing.request_hash == new.request_hash
    return StoreOutcome(existing, created=False, key_conflict=not same)
