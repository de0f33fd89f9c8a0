"""What a sales rep reads on the contact's HubSpot timeline: one note per request, built from the submission.

A note per info-packet request and per confirmed newsletter sign-up (worker/crm/activities.py decides which
submissions). The text says what was asked for, from which page (URL and title when the snippet sends one),
the campaign (UTM), when, and the consent given with its text version. It ends with a reference line whose
token (`lsref` + the submission id, one word for HubSpot's CONTAINS_TOKEN search) lets a flush that never
heard back from HubSpot find the note it may already have written, instead of writing a second one.

Example:
    >>> note_properties(submission, confirmed_at=None)["hs_note_body"]
    '<p><strong>Information packet requested</strong> (website form)</p><ul><li>Interest: knee pain</li>...'
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from leadsync.kinds import FormKind
from leadsync.storage.models import Submission

BODY = "hs_note_body"
ASSOCIATION_NOTE_TO_CONTACT = 202  # HUBSPOT_DEFINED note_to_contact
TOKEN_PREFIX = "lsref"
UTM_NAMES = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def token(submission_id: str) -> str:
    """The submission's reference as one search token (hex id, no punctuation HubSpot would split on)."""
    return f"{TOKEN_PREFIX}{submission_id}"


def epoch_ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def page_title(submission: Submission) -> str | None:
    """The page title, when the snippet sent one (`page_title`, at most 300 characters)."""
    raw: dict[str, Any] = submission.raw or {}
    title = (submission.fields or {}).get("page_title") or raw.get("page_title")
    return title.strip()[:300] or None if isinstance(title, str) else None


def lines(submission: Submission, confirmed_at: datetime | None) -> tuple[str, list[str]]:
    """The heading and the facts, as plain text (the CLI shows the same)."""
    fields = submission.fields or {}
    packet = submission.form == FormKind.INFO_PACKET
    heading = "Information packet requested" if packet else "Newsletter sign-up confirmed"
    facts: list[str] = []
    if packet and fields.get("interest"):
        facts.append(f"Interest: {fields['interest']}")
    if packet and fields.get("phone"):
        facts.append(f"Phone: {fields['phone']}")
    title = page_title(submission)
    if submission.page_url or title:
        facts.append("Page: " + " — ".join(part for part in (title, submission.page_url) if part))
    utm = {name: (submission.utm or {}).get(name) for name in UTM_NAMES}
    if any(utm.values()):
        facts.append("Campaign: " + ", ".join(f"{name[4:]}={value}" for name, value in utm.items() if value))
    facts.append(f"Submitted: {_when(submission.received_at)}")
    if confirmed_at is not None:
        facts.append(f"Confirmed (double opt-in): {_when(confirmed_at)}")
    consent = submission.consent or {}
    newsletter = "yes" if consent.get("newsletter") else "no"
    version = consent.get("text_version") or "unknown"
    facts.append(f"Consent: contact about this request; newsletter {newsletter} (consent text version {version})")
    return heading, facts


def note_properties(submission: Submission, confirmed_at: datetime | None = None) -> dict[str, str]:
    """The note's properties: HTML body (escaped: form text never becomes markup) and its timestamp."""
    heading, facts = lines(submission, confirmed_at)
    items = "".join(f"<li>{escape(fact)}</li>" for fact in facts)
    body = (
        f"<p><strong>{escape(heading)}</strong> (website form)</p><ul>{items}</ul>"
        f"<p>leadsync ref: {token(submission.id)}</p>"
    )
    moment = confirmed_at or submission.received_at
    # Bounded by the form's limits (URL 2,048, title 300, UTM 5 x 255...): far below HubSpot's 65,536.
    return {BODY: body, "hs_timestamp": epoch_ms(moment)}
