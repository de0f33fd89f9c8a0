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

The flush is here; its jobs have a module each: leasing rows (lease.py), narrowing a refused batch
(batching.py), storing what was learned (recording.py), the stop/pause/budget state shared by every
flusher (service_state.py). `crm` is any `Crm` (port.py): HubSpotCrm in production, StubCrm in unit tests.

Example:
    >>> report = flush_pending(session_factory, crm, mapping, settings)
    >>> report.synced, report.rejected, report.calls
    (100, 0, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.models import utcnow
from leadsync.worker import erasure
from leadsync.worker.crm import service_state
from leadsync.worker.crm.activities import flush_activities
from leadsync.worker.crm.batching import NOT_FOUND, write_batch
from leadsync.worker.crm.lease import Claimed, claim, filling, not_forgotten, pending_count
from leadsync.worker.crm.mapping import Mapping
from leadsync.worker.crm.port import MAX_BATCH, Crm, CrmError, CrmRejected, WriteInput
from leadsync.worker.crm.preferences import push
from leadsync.worker.crm.recording import Progress, absorb, record
from leadsync.worker.privacy import suppression_keys

log = logging.getLogger(__name__)


@dataclass
class FlushReport:
    claimed: int = 0
    synced: int = 0
    rejected: int = 0
    deferred: int = 0  # given back for a later flush (rate limit, outage, duplicate in the batch)
    held: int = 0  # pending while no token is set, the token is refused, or HubSpot is paused
    filling: int = 0  # due, but kept for a fuller batch: a burst is still arriving (lease.py `filling`)
    calls: int = 0  # HubSpot calls made by this flush (retries included)
    rate_limited: int = 0  # of which answered 429
    preferences: int = 0  # newsletter statuses pushed to HubSpot's communication preferences
    activities: dict[str, int] = field(default_factory=dict)  # timeline writes: note_created, task_found, ...
    timeline_calls: int = 0  # HubSpot calls for notes, owners, tasks and Forms API posts (not in `calls`)
    error: str | None = None

    def full(self, batch_size: int) -> bool:
        """A full batch went through, so more may be waiting: flush again at once."""
        return self.claimed >= batch_size and self.error is None


def flush_pending(
    session_factory: Callable[[], Session],
    crm: Crm | None,
    mapping: Mapping,
    settings: Settings,
    limit: int | None = None,
    fill_wait: timedelta | None = None,
) -> FlushReport:
    """Sync one batch of pending contacts; without a client (no token) they are held and counted. With
    `fill_wait` (the flush task's CRM_BATCH_FILL_SECONDS) a partial batch may wait for a burst to fill it."""
    now = utcnow()
    if crm is None:
        with session_factory() as session:
            return FlushReport(held=pending_count(session))
    stopped = service_state.stopped(session_factory, crm, now)
    if stopped:
        with session_factory() as session:
            return FlushReport(held=pending_count(session), error=stopped)

    subscription_id = settings.hubspot_subscription_id
    size, lease = min(limit or settings.crm_batch_size, MAX_BATCH), timedelta(seconds=settings.crm_lease_seconds)
    if fill_wait:
        waiting = filling(session_factory, size, now, fill_wait)
        if waiting:
            return FlushReport(filling=waiting)
    claimed = claim(session_factory, mapping, size, now, subscription_id, lease)
    report = FlushReport(claimed=len(claimed))
    if not claimed:
        _timeline(session_factory, crm, settings, report, [])
        return report

    before = crm.budget()
    progress = Progress()
    failure: CrmError | None = None

    def alive(contacts: list[Claimed]) -> list[Claimed]:
        return not_forgotten(session_factory, contacts)

    try:
        _sync(crm, mapping, claimed, progress, alive)
        _push_preferences(crm, subscription_id, alive(claimed), progress)
    except CrmError as error:
        failure = error
    after = crm.budget()
    report.calls = after.calls - before.calls
    report.preferences = len(progress.preferences.pushed)
    report.rate_limited = after.rate_limited - before.rate_limited
    report.synced, report.rejected, report.deferred = record(session_factory, claimed, progress, failure, now)
    _erase_written_in_flight(session_factory, claimed, progress, suppression_keys(settings))
    if failure is None or isinstance(failure, CrmRejected):
        _timeline(
            session_factory, crm, settings, report, [c.contact_id for c in claimed if c.contact_id in progress.ids]
        )
    service_state.after_flush(session_factory, crm, failure, now)
    if failure is not None:
        report.error = str(failure)
    return report


def _timeline(
    session_factory: Callable[[], Session], crm: Crm, settings: Settings, report: FlushReport, synced: list[int]
) -> None:
    """Notes, owners, tasks and Forms API posts for the contacts written now and any still due."""
    calls = crm.budget().calls
    outcome = flush_activities(session_factory, crm, settings, synced)
    report.timeline_calls += crm.budget().calls - calls
    report.activities = dict(outcome.counts)


def _sync(
    crm: Crm,
    mapping: Mapping,
    claimed: list[Claimed],
    progress: Progress,
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
        absorb(progress, outcome)
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
        absorb(progress, write_batch(crm, mapping, crm.upsert_by_email, inputs))


def _push_preferences(crm: Crm, subscription_id: str | None, claimed: list[Claimed], progress: Progress) -> None:
    """Newsletter consent for the contacts written now (a refused property write does not hold back an
    unsubscribe); contacts held back from the batch get theirs with their next write."""
    written = progress.ids.keys() | progress.errors.keys()
    due = {c.contact_id: c.preference for c in claimed if c.preference is not None and c.contact_id in written}
    if subscription_id and due:
        push(crm, subscription_id, due, progress.preferences)


def _erase_written_in_flight(
    session_factory: Callable[[], Session], claimed: list[Claimed], progress: Progress, keys: list[bytes]
) -> None:
    """Contacts HubSpot wrote whose row went while the call was out: forgotten meanwhile. Their record
    ids join the erasure job (created again if it already finished), so HubSpot deletes them."""
    written = [c for c in claimed if c.contact_id in progress.ids]
    gone = {c.contact_id for c in written} - {c.contact_id for c in not_forgotten(session_factory, written)}
    if not gone:
        return
    with session_factory() as session, session.begin():
        for contact in written:
            if contact.contact_id in gone:
                log.warning("contact %s was forgotten while HubSpot wrote it; deleting it there", contact.trace_id)
                erasure.schedule(session, contact.email, [progress.ids[contact.contact_id]], keys)
