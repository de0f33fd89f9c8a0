"""Storing submissions the way the HTTP edge does, for tests of the worker's rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from leadsync.forms.schemas import FORM_KEYS, validate
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Submission
from leadsync.storage.submissions import NewSubmission, store_submission
from leadsync.worker.intake import IntakeResult, process_submission


def submit(form: str, received_at: datetime | None = None, **data: Any) -> str:
    """Validate and store one submission as the forms endpoint would; returns its id."""
    parsed, errors = validate(form, data)
    assert parsed is not None, errors
    fields = parsed.model_dump(exclude={"website"}, exclude_none=True)
    email = fields.pop("email")
    with get_sessionmaker()() as session:
        outcome = store_submission(
            session,
            NewSubmission(
                form=FORM_KEYS[form],
                email=email,
                fields=fields,
                raw=data,
                utm=parsed.utm(),
                page_url=parsed.page_url,
                consent={"newsletter": form == "newsletter", "text_version": "test-1"},
            ),
        )
        if received_at is not None:
            session.get_one(Submission, outcome.submission_id).received_at = received_at
            session.commit()
        return outcome.submission_id


def process(submission_id: str, settings: Any) -> IntakeResult:
    with session_scope() as session:
        return process_submission(session, submission_id, settings)
