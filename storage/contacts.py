"""Finding the one contact row for a person, race-free across worker processes.

Uniqueness lives in the database: `INSERT ... ON CONFLICT (email) DO NOTHING`, then the rows are
locked (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite serializes writers with `BEGIN IMMEDIATE`)
so two workers merging submissions of one person take turns.

And the one rule for "HubSpot must see this change": `mark_for_sync` (a loaded row) and
`sync_pending_values` (an UPDATE statement) bump `crm_version`, so a flush in flight leaves it pending.

Example:
    >>> mark_for_sync(contact, utcnow())
    >>> contact.crm_status, contact.crm_version
    ('pending', 4)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from leadsync.kinds import NewsletterStatus
from leadsync.signing import Claims, matches
from leadsync.storage.models import Contact, CrmStatus


def new_contact_values(email: str, now: datetime, **values: object) -> dict[str, object]:
    """Column values of a brand-new contact (pending CRM sync); `values` override or add fields."""
    return {
        "email": email,
        "field_times": {},
        "lifecycle_stage": "subscriber",
        "newsletter_status": NewsletterStatus.NONE,
        "first_seen_at": now,
        "last_seen_at": now,
        "submissions_count": 0,
        "crm_status": CrmStatus.PENDING,
        "crm_version": 1,
        "crm_synced_version": 0,
        "crm_changed_at": now,
        "crm_attempts": 0,
        **values,
    }


def lock_or_create_contacts(
    session: Session, emails: Iterable[str], now: datetime
) -> tuple[dict[str, Contact], set[str]]:
    """The locked contact of each of `emails`, created when new; and which of them this call created.

    Rows are created and locked in email order, the same order in every worker, so two workers with
    overlapping batches wait for each other instead of deadlocking.
    """
    ordered = sorted(set(emails))
    if not ordered:
        return {}, set()
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(Contact)
        .values([new_contact_values(email, now) for email in ordered])
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(Contact.email)
    )
    created = set(session.scalars(statement))  # RETURNING yields no row on conflict
    contacts = session.scalars(
        select(Contact)
        .where(Contact.email.in_(ordered))
        .order_by(Contact.email)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {contact.email: contact for contact in contacts}, created


def sync_pending_values(now: datetime) -> dict[str, Any]:
    """The values of an UPDATE that marks contacts for the next CRM flush (the same rule as `mark_for_sync`)."""
    return {"crm_status": CrmStatus.PENDING, "crm_version": Contact.crm_version + 1, "crm_changed_at": now}


def mark_for_sync(contact: Contact, now: datetime) -> None:
    """The next CRM flush writes this contact: a new version (a flush holding the old one settles only that),
    pending, changed now (the lag `leadsync status` shows counts from here)."""
    contact.crm_version += 1
    contact.crm_status = CrmStatus.PENDING
    contact.crm_changed_at = now


def set_newsletter_status(session: Session, claims: Claims, status: str, now: datetime) -> Contact | None:
    """Apply a confirm or unsubscribe click; None when the link's contact is gone or its address changed,
    or when it is a confirm link issued before the person's latest unsubscribe.

    The change is marked for the next CRM flush, like any other change to the contact.
    """
    contact = session.get(Contact, claims.contact_id, with_for_update=True)
    if contact is None or not matches(claims, contact.email):
        return None
    unsubscribed = contact.newsletter_unsubscribed_at
    if status == NewsletterStatus.SUBSCRIBED and unsubscribed and claims.issued_ms < unsubscribed.timestamp() * 1000:
        return None  # a confirm link from before the person's latest unsubscribe: only a newer sign-up confirms
    if contact.newsletter_status == status:
        return contact  # a second click changes nothing
    contact.newsletter_status = status
    if status == NewsletterStatus.SUBSCRIBED:
        contact.newsletter_confirmed_at = now
    elif status == NewsletterStatus.UNSUBSCRIBED:
        contact.newsletter_unsubscribed_at = now
    mark_for_sync(contact, now)
    return contact
