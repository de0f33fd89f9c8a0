"""Batch sync to the HubSpot emulator through the real hubspot-api-client: every failure class.

Each test asserts the contacts' final state and the number of HubSpot calls it took. The limiter is
the production one for the backend (Redis on redis-postgres, the flock'd file on the embedded default).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hubspot import HubSpot
from hubspot.crm.contacts import SimplePublicObjectInput
from sqlalchemy import select, update

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Contact, CrmStatus, DeadLetter, ServiceState, utcnow
from leadsync.worker.crm.batching import write_batch
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.hubspot_wire import RetryPolicy
from leadsync.worker.crm.mapping import Mapping, load_mapping
from leadsync.worker.crm.port import WriteInput
from leadsync.worker.crm.ratelimit import limiter_from_settings, memory_limiter
from leadsync.worker.crm.service_state import AUTH_STATE, PAUSE_STATE, RATE_STATE
from leadsync.worker.crm.sync import FlushReport, flush_pending
from tests.support.hubspot_emulator import HubSpotEmulator, Strict
from tests.worker.helpers import process, submit

FAST = RetryPolicy(attempts=3, base=0.05, cap=0.2, max_wait=2.0)


def crm_for(hubspot: HubSpotEmulator, settings: Settings, token: str = "test-token", **kwargs: Any) -> HubSpotCrm:
    """A client like the worker's: the backend's shared limiter, fast retries."""
    limiter = limiter_from_settings(settings, token) if "limiter" not in kwargs else kwargs.pop("limiter")
    return HubSpotCrm(token, hubspot.url, timeout=kwargs.pop("timeout", 5), limiter=limiter, retry=FAST, **kwargs)


def mapping(settings: Settings) -> Mapping:
    return load_mapping(settings.hubspot_mapping_path)


def flush(crm: HubSpotCrm | None, settings: Settings, **kwargs: Any) -> FlushReport:
    """The contact sync alone: these tests count its calls and budget, so timeline notes are off here
    (tests/worker/test_crm_notes.py covers them, and the budget with them on)."""
    contacts_only = settings.model_copy(update={"hubspot_notes": False})
    return flush_pending(get_sessionmaker(), crm, mapping(settings), contacts_only, **kwargs)


def people(settings: Settings, count: int, form: str = "info-packet", start: int = 0) -> None:
    for index in range(start, start + count):
        process(submit(form, email=f"p{index}@example.org", first_name=f"P{index}"), settings)


def contact(email: str) -> Contact:
    with session_scope() as session:
        row = session.scalars(select(Contact).where(Contact.email == email)).one()
        session.expunge(row)
        return row


def crm_states() -> dict[str, tuple[str, str | None]]:
    with session_scope() as session:
        return {c.email: (c.crm_status, c.hubspot_id) for c in session.scalars(select(Contact))}


def state(key: str) -> dict[str, Any]:
    with session_scope() as session:
        row = session.get(ServiceState, key)
        return dict(row.value) if row is not None else {}


def sales_client(hubspot: HubSpotEmulator) -> HubSpot:
    """What a salesperson's edits in HubSpot look like to the API."""
    return HubSpot(access_token=hubspot.token, host=hubspot.url)


@pytest.fixture
def crm(settings: Settings, hubspot: HubSpotEmulator) -> HubSpotCrm:
    """A client on a portal whose properties exist (`leadsync hubspot bootstrap` was run)."""
    setup = HubSpotCrm(hubspot.token, hubspot.url, timeout=5, limiter=memory_limiter(10_000))  # unpaced: setup only
    setup.bootstrap(mapping(settings))
    return crm_for(hubspot, settings)


# ---------------------------------------------------------------------- batching and ids


def test_pending_contacts_are_upserted_in_one_batch_and_ids_stored(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 5)
    report = flush(crm, settings)
    assert (report.claimed, report.synced, report.rejected, report.calls) == (5, 5, 0, 1)
    assert hubspot.count("batch/upsert") == 1
    for email, (status, hubspot_id) in crm_states().items():
        assert status == "synced"
        assert hubspot.contact_by_email(email)["id"] == hubspot_id
    assert contact("p0@example.org").hubspot_stage == "lead"
    assert flush(crm, settings).claimed == 0  # nothing left
    assert hubspot.count("batch/") == 1


