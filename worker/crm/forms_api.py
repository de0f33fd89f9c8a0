"""Attribution through HubSpot's own forms path: the submission sent to the Forms API (v3 integration submit).

With HUBSPOT_PORTAL_ID and a form GUID for the leadsync form (HUBSPOT_FORM_GUIDS), each info-packet request
and each confirmed newsletter sign-up is also posted, authenticated, to
`/submissions/v3/integration/secure/submit/{portalId}/{formGuid}` with the visitor's `hutk` cookie, the page
(`pageUri`, `pageName`), the IP and the consent options, so HubSpot ties the visitor's earlier page views
and original source to the contact and the account's form workflows fire. It runs in the CRM flush, after
the contact sync, never in the email path; a failure leaves the row pending for the next flush.

A newsletter sign-up is sent once confirmed (double opt-in): an unconfirmed address must not start HubSpot's
marketing workflows. HubSpot's Forms API has no idempotency key and no search, so a post whose answer never
came (a worker killed mid-call, a timeout) is checked on the contact before it is sent again: a landed
submission sets the record's `recent_conversion_date` to our `submittedAt` (`landed`). A second post would
be a second timeline entry and a second run of the form's workflows (a second email from HubSpot).

Example:
    >>> payload = form_payload(submission, contact_email, settings)
    >>> payload["context"]["hutk"], payload["context"]["pageUri"]
    ('6f0b1e0c0f1a4e8f9d2c3b4a5f6e7d8c', 'https://clinic.example/knee')
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from leadsync.config import Settings
from leadsync.storage.models import Submission
from leadsync.worker.crm.notes import page_title

HUTK = re.compile(r"^[0-9a-f]{32}$")  # HubSpot's hubspotutk cookie; anything else is answered INVALID_HUTK
FIELDS = (("first_name", "firstname"), ("last_name", "lastname"), ("phone", "phone"))


def configured(settings: Settings, form: str) -> bool:
    return bool(settings.hubspot_portal_id and settings.hubspot_form_guids.get(form))


def submit_url(settings: Settings, form: str) -> str:
    portal = quote(str(settings.hubspot_portal_id), safe="")
    guid = quote(settings.hubspot_form_guids[form], safe="")
    return f"{settings.hubspot_forms_base_url.rstrip('/')}/submissions/v3/integration/secure/submit/{portal}/{guid}"


def submitted_at_ms(submission: Submission) -> int:
    """When the visitor submitted, in HubSpot's milliseconds: the post's `submittedAt`."""
    return int(submission.received_at.timestamp() * 1000)


def landed(submission: Submission, recent_conversion_date: str | None) -> bool:
    """Whether the record's newest form conversion (an ISO time from HubSpot) says this submission's post
    landed. Posts go out oldest first and stop at the first failure, so a conversion at or after our
    `submittedAt` means this one was written; a visitor's own HubSpot form in between could only make us
    skip a post, never send one twice."""
    if not recent_conversion_date:
        return False
    try:
        at = datetime.fromisoformat(recent_conversion_date)
    except ValueError:
        return False
    return int(at.timestamp() * 1000) >= submitted_at_ms(submission)


def form_payload(submission: Submission, email: str, settings: Settings) -> dict[str, Any]:
    """HubSpot's documented body: fields (contact properties, objectTypeId 0-1), context, legal consent."""
    fields = submission.fields or {}
    values = [{"objectTypeId": "0-1", "name": "email", "value": email}]
    values += [
        {"objectTypeId": "0-1", "name": name, "value": str(fields[key])} for key, name in FIELDS if fields.get(key)
    ]
    context: dict[str, str] = {}
    hutk = fields.get("hutk") or (submission.raw or {}).get("hutk")
    if isinstance(hutk, str) and HUTK.match(hutk.strip().lower()):
        context["hutk"] = hutk.strip().lower()
    if submission.page_url:
        context["pageUri"] = submission.page_url
    title = page_title(submission)
    if title:
        context["pageName"] = title
    if submission.ip:
        context["ipAddress"] = submission.ip
    consent = submission.consent or {}
    legal: dict[str, Any] = {"consentToProcess": True, "text": settings.consent_text}
    if consent.get("newsletter") and (settings.hubspot_subscription_id or "").isdigit():
        legal["communications"] = [
            {"value": True, "subscriptionTypeId": int(settings.hubspot_subscription_id), "text": settings.consent_text}
        ]
    return {
        "submittedAt": str(submitted_at_ms(submission)),
        "fields": values,
        "context": context,
        "legalConsentOptions": {"consent": legal},
    }
