"""The one place Celery is configured. Every setting that matters for "nothing lost, nothing twice" is here.

Queues: `intake` (turn submissions into contacts), `email` (packet emails), `crm` (HubSpot). Separate
queues so a HubSpot backlog never delays a packet email.

Example:
    $ leadsync worker --queues intake,email     # or: celery -A leadsync.worker.celery_app worker
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
)
from kombu import pools

from leadsync import logs, metrics
from leadsync.config import Settings, get_settings
from leadsync.worker import filesystem_broker, redis_broker

QUEUES = ("intake", "email", "crm")
TASK_ROUTES = {
    "leadsync.process_submission": {"queue": "intake"},
    "leadsync.process_submissions": {"queue": "intake"},
    "leadsync.sweep": {"queue": "intake"},
    "leadsync.purge": {"queue": "intake"},
    "leadsync.send_email": {"queue": "email"},
    "leadsync.send_emails": {"queue": "email"},
    "leadsync.flush_crm": {"queue": "crm"},
}
# Longest a task may run; the broker's visibility timeout must be longer, or Redis hands the
# message to a second worker while the first is still on it.
TASK_TIME_LIMIT = 300


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.celery_broker_url
    settings.var_dir.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule file there
    transport_options: dict[str, Any] = {}
    if url.startswith("filesystem://"):
        # kombu's own filesystem transport loses messages between processes; ours renames atomically.
        url = url.replace("filesystem://", f"{filesystem_broker.SCHEME}://", 1)
        folder = settings.var_dir / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.05,  # ~50 ms pickup instead of the default 1 s
        }
    elif url.startswith(("redis://", "rediss://")):
        # kombu's Redis transport, publishing through one client a pool instead of a new one a message
        # (worker/redis_broker.py); rediss:// keeps kombu's own, whose TLS defaults go by the scheme's name.
        if url.startswith("redis://"):
            url = f"{redis_broker.SCHEME}://{url.removeprefix('redis://')}"
        transport_options = {
            "visibility_timeout": TASK_TIME_LIMIT * 4,
            # Publishing fails fast instead of retrying for seconds: a request must never wait on a
            # broker that is down (the sweeper publishes later). Consumers reconnect on their own.
            "max_retries": 0,
            "socket_connect_timeout": 2,
            # BRPOP the queues in the order the worker lists them (`leadsync worker`: intake, then email), not
            # round robin: under a burst, intake (seconds of work that makes the contacts the CRM sync waits
            # for) goes before an email backlog (bench/burst.py; issue 18).
            "queue_order_strategy": "priority",
        }
    return {
        "broker_url": url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_routes": TASK_ROUTES,
        "task_default_queue": "intake",
        # Ack after the task ran, and put it back when the worker process dies under it: a task is
        # lost only if the whole broker is, and the sweeper covers that from the database.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 30,
        "worker_hijack_root_logger": False,
        "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
        "beat_schedule": {
            "sweep": {
                "task": "leadsync.sweep",
                "schedule": timedelta(seconds=settings.sweep_interval_seconds),
            },
            "purge": {"task": "leadsync.purge", "schedule": timedelta(hours=1)},
            "flush-crm": {
                "task": "leadsync.flush_crm",
                "schedule": timedelta(seconds=settings.crm_flush_interval_seconds),
                # A flush that could not start within its own interval is pointless: the next one comes.
                "options": {"expires": settings.crm_flush_interval_seconds * 5},
            },
        },
    }


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("leadsync")
    app.conf.update(celery_config(settings or get_settings()))
    return app


def reconfigure(settings: Settings) -> None:
    """Point the process's app at new settings (tests run many configurations in one process)."""
    # Pooled connections remember the old URL and which queues they declared: drop them all
    # (kombu keys its global pools by URL, and the filesystem transport's folders are not in it).
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app.conf.update(celery_config(settings))


app = create_app()
app.conf.imports = ("leadsync.worker.tasks",)


# ---------------------------------------------------------------------- logs and metrics (no behaviour)


@setup_logging.connect
def _logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connected, so Celery leaves logging to us: its own lines get the same JSON and redaction as ours.
    logs.configure(get_settings().log_format, loglevel or get_settings().log_level)


@before_task_publish.connect
def _propagate_context(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # The submission id bound here (a request, or the task that enqueues) travels with the message.
    if headers is not None:
        logs.outgoing_headers(headers)


@task_prerun.connect
def _bind_task_context(task_id: str, task: Task, args: tuple[Any, ...] = (), **_: Any) -> None:
    logs.clear()
    submission_id = task.request.get("submission_id")
    if task.name == "leadsync.process_submission" and args:
        submission_id = args[0]
    logs.bind(task=task.name, task_id=task_id, submission_id=submission_id)
    if task.name == "leadsync.send_email" and args:
        logs.bind(email_send_id=args[0])


@task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    logs.clear()


@task_success.connect
def _count_success(sender: Task, **_: Any) -> None:
    metrics.count_task(sender.name, "succeeded")


@task_failure.connect
def _count_failure(sender: Task, **_: Any) -> None:
    metrics.count_task(sender.name, "failed")


@task_retry.connect
def _count_retry(sender: Task, **_: Any) -> None:
    metrics.count_task(sender.name, "retried")
