"""Owners by round robin, follow-up tasks, and the Forms API submission, against the HubSpot emulator.

Asserted on what HubSpot holds or received: the records' `hubspot_owner_id`, the tasks associated with the
contact (type 204) and their due time, and the Forms API payloads (hutk, page, IP, consent).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Submission
from leadsync.worker.crm import activities, forms_api
from leadsync.worker.crm.followups import SUBJECT, next_business_day
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.notes import token
from leadsync.worker.crm.sync import FlushReport, flush_pending
from tests.support.hubspot_emulator import PORTAL_ID, HubSpotEmulator
from tests.worker import test_crm_notes
from tests.worker.helpers import process, submit
from tests.worker.test_crm_notes import activity_rows, packet
from tests.worker.test_crm_sync import crm_for, mapping

TASKS = "/objects/tasks/batch/create"
HUTK = "6f0b1e0c0f1a4e8f9d2c3b4a5f6e7d8c"

crm = test_crm_notes.crm  # the fixture: a client like the worker's on a bootstrapped portal


def submitted_at_ms(submission_id: str) -> int:
    with session_scope() as session:
        return forms_api.submitted_at_ms(session.get_one(Submission, submission_id))


def flush(crm: HubSpotCrm, settings: Settings) -> FlushReport:
    return flush_pending(get_sessionmaker(), crm, mapping(settings), settings)


@pytest.fixture
def owners(settings: Settings) -> Settings:
    return settings.model_copy(update={"hubspot_owner_ids": ["101", "102"]})


def owner_of(hubspot: HubSpotEmulator, email: str) -> str | None:
    return hubspot.contact_by_email(email)["properties"].get("hubspot_owner_id")


def test_new_packet_leads_get_owners_in_turn_and_a_task_due_the_next_business_day(
    owners: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    ids = [packet(f"o{i}@example.org", owners, interest="knee") for i in range(4)]
    report = flush(crm, owners)
    assert report.activities["owner_assigned"] == 4 and report.activities["task_created"] == 4
    assert [owner_of(hubspot, f"o{i}@example.org") for i in range(4)] == ["101", "102", "101", "102"]
    # One owner read, one owner update, one notes call, one tasks call for the whole batch.
    assert report.timeline_calls == 4
    assert [c.inputs for c in hubspot.calls(TASKS)] == [4]
    for i, submission_id in enumerate(ids):
        [task] = hubspot.engagements.notes_for(f"o{i}@example.org", "tasks")
        contact_id = hubspot.contact_by_email(f"o{i}@example.org")["id"]
        assert task["associations"] == [{"toObjectId": contact_id, "associationTypeId": 204}]
        properties = task["properties"]
        assert properties["hs_task_subject"] == SUBJECT
        assert properties["hubspot_owner_id"] == ["101", "102"][i % 2]
        assert token(submission_id) in properties["hs_task_body"] and "Interest: knee" in properties["hs_task_body"]
        due = datetime.fromtimestamp(int(properties["hs_timestamp"]) / 1000, UTC)
        assert due.weekday() < 5 and due.hour == 9 and due.date() > datetime.now(UTC).date()
    # A second request from the same person: a note, but no second task and the owner stays.
    packet("o0@example.org", owners)
    again = flush(crm, owners)
    assert again.activities.get("task_created") is None and again.activities["note_created"] == 1
    assert owner_of(hubspot, "o0@example.org") == "101"


def test_an_owner_a_sales_rep_chose_is_never_overwritten_and_gets_the_task(
    owners: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    hubspot.add_contact({"email": "known@example.org", "firstname": "Kim", "hubspot_owner_id": "103"})
    packet("known@example.org", owners)
    packet("fresh@example.org", owners)
    report = flush(crm, owners)
    assert (report.activities["owner_kept"], report.activities["owner_assigned"]) == (1, 1)
    assert owner_of(hubspot, "known@example.org") == "103"
    # Turns are handed out when the request is seen (before HubSpot is asked), so the known record's turn
    # (101) is spent: the next new lead gets 102.
    assert owner_of(hubspot, "fresh@example.org") == "102"
    [task] = hubspot.engagements.notes_for("known@example.org", "tasks")
    assert task["properties"]["hubspot_owner_id"] == "103"
    update_bodies = [c.body for c in hubspot.calls("/contacts/batch/update")]
    assert all(
        i["id"] != hubspot.contact_by_email("known@example.org")["id"] for b in update_bodies for i in b["inputs"]
    )


def test_the_next_business_day_skips_the_weekend() -> None:
    friday = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
    assert next_business_day(friday) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert next_business_day(datetime(2026, 12, 1, 23, 0, tzinfo=UTC)) == datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def forms(settings: Settings, hubspot: HubSpotEmulator) -> Settings:
    guid = hubspot.engagements.add_form()
    configured = {
        "hubspot_portal_id": str(PORTAL_ID),
        "hubspot_form_guids": {"info_packet": guid},
        "hubspot_forms_base_url": hubspot.url,  # HubSpot serves the Forms API from api.hsforms.com
    }
    return settings.model_copy(update=configured)


def test_the_forms_api_gets_hutk_page_ip_and_consent(
    forms: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    submission_id = submit(
        "info-packet",
        email="ann@example.org",
        first_name="Ann",
        hutk=HUTK,
        page_url="https://clinic.example/knee",
        page_title="Knee pain: what helps",
    )
    with session_scope() as session:  # the visitor's address, as the HTTP edge stores it
        session.get_one(Submission, submission_id).ip = "203.0.113.7"
    process(submission_id, forms)
    report = flush(crm, forms)
    assert report.activities["form_sent"] == 1
    [(portal, guid, body)] = hubspot.engagements.form_submissions
    assert (portal, guid) == (str(PORTAL_ID), forms.hubspot_form_guids["info_packet"])
    assert body["context"]["hutk"] == HUTK
    assert body["context"]["pageUri"] == "https://clinic.example/knee"
    assert body["context"]["pageName"] == "Knee pain: what helps"
    assert body["context"]["ipAddress"] == "203.0.113.7"
    assert {"objectTypeId": "0-1", "name": "email", "value": "ann@example.org"} in body["fields"]
    assert body["legalConsentOptions"]["consent"] == {"consentToProcess": True, "text": forms.consent_text}
    flush(crm, forms)
    assert len(hubspot.engagements.form_submissions) == 1  # sent once


def test_a_forms_api_outage_is_retried_and_a_refusal_is_recorded(
    forms: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    packet("ann@example.org", forms, hutk=HUTK)
    hubspot.fail_next(1, status=503, path_contains="/submissions/v3/")
    assert flush(crm, forms).activities["form_deferred"] == 1
    assert hubspot.engagements.form_submissions == []
    rows = activity_rows("form")
    assert rows[0].status == "pending" and rows[0].attempted_at is not None
    # Sent again once SEARCH_SETTLE has passed: a 503 wrote nothing, so the contact shows no conversion.
    activities_settle, activities.SEARCH_SETTLE = activities.SEARCH_SETTLE, activities.timedelta(0)
    try:
        assert flush(crm, forms).activities["form_sent"] == 1
    finally:
        activities.SEARCH_SETTLE = activities_settle
    assert len(hubspot.engagements.form_submissions) == 1
    # A form deleted in HubSpot: 404 for that post, recorded as rejected, never retried.
    hubspot.engagements.forms.clear()
    packet("bo@example.org", forms)
    assert flush(crm, forms).activities["form_rejected"] == 1
    assert [row.status for row in activity_rows("form")] == ["done", "rejected"]


def test_a_forms_post_that_landed_while_the_client_timed_out_is_found_on_the_contact_not_sent_again(
    forms: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activities, "SEARCH_SETTLE", timedelta(0))
    first = packet("ann@example.org", forms, hutk=HUTK)
    flush(crm, forms)  # contact and note written; the form post too
    second = packet("ann@example.org", forms, hutk=HUTK)  # she asks again: a second post is due
    third = packet("bo@example.org", forms)
    impatient = crm_for(hubspot, forms, timeout=1)
    hubspot.hold_after_next(1, 3.0, "/submissions/v3/")  # Ann's second post lands, the answer comes too late
    assert flush(impatient, forms).activities["form_deferred"] == 2  # hers unknown, Bo's never sent
    assert [b["submittedAt"] for _, _, b in hubspot.engagements.form_submissions] == [
        str(submitted_at_ms(s)) for s in (first, second)
    ]
    report = flush(crm, forms)
    assert report.activities["form_found"] == 1 and report.activities["form_sent"] == 1  # Bo's, sent now
    posted = [b["submittedAt"] for _, _, b in hubspot.engagements.form_submissions]
    assert posted == [str(submitted_at_ms(s)) for s in (first, second, third)]  # each exactly once
    assert [row.status for row in activity_rows("form")] == ["done", "done", "done"]
    assert hubspot.contact_by_email("ann@example.org")["properties"]["num_conversion_events"] == "2"


def test_without_a_portal_and_form_guid_nothing_goes_to_the_forms_api(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    packet("ann@example.org", settings, hutk=HUTK)
    flush(crm, settings)
    assert hubspot.count("/submissions/") == 0 and activity_rows("form") == []
