"""A note per request on the contact's HubSpot timeline, exactly once, through the real client and emulator.

What is asserted is what HubSpot holds: the notes the emulator created per submission (by the `lsref` token
in their body), their association (type 202) and text, and the calls it received. Failures are HubSpot's
own: 429s, a 207 refusing one input, a write that landed while the client timed out, and a worker process
SIGKILLed while HubSpot held the answer to its notes call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import CrmActivity, Submission
from leadsync.worker.crm import activities
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.notes import token
from leadsync.worker.crm.ratelimit import memory_limiter
from leadsync.worker.crm.sync import FlushReport, flush_pending
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.worker.helpers import process, submit
from tests.worker.test_crm_preferences import click
from tests.worker.test_crm_sync import crm_for, mapping

NOTES = "/objects/notes/batch/create"


@pytest.fixture
def crm(settings: Settings, hubspot: HubSpotEmulator) -> HubSpotCrm:
    setup = HubSpotCrm(hubspot.token, hubspot.url, timeout=5, limiter=memory_limiter(10_000))
    setup.bootstrap(mapping(settings))
    return crm_for(hubspot, settings)


def flush(crm: HubSpotCrm, settings: Settings) -> FlushReport:
    return flush_pending(get_sessionmaker(), crm, mapping(settings), settings)


def packet(email: str, settings: Settings, **extra: Any) -> str:
    submission_id = submit("info-packet", email=email, first_name="Ann", **extra)
    process(submission_id, settings)
    return submission_id


def notes_per_submission(hubspot: HubSpotEmulator, submission_ids: list[str]) -> list[int]:
    return [hubspot.engagements.count_tokens("notes", token(s)) for s in submission_ids]


def activity_rows(kind: str = "note") -> list[CrmActivity]:
    with session_scope() as session:
        rows = list(session.scalars(select(CrmActivity).where(CrmActivity.kind == kind).order_by(CrmActivity.id)))
        session.expunge_all()
        return rows


def test_a_packet_request_becomes_one_note_that_tells_the_story(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    first = packet(
        "ann@example.org",
        settings,
        interest="knee pain",
        page_url="https://clinic.example/knee",
        page_title="Knee pain: what helps",
        utm_source="google",
        utm_campaign="knee-2026",
    )
    report = flush(crm, settings)
    assert report.activities["note_created"] == 1
    assert hubspot.count("batch/upsert") == 1 and hubspot.count(NOTES) == 1
    [note] = hubspot.engagements.notes_for("ann@example.org")
    assert note["associations"] == [
        {"toObjectId": hubspot.contact_by_email("ann@example.org")["id"], "associationTypeId": 202}
    ]
    body = note["properties"]["hs_note_body"]
    for text in (
        "Information packet requested",
        "Interest: knee pain",
        "Page: Knee pain: what helps — https://clinic.example/knee",
        "Campaign: source=google, campaign=knee-2026",
        "Consent: contact about this request; newsletter no (consent text version test-1)",
        token(first),
    ):
        assert text in body
    # A second request is a second entry on the timeline; the first is never written again.
    second = packet("ann@example.org", settings, interest="back pain")
    flush(crm, settings)
    assert notes_per_submission(hubspot, [first, second]) == [1, 1]
    again = flush(crm, settings)
    assert (again.calls, again.timeline_calls) == (0, 0)  # nothing due: no call at all
    assert [row.hubspot_id for row in activity_rows()] == [
        n["id"] for n in sorted(hubspot.engagements.notes_for("ann@example.org"), key=lambda n: int(n["id"]))
    ]


def test_a_batch_of_100_leads_costs_one_upsert_and_one_notes_call(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    ids = [packet(f"p{i}@example.org", settings) for i in range(100)]
    report = flush(crm, settings)
    assert (report.synced, report.activities["note_created"], report.calls, report.timeline_calls) == (100, 100, 1, 1)
    assert [c.inputs for c in hubspot.calls(NOTES)] == [100]
    assert notes_per_submission(hubspot, ids) == [1] * 100


def test_only_a_confirmed_newsletter_sign_up_gets_a_note(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    sign_up = submit("newsletter", email="nina@example.org")
    process(sign_up, settings)
    flush(crm, settings)
    assert hubspot.engagements.notes_for("nina@example.org") == []  # unconfirmed: nothing on the timeline
    with TestClient(create_app(settings)) as web:
        click(web, "confirm", "nina@example.org", settings)  # the double opt-in click, through the real app
    flush(crm, settings)
    [note] = hubspot.engagements.notes_for("nina@example.org")
    assert "Newsletter sign-up confirmed" in note["properties"]["hs_note_body"]
    assert "Confirmed (double opt-in)" in note["properties"]["hs_note_body"]
    assert notes_per_submission(hubspot, [sign_up]) == [1]


def test_429s_on_the_notes_call_still_give_one_note_each(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activities, "SEARCH_SETTLE", timedelta(0))
    ids = [packet(f"r{i}@example.org", settings) for i in range(10)]
    hubspot.fail_next(2, status=429, path_contains=NOTES)  # absorbed inside the call
    flush(crm, settings)
    assert notes_per_submission(hubspot, ids) == [1] * 10
    # More 429s than one call absorbs: the batch is deferred, then written once by a later flush.
    more = [packet(f"s{i}@example.org", settings) for i in range(10)]
    hubspot.fail_next(10, status=429, path_contains=NOTES)
    deferred = flush(crm, settings)
    assert deferred.activities.get("note_deferred") == 10 and deferred.activities.get("note_created") is None
    hubspot.fail_next(0)
    time.sleep(1.1)  # HubSpot's Retry-After on the injected 429s: the limiter's pause
    for _ in range(3):
        flush(crm, settings)
    assert notes_per_submission(hubspot, ids + more) == [1] * 20
    assert hubspot.count(NOTES, status=429) >= 3


def test_a_207_rejects_one_note_and_writes_the_others(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    ids = [packet(f"q{i}@example.org", settings) for i in range(3)]
    flush(crm, settings)  # contacts and notes written
    more = [packet(f"q{i}@example.org", settings) for i in range(3)]  # a second request each
    with hubspot.lock:  # one record deleted in HubSpot by a sales rep: its note's association is refused
        gone = hubspot.contact_by_email("q1@example.org")["id"]
        del hubspot.contacts[gone]
    # The contact update by id then finds the record gone and upserts it again: the note goes to the new one.
    # To see a 207, the note must name the old record: write the notes alone, before the contacts sync.
    with session_scope() as session:
        for submission_id in more:
            contact_id = session.get_one(Submission, submission_id).contact_id
            session.add(CrmActivity(kind="note", submission_id=submission_id, contact_id=contact_id))
    report = activities.flush_activities(get_sessionmaker(), crm, settings)
    assert [c.status for c in hubspot.calls(NOTES)][-1] == 207
    assert (report.counts["note_created"], report.counts["note_rejected"]) == (2, 1)
    assert notes_per_submission(hubspot, more) == [1, 0, 1]
    rejected = [row for row in activity_rows() if row.status == "rejected"]
    assert [row.submission_id for row in rejected] == [more[1]]
    assert "Could not find CONTACT" in (rejected[0].error or "")
    calls = hubspot.count(NOTES)
    activities.flush_activities(get_sessionmaker(), crm, settings)
    assert hubspot.count(NOTES) == calls  # a refused note is not sent again
    assert notes_per_submission(hubspot, ids) == [1, 1, 1]


def test_a_notes_call_that_landed_while_the_client_timed_out_is_found_not_written_again(
    settings: Settings, hubspot: HubSpotEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activities, "SEARCH_SETTLE", timedelta(seconds=2))
    hubspot.search_lag_seconds = 0.5  # HubSpot's index trails the write
    setup = HubSpotCrm(hubspot.token, hubspot.url, timeout=5, limiter=memory_limiter(10_000))
    setup.bootstrap(mapping(settings))
    impatient = crm_for(hubspot, settings, timeout=1)
    ids = [packet(f"t{i}@example.org", settings) for i in range(5)]
    hubspot.hold_after_next(1, 3.0, NOTES)  # written at once, answered after the client gave up
    report = flush(impatient, settings)
    assert report.activities["note_deferred"] == 5
    assert hubspot.count(NOTES) == 1 and notes_per_submission(hubspot, ids) == [1] * 5
    assert all(row.attempted_at is not None and row.hubspot_id is None for row in activity_rows())
    assert flush(impatient, settings).activities.get("note_found") is None  # too soon: the index may lag
    time.sleep(1.2)  # SEARCH_SETTLE after the attempt (the 1 s timeout took the rest)
    found = flush(impatient, settings)
    assert found.activities["note_found"] == 5
    assert hubspot.count(NOTES) == 1  # looked up, not written again
    assert notes_per_submission(hubspot, ids) == [1] * 5
    assert sorted(row.hubspot_id or "" for row in activity_rows()) == sorted(
        n["id"] for n in hubspot.engagements.records["notes"].values()
    )


KILLED_FLUSH = """
import sys
from datetime import timedelta
from leadsync.config import get_settings
from leadsync.storage.db import get_sessionmaker
from leadsync.worker.crm import activities
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.mapping import load_mapping
from leadsync.worker.crm.ratelimit import memory_limiter
from leadsync.worker.crm.sync import flush_pending

