"""`leadsync contacts show EMAIL`: one person's whole story, as leadsync knows it and wrote it to HubSpot.

Every submission (what, when, from which page and campaign), every email (kind, state, a resend's reason),
the sync state of the contact, and each timeline write (note, owner, task, Forms API post) with its HubSpot
id or the reason HubSpot refused it, with the link to the HubSpot record. The free-text message is left out:
it may hold health details (as in `contacts list`).

Example:
    >>> print(contact_story(session, settings, "ann@example.org"))
    Ann Lee <ann@example.org>   lead   newsletter: subscribed   owner: 101
    HubSpot: synced  https://app.hubspot.com/contacts/123/record/0-1/151
    Submissions
      2026-12-01 09:12  info_packet  interest: knee pain  page: https://clinic.example/knee  ...
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.sales_view import record_url
from leadsync.storage.models import Contact, CrmActivity, EmailSend, Submission


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _clean(value: object, width: int = 120) -> str:
    """One line of terminal-safe text: no control characters from a public form reach the operator's tty."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value or ""))
    return text[:width]


def contact_story(session: Session, settings: Settings, email: str) -> str | None:
    """The story as text, or None when leadsync has no such contact."""
    contact = session.scalars(select(Contact).where(Contact.email == email)).one_or_none()
    if contact is None:
        return None
    name = " ".join(part for part in (contact.first_name, contact.last_name) if part) or "(no name)"
    lines = [
        f"{_clean(name)} <{contact.email}>   {contact.lifecycle_stage}   newsletter: {contact.newsletter_status}"
        f"   owner: {contact.owner_id or '-'}",
        f"HubSpot: {contact.crm_status}"
        + (f" ({_clean(contact.crm_error)})" if contact.crm_error and contact.crm_status != "synced" else "")
        + f"  record {contact.hubspot_id or '-'}  {record_url(settings, contact.hubspot_id)}".rstrip(),
        "",
        "Submissions",
    ]
    submissions = session.scalars(
        select(Submission).where(Submission.contact_id == contact.id).order_by(Submission.received_at)
    ).all()
    for submission in submissions:
        fields = submission.fields or {}
        facts = [f"{_when(submission.received_at)}  {submission.form}  [{submission.id}]"]
        if fields.get("interest"):
            facts.append(f"interest: {_clean(fields['interest'], 60)}")
        if submission.page_url:
            facts.append(f"page: {_clean(submission.page_url, 100)}")
        if submission.utm:
            facts.append("utm: " + ", ".join(f"{k[4:]}={_clean(v, 40)}" for k, v in sorted(submission.utm.items())))
        lines.append("  " + "  ".join(facts))
    if not submissions:
        lines.append("  (none kept: older ones are purged after RAW_RETENTION_DAYS)")
    lines += ["", "Emails"]
    sends = session.scalars(select(EmailSend).where(EmailSend.contact_id == contact.id).order_by(EmailSend.created_at))
    for send in sends:
        extra = f"  {_clean(send.reason, 80)}" if send.reason else ""
        error = f"  ({_clean(send.last_error, 80)})" if send.last_error and send.status != "sent" else ""
        sent = f"sent {_when(send.sent_at)}"
        lines.append(f"  {_when(send.created_at)}  {send.kind}  {send.status}  {sent}{extra}{error}")
    lines += ["", "Written to HubSpot (timeline)"]
    activities = session.scalars(
        select(CrmActivity).where(CrmActivity.contact_id == contact.id).order_by(CrmActivity.id)
    ).all()
    for activity in activities:
        outcome = activity.hubspot_id or ""
        if activity.status == "rejected":
            outcome = f"refused: {_clean(activity.error, 100)}"
        lines.append(
            f"  {activity.kind:<5} {activity.status:<8} {outcome}  for [{activity.submission_id}]"
            f"  {_when(activity.done_at or activity.created_at)}"
        )
    if not activities:
        lines.append("  (nothing yet)")
    return "\n".join(lines)
