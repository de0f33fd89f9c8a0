"""The flush (lease, batch, record, service state) against the in-memory `StubCrm`, on both backends:
what lands in the stub's records and in the database rows, no emulator and no network."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Contact, DeadLetter, ServiceState, utcnow
from leadsync.worker.crm.mapping import load_mapping
from leadsync.worker.crm.port import CrmAuthError, CrmTemporaryError
from leadsync.worker.crm.service_state import AUTH_STATE, PAUSE_STATE
from leadsync.worker.crm.stub import StubCrm
from leadsync.worker.crm.sync import FlushReport, flush_pending
from tests.worker.helpers import process, submit
from tests.worker.test_crm_sync import crm_states, state


def flush(crm: StubCrm, settings: Settings) -> FlushReport:
    contacts_only = settings.model_copy(update={"hubspot_notes": False})
    return flush_pending(get_sessionmaker(), crm, load_mapping(settings.hubspot_mapping_path), contacts_only)


def people(settings: Settings, count: int) -> None:
    for index in range(count):
        process(submit("info-packet", email=f"p{index}@example.org", first_name=f"P{index}"), settings)


def test_a_flush_writes_each_contact_once_and_stores_the_stubs_record_ids(settings: Settings) -> None:
    people(settings, 6)
    crm = StubCrm(refuse={"p3@example.org": "INVALID_EMAIL"})
    report = flush(crm, settings)
    assert (report.claimed, report.synced, report.rejected, report.calls) == (6, 5, 1, 1)
    states = crm_states()
    assert states.pop("p3@example.org") == ("rejected", None)
    assert {email: crm.records[record_id]["email"] for email, (_, record_id) in states.items() if record_id} == {
        email: email for email in states
    }
    assert {status for status, _ in states.values()} == {"synced"}
    with session_scope() as session:
        assert [(d.kind, d.ref) for d in session.scalars(select(DeadLetter))] == [
            ("crm", str(session.scalars(select(Contact.id).where(Contact.email == "p3@example.org")).one()))
        ]
    assert flush(crm, settings).claimed == 0 and crm.count("upsert_by_email") == 1  # nothing written twice


def test_an_outage_pauses_every_flusher_and_a_refused_token_stops_them(settings: Settings) -> None:
    people(settings, 2)
    crm = StubCrm()
    crm.fail_next(CrmTemporaryError("HubSpot 503", 503))
    down = flush(crm, settings)
    assert (down.deferred, down.synced) == (2, 0) and "503" in (down.error or "")
    assert state(PAUSE_STATE)["failures"] == 1 and state(PAUSE_STATE)["until"]
    held = flush(crm, settings)  # paused: no call
    assert held.held == 2 and "paused" in (held.error or "") and len(crm.calls) == 1

    with session_scope() as session:  # the pause is over
        session.get_one(ServiceState, PAUSE_STATE).value = {"until": None, "failures": 1, "detail": None}
    crm.fail_next(CrmAuthError("HubSpot 401: bad token", 401))
    refused = flush(crm, settings)
    assert refused.deferred == 2 and state(AUTH_STATE)["ok"] is False and state(AUTH_STATE)["token"] == "stub"
    stopped = flush(crm, settings)
    assert stopped.held == 2 and "stopped" in (stopped.error or "") and len(crm.calls) == 2

    other = StubCrm(fingerprint="new-token")  # a changed token is tried at once, and clears the stop
    assert flush(other, settings).synced == 2
    assert state(AUTH_STATE)["ok"] is True and state(PAUSE_STATE)["failures"] == 0
    assert {status for status, _ in crm_states().values()} == {"synced"}


def test_a_partial_batch_waits_for_a_burst_to_fill_it_but_never_longer_than_the_fill_wait(settings: Settings) -> None:
    contacts_only = settings.model_copy(update={"hubspot_notes": False})
    mapping, wait = load_mapping(settings.hubspot_mapping_path), timedelta(seconds=2)

    def flush_filling(crm: StubCrm) -> FlushReport:
        return flush_pending(get_sessionmaker(), crm, mapping, contacts_only, fill_wait=wait)

    crm = StubCrm()
    people(settings, 3)
    assert flush_filling(crm).synced == 3  # nothing more on its way: a lone lead goes at once
    people(settings, 5)  # five more contacts due...
    arriving = submit("info-packet", email="late@example.org", first_name="Late")  # ...and a burst arriving
    report = flush_filling(crm)
    assert (report.filling, report.claimed, crm.count("upsert_by_email")) == (5, 0, 1)
    with session_scope() as session:  # the oldest due contact has now waited the fill wait
        session.execute(update(Contact).values(crm_changed_at=utcnow() - wait))
    assert flush_filling(crm).synced == 5 and crm.count("upsert_by_email") == 2
    process(arriving, settings)
    assert flush_filling(crm).synced == 1  # the burst is over: its tail goes without waiting