activities.LEASE = timedelta(seconds=2)  # production's 3 minutes, shortened so the test sees it expire
settings = get_settings()
crm = HubSpotCrm("test-token", sys.argv[1], timeout=60, limiter=memory_limiter(10_000))
print("flushing", flush=True)
flush_pending(get_sessionmaker(), crm, load_mapping(settings.hubspot_mapping_path), settings)
print("finished", flush=True)
"""


def test_a_worker_sigkilled_during_the_notes_call_never_writes_a_second_note(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activities, "SEARCH_SETTLE", timedelta(seconds=1))
    hubspot.search_lag_seconds = 0.5
    ids = [packet(f"k{i}@example.org", settings) for i in range(40)]
    hubspot.hold_after_next(1, 60.0, NOTES)  # HubSpot writes the 40 notes and holds the answer
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_FLUSH, hubspot.url],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while hubspot.engagements.count_tokens("notes", "lsref") < 40:
            assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
            assert time.monotonic() < deadline, "the notes call never reached HubSpot"
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # mid-call: HubSpot wrote, the worker never heard
        worker.wait()
    rows = activity_rows()
    assert len(rows) == 40 and all(r.attempted_at is not None and r.hubspot_id is None for r in rows)
    assert flush(crm, settings).activities.get("note_found") is None  # still leased by the dead worker
    time.sleep(2.2)  # the dead worker's lease runs out
    report = flush(crm, settings)
    assert report.activities["note_found"] == 40 and report.activities.get("note_created") is None
    assert hubspot.count(NOTES) == 1  # the killed call; nothing written since
    assert notes_per_submission(hubspot, ids) == [1] * 40
    assert all(row.status == "done" and row.hubspot_id for row in activity_rows())


def test_status_and_metrics_count_timeline_writes_by_outcome(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from leadsync import status, status_metrics

    for i in range(3):
        packet(f"m{i}@example.org", settings)
    flush(crm, settings)
    packet("m3@example.org", settings)
    flush_pending(get_sessionmaker(), None, mapping(settings), settings)  # no token: the note waits
    report = status.collect(settings)
    # m3's note is not due before its contact is synced
    assert report.stored is not None and report.stored.timeline == {"note": {"done": 3}}
    flush(crm, settings)
    assert status.collect(settings).to_dict()["timeline"] == {"note": {"done": 4}}

    class Collector:
        def collect(self) -> Any:
            return status_metrics.state_metrics(status.collect(settings))

    registry = CollectorRegistry()
    registry.register(Collector())
    assert b'leadsync_hubspot_timeline{kind="note",status="done"} 4.0' in generate_latest(registry)
