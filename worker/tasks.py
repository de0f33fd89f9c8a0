"""Celery tasks: thin wrappers that open a session, call the rules, and enqueue what follows.

The rules live in plain modules (intake, mail.sending, crm.sync, sweeper) so they can be tested
without a broker.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from leadsync import logs, metrics
from leadsync.config import get_settings
from leadsync.storage.db import get_engine, get_sessionmaker, session_scope
from leadsync.storage.models import EmailSend, EmailStatus, Submission, SubmissionStatus, utcnow
from leadsync.worker import dead_letters, enqueue, erasure
from leadsync.worker.celery_app import app
from leadsync.worker.crm.clients import crm_client, crm_mapping
from leadsync.worker.crm.sync import flush_pending
from leadsync.worker.intake import IntakeResult
from leadsync.worker.intake import process_submission as process_submission_rule
from leadsync.worker.intake import process_submissions as process_submissions_rule
from leadsync.worker.mail.sending import Delivery, backoff, deliver, deliver_batch
from leadsync.worker.mail.transport import MESSAGES_PER_CONNECTION, MailTransport, transport_from_settings
from leadsync.worker.privacy import purge_old_submissions
from leadsync.worker.sweeper import find_due_work, mark_published

log = logging.getLogger(__name__)


UNEXPECTED_ERROR_RETRIES = 3
SWEEP_BATCH = 100  # submissions a message when the sweeper publishes again
EMAIL_BATCH = MESSAGES_PER_CONNECTION  # emails a send_emails task drains: one SMTP connection's worth (100)


def _give_up(kind: str, ref: str, task: str, error: Exception, attempts: int) -> None:
    """Mark the row failed and leave a dead letter, so the sweeper stops re-publishing it."""
    log.exception("%s %s failed for good; see `leadsync failed list`", kind, ref)
    with session_scope() as session:
        if kind == "submission":
            session.execute(
                update(Submission)
                .where(Submission.id == ref, Submission.status == SubmissionStatus.PENDING)
                .values(status=SubmissionStatus.FAILED)
            )
        else:
            session.execute(
                update(EmailSend)
                .where(EmailSend.id == ref, EmailSend.status.in_([EmailStatus.SENDING, EmailStatus.PENDING]))
                .values(status=EmailStatus.FAILED, last_error=repr(error))
            )
        dead_letters.record(session, kind, ref, task, f"{error.__class__.__name__}: {error}", attempts)


@lru_cache(maxsize=1)
def mail_transport() -> MailTransport:
    return transport_from_settings(get_settings())


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share the parent's database connections.
    get_engine().dispose(close=False)


@worker_ready.connect
def _sweep_on_start(**_: Any) -> None:
    # Whatever was in flight when the last worker died is picked up now, not at the next beat.
    app.send_task("leadsync.sweep", queue="intake")
    if not get_settings().hubspot_enabled:
        log.warning("HUBSPOT_ACCESS_TOKEN is not set: contacts are kept as pending CRM sync until it is")


@app.task(name="leadsync.process_submission", bind=True, max_retries=None)
def process_submission(self: Task, submission_id: str) -> dict[str, Any]:
    """Dedupe and merge one submission, then enqueue its packet email."""
    try:
        with session_scope() as session:
            result = process_submission_rule(session, submission_id, get_settings())
    except OperationalError as error:  # database briefly away: the row is safe, try again
        raise self.retry(exc=error, countdown=backoff(self.request.retries + 1)) from error
    except Exception as error:  # a bug or bad data: a few more tries, then a dead letter, not a poison loop
        if self.request.retries < UNEXPECTED_ERROR_RETRIES:
            raise self.retry(exc=error, countdown=backoff(self.request.retries + 1)) from error
        _give_up("submission", submission_id, self.name, error, self.request.retries + 1)
        raise
    enqueue.enqueue_emails(result.email_send_ids)
    return {"skipped": result.skipped, "contact_id": result.contact_id, "emails": result.email_send_ids}


@app.task(name="leadsync.process_submissions", bind=True, max_retries=None)
def process_submissions(self: Task, submission_ids: list[str]) -> dict[str, int]:
    """Many submissions from one message (the web's group commit), in one transaction.

    The database being away brings the message back whole; any other error hands each submission to
    `process_submission`, so the one at fault meets its retries and dead letter alone.
    """
    try:
        with session_scope() as session:
            results = process_submissions_rule(session, submission_ids, get_settings())
    except OperationalError as error:  # includes a deadlock PostgreSQL broke: nothing was written
        raise self.retry(exc=error, countdown=backoff(self.request.retries + 1)) from error
    except Exception:
        log.exception("a batch of %d submissions failed; retrying them one by one", len(submission_ids))
        for submission_id in submission_ids:
            enqueue.enqueue_submission(submission_id)
        return {"processed": 0, "emails": 0}
    for submission_id, result in zip(submission_ids, results, strict=True):
        logs.bind(submission_id=submission_id)  # one line a lead, so its id can be followed through the batch
        log.info("submission %s: %s", submission_id, _intake_summary(result))
    logs.unbind("submission_id")  # the emails message is the batch's, not the last submission's
    emails = [send_id for result in results for send_id in result.email_send_ids]
    enqueue.enqueue_emails(emails)
    return {"processed": sum(not result.skipped for result in results), "emails": len(emails)}


def _intake_summary(result: IntakeResult) -> str:
    if result.skipped:
        return "skipped (processed before, or forgotten)"
    person = "new contact" if result.contact_created else "merged into contact"
    return f"{person} {result.contact_id}, {len(result.email_send_ids)} email(s) queued"


@app.task(name="leadsync.send_emails")
def send_emails(send_ids: list[str]) -> dict[str, int]:
    """The message's queued emails and, up to EMAIL_BATCH in all, any other due ones, over one SMTP connection.

    Draining makes the batch as large as the backlog, not as the web's group commit (~7 posts under a burst):
    the messages behind it then find their emails sent and finish at once. One needing a retry goes on alone
    to `send_email` after its backoff; one failing oddly goes there at once.
    """
    transport, settings = mail_transport(), get_settings()
    try:
        with transport.batch():  # one SMTP connection for the batch (worker/mail/transport.py)
            report = deliver_batch(get_sessionmaker(), send_ids, transport, settings, drain=EMAIL_BATCH)
    except Exception:  # e.g. the database away: what was recorded stays; the rest is retried one by one
        log.exception("a batch of %d emails failed; retrying them one by one", len(send_ids))
        for send_id in send_ids:
            enqueue.enqueue_email(send_id)
        return {"done": 0}
    done = 0
    for send_id, delivery in report.deliveries.items():
        logs.bind(submission_id=delivery.submission_id, email_send_id=send_id)  # the lead's id on its lines
        _log_delivery(send_id, delivery)
        if delivery.status == "retry":
            enqueue.enqueue_email(send_id, countdown=delivery.retry_in)
        elif delivery.status != "failed":
            done += 1  # sent, or nothing to do (already sent)
    for send_id in report.errors:
        log.error("email %s failed in a batch; retrying it on its own", send_id, exc_info=report.errors[send_id])
        enqueue.enqueue_email(send_id)
    logs.unbind("email_send_id", "submission_id")
    return {"done": done}


@app.task(name="leadsync.send_email", bind=True, max_retries=None)
def send_email(self: Task, send_id: str) -> str:
    """Send one queued email; temporary failures come back after a jittered backoff."""
    try:
        delivery = deliver(get_sessionmaker(), send_id, mail_transport(), get_settings())
    except OperationalError as error:
        raise self.retry(exc=error, countdown=backoff(self.request.retries + 1)) from error
    except Exception as error:  # e.g. a broken template or a missing packet PDF
        if self.request.retries < UNEXPECTED_ERROR_RETRIES:
            raise self.retry(exc=error, countdown=backoff(self.request.retries + 1)) from error
        _give_up("email", send_id, self.name, error, self.request.retries + 1)
        raise
    _log_delivery(send_id, delivery)
    if delivery.status == "retry":
        raise self.retry(countdown=delivery.retry_in)
    return delivery.status


def _log_delivery(send_id: str, delivery: Delivery) -> None:
    if delivery.status == "retry":
        log.warning("email %s: temporary failure, retrying in %.0fs: %s", send_id, delivery.retry_in, delivery.error)
    elif delivery.status == "failed":
        log.error("email %s failed: %s", send_id, delivery.error)


@app.task(name="leadsync.flush_crm")
def flush_crm() -> dict[str, Any]:
    """Run the due HubSpot erasures, then sync one batch of pending contacts; a full batch means more may
    wait, so go again at once."""
    settings = get_settings()
    # HubSpot deletes owed for forgotten people go first: beat runs this task every few seconds. Their
    # failures are recorded on the job; anything else (the database away) must not hold back the sync.
    try:
        erasure.run(get_sessionmaker(), crm_client())
    except Exception:
        log.exception("the HubSpot erasure round failed; the jobs stay due for the next flush")
    fill_wait = timedelta(seconds=settings.crm_batch_fill_seconds)
    report = flush_pending(get_sessionmaker(), crm_client(), crm_mapping(), settings, fill_wait=fill_wait)
    metrics.count_hubspot(report.calls, report.rate_limited)
    if report.full(settings.crm_batch_size):
        enqueue.enqueue_crm_flush()
    return report.__dict__


@app.task(name="leadsync.purge")
def purge() -> int:
    """Retention: delete raw submissions older than RAW_RETENTION_DAYS."""
    with session_scope() as session:
        return purge_old_submissions(session, get_settings().raw_retention_days)


@app.task(name="leadsync.sweep")
def sweep() -> dict[str, int]:
    """Publish again whatever the database says is due and the broker may have lost."""
    now = utcnow()
    settings = get_settings()
    with session_scope() as session:
        due = find_due_work(session, now, settings)
    batches = [due.submissions[i : i + SWEEP_BATCH] for i in range(0, len(due.submissions), SWEEP_BATCH)]
    published = [sid for batch in batches if enqueue.enqueue_submissions(batch) for sid in batch]
    emails = [eid for eid in due.emails if enqueue.enqueue_email(eid)]
    mark_published(get_sessionmaker(), now, published, emails, timedelta(seconds=settings.sweep_requeue_seconds))
    return {"submissions": len(published), "emails": len(emails)}
