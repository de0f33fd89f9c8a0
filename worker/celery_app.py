"""The one place Celery is configured. Every setting that matters for "nothing lost, nothing twice" is here.

Queues: `intake` (turn submissions into contacts), `email` (packet emails), `crm` (HubSpot). Separate
queues so a HubSpot backlog never delays a packet email.

Example:
    $ leadsync worker --queues intake,email     # or: celery -A leadsync.worker.celery_app worker
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from kombu import pools

from leadsync.config import Settings, get_settings

QUEUES = ("intake", "email", "crm")
TASK_ROUTES = {
    "leadsync.process_submission": {"queue": "intake"},
    "leadsync.sweep": {"queue": "intake"},
    "leadsync.send_email": {"queue": "email"},
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
        transport_options = {
            "visibility_timeout": TASK_TIME_LIMIT * 4,
            # Publishing fails fast instead of retrying for seconds: a request must never wait on a
            # broker that is down (the sweeper publishes later). Consumers reconnect on their own.
            "max_retries": 0,
            "socket_connect_timeout": 2,
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
