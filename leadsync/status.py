"""One picture of the system for operations: `leadsync status` renders it, `--json` prints it.

Example:
    >>> report = collect(get_settings())
    >>> report["verdict"], report["reasons"]
    ('healthy', [])
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from leadsync.config import Settings
from leadsync.storage.db import ping, session_scope
from leadsync.storage.models import Contact, EmailSend, ServiceState, Submission, SubmissionStatus, utcnow
from leadsync.worker.crm.sync import AUTH_STATE
from leadsync.worker.signatures import broker_ping

STALE_PENDING = timedelta(minutes=5)


def _counts(session: Any, column: Any) -> dict[str, int]:
    return {str(key): count for key, count in session.execute(select(column, func.count()).group_by(column)).all()}


def collect(settings: Settings) -> dict[str, Any]:
    """Counts and checks; `verdict` is healthy or degraded, `reasons` says why."""
    report: dict[str, Any] = {"reasons": [], "notes": []}
    for name, check in (("database", ping), ("broker", broker_ping)):
        try:
            check()
            report[name] = "ok"
        except Exception as error:  # any failure is reported, not raised
            report[name] = f"unavailable: {error.__class__.__name__}"
            report["reasons"].append(f"{name} unavailable")
    if report["database"] == "ok":
        now = utcnow()
        with session_scope() as session:
            oldest = session.scalar(
                select(func.min(Submission.received_at)).where(Submission.status == SubmissionStatus.PENDING)
            )
            report["submissions"] = _counts(session, Submission.status)
            report["outbox_oldest_pending_seconds"] = round((now - oldest).total_seconds(), 1) if oldest else 0.0
            report["contacts"] = session.scalar(select(func.count()).select_from(Contact)) or 0
            report["crm"] = _counts(session, Contact.crm_status)
            report["emails"] = _counts(session, EmailSend.status)
            auth = session.get(ServiceState, AUTH_STATE)
        if oldest and now - oldest > STALE_PENDING:
            report["reasons"].append(f"oldest pending submission waits {report['outbox_oldest_pending_seconds']:.0f}s")
        if auth is not None and not auth.value.get("ok"):
            report["reasons"].append(f"HubSpot refuses the token: {auth.value.get('detail')}")
        if report["emails"].get("failed"):
            report["notes"].append(f"{report['emails']['failed']} emails failed permanently")
        pending_crm = report["crm"].get("pending", 0)
        if not settings.hubspot_enabled:
            report["notes"].append(f"CRM sync held: HUBSPOT_ACCESS_TOKEN is not set ({pending_crm} contacts pending)")
    report["crm_sync"] = "enabled" if settings.hubspot_enabled else "held (no HUBSPOT_ACCESS_TOKEN)"
    report["verdict"] = "degraded" if report["reasons"] else "healthy"
    return report
