"""One picture of the system for operations: `leadsync status` renders it, `--json` prints it, and the
web process's `/metrics` exports it as gauges (leadsync/metrics.py), so the terminal, scripts and
Prometheus read the same numbers from the same queries.

Example:
    >>> report = collect(get_settings())
    >>> report["verdict"], report["reasons"]
    ('healthy', [])
"""

from __future__ import annotations

import io
import sys
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from leadsync.config import Settings
from leadsync.metrics import queue_depths
from leadsync.storage.db import ping, session_scope
from leadsync.storage.models import (
    Contact,
    CrmStatus,
    DeadLetter,
    DeadLetterStatus,
    EmailSend,
    ServiceState,
    SpamCount,
    Submission,
    SubmissionStatus,
    utcnow,
)
from leadsync.worker import erasure
from leadsync.worker.crm.activities import activity_counts
from leadsync.worker.crm.sync import AUTH_STATE, hubspot_status
from leadsync.worker.signatures import broker_ping

STALE_PENDING = timedelta(minutes=5)


def _counts(session: Any, column: Any) -> dict[str, int]:
    return {str(key): count for key, count in session.execute(select(column, func.count()).group_by(column)).all()}


def _age(now: Any, oldest: Any) -> float:
    return round((now - oldest).total_seconds(), 1) if oldest else 0.0


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
    # Messages waiting in each queue (None: this transport cannot say, or the broker is down).
    report["queues"] = queue_depths() if report["broker"] == "ok" else {}
    if report["database"] == "ok":
        now = utcnow()
        with session_scope() as session:
            oldest = session.scalar(
                select(func.min(Submission.received_at)).where(Submission.status == SubmissionStatus.PENDING)
            )
            report["submissions"] = _counts(session, Submission.status)
            by_form: dict[str, dict[str, int]] = {}
            for form, status, count in session.execute(
                select(Submission.form, Submission.status, func.count()).group_by(Submission.form, Submission.status)
            ).all():
                by_form.setdefault(str(form), {})[str(status)] = count
            # Spam is counted, not stored (only a daily sample is): the counters are the totals.
            spam_by_form = dict(
                session.execute(select(SpamCount.form, func.sum(SpamCount.count)).group_by(SpamCount.form)).all()
            )
            for form in set(by_form) | set(spam_by_form):
                by_form.setdefault(str(form), {}).pop(SubmissionStatus.SPAM, None)
                if spam_by_form.get(form):
                    by_form[str(form)][SubmissionStatus.SPAM] = int(spam_by_form[form])
            report["submissions"].pop(SubmissionStatus.SPAM, None)
            if spam_by_form:
                report["submissions"][SubmissionStatus.SPAM] = int(sum(spam_by_form.values()))
            report["spam_today"] = {
                str(reason): int(n)
                for reason, n in session.execute(
                    select(SpamCount.reason, func.sum(SpamCount.count))
                    .where(SpamCount.day == now.date())
                    .group_by(SpamCount.reason)
                ).all()
            }
            report["submissions_by_form"] = by_form
            report["outbox_pending"] = report["submissions"].get(SubmissionStatus.PENDING, 0)
            report["outbox_oldest_pending_seconds"] = _age(now, oldest)
            report["contacts"] = session.scalar(select(func.count()).select_from(Contact)) or 0
            report["crm"] = _counts(session, Contact.crm_status)
            crm_oldest = session.scalar(
                select(func.min(Contact.crm_changed_at)).where(Contact.crm_status == CrmStatus.PENDING)
            )
            report["crm_sync_lag_seconds"] = _age(now, crm_oldest)  # the oldest change HubSpot has not seen
            report["emails"] = _counts(session, EmailSend.status)
            report["dead_letters_by_kind"] = {
                str(kind): count
                for kind, count in session.execute(
                    select(DeadLetter.kind, func.count())
                    .where(DeadLetter.status == DeadLetterStatus.OPEN)
                    .group_by(DeadLetter.kind)
                ).all()
            }
            report["dead_letters"] = sum(report["dead_letters_by_kind"].values())
            auth = session.get(ServiceState, AUTH_STATE)
            report["erasures"] = erasure.pending(session, now)
            report["hubspot"], hubspot_reasons, hubspot_notes = hubspot_status(session, now)
            # Timeline writes by kind and outcome: {"note": {"done": 120, "pending": 3}, "form": {...}}
            report["timeline"] = {}
            for (kind, state), count in activity_counts(session).items():
                report["timeline"].setdefault(kind, {})[state] = count
        report["reasons"] += hubspot_reasons
        report["notes"] += hubspot_notes
        if oldest and now - oldest > STALE_PENDING:
            report["reasons"].append(f"oldest pending submission waits {report['outbox_oldest_pending_seconds']:.0f}s")
        if auth is not None and not auth.value.get("ok"):
            report["reasons"].append(f"HubSpot refuses the token: {auth.value.get('detail')}")
        report["hubspot"]["auth_ok"] = auth is None or bool(auth.value.get("ok"))
        owed = report["erasures"]
        if owed["pending"] and owed["most_attempts"]:  # tried and failed: a person is still in HubSpot
            report["reasons"].append(
                f"{owed['pending']} HubSpot erasure(s) not done, retried until they are: {owed['last_error']}"
            )
        elif owed["pending"]:
            report["notes"].append(f"{owed['pending']} HubSpot erasure(s) under way")
        if report["dead_letters"]:
            report["notes"].append(f"{report['dead_letters']} dead letters: see `leadsync failed list`")
        if report["emails"].get("failed"):
            report["notes"].append(f"{report['emails']['failed']} emails failed permanently")
        pending_crm = report["crm"].get("pending", 0)
        if not settings.hubspot_enabled:
            report["notes"].append(f"CRM sync held: HUBSPOT_ACCESS_TOKEN is not set ({pending_crm} contacts pending)")
    report["crm_sync"] = "enabled" if settings.hubspot_enabled else "held (no HUBSPOT_ACCESS_TOKEN)"
    report["verdict"] = "degraded" if report["reasons"] else "healthy"
    return report


