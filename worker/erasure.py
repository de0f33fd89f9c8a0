"""HubSpot's side of `leadsync forget`: a durable job that deletes the person there and is retried until
HubSpot confirms, whatever HubSpot's state when `forget` ran.

`schedule` writes the job in the transaction that erases the person locally, so the two cannot part:
either both happened or neither did. A job holds the HubSpot record ids to delete (GDPR delete by id)
and the address (GDPR delete by email, which also catches a record HubSpot merged or we never learnt
the id of). The address stays in clear in that row only, until HubSpot confirmed the delete by email;
then the row is deleted. `run` is called at once by `forget`, and by the worker before every CRM flush
(`leadsync.flush_crm`, on beat), so a job left by an outage finishes by itself when HubSpot is back;
`leadsync status` shows the jobs still owed.

A CRM flush in flight cannot re-create the person: the flush drops contacts that are gone before each
write, and a write that landed while the person was being forgotten adds its record id to the job
(worker/crm/sync.py). When `forget` finds the contact leased by a flush, the job also runs once more
after the lease ran out (`hold_until`), in case that flush died between its write and its bookkeeping.

Example:
    >>> with session_scope() as session:
    ...     forgotten = forget(session, "ann@example.org", keys)
    ...     job_id = schedule(session, "ann@example.org", [forgotten.hubspot_id], keys)
    >>> run(get_sessionmaker(), crm, job_id)
    Outcome(done=True, error=None)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from leadsync import backoff
from leadsync.config import Settings
from leadsync.storage.models import Erasure, utcnow
from leadsync.worker.crm.port import Crm, CrmError, CrmRejected
from leadsync.worker.privacy import Forgotten, email_key, erase_outbox, forget, suppression_keys

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)  # longer than the two calls with their retries (4 tries, under 10 s each)
RETRY_BASE, RETRY_CAP = 5.0, 3600.0  # seconds: 5 s, 10 s, 20 s ... an hour between tries at most (10 tries an hour)
DUE_BATCH = 20  # jobs a run; erasures are rare, a backlog only follows a long outage


@dataclass(frozen=True)
class Outcome:
    done: bool
    error: str | None = None


def schedule(
    session: Session,
    email: str,
    hubspot_ids: Iterable[str | None],
    keys: list[bytes],
    now: datetime | None = None,
    hold_until: datetime | None = None,
) -> int:
    """Add (or extend) the job for `email` in the caller's transaction; returns its id. Due at once."""
    now = now or utcnow()
    key = email_key(keys[0], email)
    ids = [record_id for record_id in hubspot_ids if record_id]
    job = session.scalars(select(Erasure).where(Erasure.email_key == key).with_for_update()).first()
    if job is None:
        job = Erasure(email_key=key, email=email, hubspot_ids={"ids": ids}, next_attempt_at=now, hold_until=hold_until)
        session.add(job)
    else:
        known = list(job.hubspot_ids.get("ids", []))
        job.hubspot_ids = {"ids": known + [record_id for record_id in ids if record_id not in known]}
        job.email, job.version, job.next_attempt_at = email, job.version + 1, now
        if hold_until is not None and (job.hold_until is None or job.hold_until < hold_until):
            job.hold_until = hold_until
    session.flush()
    return job.id


@dataclass(frozen=True)
class _Leased:
    id: int
    version: int
    email: str | None
    ids: list[str]
    hold_until: datetime | None
    attempts: int


def _lease(session_factory: Callable[[], Session], now: datetime, job_id: int | None) -> list[_Leased]:
    """Take due jobs (one, or up to DUE_BATCH) for LEASE; a second worker skips them meanwhile."""
    with session_factory() as session, session.begin():
        query = select(Erasure).order_by(Erasure.next_attempt_at).with_for_update(skip_locked=True)
        query = query.where(Erasure.id == job_id) if job_id is not None else query.where(Erasure.next_attempt_at <= now)
        jobs = session.scalars(query.limit(DUE_BATCH)).all()
        leased = []
        for job in jobs:
            job.next_attempt_at = now + LEASE
            ids = list(job.hubspot_ids.get("ids", []))
            leased.append(_Leased(job.id, job.version, job.email, ids, job.hold_until, job.attempts))
        return leased


