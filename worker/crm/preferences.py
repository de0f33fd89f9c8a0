"""Newsletter consent as HubSpot communication preferences: only a confirmed double opt-in subscribes.

With HUBSPOT_SUBSCRIPTION_ID set, a contact whose newsletter status became `subscribed` or `unsubscribed`
since it was last pushed owes HubSpot one call, `/communication-preferences/v3/subscribe` or
`/unsubscribe` for that subscription type, with a legal basis (consent with notice: the double opt-in)
and an explanation naming the click and its time. `pending` and `none` owe nothing, so an address that
never confirmed is never sent as subscribed.

The push is a step of the CRM flush (worker/crm/sync.py): after the contact's properties are written,
through the same client, so the shared rate limiter, the retries and the failure classes are the ones
every other call has. What was pushed is kept in `contacts.hubspot_newsletter_status`; a later change
differs from it, so it is pushed again. A push that did not happen (429, outage) keeps the contact
pending for the next flush.

HubSpot answers a subscribe of a subscribed address, and an unsubscribe of an unsubscribed one, with a
400 ("... is already subscribed ..."). That is the state we asked for, so it counts as pushed: a push
retried after a timeout, or after a crash before we stored it, is harmless.

Example:
    >>> change = owed(contact, "4910003")
    >>> change.status, change.subscribe
    ('subscribed', True)
    >>> outcome = PushOutcome()
    >>> push(crm, "4910003", {contact.id: change}, outcome)
    >>> outcome.pushed
    {17: 'subscribed'}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from leadsync.kinds import NewsletterStatus
from leadsync.worker.crm.port import Crm, CrmRejected, InputError

log = logging.getLogger(__name__)

SUBSCRIBED, UNSUBSCRIBED = NewsletterStatus.SUBSCRIBED, NewsletterStatus.UNSUBSCRIBED
LEGAL_BASIS = "CONSENT_WITH_NOTICE"  # the person asked for it and confirmed it (or withdrew it)


@dataclass(frozen=True)
class PreferenceChange:
    """What one contact owes HubSpot's communication preferences."""

    email: str
    status: str  # subscribed | unsubscribed
    explanation: str  # HubSpot's legalBasisExplanation

    @property
    def subscribe(self) -> bool:
        return self.status == SUBSCRIBED


@dataclass
class PushOutcome:
    pushed: dict[int, str] = field(default_factory=dict)  # contact id -> the status HubSpot now holds
    errors: dict[int, InputError] = field(default_factory=dict)  # contact id -> why HubSpot refused it


def owed(contact: Any, subscription_id: str | None) -> PreferenceChange | None:
    """The change `contact` owes HubSpot, or None (no subscription id, unconfirmed, or already pushed)."""
    status = contact.newsletter_status
    if not subscription_id or status not in (SUBSCRIBED, UNSUBSCRIBED):
        return None
    if status == contact.hubspot_newsletter_status:
        return None
    if status == SUBSCRIBED:
        what, at = "Newsletter sign-up confirmed by double opt-in (link clicked)", contact.newsletter_confirmed_at
    else:
        what, at = "Unsubscribed with the newsletter's unsubscribe link", contact.newsletter_unsubscribed_at
    when = f" at {at.astimezone(UTC).isoformat(timespec='seconds')}" if isinstance(at, datetime) else ""
    return PreferenceChange(contact.email.strip().lower(), status, f"{what}{when}.")


def already(error: CrmRejected, subscribe: bool) -> bool:
    """HubSpot's refusal says the address is already in the state we asked for."""
    wanted = "already subscribed" if subscribe else "already unsubscribed"
    return error.status == 400 and wanted in str(error).lower()


def push(crm: Crm, subscription_id: str, changes: Mapping[int, PreferenceChange], outcome: PushOutcome) -> None:
    """One call per change, in order; fills `outcome` as it goes.

    A refusal (other than "already") is recorded for that contact and the others go on; a 429, an outage
    or a refused token raises CrmError, leaving in `outcome` what went through before it.
    """
    for contact_id, change in changes.items():
        try:
            crm.set_subscription(change.email, subscription_id, change.subscribe, LEGAL_BASIS, change.explanation)
        except CrmRejected as error:
            if not already(error, change.subscribe):
                log.warning("HubSpot refused the %s of contact %s: %s", change.status, contact_id, error)
                outcome.errors[contact_id] = InputError(error.code, str(error))
                continue
        outcome.pushed[contact_id] = change.status
