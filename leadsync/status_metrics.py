"""The state gauges of the web's `/metrics`: the `leadsync status` report as Prometheus families.

State (queue depth, outbox, CRM backlog and lag, emails, dead letters, HubSpot budget and auth) is what the
database and the broker already know. The web process computes it at scrape time from the same queries as
`leadsync status` (`StateCollector`), so it is right however many web and worker processes run, survives
restarts, and is counted once. Scrape one web instance for it. The worker's event counters are in
leadsync/metrics.py; `web_registry` adds them when this host's workers share PROMETHEUS_MULTIPROC_DIR.

The web's `/metrics` is an operations endpoint like any other (leadsync/ops_auth.py, the one OPS_TOKEN policy): 403
while OPS_TOKEN is unset, 401 without `Authorization: Bearer <OPS_TOKEN>`. It fails closed.

Example:
    >>> body, content_type = render(web_registry(get_settings()))
    >>> b'leadsync_queue_messages{queue="intake"}' in body
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from leadsync.config import Settings
from leadsync.metrics import MULTIPROC_ENV
from leadsync.status import StatusReport, collect


def _gauge(name: str, documentation: str, value: float | None, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), value)
    return family


class StateCollector(Collector):
    """Gauges (and DB-derived counters) computed at scrape time from `leadsync.status.collect`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        return []  # computed per scrape: nothing to query at registration

    def collect(self) -> Iterator[Metric]:
        yield from state_metrics(collect(self.settings))


def state_metrics(report: StatusReport) -> Iterator[Metric]:
    """The status report as Prometheus families (names follow the conventions: base units, `_total`)."""
    up = GaugeMetricFamily("leadsync_dependency_up", "1 when the dependency answers.", labels=["dependency"])
    for name in ("database", "broker"):
        up.add_metric([name], 1.0 if getattr(report, name) == "ok" else 0.0)
    yield up
    yield _gauge("leadsync_healthy", "1 when `leadsync status` says healthy.", report.healthy)

    queues = GaugeMetricFamily("leadsync_queue_messages", "Messages waiting in a broker queue.", labels=["queue"])
    for queue, depth in sorted(report.queues.items()):
        if depth is not None:
            queues.add_metric([queue], depth)
    yield queues
    stored = report.stored
    if stored is None:  # the database is down: nothing more to say
        return

    yield _gauge("leadsync_outbox_pending", "Submissions stored, not yet processed.", stored.outbox_pending)
    yield _gauge(
        "leadsync_outbox_oldest_pending_age_seconds",
        "Age of the oldest pending submission (0 when none).",
        stored.outbox_oldest_pending_seconds,
    )
    accepted = CounterMetricFamily(
        "leadsync_submissions_accepted", "Submissions stored for processing, by form.", labels=["form"]
    )
    spam = CounterMetricFamily(
        "leadsync_submissions_spam", "Submissions kept as spam, never processed.", labels=["form"]
    )
    for form, statuses in sorted(stored.submissions_by_form.items()):
        accepted.add_metric([form], sum(n for status, n in statuses.items() if status != "spam"))
        spam.add_metric([form], statuses.get("spam", 0))
    yield accepted
    yield spam
    submissions = GaugeMetricFamily("leadsync_submissions", "Submissions by current status.", labels=["status"])
    for status, count in sorted(stored.submissions.items()):
        submissions.add_metric([status], count)
    yield submissions

    emails = stored.emails
    yield CounterMetricFamily("leadsync_emails_sent", "Emails delivered.", value=emails.get("sent", 0))
    yield CounterMetricFamily("leadsync_emails_failed", "Emails failed for good.", value=emails.get("failed", 0))
    email_states = GaugeMetricFamily("leadsync_emails", "Email sends by current status.", labels=["status"])
    for status, count in sorted(emails.items()):
        email_states.add_metric([status], count)
    yield email_states

    crm = GaugeMetricFamily("leadsync_crm_contacts", "Contacts by CRM sync status.", labels=["status"])
    for status, count in sorted(stored.crm.items()):
        crm.add_metric([status], count)
    yield crm
    yield _gauge("leadsync_crm_backlog", "Contacts waiting for HubSpot sync.", stored.crm.get("pending", 0))
    yield _gauge(
        "leadsync_crm_sync_lag_seconds",
        "Age of the oldest contact change HubSpot has not seen (0 when none).",
        stored.crm_sync_lag_seconds,
    )
    timeline = GaugeMetricFamily(
        "leadsync_hubspot_timeline",
        "HubSpot timeline writes (note, task, owner, form) by outcome (pending, done, rejected).",
        labels=["kind", "status"],
    )
    for kind, states in sorted(stored.timeline.items()):
        for state, count in sorted(states.items()):
            timeline.add_metric([kind, state], count)
    yield timeline
    yield _gauge("leadsync_crm_sync_enabled", "1 when HUBSPOT_ACCESS_TOKEN is set.", report.crm_sync == "enabled")

    hubspot = stored.hubspot
    yield _gauge("leadsync_hubspot_auth_ok", "0 while HubSpot refuses the token (401/403).", hubspot.get("auth_ok", 1))
    yield _gauge("leadsync_hubspot_paused", "1 while every CRM flusher pauses.", bool(hubspot.get("paused_until")))
    yield _gauge(
        "leadsync_hubspot_daily_limit", "HubSpot's daily call limit, as last reported.", hubspot.get("daily_limit")
    )
    yield _gauge(
        "leadsync_hubspot_daily_remaining",
        "HubSpot calls left today, as last reported.",
        hubspot.get("daily_remaining"),
    )
    yield _gauge(
        "leadsync_hubspot_rate_limited_today",
        "429s from HubSpot today, all workers.",
        hubspot.get("rate_limited_today"),
    )

    letters = GaugeMetricFamily(
        "leadsync_dead_letters", "Open dead letters (failed for good), by kind.", labels=["kind"]
    )
    for kind, count in sorted(stored.dead_letters_by_kind.items()):
        letters.add_metric([kind], count)
    yield letters
    yield _gauge("leadsync_dead_letters_open", "Open dead letters, all kinds.", stored.dead_letters)


# ------------------------------------------------------------------------------------------- web side


def web_registry(settings: Settings) -> CollectorRegistry:
    """State gauges; plus worker counters when this host's workers share PROMETHEUS_MULTIPROC_DIR with it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(settings))
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
