"""Flushing pending contact changes to HubSpot in batches, every failure handled on purpose.

A contact is pending while `crm_version > crm_synced_version`. A flush leases up to 100 pending rows
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, so flushers on several workers take disjoint batches),
deduplicated by lowercased email and by record id, and writes them in at most two calls: an update by
record id for contacts HubSpot already knows (a changed email never makes a duplicate), a batch upsert
by email for the rest. A change that lands while a call is in flight bumps the version, so the contact
stays pending for the next flush.

What each failure does:

- 207 with per-input errors (every input carries an objectWriteTraceId): the good inputs are done, each
  bad one is `rejected` with HubSpot's reason (and a dead letter) and not retried until the contact
  changes again or someone runs `leadsync failed retry`.
- PROPERTY_DOESNT_EXIST: the mapped properties are created and those inputs sent once more.
- OBJECT_NOT_FOUND on an update (the record was deleted or merged away): the id is dropped and the
  contact upserted by email in the same flush.
- A 400 for the whole batch: the named duplicates are held back, otherwise the batch is split in
  halves until the bad input stands alone; the other inputs go through.
- 401/403: syncing stops (nothing leased, everything stays pending), `leadsync status` turns degraded
  and the log says ERROR; one probe every AUTH_RETRY, or at once when the token changes.
- 5xx, timeouts, connection errors: retried with backoff inside the call; if HubSpot stays down, every
  flusher pauses with a growing, jittered backoff (service state `hubspot_pause`).
- 429 / no rate-limit slot soon: the batch is given back untouched for the next flush.

A person forgotten while a flush holds them is never re-created: before each write call the flush drops the
contacts whose row is gone (`leadsync forget` deletes it, with the suppression entry, in one transaction),
and a contact written while it was being forgotten has its new record id added to the erasure job
(worker/erasure.py), which deletes it again.

After the contacts, the timeline (worker/crm/activities.py): a note per info-packet request and confirmed
newsletter sign-up, and with HUBSPOT_OWNER_IDS / HUBSPOT_FORM_GUIDS the owner, the follow-up task and the Forms
API post, each written once per submission. They run on every flush, so those a 429 deferred go out later.

With HUBSPOT_SUBSCRIPTION_ID set, a newsletter status that became subscribed/unsubscribed is then pushed
to HubSpot's communication preferences, one call per contact (worker/crm/preferences.py). A contact whose
push did not happen stays pending; a refused push rejects it like a refused input.

Example:
    >>> report = flush_pending(session_factory, crm, mapping, settings)
    >>> report.synced, report.rejected, report.calls
    (100, 0, 1)
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.models import Contact, CrmStatus, ServiceState, utcnow
from leadsync.worker import dead_letters, erasure
from leadsync.worker.crm.activities import flush_activities
from leadsync.worker.crm.hubspot import (
    MAX_BATCH,
    CrmAuthError,
    CrmError,
    CrmRateLimited,
    CrmRejected,
    CrmTemporaryError,
    HubSpotCrm,
    InputError,
    WriteInput,
    WriteOutcome,
)
from leadsync.worker.crm.mapping import Mapping, contact_properties
from leadsync.worker.crm.preferences import PreferenceChange, PushOutcome, owed, push
from leadsync.worker.privacy import suppression_keys

log = logging.getLogger(__name__)

AUTH_STATE = "hubspot_auth"  # {ok, detail, at, token, retry_at}
PAUSE_STATE = "hubspot_pause"  # {until, failures, detail}: HubSpot down or the daily limit reached
RATE_STATE = "hubspot_rate"  # the daily budget and 429s, for `leadsync status`
AUTH_RETRY = timedelta(minutes=10)
PAUSE_BASE, PAUSE_CAP = 5.0, 300.0  # seconds
LONG_RATE_WAIT = 30.0  # a rate-limit wait longer than this (the daily limit) pauses every flusher

NOT_FOUND = "OBJECT_NOT_FOUND"
MISSING_PROPERTY = "PROPERTY_DOESNT_EXIST"
DUPLICATE = "DUPLICATE_ID"


@dataclass
class FlushReport:
    claimed: int = 0
    synced: int = 0
    rejected: int = 0
    deferred: int = 0  # given back for a later flush (rate limit, outage, duplicate in the batch)
    held: int = 0  # pending while no token is set, the token is refused, or HubSpot is paused
    calls: int = 0  # HubSpot calls made by this flush (retries included)
    rate_limited: int = 0  # of which answered 429
    preferences: int = 0  # newsletter statuses pushed to HubSpot's communication preferences
    activities: dict[str, int] = field(default_factory=dict)  # timeline writes: note_created, task_found, ...
    timeline_calls: int = 0  # HubSpot calls for notes, owners, tasks and Forms API posts (not in `calls`)
    error: str | None = None

    def full(self, batch_size: int) -> bool:
        """A full batch went through, so more may be waiting: flush again at once."""
        return self.claimed >= batch_size and self.error is None


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


@dataclass
class _Progress:
    """What a flush learned so far; recorded even when a later call fails."""

    ids: dict[int, str] = field(default_factory=dict)  # contact id -> HubSpot record id
    errors: dict[int, InputError] = field(default_factory=dict)
    stale: set[int] = field(default_factory=set)  # their stored record id no longer exists
    preferences: PushOutcome = field(default_factory=PushOutcome)


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(Contact.crm_status == CrmStatus.PENDING)) or 0


def _claim(
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


def flush_pending(
    session_factory: Callable[[], Session],
    crm: HubSpotCrm | None,
    mapping: Mapping,
    settings: Settings,
    limit: int | None = None,
) -> FlushReport:
    """Sync one batch of pending contacts; without a client (no token) they are held and counted."""
    now = utcnow()
    if crm is None:
        with session_factory() as session:
            return FlushReport(held=pending_count(session))
    stopped = _stopped(session_factory, crm, now)
    if stopped:
        with session_factory() as session:
            return FlushReport(held=pending_count(session), error=stopped)

    subscription_id = settings.hubspot_subscription_id
    size, lease = min(limit or settings.crm_batch_size, MAX_BATCH), timedelta(seconds=settings.crm_lease_seconds)
    claimed = _claim(session_factory, mapping, size, now, subscription_id, lease)
    report = FlushReport(claimed=len(claimed))
    if not claimed:
        _timeline(session_factory, crm, settings, report, [])
        return report

    calls, rate_limited = crm.stats.calls, crm.stats.rate_limited
    progress = _Progress()
    failure: CrmError | None = None

    def alive(contacts: list[Claimed]) -> list[Claimed]:
        return _not_forgotten(session_factory, contacts)

    try:
        _sync(crm, mapping, claimed, progress, alive)
        _push_preferences(crm, subscription_id, alive(claimed), progress)
    except CrmError as error:
        failure = error
    report.calls = crm.stats.calls - calls
    report.preferences = len(progress.preferences.pushed)
    report.rate_limited = crm.stats.rate_limited - rate_limited
    report.synced, report.rejected, report.deferred = _record(session_factory, claimed, progress, failure, now)
    _erase_written_in_flight(session_factory, claimed, progress, suppression_keys(settings))
    if failure is None or isinstance(failure, CrmRejected):
        _timeline(
            session_factory, crm, settings, report, [c.contact_id for c in claimed if c.contact_id in progress.ids]
        )
    _after(session_factory, crm, failure, now)
    if failure is not None:
        report.error = str(failure)
    return report


def _timeline(
    session_factory: Callable[[], Session], crm: HubSpotCrm, settings: Settings, report: FlushReport, synced: list[int]
) -> None:
    """Notes, owners, tasks and Forms API posts for the contacts written now and any still due."""
    calls = crm.stats.calls
    outcome = flush_activities(session_factory, crm, settings, synced)
    report.timeline_calls += crm.stats.calls - calls
    report.activities = dict(outcome.counts)


def _not_forgotten(session_factory: Callable[[], Session], contacts: list[Claimed]) -> list[Claimed]:
    """The contacts whose row still exists: `forget` deletes the row (and writes the suppression entry)
    in one transaction, so a row that exists is not forgotten. One indexed query, before each write."""
    if not contacts:
        return []
    with session_factory() as session:
        present = set(session.scalars(select(Contact.id).where(Contact.id.in_([c.contact_id for c in contacts]))))
    return [c for c in contacts if c.contact_id in present]


def _sync(
    crm: HubSpotCrm,
    mapping: Mapping,
    claimed: list[Claimed],
    progress: _Progress,
    alive: Callable[[list[Claimed]], list[Claimed]],
) -> None:
    """Updates by id first, then upserts by email (including records HubSpot no longer has); contacts
    forgotten since the lease (`alive` drops them) are not written."""
    claimed = alive(claimed)
    to_update = [c for c in claimed if c.hubspot_id]
    upserts = [c for c in claimed if not c.hubspot_id]
    if to_update:
        inputs = [WriteInput(c.hubspot_id or "", c.by_id, c.trace_id) for c in to_update]
        outcome = write_batch(crm, mapping, crm.update_by_id, inputs)
        _absorb(progress, outcome)
        for contact in to_update:
            error = progress.errors.get(contact.contact_id)
            if error is not None and error.code == NOT_FOUND:
                log.info(
                    "HubSpot record %s of contact %s is gone; upserting by email", contact.hubspot_id, contact.trace_id
                )
                del progress.errors[contact.contact_id]
                progress.stale.add(contact.contact_id)
                upserts.append(contact)
    if upserts and to_update:
        upserts = alive(upserts)  # the updates took a while: anyone forgotten meanwhile is not re-created
    if upserts:
        inputs = [WriteInput(c.email, c.by_email, c.trace_id) for c in upserts]
        _absorb(progress, write_batch(crm, mapping, crm.upsert_by_email, inputs))


def _push_preferences(
    crm: HubSpotCrm, subscription_id: str | None, claimed: list[Claimed], progress: _Progress
) -> None:
    """Newsletter consent for the contacts written now (a refused property write does not hold back an
    unsubscribe); contacts held back from the batch get theirs with their next write."""
    written = progress.ids.keys() | progress.errors.keys()
    due = {c.contact_id: c.preference for c in claimed if c.preference is not None and c.contact_id in written}
    if subscription_id and due:
        push(crm, subscription_id, due, progress.preferences)


def _absorb(progress: _Progress, outcome: WriteOutcome) -> None:
    for trace_id, record_id in outcome.ids.items():
        progress.ids[int(trace_id)] = record_id
        progress.errors.pop(int(trace_id), None)
    for trace_id, error in outcome.errors.items():
        progress.errors[int(trace_id)] = error


def write_batch(
    crm: HubSpotCrm, mapping: Mapping, send: Callable[[Sequence[WriteInput]], WriteOutcome], inputs: list[WriteInput]
) -> WriteOutcome:
    """One batch call (`send` is the client's upsert or update), every failure of an input settled:
    bad inputs isolated, missing properties created and those inputs sent once more."""
    outcome = _isolating(send, inputs, budget=[_split_budget(len(inputs))])
    missing = [item for item in inputs if getattr(outcome.errors.get(item.trace_id), "code", None) == MISSING_PROPERTY]
    if missing:
        try:
            created = crm.bootstrap(mapping)
        except CrmRejected as error:  # the mapping asks for a property HubSpot will not create: say so, once
            log.error("HubSpot refused to create the mapped properties: %s", error)
            reason = InputError(MISSING_PROPERTY, f"{outcome.errors[missing[0].trace_id].message}; bootstrap: {error}")
            outcome.errors.update({item.trace_id: reason for item in missing})
            return outcome
        log.warning("created missing HubSpot properties: %s", ", ".join(created) or "none (already there)")
        outcome.merge(_isolating(send, missing, budget=[_split_budget(len(missing))]))
    return outcome


def _split_budget(size: int) -> int:
    """Calls allowed to isolate bad inputs: enough to find two among 100 by halving, not a storm."""
    return 2 * math.ceil(math.log2(max(size, 2))) + 2


def _isolating(
    send: Callable[[Sequence[WriteInput]], WriteOutcome], inputs: Sequence[WriteInput], budget: list[int]
) -> WriteOutcome:
    """Send; when HubSpot refuses the whole batch, hold back named duplicates or split until the bad input
    stands alone, so one bad input never holds back the others."""
    budget[0] -= 1
    try:
        return send(inputs)
    except CrmRejected as error:
        if len(inputs) == 1 or budget[0] <= 0:
            reason = InputError(error.code, str(error))
            return WriteOutcome(errors={item.trace_id: reason for item in inputs})
        duplicates = _named_duplicates(error, inputs)
        if duplicates:  # they wait for the next flush (no error recorded: nothing is wrong with them)
            log.warning("HubSpot saw two inputs for one record (%s); holding one back", ", ".join(sorted(duplicates)))
            rest = [item for item in inputs if item.trace_id not in duplicates]
            return _isolating(send, rest, budget) if rest else WriteOutcome()
        half = len(inputs) // 2
        outcome = _isolating(send, inputs[:half], budget)
        outcome.merge(_isolating(send, inputs[half:], budget))
        return outcome


def _named_duplicates(error: CrmRejected, inputs: Sequence[WriteInput]) -> set[str]:
    """Trace ids of the later inputs whose key HubSpot names as a duplicate."""
    if error.code != DUPLICATE and "Duplicate" not in str(error):
        return set()
    match = re.search(r"\[([^\]]*)\]", str(error))
    named = {part.strip().lower() for part in (match.group(1) if match else "").split(",") if part.strip()}
    seen: set[str] = set()
    held: set[str] = set()
    for item in inputs:
        key = item.key.lower()
        if key in named and key in seen:
            held.add(item.trace_id)
        seen.add(key)
    return held


def _record(
    session_factory: Callable[[], Session],
    claimed: list[Claimed],
    progress: _Progress,
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


def _erase_written_in_flight(
    session_factory: Callable[[], Session], claimed: list[Claimed], progress: _Progress, keys: list[bytes]
) -> None:
    """Contacts HubSpot wrote whose row went while the call was out: forgotten meanwhile. Their record
    ids join the erasure job (created again if it already finished), so HubSpot deletes them."""
    written = [c for c in claimed if c.contact_id in progress.ids]
    gone = {c.contact_id for c in written} - {c.contact_id for c in _not_forgotten(session_factory, written)}
    if not gone:
        return
    with session_factory() as session, session.begin():
        for contact in written:
            if contact.contact_id in gone:
                log.warning("contact %s was forgotten while HubSpot wrote it; deleting it there", contact.trace_id)
                erasure.schedule(session, contact.email, [progress.ids[contact.contact_id]], keys)


# ---------------------------------------------------------------------- service state: stop, pause, budget


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _stopped(session_factory: Callable[[], Session], crm: HubSpotCrm, now: datetime) -> str | None:
    """Why this flush must not call HubSpot now, or None."""
    with session_factory() as session:
        auth = session.get(ServiceState, AUTH_STATE)
        pause = session.get(ServiceState, PAUSE_STATE)
        auth_value = dict(auth.value) if auth is not None else {}
        pause_value = dict(pause.value) if pause is not None else {}
    if auth_value and not auth_value.get("ok") and auth_value.get("token") == crm.fingerprint:
        retry_at = auth_value.get("retry_at")
        if retry_at and now < datetime.fromisoformat(retry_at):
            return f"CRM sync stopped: HubSpot refuses the token ({auth_value.get('detail')}); next try {retry_at}"
    until = pause_value.get("until")
    if until and now < datetime.fromisoformat(until):
        return f"CRM sync paused until {until}: {pause_value.get('detail')}"
    return None


def _after(session_factory: Callable[[], Session], crm: HubSpotCrm, failure: CrmError | None, now: datetime) -> None:
    """Update the shared state after a flush: auth stop, outage pause, budget."""
    with session_factory() as session, session.begin():
        auth = session.get(ServiceState, AUTH_STATE)
        pause = session.get(ServiceState, PAUSE_STATE)
        if isinstance(failure, CrmAuthError):
            log.error(
                "HubSpot refused the token; CRM sync is STOPPED (contacts stay pending) until it is fixed: %s. "
                "Check with `leadsync hubspot check`.",
                failure,
            )
            _put(
                session,
                auth,
                AUTH_STATE,
                ok=False,
                detail=str(failure),
                at=_iso(now),
                token=crm.fingerprint,
                retry_at=_iso(now + AUTH_RETRY),
            )
        elif failure is None or isinstance(failure, CrmRejected):
            if auth is None or not auth.value.get("ok"):
                _put(session, auth, AUTH_STATE, ok=True, detail=None, at=_iso(now), token=crm.fingerprint)
            if pause is not None and pause.value.get("failures"):
                _put(session, pause, PAUSE_STATE, until=None, failures=0, detail=None)
        elif isinstance(failure, CrmTemporaryError):
            failures = int((pause.value if pause is not None else {}).get("failures") or 0) + 1
            ceiling = min(PAUSE_CAP, PAUSE_BASE * 2 ** (failures - 1))
            wait = ceiling / 2 + random.uniform(0, ceiling / 2)
            log.warning("HubSpot unavailable (%s); all flushers pause %.0fs (failure %d)", failure, wait, failures)
            _put(
                session,
                pause,
                PAUSE_STATE,
                until=_iso(now + timedelta(seconds=wait)),
                failures=failures,
                detail=str(failure),
            )
        elif isinstance(failure, CrmRateLimited) and failure.retry_after > LONG_RATE_WAIT:
            log.error("HubSpot rate limit %s: pausing %.0fs", failure.policy or "", failure.retry_after)
            _put(
                session,
                pause,
                PAUSE_STATE,
                until=_iso(now + timedelta(seconds=failure.retry_after)),
                failures=0,
                detail=str(failure),
            )
        _record_budget(session, crm, now)


def _put(session: Session, row: ServiceState | None, key: str, **value: object) -> None:
    if row is None:
        session.add(ServiceState(key=key, value=value))
    else:
        row.value = value


def _record_budget(session: Session, crm: HubSpotCrm, now: datetime) -> None:
    """Merge this process's view of the HubSpot budget into the shared `hubspot_rate` state."""
    snapshot, new_429s = crm.take_stats()
    row = session.get(ServiceState, RATE_STATE)
    value = dict(row.value) if row is not None else {}
    today = now.date().isoformat()
    if value.get("day") != today:
        value.update(day=today, rate_limited_today=0)
    value["rate_limited_today"] = int(value.get("rate_limited_today") or 0) + new_429s
    for name in ("daily_limit", "daily_remaining", "window_max", "window_remaining"):
        if snapshot.get(name) is not None:
            value[name] = snapshot[name]
    if snapshot.get("last_429_at") and snapshot["last_429_at"] > str(value.get("last_429_at") or ""):
        value.update(last_429_at=snapshot["last_429_at"], last_429_policy=snapshot["last_429_policy"])
    value["rate_limit"] = crm.limiter.limit
    value["at"] = _iso(now)
    _put(session, row, RATE_STATE, **value)


def resume(session_factory: Callable[[], Session]) -> None:
    """Lift an auth stop or an outage pause (after `leadsync hubspot check` succeeded)."""
    with session_factory() as session, session.begin():
        for key in (AUTH_STATE, PAUSE_STATE):
            row = session.get(ServiceState, key)
            if row is not None:
                session.delete(row)


def hubspot_status(session: Session, now: datetime) -> tuple[dict[str, object], list[str], list[str]]:
    """For `leadsync status`: the daily budget, the last 429, a stop or pause; with reasons and notes."""
    rows = {key: session.get(ServiceState, key) for key in (RATE_STATE, PAUSE_STATE, AUTH_STATE)}
    rate = dict(rows[RATE_STATE].value) if rows[RATE_STATE] is not None else {}
    pause = dict(rows[PAUSE_STATE].value) if rows[PAUSE_STATE] is not None else {}
    picture: dict[str, object] = {
        key: rate.get(key)
        for key in ("daily_limit", "daily_remaining", "last_429_at", "last_429_policy", "rate_limit", "window_max")
    }
    picture["rate_limited_today"] = (
        rate.get("rate_limited_today", 0) if rate.get("day") == now.date().isoformat() else 0
    )
    picture["daily_used"] = (
        rate["daily_limit"] - rate["daily_remaining"]
        if rate.get("daily_limit") is not None and rate.get("daily_remaining") is not None
        else None
    )
    reasons: list[str] = []
    notes: list[str] = []
    until = pause.get("until")
    picture["paused_until"] = until if until and now < datetime.fromisoformat(until) else None
    if picture["paused_until"]:
        reasons.append(f"HubSpot sync paused until {until}: {pause.get('detail')}")
    if rate:
        budget = (
            f"{picture['daily_used']:,} of {rate['daily_limit']:,} calls used today"
            if picture["daily_used"] is not None
            else "daily budget not reported yet"
        )
        last = f"{rate.get('last_429_policy')} at {rate.get('last_429_at')}" if rate.get("last_429_at") else "never"
        notes.append(f"HubSpot: {budget}; 429s today {picture['rate_limited_today']}; last 429 {last}")
        if rate.get("window_max") and rate["window_max"] < int(rate.get("rate_limit") or 0):
            notes.append(f"HUBSPOT_RATE_LIMIT is {rate['rate_limit']} but HubSpot allows {rate['window_max']}")
    return picture, reasons, notes
