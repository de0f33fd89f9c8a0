"""A worker SIGKILLed in the middle of a CRM flush: the batch it had in flight reaches HubSpot anyway (the
request was sent), the worker never records it, and after CRM_LEASE_SECONDS another flush writes the same
contacts again. HubSpot must end with one record per person (created once), written at most twice.

Both backends: the embedded default (SQLite + filesystem broker, `leadsync dev`) and Redis + PostgreSQL.

Example:
    .venv/bin/pytest tests/integration/test_crm_crash.py -q -s   # -s prints the figures
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from leadsync.storage.models import Contact
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, count, services_env, wait_for

pytestmark = pytest.mark.integration

LEASE = 4.0  # CRM_LEASE_SECONDS; production's is 180
HOLD = 8.0  # the emulator holds the in-flight batch this long, then still writes it (as HubSpot would)
LEADS = 20


@pytest.fixture
def stack(
    tmp_path: Path, base_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    env = {
        **base_env,
        **services_env(smtp, hubspot),
        "CRM_LEASE_SECONDS": str(LEASE),
        # The drill holds the contact batch in flight; timeline notes (their own exactly-once drill is
        # tests/worker/test_crm_notes.py) would otherwise race it for the emulator's held request.
        "HUBSPOT_NOTES": "false",
        "SWEEP_INTERVAL_SECONDS": "1",
        "SWEEP_GRACE_SECONDS": "1",
        "EMAIL_CLAIM_LEASE_SECONDS": "5",
    }
    running = LeadsyncStack(env, tmp_path).start()
    yield running
    running.stop()
    print(running.logs())  # captured: shown only when the test failed


def test_worker_sigkilled_mid_crm_flush_every_contact_reaches_hubspot_once(
    stack: LeadsyncStack, hubspot: HubSpotEmulator
) -> None:
    url = stack.env["DATABASE_URL"]
    # A first lead synced: the worker's start-up calls to HubSpot are behind us, the next call is a flush's.
    assert stack.post("info-packet", {"email": "warm@example.org", "first_name": "Warm"}).status_code == 202
    wait_for(lambda: hubspot.writes["warm@example.org"] == 1, timeout=30, what="the warm-up lead in HubSpot")

    hubspot.delay_next(1, HOLD)
    emails = [f"crm{i}@example.org" for i in range(LEADS)]
    for email in emails:
        assert stack.post("info-packet", {"email": email, "first_name": "Crm"}).status_code == 202
    wait_for(lambda: hubspot.delays_left() == 0, timeout=30, what="a flush's batch held by HubSpot")
    stack.kill_worker(0)  # SIGKILL with the batch in flight: its outcome is never recorded
    killed = time.monotonic()
    stack.start_worker(beat=True)

    everyone = {"warm@example.org", *emails}
    wait_for(
        lambda: count(url, select(func.count()).where(Contact.crm_status == "synced")) == len(everyone),
        timeout=60,
        what="every contact synced after the lease",
    )
    recovered = time.monotonic() - killed

    # The held batch lands after the kill (HubSpot handles a request whose client went away).
    def held_calls() -> list:
        return [call for call in hubspot.calls() if call.duration >= HOLD]

    [held] = wait_for(held_calls, timeout=HOLD + 10, what="the held batch handled")
    assert held.path.endswith("/batch/upsert") and held.status == 200, held
    in_flight = {item["id"] for item in held.body["inputs"]}
    assert held.inputs and in_flight <= set(emails)

    assert hubspot.created == dict.fromkeys(everyone, 1)  # one record per person, never a second
    assert {email for email, n in hubspot.writes.items() if n == 2} == in_flight  # the lease's second write
    assert set(hubspot.writes.values()) <= {1, 2} and set(hubspot.writes) == everyone
    print(
        f"\nworker SIGKILLed mid CRM flush ({stack.env['DATABASE_URL'].split(':')[0]}): {len(in_flight)} of "
        f"{LEADS} contacts in flight, written twice to one record each, all {len(everyone)} synced "
        f"{recovered:.1f}s after the kill (lease {LEASE:.0f}s)"
    )
