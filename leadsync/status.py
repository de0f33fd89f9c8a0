"""One picture of the system for operations: `leadsync status` renders it, `--json` prints it, and the
web process's `/metrics` exports it as gauges (leadsync/metrics.py), so the terminal, scripts and
Prometheus read the same numbers from the same queries.

The report is a `StatusReport`; `to_dict()` is the `--json` shape (the counts read from the database
are absent while it is down).

Example:
    >>> report = collect(get_settings())
    >>> report.verdict, report.reasons
    ('healthy', [])
"""

from __future__ import annotations

import io
import sys
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from leadsync.config import Settings
from leadsync.storage.db import ping, session_scope
from leadsync.storage.models import (
    Contact,
    CrmStatus,
    DeadLetter,
    DeadLetterStatus,
    EmailSend,
    SpamCount,
    Submission,
    SubmissionStatus,
    utcnow,
)
from leadsync.worker import erasure
from leadsync.worker.crm.activities import activity_counts
from leadsync.worker.crm.service_state import hubspot_status, token_status
from leadsync.worker.enqueue import broker_ping, queue_depths

STALE_PENDING = timedelta(minutes=5)


def _counts(session: Any, column: Any) -> dict[str, int]:
    return {str(key): count for key, count in session.execute(select(column, func.count()).group_by(column)).all()}


def _age(now: Any, oldest: Any) -> float:
    return round((now - oldest).total_seconds(), 1) if oldest else 0.0


@dataclass
class StoredCounts:
    """What the database says; absent from the report while the database is down."""

    submissions: dict[str, int]  # by status, spam included (from the counters)
    spam_today: dict[str, int]  # by reason
    submissions_by_form: dict[str, dict[str, int]]  # form -> status -> count
    outbox_pending: int
    outbox_oldest_pending_seconds: float
    contacts: int
    crm: dict[str, int]  # contacts by CRM sync status
    crm_sync_lag_seconds: float  # the oldest change HubSpot has not seen
    emails: dict[str, int]  # sends by status
    dead_letters_by_kind: dict[str, int]  # open ones
    dead_letters: int
    erasures: dict[str, Any]  # worker/erasure.py `pending`
    hubspot: dict[str, Any]  # budget, last 429, pause, auth_ok
    timeline: dict[str, dict[str, int]]  # {"note": {"done": 120, "pending": 3}, "form": {...}}


@dataclass
class StatusReport:
    """`leadsync status`: checks, counts, a verdict (healthy or degraded) and the reasons for it."""

    database: str  # "ok" or "unavailable: <error class>"
    broker: str
    queues: dict[str, int | None]  # messages waiting; None where the transport cannot say
    crm_sync: str = ""  # "enabled" or why it is held
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stored: StoredCounts | None = None

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    def to_dict(self) -> dict[str, Any]:
        """The `--json` shape: one flat object, the stored counts beside the checks."""
        flat = {key: value for key, value in asdict(self).items() if key != "stored"}
        if self.stored is not None:
            flat.update(asdict(self.stored))
        return flat


def collect(settings: Settings) -> StatusReport:
    """Counts and checks; `verdict` is healthy or degraded, `reasons` says why."""
    reasons: list[str] = []
    notes: list[str] = []
    checks: dict[str, str] = {}
    for name, check in (("database", ping), ("broker", broker_ping)):
        try:
            check()
            checks[name] = "ok"
        except Exception as error:  # any failure is reported, not raised
            checks[name] = f"unavailable: {error.__class__.__name__}"
            reasons.append(f"{name} unavailable")
    report = StatusReport(
        database=checks["database"],
        broker=checks["broker"],
        # Messages waiting in each queue (None: this transport cannot say, or the broker is down).
        queues=queue_depths() if checks["broker"] == "ok" else {},
        reasons=reasons,
        notes=notes,
    )
    if report.database == "ok":
        report.stored = _stored_counts(settings, reasons, notes)
    report.crm_sync = "enabled" if settings.hubspot_enabled else "held (no HUBSPOT_ACCESS_TOKEN)"
    report.verdict = "degraded" if reasons else "healthy"
    return report


