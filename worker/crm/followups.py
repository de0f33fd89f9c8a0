"""Follow-up for the sales team (HUBSPOT_OWNER_IDS): an owner by round robin and a task per new packet lead.

A contact's first info-packet request gets an owner from HUBSPOT_OWNER_IDS, in turn (the turn is a counter
in `service_state`, taken under a row lock, so two workers never hand out the same turn), kept on the
contact (`owner_id`). The owner is written to HubSpot's `hubspot_owner_id` by the contact sync only while the
record has no owner (worker/crm/activities.py reads it first), so an owner a sales rep chose is never replaced;
the task goes to whoever owns the record. The task, "Follow up: information packet requested", is due at
09:00 UTC on the next business day (Monday to Friday) after the request.

Example:
    >>> next_business_day(datetime(2026, 12, 4, 15, 0, tzinfo=UTC))   # a Friday afternoon
    datetime.datetime(2026, 12, 7, 9, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html import escape

from sqlalchemy.orm import Session

from leadsync.storage.models import ServiceState, Submission
from leadsync.worker.crm.notes import epoch_ms, lines, token

BODY = "hs_task_body"
SUBJECT = "Follow up: information packet requested"
ASSOCIATION_TASK_TO_CONTACT = 204  # HUBSPOT_DEFINED task_to_contact
TURN_STATE = "owner_round_robin"  # {"next": int}
DUE_HOUR = 9  # UTC: the start of a working day


def next_business_day(moment: datetime) -> datetime:
    """09:00 UTC on the next day from Monday to Friday (public holidays are the clinic's to move)."""
    day = moment.astimezone(UTC).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, DUE_HOUR, tzinfo=UTC)


def take_turns(session: Session, owners: list[str], count: int) -> list[str]:
    """The next `count` owners in turn; the caller's transaction holds the counter row until it commits."""
    if not owners or count <= 0:
        return []
    row = session.get(ServiceState, TURN_STATE, with_for_update=True)
    start = int(row.value.get("next", 0)) if row is not None else 0
    picked = [owners[(start + i) % len(owners)] for i in range(count)]
    value = {"next": (start + count) % len(owners)}
    if row is None:
        session.add(ServiceState(key=TURN_STATE, value=value))
    else:
        row.value = value
    return picked


def task_properties(submission: Submission, owner_id: str | None) -> dict[str, str]:
    """The task: subject, what the lead asked for (the note's facts), due time, owner, reference token."""
    _heading, facts = lines(submission, None)
    items = "".join(f"<li>{escape(fact)}</li>" for fact in facts)
    body = (
        f"<p>Call or email about the information packet.</p><ul>{items}</ul><p>leadsync ref: {token(submission.id)}</p>"
    )
    properties = {
        "hs_task_subject": SUBJECT,
        BODY: body,
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": "MEDIUM",
        "hs_task_type": "TODO",
        "hs_timestamp": epoch_ms(next_business_day(submission.received_at)),
    }
    if owner_id:
        properties["hubspot_owner_id"] = owner_id
    return properties