def _delete_in_hubspot(crm: Crm, job: _Leased) -> None:
    for record_id in job.ids:
        try:
            crm.gdpr_delete_record(record_id)
        except CrmRejected as error:
            if error.status != 404:  # 404: already gone (deleted by hand, merged, or by our earlier try)
                raise
    if job.email:
        crm.gdpr_delete(job.email)  # 204 whether or not HubSpot holds the address


def _settle(session_factory: Callable[[], Session], job: _Leased, error: CrmError | None, now: datetime) -> Outcome:
    with session_factory() as session, session.begin():
        if error is None:
            if job.hold_until is not None and now < job.hold_until:
                # A flush had the contact leased: delete by email once more when its lease has run out.
                row = session.get(Erasure, job.id)
                if row is not None:
                    row.next_attempt_at, row.last_error = job.hold_until, None
                return Outcome(False, f"checked again after {job.hold_until.isoformat(timespec='seconds')}")
            # Only the version we ran: a record id a flush added meanwhile keeps the job for one more run.
            gone = session.execute(delete(Erasure).where(Erasure.id == job.id, Erasure.version == job.version))
            if gone.rowcount:
                return Outcome(True)
            row = session.get(Erasure, job.id)
            if row is not None:
                row.next_attempt_at = now
            return Outcome(False, "a record id was added meanwhile; running again")
        row = session.get(Erasure, job.id)
        if row is not None:
            row.attempts = job.attempts + 1
            wait = backoff.ceiling(job.attempts + 1, RETRY_BASE, RETRY_CAP)
            row.next_attempt_at = now + timedelta(seconds=wait)
            row.last_error = str(error)[:2000]
        return Outcome(False, str(error))


def run(
    session_factory: Callable[[], Session],
    crm: Crm | None,
    job_id: int | None = None,
    now: datetime | None = None,
) -> list[Outcome]:
    """Run job `job_id`, or every due job; each failure is recorded with its next try, never raised."""
    if crm is None:
        return []  # no token: the jobs wait (and `leadsync status` says so)
    now = now or utcnow()
    outcomes = []
    for job in _lease(session_factory, now, job_id):
        error: CrmError | None = None
        try:
            _delete_in_hubspot(crm, job)
        except CrmError as failure:
            error = failure
            log.warning("HubSpot erasure %d not done yet (attempt %d): %s", job.id, job.attempts + 1, failure)
        outcome = _settle(session_factory, job, error, now)
        if outcome.done:
            log.info("HubSpot erasure %d done", job.id)
        outcomes.append(outcome)
    return outcomes


@dataclass(frozen=True)
class Erased:
    """What `forget_everywhere` did: here, in the outbox, and at HubSpot."""

    local: Forgotten
    outbox_files: int
    job_id: int | None  # the HubSpot erasure job, None when there is nothing to delete there
    hubspot: list[Outcome] | None  # None: not tried now (no client); [] another worker holds the job


def forget_everywhere(
    session_factory: Callable[[], Session], settings: Settings, email: str, crm: Crm | None
) -> Erased:
    """`leadsync forget`: erase the person's rows and write the HubSpot job in one transaction, delete their
    outbox files, then run the job at once (an outage leaves it to the worker, retried until done)."""
    keys, job_id = suppression_keys(settings), None
    with session_factory() as session, session.begin():  # the local erasure and the HubSpot job commit together
        local = forget(session, email, keys)
        if crm is not None or local.hubspot_id:
            job_id = schedule(session, email, [local.hubspot_id], keys, hold_until=local.leased_until)
    files = erase_outbox(settings.mail_outbox_dir, email, local.message_ids)
    hubspot = run(session_factory, crm, job_id) if job_id is not None and crm is not None else None
    return Erased(local, files, job_id, hubspot)


def pending(session: Session, now: datetime) -> dict[str, Any]:
    """For `leadsync status`: how many HubSpot erasures are owed, the oldest, the latest error."""
    count, oldest, tried = session.execute(
        select(func.count(), func.min(Erasure.created_at), func.max(Erasure.attempts))
    ).one()
    if not count:
        return {"pending": 0}
    latest = session.scalars(
        select(Erasure).where(Erasure.last_error.is_not(None)).order_by(Erasure.next_attempt_at.desc()).limit(1)
    ).first()
    return {
        "pending": count,
        "oldest_seconds": round((now - oldest).total_seconds(), 1),
        "most_attempts": tried or 0,
        "last_error": latest.last_error if latest is not None else None,
        "next_attempt_at": latest.next_attempt_at.isoformat(timespec="seconds") if latest is not None else None,
    }
