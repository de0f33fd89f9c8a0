"""The contact's HubSpot timeline, written once per submission: notes, the owner and task, Forms API posts.

After the contact sync of a flush (worker/crm/sync.py), the contacts it wrote are looked at for their story:
each info-packet request and each confirmed newsletter sign-up (the newest sign-up before the double opt-in
click) gets a row in `crm_activities` per HubSpot write it calls for (a note; a Forms API post when a form GUID
is configured; for a contact's first packet request with HUBSPOT_OWNER_IDS, an owner and a task). The row's
(kind, submission) is the idempotency key. Then each kind is written in one batch call for up to 100 rows:

1. The rows are leased and stamped `attempted_at` in a committed transaction *before* the call.
2. A row that was stamped before this lease has an unknown outcome (a worker SIGKILLed mid-call, a timeout that
   may have landed): its note or task is searched for first, by the `lsref<submission id>` token in its body,
   and only written if HubSpot has none. Such rows wait SEARCH_SETTLE after their last attempt, because
   HubSpot's search index trails writes by a few seconds.
3. Created ids are stored (done); inputs a 207 refused are `rejected` with HubSpot's reason, never retried;
   a 429, 5xx or timeout leaves the rows pending for a later flush (creates are sent once, not retried in
   the call: worker/crm/hubspot.py `once`).

So a retried batch, a redelivered task or a killed worker never writes a second note or task. Budget: a
batch of 100 new packet leads costs one notes call and one tasks call; with owners on, one batch read of
the records' owners and one owner update (only records without one); Forms API posts are one call each
(HubSpot has no batch for them), at most FORMS_PER_FLUSH a flush; a post with an unknown outcome is looked for
on the contact (its conversion date, one batch read) before it is sent again (worker/crm/forms_api.py).

Example:
    >>> report = flush_activities(session_factory, crm, settings, synced_contact_ids=[17, 18])
    >>> report.counts
    {'note_created': 2, 'task_created': 1, 'owner_assigned': 1}
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.kinds import FormKind
from leadsync.storage.models import (
    ActivityKind,
    ActivityStatus,
    Contact,
    CrmActivity,
    Submission,
    SubmissionStatus,
    utcnow,
)
from leadsync.worker.crm import followups, forms_api, notes
from leadsync.worker.crm.port import ActivityInput, Crm, CrmError, WriteInput

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=3)  # longer than one batch call with its 429 waits
SEARCH_SETTLE = timedelta(seconds=30)  # HubSpot's search index trails writes by "a few seconds"
FORMS_PER_FLUSH = 20  # one call each: a backlog must not eat the 100 / 10 s budget of the contact sync
OWNER = "owner"  # a row kind of its own: the round-robin owner written to the record (once)
ERROR_MAX = 2000


@dataclass
class ActivityReport:
    counts: Counter[str] = field(default_factory=Counter)  # e.g. note_created, note_found, task_rejected
    error: str | None = None


@dataclass(frozen=True)
class _Leased:
    activity_id: int
    uncertain: bool  # a write for it went out before and we never heard how it ended
    submission: Submission
    contact_email: str
    record_id: str | None
    owner_id: str | None
    confirmed_at: datetime | None


def flush_activities(
    session_factory: Callable[[], Session],
    crm: Crm,
    settings: Settings,
    synced_contact_ids: Sequence[int] = (),
) -> ActivityReport:
    """Discover the timeline writes of the contacts just synced, then write what is due of every kind."""
    report = ActivityReport()
    if synced_contact_ids:
        discover(session_factory, settings, synced_contact_ids)
    try:
        if settings.hubspot_owner_ids:
            _owners(session_factory, crm, report)
        if settings.hubspot_notes:
            _timeline(session_factory, crm, report, ActivityKind.NOTE)
        if settings.hubspot_owner_ids:
            _timeline(session_factory, crm, report, ActivityKind.TASK)
        _forms(session_factory, crm, settings, report)
    except CrmError as error:  # rows stay pending; the contact sync's next flush handles pauses and auth
        log.warning("HubSpot timeline writes deferred: %s", error)
        report.error = str(error)
    return report


# ---------------------------------------------------------------------- which writes a submission calls for


def _kinds(settings: Settings, form: str, first_packet: bool) -> list[str]:
    kinds = [ActivityKind.NOTE] if settings.hubspot_notes else []
    if forms_api.configured(settings, form):
        kinds.append(ActivityKind.FORM)
    if form == FormKind.INFO_PACKET and first_packet and settings.hubspot_owner_ids:
        kinds += [OWNER, ActivityKind.TASK]
    return kinds


def discover(session_factory: Callable[[], Session], settings: Settings, contact_ids: Sequence[int]) -> int:
    """Rows for the packet requests and confirmed sign-ups of these contacts that have none yet; returns
    how many were added. Safe to run twice and on two workers at once (unique key, conflicts ignored)."""
    with session_factory() as session, session.begin():
        rows = session.execute(
            select(Submission.id, Submission.form, Submission.contact_id, Submission.received_at)
            .where(
                Submission.contact_id.in_(list(contact_ids)),
                Submission.status == SubmissionStatus.PROCESSED,
                Submission.form.in_([FormKind.INFO_PACKET, FormKind.NEWSLETTER]),
            )
            .order_by(Submission.received_at, Submission.id)
        ).all()
        if not rows:
            return 0
        confirmed = dict(
            session.execute(
                select(Contact.id, Contact.newsletter_confirmed_at).where(Contact.id.in_(list(contact_ids)))
            ).all()
        )
        known = {
            (kind, submission_id)
            for kind, submission_id in session.execute(
                select(CrmActivity.kind, CrmActivity.submission_id).where(CrmActivity.contact_id.in_(list(contact_ids)))
            )
        }
        tasked = {submission_id for kind, submission_id in known if kind == OWNER}
        packet_contacts = {cid for sid, form, cid, _ in rows if form == FormKind.INFO_PACKET and sid in tasked}
        sign_up: dict[int, str] = {}  # contact -> its newest sign-up before the confirmation click
        for submission_id, form, contact_id, received_at in rows:
            at = confirmed.get(contact_id)
            if form == FormKind.NEWSLETTER and at is not None and received_at <= at:
                sign_up[contact_id] = submission_id
        new: list[dict[str, object]] = []
        for submission_id, form, contact_id, _received in rows:
            if form == FormKind.NEWSLETTER and sign_up.get(contact_id) != submission_id:
                continue  # unconfirmed (or an older sign-up): nothing on the timeline yet
            first_packet = form == FormKind.INFO_PACKET and contact_id not in packet_contacts
            if first_packet:
                packet_contacts.add(contact_id)
            for kind in _kinds(settings, form, first_packet):
                if (kind, submission_id) not in known:
                    new.append({"kind": kind, "submission_id": submission_id, "contact_id": contact_id})
        if not new:
            return 0
        owners_needed = [r["contact_id"] for r in new if r["kind"] == OWNER]
        if owners_needed:
            _assign_owners(session, settings, owners_needed)
        now = utcnow()
        for row in new:
            row.update(status=ActivityStatus.PENDING, attempts=0, created_at=now)
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # executemany of one cached statement: a 100-row VALUES list is compiled anew each time (~25 ms).
        session.execute(insert(CrmActivity).on_conflict_do_nothing(), new)
        return len(new)


def _assign_owners(session: Session, settings: Settings, contact_ids: list[int]) -> None:
    """Round robin for the contacts that have no owner yet (an owner once chosen stays)."""
    without = list(
        session.scalars(
            select(Contact.id).where(Contact.id.in_(contact_ids), Contact.owner_id.is_(None)).order_by(Contact.id)
        )
    )
    turns = followups.take_turns(session, settings.hubspot_owner_ids, len(without))
    for contact_id, owner in zip(without, turns, strict=True):
        session.execute(update(Contact).where(Contact.id == contact_id).values(owner_id=owner))


# ---------------------------------------------------------------------- lease and record


def _lease(session_factory: Callable[[], Session], kind: str, limit: int) -> list[_Leased]:
    """Up to `limit` due rows of `kind` whose contact HubSpot knows; stamped before any call goes out."""
    now = utcnow()
    with session_factory() as session, session.begin():
        query = (
            select(CrmActivity, Submission, Contact)
            .join(Contact, Contact.id == CrmActivity.contact_id)
            .outerjoin(Submission, Submission.id == CrmActivity.submission_id)
            .where(
                CrmActivity.kind == kind,
                CrmActivity.status == ActivityStatus.PENDING,
                or_(CrmActivity.claimed_until.is_(None), CrmActivity.claimed_until < now),
                or_(CrmActivity.attempted_at.is_(None), CrmActivity.attempted_at < now - SEARCH_SETTLE),
                Contact.hubspot_id.is_not(None),
            )
            .order_by(CrmActivity.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=CrmActivity)
        leased: list[_Leased] = []
        gone: list[int] = []
        for activity, submission, contact in session.execute(query).all():
            if submission is None:  # purged by retention before it was written: nothing left to tell
                gone.append(activity.id)
                continue
            leased.append(
                _Leased(
                    activity_id=activity.id,
                    uncertain=activity.attempted_at is not None,
                    submission=submission,
                    contact_email=contact.email,
                    record_id=contact.hubspot_id,
                    owner_id=contact.owner_id,
                    confirmed_at=contact.newsletter_confirmed_at if submission.form == FormKind.NEWSLETTER else None,
                )
            )
            session.expunge(submission)
        if gone:
            session.execute(
                update(CrmActivity)
                .where(CrmActivity.id.in_(gone))
                .values(status=ActivityStatus.REJECTED, error="submission purged before it was written")
            )
        if leased:
            session.execute(
                update(CrmActivity)
                .where(CrmActivity.id.in_([item.activity_id for item in leased]))
                .values(claimed_until=now + LEASE, attempted_at=now, attempts=CrmActivity.attempts + 1)
            )
        return leased


def _settle(
    session_factory: Callable[[], Session],
    done: dict[int, str | None],
    rejected: dict[int, str],
    released: Sequence[int],
) -> None:
    """Store what happened: done with the HubSpot id, rejected with the reason, the rest given back.
    One statement per outcome with many parameter sets (100 single updates cost ~100 ms on SQLite)."""
    now = utcnow()
    by_id = update(CrmActivity).where(CrmActivity.id == bindparam("p_id"))
    with session_factory() as session, session.begin():
        connection = session.connection()
        if done:
            connection.execute(
                by_id.values(
                    status=ActivityStatus.DONE,
                    hubspot_id=bindparam("p_hubspot_id"),
                    done_at=now,
                    claimed_until=None,
                    error=None,
                ),
                [{"p_id": activity_id, "p_hubspot_id": hubspot_id} for activity_id, hubspot_id in done.items()],
            )
        if rejected:
            connection.execute(
                by_id.values(status=ActivityStatus.REJECTED, error=bindparam("p_error"), claimed_until=None),
                [{"p_id": activity_id, "p_error": reason[:ERROR_MAX]} for activity_id, reason in rejected.items()],
            )
        if released:
            session.execute(update(CrmActivity).where(CrmActivity.id.in_(list(released))).values(claimed_until=None))


# ---------------------------------------------------------------------- notes and tasks


def _timeline(session_factory: Callable[[], Session], crm: Crm, report: ActivityReport, kind: str) -> None:
    """One batch of notes or tasks: search for the uncertain ones, create the rest in one call."""
    leased = _lease(session_factory, kind, 100)
    if not leased:
        return
    object_type, body = ("notes", notes.BODY) if kind == ActivityKind.NOTE else ("tasks", followups.BODY)
    done: dict[int, str | None] = {}
    rejected: dict[int, str] = {}
    try:
        uncertain = {notes.token(item.submission.id): item for item in leased if item.uncertain}
        if uncertain:
            for found_token, record_id in crm.find_activities(object_type, body, list(uncertain)).items():
                done[uncertain[found_token].activity_id] = record_id
                report.counts[f"{kind}_found"] += 1
        todo = [item for item in leased if item.activity_id not in done]
        if todo:
            inputs = [_activity_input(kind, item) for item in todo]
            outcome = crm.create_activities(object_type, inputs)
            for item in todo:
                trace = str(item.activity_id)
                if trace in outcome.ids:
                    done[item.activity_id] = outcome.ids[trace]
                    report.counts[f"{kind}_created"] += 1
                elif trace in outcome.errors:
                    error = outcome.errors[trace]
                    rejected[item.activity_id] = f"{error.code}: {error.message}"
                    report.counts[f"{kind}_rejected"] += 1
    finally:  # whatever was learned is kept, even when a later call failed
        released = [item.activity_id for item in leased if item.activity_id not in done.keys() | rejected.keys()]
        if released:
            report.counts[f"{kind}_deferred"] += len(released)
        _settle(session_factory, done, rejected, released)


def _activity_input(kind: str, item: _Leased) -> ActivityInput:
    if kind == ActivityKind.NOTE:
        properties = notes.note_properties(item.submission, item.confirmed_at)
        association = notes.ASSOCIATION_NOTE_TO_CONTACT
    else:
        properties = followups.task_properties(item.submission, item.owner_id)
        association = followups.ASSOCIATION_TASK_TO_CONTACT
    return ActivityInput(properties, item.record_id or "", association, str(item.activity_id))


# ---------------------------------------------------------------------- owners


def _owners(session_factory: Callable[[], Session], crm: Crm, report: ActivityReport) -> None:
    """Write the round-robin owner to records that have none; a record with an owner keeps it, and the
    contact's task goes to that owner instead. One batch read and (when some have none) one update."""
    leased = _lease(session_factory, OWNER, 100)
    if not leased:
        return
    done: dict[int, str | None] = {}
    rejected: dict[int, str] = {}
    try:
        current = crm.owners_of([item.record_id or "" for item in leased])
        keep = {item.activity_id: current[item.record_id] for item in leased if current.get(item.record_id or "")}
        to_set = [item for item in leased if item.activity_id not in keep and item.owner_id]
        if keep:
            adopted = {item.contact_email: keep[item.activity_id] for item in leased if item.activity_id in keep}
            _adopt(session_factory, adopted)
            for item in leased:
                if item.activity_id in keep:
                    done[item.activity_id] = keep[item.activity_id]
                    report.counts["owner_kept"] += 1
        if to_set:
            inputs = [
                WriteInput(item.record_id or "", {"hubspot_owner_id": item.owner_id or ""}, str(item.activity_id))
                for item in to_set
            ]
            outcome = crm.update_by_id(inputs)
            for item in to_set:
                trace = str(item.activity_id)
                if trace in outcome.ids:
                    done[item.activity_id] = item.owner_id
                    report.counts["owner_assigned"] += 1
                elif trace in outcome.errors:
                    rejected[item.activity_id] = f"{outcome.errors[trace].code}: {outcome.errors[trace].message}"
                    report.counts["owner_rejected"] += 1
    finally:
        released = [item.activity_id for item in leased if item.activity_id not in done.keys() | rejected.keys()]
        _settle(session_factory, done, rejected, released)