def _stored_counts(settings: Settings, reasons: list[str], notes: list[str]) -> StoredCounts:
    """The database's part of the report; appends its reasons and notes."""
    now = utcnow()
    with session_scope() as session:
        oldest = session.scalar(
            select(func.min(Submission.received_at)).where(Submission.status == SubmissionStatus.PENDING)
        )
        submissions = _counts(session, Submission.status)
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
        submissions.pop(SubmissionStatus.SPAM, None)
        if spam_by_form:
            submissions[SubmissionStatus.SPAM] = int(sum(spam_by_form.values()))
        spam_today = {
            str(reason): int(n)
            for reason, n in session.execute(
                select(SpamCount.reason, func.sum(SpamCount.count))
                .where(SpamCount.day == now.date())
                .group_by(SpamCount.reason)
            ).all()
        }
        crm_oldest = session.scalar(
            select(func.min(Contact.crm_changed_at)).where(Contact.crm_status == CrmStatus.PENDING)
        )
        dead_letters_by_kind = {
            str(kind): count
            for kind, count in session.execute(
                select(DeadLetter.kind, func.count())
                .where(DeadLetter.status == DeadLetterStatus.OPEN)
                .group_by(DeadLetter.kind)
            ).all()
        }
        auth_ok, auth_refusal = token_status(session)
        erasures = erasure.pending(session, now)
        hubspot, hubspot_reasons, hubspot_notes = hubspot_status(session, now)
        timeline: dict[str, dict[str, int]] = {}
        for (kind, state), count in activity_counts(session).items():
            timeline.setdefault(kind, {})[state] = count
        stored = StoredCounts(
            submissions=submissions,
            spam_today=spam_today,
            submissions_by_form=by_form,
            outbox_pending=submissions.get(SubmissionStatus.PENDING, 0),
            outbox_oldest_pending_seconds=_age(now, oldest),
            contacts=session.scalar(select(func.count()).select_from(Contact)) or 0,
            crm=_counts(session, Contact.crm_status),
            crm_sync_lag_seconds=_age(now, crm_oldest),
            emails=_counts(session, EmailSend.status),
            dead_letters_by_kind=dead_letters_by_kind,
            dead_letters=sum(dead_letters_by_kind.values()),
            erasures=erasures,
            hubspot=hubspot,
            timeline=timeline,
        )
    reasons += hubspot_reasons
    notes += hubspot_notes
    if oldest and now - oldest > STALE_PENDING:
        reasons.append(f"oldest pending submission waits {stored.outbox_oldest_pending_seconds:.0f}s")
    if not auth_ok:
        reasons.append(f"HubSpot refuses the token: {auth_refusal}")
    stored.hubspot["auth_ok"] = auth_ok
    owed = stored.erasures
    if owed["pending"] and owed["most_attempts"]:  # tried and failed: a person is still in HubSpot
        reasons.append(f"{owed['pending']} HubSpot erasure(s) not done, retried until they are: {owed['last_error']}")
    elif owed["pending"]:
        notes.append(f"{owed['pending']} HubSpot erasure(s) under way")
    if stored.dead_letters:
        notes.append(f"{stored.dead_letters} dead letters: see `leadsync failed list`")
    if stored.emails.get("failed"):
        notes.append(f"{stored.emails['failed']} emails failed permanently")
    if not settings.hubspot_enabled:
        pending_crm = stored.crm.get("pending", 0)
        notes.append(f"CRM sync held: HUBSPOT_ACCESS_TOKEN is not set ({pending_crm} contacts pending)")
    return stored


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


def render(report: StatusReport, console: Any = None) -> None:
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

    grid.add_row("database", state(report.database))
    grid.add_row("broker", state(report.broker))
    queues = report.queues
    if queues:
        grid.add_row("queues", "  ".join(f"{name} {'?' if n is None else n}" for name, n in queues.items()))
    stored = report.stored
    if stored is not None:
        by_form = "; ".join(
            f"{form}: {_counts_text(counts)}" for form, counts in sorted(stored.submissions_by_form.items())
        )
        grid.add_row("submissions", _counts_text(stored.submissions) + (f"  ({by_form})" if by_form else ""))
        oldest = stored.outbox_oldest_pending_seconds
        grid.add_row(
            "outbox",
            Text(
                f"pending {stored.outbox_pending}, oldest {_duration(oldest)}",
                style="yellow" if oldest > STALE_PENDING.total_seconds() else "",
            ),
        )
        grid.add_row("spam today", _counts_text(stored.spam_today))
        grid.add_row("contacts", str(stored.contacts))
        grid.add_row("emails", _counts_text(stored.emails))
        crm = f"{_counts_text(stored.crm)}; oldest unsynced change {_duration(stored.crm_sync_lag_seconds)}"
        grid.add_row("crm", f"{crm}  [{report.crm_sync}]")
        hubspot = stored.hubspot
        if report.crm_sync == "enabled":
            auth = Text("token ok", "green") if hubspot.get("auth_ok", True) else Text("token REFUSED", "bold red")
            line = Text.assemble(auth, f"  429s today {hubspot.get('rate_limited_today', 0)}")
            if hubspot.get("daily_limit") is not None and hubspot.get("daily_remaining") is not None:
                line.append(f"  daily budget {hubspot['daily_remaining']:,} of {hubspot['daily_limit']:,} left")
            if hubspot.get("paused_until"):
                line.append(f"  paused until {hubspot['paused_until']}", "yellow")
            grid.add_row("hubspot", line)
        timeline = stored.timeline
        if timeline:
            grid.add_row("timeline", "; ".join(f"{kind}s {_counts_text(timeline[kind])}" for kind in sorted(timeline)))
        owed = stored.erasures
        if owed["pending"]:
            grid.add_row(
                "erasures",
                Text(
                    f"{owed['pending']} HubSpot delete(s) owed, oldest {_duration(owed['oldest_seconds'])}, "
                    f"next try {owed['next_attempt_at'] or 'now'}",
                    "yellow",
                ),
            )
        letters = stored.dead_letters
        by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(stored.dead_letters_by_kind.items()))
        grid.add_row(
            "dead letters", Text(f"{letters} open" + (f" ({by_kind})" if by_kind else ""), "red" if letters else "")
        )
    for note in report.notes:
        grid.add_row("note", Text(note, "dim"))
    reasons = "; ".join(report.reasons)
    verdict = Text(report.verdict, style="bold green" if report.healthy else "bold red")
    if reasons:
        verdict.append(f": {reasons}")
    grid.add_row("verdict", verdict)
    console.print(grid)
    if piped:
        sys.stdout.write("".join(line.rstrip() + "\n" for line in console.export_text().splitlines()))
