"""Enqueueing by task name: what the HTTP edge may call without importing the worker's code; and the
broker queries of `leadsync status` and /readyz (`broker_ping`, `queue_depths`).

Publishing is best effort. The database row is the record of work to do; when the broker is
down the sweeper enqueues it later, so a failed publish never fails a request.
"""

from __future__ import annotations

import logging

from leadsync.worker.celery_app import QUEUES, TASK_ROUTES, app

log = logging.getLogger(__name__)
REPR_MAX = 1024  # Celery's own cut for argsrepr


def _send(name: str, args: list[object], countdown: float | None = None) -> bool:
    # The arguments' repr (logs, Flower) made here: Celery's own saferepr walks the ids in Python, a third of a
    # publish's ~0.8 ms of CPU for a group commit's 20 ids; ids need no escaping beyond repr.
    shown = repr(args)
    shown = shown if len(shown) <= REPR_MAX else shown[: REPR_MAX - 3] + "..."
    try:
        app.send_task(
            name,
            args=args,
            queue=TASK_ROUTES[name]["queue"],
            retry=False,
            countdown=countdown,
            argsrepr=shown,
            kwargsrepr="{}",
        )
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


def queue_depths() -> dict[str, int | None]:
    """Messages waiting in each Celery queue; None where the transport cannot count.

    Redis: the queue's list (and its priority lists); filesystem: the queue's `.msg` files. Both through
    kombu's own `_size`, so the naming stays kombu's business. Messages a worker holds unacked are not
    counted here: they are in flight, and the outbox gauges cover them.
    """
    depths: dict[str, int | None] = {}
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        channel = connection.default_channel
        for queue in QUEUES:
            try:
                depths[queue] = int(channel._size(queue))
            except Exception:  # a transport without sizes, or a queue it does not know yet
                depths[queue] = None
    return depths