def _adopt(session_factory: Callable[[], Session], owners: dict[str, str]) -> None:
    """The record's own owner becomes the contact's (the follow-up task goes to them)."""
    with session_factory() as session, session.begin():
        for email, owner in owners.items():
            session.execute(update(Contact).where(Contact.email == email).values(owner_id=owner))


# ---------------------------------------------------------------------- Forms API


def _forms(session_factory: Callable[[], Session], crm: Crm, settings: Settings, report: ActivityReport) -> None:
    """Post up to FORMS_PER_FLUSH due submissions to HubSpot's Forms API, one call each."""
    if not settings.hubspot_portal_id or not settings.hubspot_form_guids:
        return
    # Oldest first: `forms_api.landed` reads "a conversion at or after ours" as "ours landed".
    leased = sorted(_lease(session_factory, ActivityKind.FORM, FORMS_PER_FLUSH), key=lambda i: i.submission.received_at)
    done: dict[int, str | None] = {}
    rejected: dict[int, str] = {}
    try:
        uncertain = sorted({item.record_id for item in leased if item.uncertain and item.record_id})
        conversions = crm.read_properties(uncertain, ["recent_conversion_date"]) if uncertain else {}
        for item in leased:
            if item.uncertain and forms_api.landed(
                item.submission, conversions.get(item.record_id or "", {}).get("recent_conversion_date")
            ):
                done[item.activity_id] = None  # the post whose answer we lost was written: not again
                report.counts["form_found"] += 1
                continue
            form = item.submission.form
            if not forms_api.configured(settings, form):
                rejected[item.activity_id] = f"no HubSpot form GUID for {form} any more"
                continue
            payload = forms_api.form_payload(item.submission, item.contact_email, settings)
            try:
                crm.submit_form(forms_api.submit_url(settings, form), payload)
            except CrmError as error:
                if error.status is not None and 400 <= error.status < 500 and error.status not in (401, 403, 429):
                    rejected[item.activity_id] = str(error)
                    report.counts["form_rejected"] += 1
                    continue
                raise
            done[item.activity_id] = None
            report.counts["form_sent"] += 1
    finally:
        released = [item.activity_id for item in leased if item.activity_id not in done.keys() | rejected.keys()]
        if released:
            report.counts["form_deferred"] += len(released)
        _settle(session_factory, done, rejected, released)


# ---------------------------------------------------------------------- counts for status and metrics


def activity_counts(session: Session) -> dict[tuple[str, str], int]:
    """(kind, status) -> rows: notes, tasks, owners and Forms API posts by outcome."""
    rows = session.execute(
        select(CrmActivity.kind, CrmActivity.status, func.count()).group_by(CrmActivity.kind, CrmActivity.status)
    )
    return {(kind, status): count for kind, status, count in rows}
