"""Enqueueing by task name: what the HTTP edge may call without importing the worker's code.

Publishing is best effort. The database row is the record of work to do; when the broker is
down the sweeper enqueues it later, so a failed publish never fails a request.
"""

from __future__ import annotations

import logging

from leadsync.worker.celery_app import TASK_ROUTES, app

log = logging.getLogger(__name__)


def _send(name: str, args: list[object], countdown: float | None = None) -> bool:
    try:
        app.send_task(name, args=args, queue=TASK_ROUTES[name]["queue"], retry=False, countdown=countdown)
    except Exception as error:  # the broker being down must never fail the caller
        log.warning("enqueue of %s failed, the sweeper will retry: %r", name, error)
        return False
    return True


def enqueue_submission(submission_id: str) -> bool:
    return _send("leadsync.process_submission", [submission_id])


def enqueue_submissions(submission_ids: list[str]) -> bool:
    """One message for many submissions: publishing costs about 1 ms of CPU a message, not a submission."""
    return _send("leadsync.process_submissions", [submission_ids])


def enqueue_email(send_id: str, countdown: float | None = None) -> bool:
    return _send("leadsync.send_email", [send_id], countdown)


def enqueue_emails(send_ids: list[str]) -> bool:
    """Many emails, one message (see enqueue_submissions); nothing to publish is a success."""
    return not send_ids or _send("leadsync.send_emails", [send_ids])


def enqueue_crm_flush() -> bool:
    return _send("leadsync.flush_crm", [])


def broker_ping(timeout: float = 2.0) -> None:
    """Raises when the broker does not answer within `timeout` (for /readyz and `leadsync status`)."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
