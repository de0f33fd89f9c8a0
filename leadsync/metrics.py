"""Prometheus event counters: tasks and HubSpot calls, counted where they happen (and nothing else).

Events (tasks succeeded / failed / retried, HubSpot calls and 429s) happen inside Celery's pool processes.
Each `leadsync worker` started with `METRICS_PORT` serves its own `/metrics`, summing its pool processes
through prometheus_client's multiprocess mode (one private folder per worker, which `leadsync worker` sets
up before anything imports prometheus_client). Scrape every worker. The state gauges (queues, outbox, CRM
backlog, dead letters) are the web's, from `leadsync status`: leadsync/status_metrics.py.

This module imports nothing of leadsync's, so the Celery app can count without an import circle.

Example:
    >>> count_task("leadsync.flush_crm", "succeeded")
    >>> TASKS.labels(task="leadsync.flush_crm", state="succeeded")._value.get()
    1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, multiprocess
from prometheus_client.exposition import start_http_server

# Worker events (counted in the process that ran the task).
TASKS = Counter(
    "leadsync_tasks", "Celery tasks finished, by task and state (succeeded, failed, retried).", ["task", "state"]
)
HUBSPOT_CALLS = Counter("leadsync_hubspot_calls", "HubSpot API calls made by CRM flushes (retries included).")
HUBSPOT_RATE_LIMITED = Counter("leadsync_hubspot_rate_limited", "HubSpot answers with status 429.")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# ---------------------------------------------------------------------------------------- worker side


def serve_worker_metrics(port: int) -> None:
    """Serve the sum of this worker's pool processes on `port` (a daemon thread of the main process)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def count_task(task: str, state: str) -> None:
    TASKS.labels(task=task, state=state).inc()


def count_hubspot(calls: int, rate_limited: int) -> None:
    if calls:
        HUBSPOT_CALLS.inc(calls)
    if rate_limited:
        HUBSPOT_RATE_LIMITED.inc(rate_limited)
