"""Flushing pending contact changes to HubSpot in batches.

A contact is pending while `crm_version > crm_synced_version`. A flush leases up to 100 pending
rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so flushers on several workers take disjoint
batches), upserts them by email in one call, and records HubSpot's ids. A change that lands while
the call is in flight bumps the version, so the contact stays pending for the next flush.

Example:
    >>> report = flush_pending(session_factory, crm, mapping, settings)
    >>> report.synced, report.rejected
    (100, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.models import Contact, CrmStatus, ServiceState, utcnow
from leadsync.worker.crm.hubspot import (
    CrmAuthError,
    CrmError,
    CrmRateLimited,
    CrmRejected,
    HubSpotCrm,
    InputError,
    UpsertInput,
    UpsertOutcome,
)
from leadsync.worker.crm.mapping import Mapping, contact_properties

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)  # longer than one HubSpot call with its timeout
AUTH_STATE = "hubspot_auth"


@dataclass
class FlushReport:
    claimed: int = 0
    synced: int = 0
    rejected: int = 0
    deferred: int = 0  # released for a later flush (rate limit, outage)
    held: int = 0  # pending while no HubSpot token is set
    error: str | None = None


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(Contact.crm_status == CrmStatus.PENDING)) or 0


def _claim(
    session_factory: Callable[[], Session], mapping: Mapping, limit: int, now: datetime
) -> tuple[dict[int, int], list[UpsertInput]]:
    """Lease up to `limit` pending contacts; returns their versions and the upsert inputs."""
    with session_factory() as session, session.begin():
        ids = session.scalars(
            select(Contact.id)
            .where(
                Contact.crm_status == CrmStatus.PENDING,
                or_(Contact.crm_claimed_until.is_(None), Contact.crm_claimed_until < now),
            )
            .order_by(Contact.crm_changed_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not ids:
            return {}, []
        session.execute(update(Contact).where(Contact.id.in_(ids)).values(crm_claimed_until=now + LEASE))
        contacts = session.scalars(select(Contact).where(Contact.id.in_(ids))).all()
        versions = {contact.id: contact.crm_version for contact in contacts}
        inputs = [UpsertInput(c.email, contact_properties(c, mapping), str(c.id)) for c in contacts]
        return versions, inputs


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

    versions, inputs = _claim(session_factory, mapping, limit or settings.crm_batch_size, now)
    report = FlushReport(claimed=len(versions))
    if not versions:
        return report

    try:
        outcome = _upsert_with_bootstrap(crm, mapping, inputs)
    except CrmRejected as error:
        # Every input carries a trace id, so a whole-batch 400 is not about one input's data
        # (e.g. a malformed batch); record it on every contact and let them wait for a change.
        outcome = UpsertOutcome(errors={str(cid): _as_input_error(error) for cid in versions})
    except CrmError as error:
        retry_in = error.retry_after if isinstance(error, CrmRateLimited) else 30.0
        _release(session_factory, list(versions), now + timedelta(seconds=retry_in), str(error))
        if isinstance(error, CrmAuthError):
            _set_auth_state(session_factory, ok=False, detail=str(error))
            log.error("HubSpot refused the token; CRM sync is stopped until it is fixed: %s", error)
        else:
            log.warning("HubSpot sync deferred %.0fs: %s", retry_in, error)
        report.deferred, report.error = len(versions), str(error)
        return report

    _set_auth_state(session_factory, ok=True, detail=None)
    report.synced, report.rejected = _record(session_factory, versions, contacts_by_email(inputs), outcome)
    return report


def contacts_by_email(inputs: list[UpsertInput]) -> dict[str, int]:
    return {item.email.lower(): int(item.trace_id) for item in inputs}


def _as_input_error(error: CrmRejected) -> InputError:
    first = error.errors[0] if error.errors else {}
    return InputError(str(first.get("code") or first.get("category") or "VALIDATION_ERROR"), str(error))


def _upsert_with_bootstrap(crm: HubSpotCrm, mapping: Mapping, inputs: list[UpsertInput]) -> UpsertOutcome:
    """Upsert; when HubSpot says a mapped property does not exist, create the properties and retry once."""
    outcome = crm.upsert_by_email(inputs)
    if any(error.code == "PROPERTY_DOESNT_EXIST" for error in outcome.errors.values()):
        created = crm.bootstrap(mapping)
        log.warning("created missing HubSpot properties: %s", ", ".join(created) or "none")
        retry = [item for item in inputs if item.trace_id in outcome.errors]
        second = crm.upsert_by_email(retry)
        outcome.ids.update(second.ids)
        outcome.errors = second.errors
    return outcome


def _record(
    session_factory: Callable[[], Session],
    versions: dict[int, int],
    by_email: dict[str, int],
    outcome: UpsertOutcome,
) -> tuple[int, int]:
    now = utcnow()
    synced = rejected = 0
    with session_factory() as session, session.begin():
        for email, hubspot_id in outcome.ids.items():
            cid = by_email.get(email)
            if cid is None:
                continue
            synced += _finish(session, cid, versions[cid], CrmStatus.SYNCED, now, hubspot_id=hubspot_id)
        for trace_id, error in outcome.errors.items():
            cid = int(trace_id)
            rejected += _finish(
                session, cid, versions[cid], CrmStatus.REJECTED, now, error=f"{error.code}: {error.message}"
            )
        leftover = set(versions) - {by_email.get(e) for e in outcome.ids} - {int(t) for t in outcome.errors}
        if leftover:  # HubSpot answered without a word on these; try them again later
            session.execute(update(Contact).where(Contact.id.in_(leftover)).values(crm_claimed_until=None))
    return synced, rejected


def _finish(
    session: Session,
    cid: int,
    version: int,
    status: str,
    now: datetime,
    hubspot_id: str | None = None,
    error: str | None = None,
) -> int:
    values: dict[str, object] = {"crm_claimed_until": None, "crm_synced_version": version, "crm_error": error}
    if hubspot_id is not None:
        values.update(hubspot_id=hubspot_id, crm_synced_at=now)
    # Only the version we sent is settled; a newer change keeps the contact pending.
    session.execute(update(Contact).where(Contact.id == cid).values(**values))
    result = session.execute(
        update(Contact).where(Contact.id == cid, Contact.crm_version == version).values(crm_status=status)
    )
    return result.rowcount


def _release(session_factory: Callable[[], Session], ids: list[int], until: datetime, error: str) -> None:
    with session_factory() as session, session.begin():
        session.execute(
            update(Contact)
            .where(Contact.id.in_(ids))
            .values(crm_claimed_until=until, crm_attempts=Contact.crm_attempts + 1, crm_error=error)
        )


def _set_auth_state(session_factory: Callable[[], Session], ok: bool, detail: str | None) -> None:
    with session_factory() as session, session.begin():
        state = session.get(ServiceState, AUTH_STATE)
        value = {"ok": ok, "detail": detail, "at": utcnow().isoformat()}
        if state is None:
            session.add(ServiceState(key=AUTH_STATE, value=value))
        elif state.value.get("ok") != ok or not ok:
            state.value = value
