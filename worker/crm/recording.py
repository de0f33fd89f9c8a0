"""What a CRM flush learned, and storing it: record ids, rejections (each a dead letter), pushed
preferences; the contacts neither synced nor rejected are given back for the next flush.

Only the version that was sent is settled: a change that landed while the call was out bumped the
version, so the contact stays pending.

Example:
    >>> progress = Progress()
    >>> absorb(progress, crm.upsert_by_email(inputs))
    >>> record(session_factory, claimed, progress, failure=None, now=utcnow())  # (synced, rejected, deferred)
    (99, 1, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, case, func, update
from sqlalchemy.orm import Session

from leadsync.storage.models import Contact, CrmStatus
from leadsync.worker import dead_letters
from leadsync.worker.crm.lease import Claimed
from leadsync.worker.crm.port import CrmError, InputError, WriteOutcome
from leadsync.worker.crm.preferences import PushOutcome


@dataclass
class Progress:
    """What a flush learned so far; recorded even when a later call fails."""

    ids: dict[int, str] = field(default_factory=dict)  # contact id -> HubSpot record id
    errors: dict[int, InputError] = field(default_factory=dict)
    stale: set[int] = field(default_factory=set)  # their stored record id no longer exists
    preferences: PushOutcome = field(default_factory=PushOutcome)


def absorb(progress: Progress, outcome: WriteOutcome) -> None:
    for trace_id, record_id in outcome.ids.items():
        progress.ids[int(trace_id)] = record_id
        progress.errors.pop(int(trace_id), None)
    for trace_id, error in outcome.errors.items():
        progress.errors[int(trace_id)] = error


def record(
    session_factory: Callable[[], Session],
    claimed: list[Claimed],
    progress: Progress,
    failure: CrmError | None,
    now: datetime,
) -> tuple[int, int, int]:
    """Store ids, pushed preferences and rejections, give the rest back; returns (synced, rejected, deferred).

    A contact is synced when its properties were written and its preference change (if it owed one) pushed.
    """
    pushed, refused = progress.preferences.pushed, progress.preferences.errors
    synced, rejected, leftover = [], [], []
    for contact in claimed:
        owes = contact.preference is not None and contact.contact_id not in pushed
        if contact.contact_id in progress.errors or contact.contact_id in refused:
            rejected.append(contact)
        elif contact.contact_id in progress.ids and not owes:
            synced.append(contact)
        else:
            leftover.append(contact)
    # Only the version we sent is settled; a newer change keeps the contact pending.
    values = {
        "crm_claimed_until": None,
        "crm_synced_version": bindparam("p_version"),
        "crm_status": case(
            (Contact.crm_version == bindparam("p_version"), bindparam("p_status")), else_=Contact.crm_status
        ),
        "crm_error": bindparam("p_error"),
        "crm_attempts": 0,
        "hubspot_id": bindparam("p_hubspot_id"),
        "hubspot_stage": bindparam("p_stage"),
        "hubspot_newsletter_status": func.coalesce(bindparam("p_pushed"), Contact.hubspot_newsletter_status),
    }
    settle = update(Contact).where(Contact.id == bindparam("p_id"))
    synced_rows = [
        {
            "p_id": c.contact_id,
            "p_version": c.version,
            "p_status": CrmStatus.SYNCED,
            "p_error": None,
            "p_hubspot_id": progress.ids[c.contact_id],
            "p_stage": c.stage,
            "p_pushed": pushed.get(c.contact_id),
            "p_at": now,
        }
        for c in synced
    ]
    rejected_rows = []
    for c in rejected:
        error = progress.errors.get(c.contact_id) or refused[c.contact_id]
        written = c.contact_id in progress.ids  # (only its preference was refused)
        stale = c.contact_id in progress.stale
        rejected_rows.append(
            {
                "p_id": c.contact_id,
                "p_version": c.version,
                "p_status": CrmStatus.REJECTED,
                "p_error": f"{error.code}: {error.message}"[:2000],
                "p_hubspot_id": progress.ids[c.contact_id] if written else None if stale else c.hubspot_id,
                "p_stage": c.stage if written else None if stale else c.written_stage,
                "p_pushed": pushed.get(c.contact_id),
            }
        )
    with session_factory() as session, session.begin():
        connection = session.connection()
        if synced_rows:
            connection.execute(settle.values(**values, crm_synced_at=bindparam("p_at")), synced_rows)
        if rejected_rows:
            connection.execute(settle.values(**values), rejected_rows)
            for row in rejected_rows:  # for a human: `leadsync failed list`, retry once the data is fixed
                dead_letters.record(session, "crm", str(row["p_id"]), "leadsync.flush_crm", str(row["p_error"]))
        if leftover:
            values: dict[str, object] = {"crm_claimed_until": None}
            if failure is not None:
                values.update(crm_attempts=Contact.crm_attempts + 1, crm_error=str(failure)[:2000])
            session.execute(update(Contact).where(Contact.id.in_([c.contact_id for c in leftover])).values(**values))
        gone = [c.contact_id for c in leftover if c.contact_id in progress.stale and c.contact_id not in progress.ids]
        if gone:
            session.execute(update(Contact).where(Contact.id.in_(gone)).values(hubspot_id=None, hubspot_stage=None))
        known = [  # written, but the preference push did not happen: next time by record id
            {"p_id": c.contact_id, "p_hubspot_id": progress.ids[c.contact_id], "p_stage": c.stage}
            for c in leftover
            if c.contact_id in progress.ids
        ]
        if known:
            connection.execute(
                update(Contact)
                .where(Contact.id == bindparam("p_id"))
                .values(hubspot_id=bindparam("p_hubspot_id"), hubspot_stage=bindparam("p_stage")),
                known,
            )
    return len(synced), len(rejected), len(leftover)
