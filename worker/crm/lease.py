"""Leasing pending contacts for a CRM flush: up to a batch of rows whose change HubSpot has not seen,
held for CRM_LEASE_SECONDS (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so flushers on several workers take
disjoint batches), one per lowercased email and one per record id (two inputs for one record fail the
whole batch), each with the properties to send.

Example:
    >>> claimed = claim(session_factory, mapping, 100, utcnow(), None, timedelta(seconds=60))
    >>> claimed[0].email, claimed[0].by_email["email"]
    ('ann@example.org', 'ann@example.org')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from leadsync.storage.models import Contact, CrmStatus, Submission, SubmissionStatus
from leadsync.worker.crm.mapping import Mapping, contact_properties
from leadsync.worker.crm.preferences import PreferenceChange, owed


@dataclass(frozen=True)
class Claimed:
    """One leased contact and what to send for it."""

    contact_id: int
    version: int
    email: str
    hubspot_id: str | None
    stage: str  # the lifecycle stage as sent
    written_stage: str | None  # the stage HubSpot got last time
    by_id: dict[str, str]  # properties for an update of the known record
    by_email: dict[str, str]  # properties for an upsert by email
    preference: PreferenceChange | None = None  # a newsletter status HubSpot's preferences have not seen

    @property
    def trace_id(self) -> str:
        return str(self.contact_id)


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(Contact.crm_status == CrmStatus.PENDING)) or 0


def filling(session_factory: Callable[[], Session], size: int, now: datetime, wait: timedelta) -> int:
    """How many contacts a partial batch should keep waiting for company, 0 to send it now (Nagle's rule).

    A batch waits when fewer than `size` contacts are due, more are on their way (a stored submission the
    worker has not processed yet: a burst is arriving) and the oldest due one has waited less than `wait`.
    So a burst goes out in full batches of 100 (one upsert and one notes call each, HubSpot's 100 calls per
    10 s go to full batches), a lone lead is sent at once, and no contact waits more than `wait` for company.
    """
    with session_factory() as session:
        due = (
            select(Contact.crm_changed_at)
            .where(
                Contact.crm_status == CrmStatus.PENDING,
                or_(Contact.crm_claimed_until.is_(None), Contact.crm_claimed_until < now),
            )
            .order_by(Contact.crm_changed_at)
            .limit(size)
            .subquery()
        )
        count, oldest = session.execute(select(func.count(), func.min(due.c.crm_changed_at))).one()
        if not count or count >= size or oldest is None or oldest <= now - wait:
            return 0
        coming = session.scalar(select(Submission.id).where(Submission.status == SubmissionStatus.PENDING).limit(1))
        return count if coming is not None else 0


def claim(
    session_factory: Callable[[], Session],
    mapping: Mapping,
    limit: int,
    now: datetime,
    subscription_id: str | None,
    lease: timedelta,
) -> list[Claimed]:
    """Lease up to `limit` pending contacts for `lease` (CRM_LEASE_SECONDS), one per email and one per record."""
    with session_factory() as session, session.begin():
        contacts = session.scalars(
            select(Contact)
            .where(
                Contact.crm_status == CrmStatus.PENDING,
                or_(Contact.crm_claimed_until.is_(None), Contact.crm_claimed_until < now),
            )
            .order_by(Contact.crm_changed_at, Contact.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        claimed: list[Claimed] = []
        emails: set[str] = set()
        records: set[str] = set()
        for contact in contacts:
            email = contact.email.strip().lower()
            if email in emails or (contact.hubspot_id and contact.hubspot_id in records):
                continue  # two inputs for one record fail the whole batch: this one waits for the next
            emails.add(email)
            if contact.hubspot_id:
                records.add(contact.hubspot_id)
            claimed.append(
                Claimed(
                    contact_id=contact.id,
                    version=contact.crm_version,
                    email=email,
                    hubspot_id=contact.hubspot_id,
                    stage=contact.lifecycle_stage,
                    written_stage=contact.hubspot_stage,
                    by_id=contact_properties(contact, mapping, by_id=True),
                    by_email={**contact_properties(contact, mapping), "email": email},
                    preference=owed(contact, subscription_id),
                )
            )
        if claimed:
            session.execute(
                update(Contact)
                .where(Contact.id.in_([c.contact_id for c in claimed]))
                .values(crm_claimed_until=now + lease)
            )
        return claimed


def not_forgotten(session_factory: Callable[[], Session], contacts: list[Claimed]) -> list[Claimed]:
    """The contacts whose row still exists: `forget` deletes the row (and writes the suppression entry)
    in one transaction, so a row that exists is not forgotten. One indexed query, before each write."""
    if not contacts:
        return []
    with session_factory() as session:
        present = set(session.scalars(select(Contact.id).where(Contact.id.in_([c.contact_id for c in contacts]))))
    return [c for c in contacts if c.contact_id in present]
