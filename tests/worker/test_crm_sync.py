"""Batch sync to the HubSpot emulator through the real hubspot-api-client."""

from __future__ import annotations

from sqlalchemy import select, update

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Contact, ServiceState
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.mapping import load_mapping
from leadsync.worker.crm.sync import flush_pending
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.worker.helpers import process, submit


def crm_for(hubspot: HubSpotEmulator, token: str = "test-token") -> HubSpotCrm:
    return HubSpotCrm(token, hubspot.url, timeout=5)


def mapping(settings: Settings):
    return load_mapping(settings.hubspot_mapping_path)


def people(settings: Settings, count: int, form: str = "info-packet") -> None:
    for index in range(count):
        process(submit(form, email=f"p{index}@example.org", first_name=f"P{index}"), settings)


def crm_states() -> dict[str, tuple[str, str | None]]:
    with session_scope() as session:
        return {c.email: (c.crm_status, c.hubspot_id) for c in session.scalars(select(Contact))}


def test_pending_contacts_are_upserted_in_one_batch_and_ids_stored(
    settings: Settings, hubspot: HubSpotEmulator
) -> None:
    crm = crm_for(hubspot)
    crm.bootstrap(mapping(settings))
    people(settings, 5)
    report = flush_pending(get_sessionmaker(), crm, mapping(settings), settings)
    assert (report.claimed, report.synced, report.rejected) == (5, 5, 0)
    assert hubspot.count("batch/upsert") == 1
    states = crm_states()
    for email, (status, hubspot_id) in states.items():
        assert status == "synced"
        assert hubspot.contact_by_email(email)["id"] == hubspot_id
    assert flush_pending(get_sessionmaker(), crm, mapping(settings), settings).claimed == 0  # nothing left


def test_batches_hold_at_most_100(settings: Settings, hubspot: HubSpotEmulator) -> None:
    crm = crm_for(hubspot)
    crm.bootstrap(mapping(settings))
    people(settings, 130, form="newsletter")
    first = flush_pending(get_sessionmaker(), crm, mapping(settings), settings)
    second = flush_pending(get_sessionmaker(), crm, mapping(settings), settings)
    assert (first.synced, second.synced) == (100, 30)
    assert [call.inputs for call in hubspot.calls("batch/upsert")] == [100, 30]
    assert len(hubspot.contacts) == 130


def test_missing_properties_are_created_and_the_batch_retried_once(
    settings: Settings, hubspot: HubSpotEmulator
) -> None:
    people(settings, 2)
    report = flush_pending(get_sessionmaker(), crm_for(hubspot), mapping(settings), settings)
    assert report.synced == 2
    assert hubspot.count("batch/upsert") == 2  # the first answered PROPERTY_DOESNT_EXIST
    assert hubspot.contact_by_email("p0@example.org")["properties"]["leadsync_newsletter_status"] == "none"


def test_an_input_hubspot_refuses_is_marked_rejected_and_the_rest_sync(
    settings: Settings, hubspot: HubSpotEmulator
) -> None:
    crm = crm_for(hubspot)
    crm.bootstrap(mapping(settings))
    people(settings, 3)
    # HubSpot validates phone-like values no more strictly than we do, so make one input invalid for HubSpot:
    with session_scope() as session:
        session.execute(update(Contact).where(Contact.email == "p1@example.org").values(newsletter_status="bogus"))
    report = flush_pending(get_sessionmaker(), crm, mapping(settings), settings)
    assert (report.synced, report.rejected) == (2, 1)
    with session_scope() as session:
        bad = session.scalars(select(Contact).where(Contact.email == "p1@example.org")).one()
        assert bad.crm_status == "rejected" and "INVALID_OPTION" in (bad.crm_error or "")
    assert hubspot.contact_by_email("p1@example.org") is None and len(hubspot.contacts) == 2


def test_bad_token_keeps_everything_pending_and_records_the_alert(settings: Settings, hubspot: HubSpotEmulator) -> None:
    people(settings, 2)
    report = flush_pending(get_sessionmaker(), crm_for(hubspot, token="wrong"), mapping(settings), settings)
    assert report.deferred == 2 and "401" in (report.error or "")
    assert {status for status, _ in crm_states().values()} == {"pending"}
    with session_scope() as session:
        assert session.get_one(ServiceState, "hubspot_auth").value["ok"] is False
    assert hubspot.count("batch/upsert") == 1
    # The lease keeps the next flush from hammering HubSpot with the same bad token.
    assert flush_pending(get_sessionmaker(), crm_for(hubspot, token="wrong"), mapping(settings), settings).claimed == 0
    assert hubspot.count("batch/upsert") == 1


def test_server_errors_defer_the_batch(settings: Settings, hubspot: HubSpotEmulator) -> None:
    crm = crm_for(hubspot)
    crm.bootstrap(mapping(settings))
    people(settings, 3)
    hubspot.fail_next(1, status=503)
    report = flush_pending(get_sessionmaker(), crm, mapping(settings), settings)
    assert report.deferred == 3 and report.synced == 0
    with session_scope() as session:  # released for a later flush, not lost
        session.execute(update(Contact).values(crm_claimed_until=None))
    assert flush_pending(get_sessionmaker(), crm, mapping(settings), settings).synced == 3


def test_without_a_token_contacts_are_held(settings: Settings) -> None:
    people(settings, 2)
    report = flush_pending(get_sessionmaker(), None, mapping(settings), settings)
    assert report.held == 2 and report.claimed == 0