def test_batches_hold_at_most_100(settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm) -> None:
    people(settings, 130, form="newsletter")
    first = flush(crm, settings, limit=500)  # asking for more never sends more than HubSpot takes
    second = flush(crm, settings)
    assert (first.synced, second.synced) == (100, 30)
    assert first.full(100) and not second.full(100)
    assert [call.inputs for call in hubspot.calls("batch/upsert")] == [100, 30]
    assert len(hubspot.contacts) == 130


def test_the_client_splits_more_than_100_inputs(settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm) -> None:
    inputs = [WriteInput(f"x{i}@example.org", {"firstname": f"X{i}"}, str(i)) for i in range(150)]
    outcome = crm.upsert_by_email(inputs)
    assert len(outcome.ids) == 150 and not outcome.errors
    assert [call.inputs for call in hubspot.calls("batch/upsert")] == [100, 50]
    assert hubspot.count(status=400) == 0


def _insert_contact(email: str, **values: Any) -> int:
    now = utcnow()
    with session_scope() as session:
        row = Contact(
            email=email,
            field_times={},
            lifecycle_stage="subscriber",
            newsletter_status="subscribed",
            first_seen_at=now,
            last_seen_at=now,
            crm_changed_at=now,
            **values,
        )
        session.add(row)
        session.flush()
        return row.id