# ----------------------------------------------------------------------------------------- the screen


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(report: dict[str, Any], console: Any = None) -> None:
    """`leadsync status`: one screen, one line per concern, the verdict last (colour only on a terminal)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    piped = console is None and not sys.stdout.isatty()
    if console is None:  # piped: wide (no wrapping mid-line), plain, no trailing padding
        console = Console(width=160, record=True, file=io.StringIO()) if piped else Console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")

    def state(value: str) -> Text:
        return Text(value, style="green" if value == "ok" else "red")

    grid.add_row("database", state(report["database"]))
    grid.add_row("broker", state(report["broker"]))
    queues = report.get("queues") or {}
    if queues:
        grid.add_row("queues", "  ".join(f"{name} {'?' if n is None else n}" for name, n in queues.items()))
    if "submissions" in report:
        by_form = "; ".join(
            f"{form}: {_counts_text(counts)}" for form, counts in sorted(report["submissions_by_form"].items())
        )
        grid.add_row("submissions", _counts_text(report["submissions"]) + (f"  ({by_form})" if by_form else ""))
        oldest = report["outbox_oldest_pending_seconds"]
        grid.add_row(
            "outbox",
            Text(
                f"pending {report['outbox_pending']}, oldest {_duration(oldest)}",
                style="yellow" if oldest > STALE_PENDING.total_seconds() else "",
            ),
        )
        grid.add_row("spam today", _counts_text(report.get("spam_today") or {}))
        grid.add_row("contacts", str(report["contacts"]))
        grid.add_row("emails", _counts_text(report["emails"]))
        crm = f"{_counts_text(report['crm'])}; oldest unsynced change {_duration(report['crm_sync_lag_seconds'])}"
        grid.add_row("crm", f"{crm}  [{report['crm_sync']}]")
        hubspot = report.get("hubspot") or {}
        if report["crm_sync"] == "enabled":
            auth = Text("token ok", "green") if hubspot.get("auth_ok", True) else Text("token REFUSED", "bold red")
            line = Text.assemble(auth, f"  429s today {hubspot.get('rate_limited_today', 0)}")
            if hubspot.get("daily_limit") is not None and hubspot.get("daily_remaining") is not None:
                line.append(f"  daily budget {hubspot['daily_remaining']:,} of {hubspot['daily_limit']:,} left")
            if hubspot.get("paused_until"):
                line.append(f"  paused until {hubspot['paused_until']}", "yellow")
            grid.add_row("hubspot", line)
        timeline = report.get("timeline") or {}
        if timeline:
            grid.add_row("timeline", "; ".join(f"{kind}s {_counts_text(timeline[kind])}" for kind in sorted(timeline)))
        owed = report.get("erasures") or {"pending": 0}
        if owed["pending"]:
            grid.add_row(
                "erasures",
                Text(
                    f"{owed['pending']} HubSpot delete(s) owed, oldest {_duration(owed['oldest_seconds'])}, "
                    f"next try {owed['next_attempt_at'] or 'now'}",
                    "yellow",
                ),
            )
        letters = report["dead_letters"]
        by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(report["dead_letters_by_kind"].items()))
        grid.add_row(
            "dead letters", Text(f"{letters} open" + (f" ({by_kind})" if by_kind else ""), "red" if letters else "")
        )
    for note in report["notes"]:
        grid.add_row("note", Text(note, "dim"))
    reasons = "; ".join(report["reasons"])
    healthy = report["verdict"] == "healthy"
    verdict = Text(report["verdict"], style="bold green" if healthy else "bold red")
    if reasons:
        verdict.append(f": {reasons}")
    grid.add_row("verdict", verdict)
    console.print(grid)
    if piped:
        sys.stdout.write("".join(line.rstrip() + "\n" for line in console.export_text().splitlines()))