def test_two_inputs_for_one_email_never_share_a_batch(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    # Rows from before emails were normalized: two spellings of one person (HubSpot's key is case-blind).
    _insert_contact("Ann@Example.org", first_name="Ann")
    _insert_contact("ann@example.org", first_name="Annie")
    people(settings, 2)
    first = flush(crm, settings)
    assert (first.claimed, first.synced) == (3, 3)  # one of the two spellings waits
    second = flush(crm, settings)
    assert (second.claimed, second.synced) == (1, 1)
    assert [call.inputs for call in hubspot.calls("batch/upsert")] == [3, 1]
    assert hubspot.count(status=400) == 0
    states = crm_states()
    assert states["Ann@Example.org"] == states["ann@example.org"]  # both point at the one record
    assert len(hubspot.contacts) == 3


def test_two_inputs_for_one_record_id_never_share_a_batch(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 1)
    flush(crm, settings)
    record_id = contact("p0@example.org").hubspot_id
    _insert_contact("other@example.org", first_name="Other", hubspot_id=record_id)  # e.g. after a merge
    process(submit("info-packet", email="p0@example.org", first_name="Pat"), settings)
    first = flush(crm, settings)
    second = flush(crm, settings)
    assert (first.claimed, second.claimed) == (1, 1)
    assert [call.inputs for call in hubspot.calls("batch/update")] == [1, 1]
    assert hubspot.count(status=400) == 0


def test_a_whole_batch_400_is_narrowed_to_the_bad_input(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    # HubSpot refuses a batch naming one record twice outright (trace ids or not): hold the duplicate back.
    inputs = [WriteInput(f"d{i}@example.org", {"firstname": f"D{i}"}, str(i)) for i in range(5)]
    inputs.append(WriteInput("D2@Example.org", {"firstname": "again"}, "99"))
    outcome = write_batch(crm, mapping(settings), crm.upsert_by_email, inputs)
    assert set(outcome.ids) == {"0", "1", "2", "3", "4"} and not outcome.errors  # "99" waits, unblamed
    assert [(call.status, call.inputs) for call in hubspot.calls("batch/upsert")] == [(400, 6), (200, 5)]


def test_an_unexplained_whole_batch_400_is_split_until_the_bad_input_stands_alone(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    # HubSpot refusing the whole traced batch for one internationalized address (no 207 partial success).
    hubspot.strict = Strict(no_partial_upserts=True)
    inputs = [WriteInput(f"g{i}@example.org", {"firstname": f"G{i}"}, str(i)) for i in range(7)]
    inputs[3] = WriteInput("jörg@example.de", {"firstname": "Jörg"}, "3")
    outcome = write_batch(crm, mapping(settings), crm.upsert_by_email, inputs)
    assert set(outcome.ids) == {"0", "1", "2", "4", "5", "6"}
    assert outcome.errors["3"].code == "INVALID_EMAIL"
    calls = [(call.status, call.inputs) for call in hubspot.calls("batch/upsert")]
    assert calls == [(400, 7), (200, 3), (400, 4), (400, 2), (400, 1), (200, 1), (200, 2)]  # halving, not 1 by 1
    assert hubspot.created == {f"g{i}@example.org": 1 for i in (0, 1, 2, 4, 5, 6)}  # each written once
    assert hubspot.writes == hubspot.created


# ---------------------------------------------------------------------- per-input failures (207)


def test_207_good_inputs_sync_and_each_bad_one_is_rejected_with_the_reason(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 4)
    with session_scope() as session:  # values HubSpot refuses though our forms took them
        session.execute(update(Contact).where(Contact.email == "p1@example.org").values(newsletter_status="bogus"))
        session.execute(update(Contact).where(Contact.email == "p2@example.org").values(email="p2@example"))
    report = flush(crm, settings)
    assert (report.synced, report.rejected, report.calls) == (2, 2, 1)
    assert hubspot.count("batch/upsert", status=207) == 1
    bad_option, bad_email = contact("p1@example.org"), contact("p2@example")
    assert bad_option.crm_status == "rejected" and "INVALID_OPTION" in (bad_option.crm_error or "")
    assert bad_email.crm_status == "rejected" and (bad_email.crm_error or "").startswith("INVALID_EMAIL")
    assert bad_email.hubspot_id is None
    assert hubspot.contact_by_email("p1@example.org") is None and len(hubspot.contacts) == 2
    with session_scope() as session:  # and each is a dead letter for a human
        letters = session.scalars(select(DeadLetter).where(DeadLetter.kind == "crm")).all()
        assert sorted(int(letter.ref) for letter in letters) == sorted([bad_option.id, bad_email.id])
    # Not retried forever: nothing is pending until the contact changes again.
    assert flush(crm, settings).claimed == 0
    assert hubspot.count("batch/") == 1
    with session_scope() as session:
        session.execute(update(Contact).where(Contact.email == "p1@example.org").values(newsletter_status="none"))
    process(submit("info-packet", email="p1@example.org", first_name="Fixed"), settings)
    assert flush(crm, settings).synced == 1
    assert contact("p1@example.org").crm_status == "synced" and contact("p1@example.org").crm_error is None


def test_missing_properties_are_created_and_the_inputs_retried_once(
    settings: Settings, hubspot: HubSpotEmulator
) -> None:
    people(settings, 2)
    report = flush(crm_for(hubspot, settings), settings)
    assert (report.synced, report.rejected) == (2, 0)
    assert hubspot.count("batch/upsert") == 2  # the first answered PROPERTY_DOESNT_EXIST for both
    assert hubspot.count("/properties/contacts/groups", status=201) == 1
    custom = len(mapping(settings).custom)
    assert hubspot.count("/properties/contacts", status=201) == custom + 1  # the properties and the group
    assert report.calls == 2 + 2 + custom + 1  # upserts, two listings, the creations
    assert hubspot.contact_by_email("p0@example.org")["properties"]["leadsync_newsletter_status"] == "none"


def test_a_property_that_cannot_be_created_rejects_after_one_retry(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, tmp_path: Path
) -> None:
    # A mapping naming a HubSpot property that bootstrap does not own (custom = false) and nobody created.
    text = settings.hubspot_mapping_path.read_text() + '\n[[property]]\nfield = "hutk"\nhubspot = "ghost_prop"\n'
    (tmp_path / "mapping.toml").write_text(text)
    ghostly = load_mapping(tmp_path / "mapping.toml")
    people(settings, 1)
    with session_scope() as session:
        session.execute(update(Contact).values(hutk="abc"))
    report = flush_pending(get_sessionmaker(), crm, ghostly, settings)
    assert (report.synced, report.rejected) == (0, 1)
    assert contact("p0@example.org").crm_error.startswith("PROPERTY_DOESNT_EXIST")
    assert hubspot.count("batch/upsert") == 2  # once, then once more after bootstrap: no loop


def test_a_mapping_hubspot_refuses_to_create_rejects_without_looping(
    settings: Settings, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    # The message opted in, but as a select of type string: HubSpot refuses that property definition.
    text = settings.hubspot_mapping_path.read_text().replace("sync = false", "sync = true")
    (tmp_path / "mapping.toml").write_text(text.replace('field_type = "textarea"', 'field_type = "select"'))
    broken = load_mapping(tmp_path / "mapping.toml")
    process(submit("info-packet", email="p0@example.org", first_name="P0", message="hello"), settings)
    report = flush_pending(get_sessionmaker(), crm_for(hubspot, settings), broken, settings)
    assert (report.synced, report.rejected, report.error) == (0, 1, None)
    assert "bootstrap: HubSpot 400" in contact("p0@example.org").crm_error
    assert hubspot.count("batch/upsert") == 1  # no second try against a property that cannot exist
    assert flush_pending(get_sessionmaker(), crm_for(hubspot, settings), broken, settings).claimed == 0


# ---------------------------------------------------------------------- auth


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_stops_syncing_keeps_everything_pending_and_alerts(
    settings: Settings, hubspot: HubSpotEmulator, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    people(settings, 2)
    crm = crm_for(hubspot, settings)
    hubspot.fail_next(1, status=status)
    report = flush(crm, settings)
    assert report.deferred == 2 and str(status) in (report.error or "") and report.calls == 1
    assert "STOPPED" in caplog.text
    with session_scope() as session:
        rows = session.scalars(select(Contact)).all()
        assert {(c.crm_status, c.crm_claimed_until) for c in rows} == {("pending", None)}  # nothing leased
    auth = state(AUTH_STATE)
    assert auth["ok"] is False and auth["token"] == crm.fingerprint
    from leadsync.status import collect

    assert any("refuses the token" in reason for reason in collect(settings).reasons)
    # No retry storm: the next flushes hold without calling HubSpot.
    for _ in range(3):
        held = flush(crm, settings)
        assert held.held == 2 and held.claimed == 0 and "stopped" in (held.error or "")
    assert hubspot.count() == 1 + 0  # (bootstrap was never reached either)
    # After the probe interval one flush tries again, and a good answer lifts the stop.
    with session_scope() as session:
        session.get_one(ServiceState, AUTH_STATE).value = {**auth, "retry_at": utcnow().isoformat()}
    assert flush(crm, settings).synced == 2
    assert state(AUTH_STATE)["ok"] is True


def test_a_new_token_resumes_at_once(settings: Settings, hubspot: HubSpotEmulator) -> None:
    people(settings, 1)
    assert flush(crm_for(hubspot, settings, token="wrong"), settings).deferred == 1
    assert flush(crm_for(hubspot, settings, token="wrong"), settings).claimed == 0  # stopped
    report = flush(crm_for(hubspot, settings), settings)  # the fixed token: another fingerprint
    assert report.synced == 1
    assert hubspot.count(status=401) == 1


# ---------------------------------------------------------------------- outages, timeouts, rate limits


def test_server_errors_are_retried_with_backoff_within_the_flush(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 3)
    before = hubspot.count()
    hubspot.fail_next(2, status=503)
    report = flush(crm, settings)
    assert (report.synced, report.calls) == (3, 3)
    assert [c.status for c in hubspot.calls("batch/upsert")] == [503, 503, 200]
    assert hubspot.count() - before == 3 and len(hubspot.contacts) == 3


def test_a_lasting_outage_gives_the_batch_back_and_pauses_every_flusher(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 3)
    hubspot.fail_for(60, status=502)
    report = flush(crm, settings)
    assert (report.synced, report.deferred, report.calls) == (0, 3, FAST.attempts)
    with session_scope() as session:
        rows = session.scalars(select(Contact)).all()
        assert {(c.crm_status, c.crm_claimed_until, c.crm_attempts) for c in rows} == {("pending", None, 1)}
    pause = state(PAUSE_STATE)
    assert pause["failures"] == 1 and "502" in pause["detail"]
    held = flush(crm, settings)
    assert held.held == 3 and held.claimed == 0  # paused: no call
    assert hubspot.count("batch/upsert") == FAST.attempts
    hubspot.fail_for(0)
    with session_scope() as session:  # the pause runs out
        session.get_one(ServiceState, PAUSE_STATE).value = {**pause, "until": utcnow().isoformat()}
    assert flush(crm, settings).synced == 3
    assert state(PAUSE_STATE)["failures"] == 0


def test_the_pause_grows_with_each_failed_flush(settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm) -> None:
    people(settings, 1)
    hubspot.fail_for(60, status=500)
    waits = []
    for _ in range(4):
        flush(crm, settings)
        pause = state(PAUSE_STATE)
        waits.append((datetime.fromisoformat(pause["until"]) - utcnow()).total_seconds())
        with session_scope() as session:  # let it run out at once
            session.get_one(ServiceState, PAUSE_STATE).value = {**pause, "until": utcnow().isoformat()}
    assert state(PAUSE_STATE)["failures"] == 4
    assert waits[0] <= 5 and waits[3] >= 18  # 2.5-5 s, 5-10, 10-20, 20-40: jittered, doubling
    assert hubspot.count("batch/upsert") == 4 * FAST.attempts


def test_a_timeout_is_retried_and_the_late_write_makes_no_duplicate(
    settings: Settings, hubspot: HubSpotEmulator
) -> None:
    crm = crm_for(hubspot, settings, timeout=0.3)
    crm.bootstrap(mapping(settings))
    people(settings, 2)
    hubspot.delay_next(1, 1.0)  # the first upsert times out on our side but still lands
    report = flush(crm, settings)
    assert (report.synced, report.calls) == (2, 2)
    deadline = time.monotonic() + 5
    while hubspot.count("batch/upsert") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hubspot.count("batch/upsert") == 2
    assert len(hubspot.contacts) == 2  # upserts by email are idempotent
    assert {hubspot_id for _, hubspot_id in crm_states().values()} == {
        hubspot.contact_by_email("p0@example.org")["id"],
        hubspot.contact_by_email("p1@example.org")["id"],
    }


def test_connection_errors_are_temporary(settings: Settings, hubspot: HubSpotEmulator) -> None:
    from tests.support.services import free_port

    crm = HubSpotCrm("test-token", f"http://127.0.0.1:{free_port()}", timeout=1, retry=FAST)
    people(settings, 1)
    report = flush(crm, settings)
    assert report.deferred == 1 and "unreachable" in (report.error or "") and report.calls == FAST.attempts
    assert contact("p0@example.org").crm_status == "pending"


def test_a_429_pauses_then_the_batch_goes_through(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 2)
    hubspot.fail_next(1, status=429)
    started = time.monotonic()
    report = flush(crm, settings)
    assert (report.synced, report.calls, report.rate_limited) == (2, 2, 1)
    assert time.monotonic() - started >= 0.9  # everyone paused a moment
    rate = state(RATE_STATE)
    assert rate["rate_limited_today"] == 1 and rate["last_429_policy"] == "TEN_SECONDLY_ROLLING"
    assert rate["daily_limit"] == 250_000 and rate["daily_remaining"] < 250_000


def test_repeated_429s_give_the_batch_back_without_a_storm(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 2)
    hubspot.fail_next(5, status=429)
    report = flush(crm, settings)
    assert report.deferred == 2 and report.rate_limited == FAST.rate_limited == report.calls
    with session_scope() as session:
        assert {c.crm_claimed_until for c in session.scalars(select(Contact))} == {None}


def test_hubspot_headers_stop_us_before_a_429(settings: Settings, hubspot: HubSpotEmulator) -> None:
    # HubSpot allows fewer requests than configured (or another tool spends them): its Remaining header
    # fills our window, and the next flush waits instead of being refused.
    crm = crm_for(hubspot, settings)
    crm.bootstrap(mapping(settings))
    hubspot.rate_limit = hubspot.count() + 2
    people(settings, 1)
    assert flush(crm, settings).synced == 1  # Remaining: 1
    people(settings, 1, start=1)
    assert flush(crm, settings).synced == 1  # Remaining: 0
    people(settings, 1, start=2)
    report = flush(crm, settings)
    assert report.deferred == 1 and report.calls == 0 and "rate limit" in (report.error or "")
    assert hubspot.count(status=429) == 0


def test_the_daily_limit_pauses_sync_and_shows_in_status(settings: Settings, hubspot: HubSpotEmulator) -> None:
    crm = crm_for(hubspot, settings)
    crm.bootstrap(mapping(settings))
    hubspot.daily_limit = hubspot.count()  # spent
    people(settings, 2)
    report = flush(crm, settings)
    assert report.deferred == 2 and report.calls == 1 and report.rate_limited == 1
    assert state(RATE_STATE)["last_429_policy"] == "DAILY"
    assert "DAILY" in state(PAUSE_STATE)["detail"] or "daily" in state(PAUSE_STATE)["detail"]
    assert flush(crm, settings).claimed == 0
    assert hubspot.count("batch/upsert") == 1
    from leadsync.status import collect

    report_status = collect(settings).to_dict()
    assert report_status["hubspot"]["daily_remaining"] == 0
    assert report_status["hubspot"]["last_429_policy"] == "DAILY"


def test_retry_after_from_hubspot_is_waited_out_then_the_batch_goes_through(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    hubspot.strict = Strict(retry_after=3)
    patient = RetryPolicy(attempts=3, base=0.05, cap=0.2, max_wait=5.0)  # waits up to 5 s (a longer wait defers)
    crm = HubSpotCrm(hubspot.token, hubspot.url, timeout=5, limiter=crm.limiter, retry=patient)
    people(settings, 2)
    hubspot.fail_next(1, status=429)
    report = flush(crm, settings)
    assert (report.synced, report.calls, report.rate_limited) == (2, 2, 1)
    upserts = hubspot.calls("batch/upsert")
    # HubSpot's Retry-After, not our 1 s default for a bare 429.
    assert [c.status for c in upserts] == [429, 200] and upserts[1].time - upserts[0].time >= 3


def test_the_daily_limit_without_daily_headers_still_stops_sync(settings: Settings, hubspot: HubSpotEmulator) -> None:
    # OAuth apps get no X-HubSpot-RateLimit-Daily* headers: the DAILY 429 body alone must stop the flushers.
    hubspot.strict = Strict(daily_headers=False)
    crm = crm_for(hubspot, settings)
    crm.bootstrap(mapping(settings))
    hubspot.daily_limit = hubspot.count()  # spent
    people(settings, 2)
    report = flush(crm, settings)
    assert report.deferred == 2 and report.calls == 1 and report.rate_limited == 1
    assert state(RATE_STATE)["last_429_policy"] == "DAILY"
    assert flush(crm, settings).claimed == 0  # paused: no second call into a spent day
    assert hubspot.count("batch/upsert") == 1 and not hubspot.writes


STRICT_MODES = {
    "no-partial-upserts": Strict(no_partial_upserts=True),
    "no-update-trace-echo": Strict(no_update_trace_echo=True),
    "retry-after": Strict(retry_after=1),
    "no-daily-headers": Strict(daily_headers=False),
    "html-5xx": Strict(error_body="html"),
    "empty-5xx": Strict(error_body="empty"),
    "everything": Strict.everything(),
}


@pytest.mark.parametrize("mode", STRICT_MODES)
def test_the_sync_writes_each_contact_once_in_every_strict_mode(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, mode: str
) -> None:
    hubspot.strict = STRICT_MODES[mode]
    people(settings, 6)
    with session_scope() as session:  # an internationalized address our form took, HubSpot refuses
        session.execute(update(Contact).where(Contact.email == "p2@example.org").values(email="jörg@example.de"))
    hubspot.fail_next(1, status=503)  # one 5xx (HTML or empty body in those modes) ...
    assert flush(crm, settings).claimed == 6
    hubspot.fail_next(1, status=429)  # ... and one 429 on the next write
    people(settings, 1, start=0)  # p0 changes: the next flush updates its known record by id
    for _ in range(3):
        flush(crm, settings)
    assert flush(crm, settings).claimed == 0  # nothing left pending: no write loop
    good = [f"p{i}@example.org" for i in (0, 1, 3, 4, 5)]
    assert hubspot.created == dict.fromkeys(good, 1)  # one record each, the refused address none
    assert hubspot.writes == {**dict.fromkeys(good, 1), "p0@example.org": 2}  # p0: its create and one update
    states = crm_states()
    assert all(states[email] == ("synced", hubspot.contact_by_email(email)["id"]) for email in good)
    assert states["jörg@example.de"] == ("rejected", None)
    assert contact("jörg@example.de").crm_error.startswith("INVALID_EMAIL")


# ---------------------------------------------------------------------- ids, email changes, stages


def test_known_records_are_updated_by_id_so_a_changed_email_makes_no_duplicate(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 1)
    flush(crm, settings)
    record_id = contact("p0@example.org").hubspot_id
    # Sales correct the email in HubSpot; then the person sends the form again with the old address.
    sales_client(hubspot).crm.contacts.basic_api.update(
        record_id, SimplePublicObjectInput(properties={"email": "pat.new@example.org"})
    )
    process(submit("info-packet", email="p0@example.org", first_name="P0", phone="555-0100"), settings)
    report = flush(crm, settings)
    assert (report.synced, report.calls) == (1, 1)
    assert hubspot.count("batch/update") == 1 and hubspot.count("batch/upsert") == 1  # the first sync only
    assert len(hubspot.contacts) == 1
    record = hubspot.contacts[record_id]["properties"]
    assert record["email"] == "pat.new@example.org" and record["phone"] == "555-0100"
    assert contact("p0@example.org").hubspot_id == record_id
    assert "email" not in hubspot.calls("batch/update")[0].body["inputs"][0]["properties"]


def test_a_record_gone_from_hubspot_is_upserted_by_email_again(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 2)
    flush(crm, settings)
    old_id = contact("p0@example.org").hubspot_id
    sales_client(hubspot).crm.contacts.basic_api.archive(old_id)  # deleted (or merged away) in HubSpot
    process(submit("info-packet", email="p0@example.org", first_name="P0", phone="1"), settings)
    process(submit("info-packet", email="p1@example.org", first_name="P1", phone="2"), settings)
    report = flush(crm, settings)
    assert (report.synced, report.rejected, report.calls) == (2, 0, 2)  # one update, one upsert
    assert [c.status for c in hubspot.calls("batch/update")] == [207]
    assert [c.inputs for c in hubspot.calls("batch/upsert")] == [2, 1]
    new_id = contact("p0@example.org").hubspot_id
    assert new_id not in (None, old_id)
    live = hubspot.contact_by_email("p0@example.org")
    assert live["id"] == new_id and live["properties"]["lifecyclestage"] == "lead"


def test_lifecycle_stage_is_not_written_back_over_a_later_stage(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    process(submit("newsletter", email="sub@example.org"), settings)
    people(settings, 1)
    flush(crm, settings)
    assert hubspot.contact_by_email("sub@example.org")["properties"]["lifecyclestage"] == "subscriber"
    record_id = contact("p0@example.org").hubspot_id
    sales_client(hubspot).crm.contacts.basic_api.update(
        record_id, SimplePublicObjectInput(properties={"lifecyclestage": "customer"})
    )
    # A later packet request: the subscriber moves on to lead; the customer stays a customer.
    process(submit("info-packet", email="sub@example.org", first_name="Sub"), settings)
    process(submit("info-packet", email="p0@example.org", first_name="P0", phone="2"), settings)
    assert flush(crm, settings).synced == 2
    [update_call] = hubspot.calls("batch/update")
    sent = {item["id"]: item["properties"] for item in update_call.body["inputs"]}
    assert "lifecyclestage" not in sent[record_id]
    assert sent[contact("sub@example.org").hubspot_id]["lifecyclestage"] == "lead"
    assert hubspot.contacts[record_id]["properties"]["lifecyclestage"] == "customer"
    assert hubspot.contact_by_email("sub@example.org")["properties"]["lifecyclestage"] == "lead"


def test_a_change_during_the_call_keeps_the_contact_pending(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 1)
    hubspot.delay_next(1, 0.5)
    changer = threading.Timer(
        0.2, lambda: process(submit("info-packet", email="p0@example.org", first_name="P0", phone="9"), settings)
    )
    changer.start()
    report = flush(crm, settings)
    changer.join()
    assert report.synced == 1
    row = contact("p0@example.org")
    assert row.crm_status == CrmStatus.PENDING and row.hubspot_id is not None
    assert flush(crm, settings).synced == 1
    assert hubspot.contacts[row.hubspot_id]["properties"]["phone"] == "9"


# ---------------------------------------------------------------------- mapping


def test_the_free_text_message_is_not_synced_unless_the_mapping_opts_in(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, tmp_path: Path
) -> None:
    process(submit("info-packet", email="m@example.org", first_name="M", message="my knee hurts"), settings)
    flush(crm, settings)
    assert "leadsync_message" not in hubspot.contact_by_email("m@example.org")["properties"]
    assert "leadsync_message" not in hubspot.properties
    assert all("leadsync_message" not in i["properties"] for i in hubspot.calls("batch/upsert")[0].body["inputs"])

    opted_in = tmp_path / "mapping.toml"
    opted_in.write_text(settings.hubspot_mapping_path.read_text().replace("sync = false", "sync = true"))
    their_mapping = load_mapping(opted_in)
    assert crm.bootstrap(their_mapping) == ["property leadsync_message"]
    process(submit("info-packet", email="m@example.org", first_name="M", message="call me"), settings)
    flush_pending(get_sessionmaker(), crm, their_mapping, settings)
    assert hubspot.contact_by_email("m@example.org")["properties"]["leadsync_message"] == "call me"


def test_bootstrap_is_idempotent_and_says_what_it_created(settings: Settings, hubspot: HubSpotEmulator) -> None:
    crm = crm_for(hubspot, settings)
    created = crm.bootstrap(mapping(settings))
    assert created[0] == "group leadsync"
    assert sorted(created[1:]) == sorted(f"property {spec.hubspot}" for spec in mapping(settings).custom)
    assert hubspot.properties["leadsync_newsletter_status"]["groupName"] == "leadsync"
    assert [o["value"] for o in hubspot.properties["leadsync_newsletter_status"]["options"]] == [
        "none",
        "pending",
        "subscribed",
        "unsubscribed",
    ]
    assert crm.bootstrap(mapping(settings)) == []
    assert hubspot.count(status=409) == 0
    # Another worker created one meanwhile: a 409 is "already there", not a failure.
    from hubspot.crm.properties import PropertyCreate

    definition = PropertyCreate(
        name="leadsync_utm_source", label="x", type="string", field_type="text", group_name="leadsync"
    )
    assert crm._create(crm._properties.create_with_http_info, definition) is False


def test_without_a_token_contacts_are_held(settings: Settings) -> None:
    people(settings, 2)
    report = flush(None, settings)
    assert report.held == 2 and report.claimed == 0


def test_gdpr_delete_erases_the_record_in_one_call(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    people(settings, 1)
    flush(crm, settings)
    calls = hubspot.count()
    crm.gdpr_delete("p0@example.org")
    crm.gdpr_delete("nobody@example.org")  # not held: fine
    assert hubspot.count() - calls == 2 and hubspot.count("gdpr-delete", status=204) == 2
    assert hubspot.contact_by_email("p0@example.org") is None and "p0@example.org" in hubspot.erased_emails


def test_a_crm_dead_letter_retried_after_the_fix_syncs_once_and_a_second_retry_does_nothing(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    from leadsync.worker import dead_letters

    people(settings, 2)
    with session_scope() as session:  # a value HubSpot refuses though our form took it
        session.execute(update(Contact).where(Contact.email == "p1@example.org").values(newsletter_status="bogus"))
    assert (flush(crm, settings).synced, contact("p1@example.org").crm_status) == (1, "rejected")
    with session_scope() as session:
        [letter] = session.scalars(select(DeadLetter).where(DeadLetter.kind == "crm")).all()
        letter_id = letter.id
        session.execute(update(Contact).where(Contact.email == "p1@example.org").values(newsletter_status="none"))
    first = dead_letters.retry(get_sessionmaker(), [letter_id])
    second = dead_letters.retry(get_sessionmaker(), [letter_id])  # run twice: the second finds nothing open
    assert first.crm and not first.skipped and second.skipped == [letter_id] and not second.crm
    assert contact("p1@example.org").crm_status == "pending"
    assert flush(crm, settings).synced == 1
    assert flush(crm, settings).claimed == 0
    assert contact("p1@example.org").crm_status == "synced"
    assert hubspot.created == {"p0@example.org": 1, "p1@example.org": 1}  # refused once, then written once
    assert hubspot.writes == hubspot.created
