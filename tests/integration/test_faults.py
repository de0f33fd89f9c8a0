"""Fault injection with real processes: break Redis, PostgreSQL, SMTP, HubSpot and the worker itself, then
assert the end state. Nothing accepted is lost; nobody gets a packet twice.

Figures printed here (recovery times) are quoted in the issue notes; run with `-s` to see them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from leadsync.storage.models import Contact, EmailSend, Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import PostgresServer, RedisServer, SmtpSink
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration

SWEEP, GRACE, LEASE = 1.0, 2.0, 4.0  # seconds; production's are 15, 30 and 600
# A duplicate needs a claim's lease to run out and a sweep to hand the send out again: after every send is
# `sent`, watching this long (plus a second of slack for the send itself) would catch one.
DUPLICATE_WINDOW = LEASE + SWEEP + GRACE + 1.0
CONCURRENCY = 2  # pool processes of the stack's worker: the exact number of sends a held SMTP server holds


@pytest.fixture
def stack(
    tmp_path: Path, production_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    """Redis + PostgreSQL, one worker with beat; sweeps and leases shortened so recovery fits in a test."""
    env = {
        **production_env,
        **services_env(smtp, hubspot),
        "HUBSPOT_TIMEOUT": "2",
        "SWEEP_INTERVAL_SECONDS": str(SWEEP),
        "SWEEP_GRACE_SECONDS": str(GRACE),
        "EMAIL_CLAIM_LEASE_SECONDS": str(LEASE),
        "EMAIL_RETRY_BASE_SECONDS": "1",
        "EMAIL_RETRY_MAX_SECONDS": "5",
    }
    running = LeadsyncStack(env, tmp_path, concurrency=CONCURRENCY).start()
    yield running
    running.stop()
    print(running.logs())


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)

    def count(self, statement) -> int:
        with Session(self.engine) as session:
            return session.scalar(statement) or 0


def post_people(stack: LeadsyncStack, count: int, prefix: str) -> list[int]:
    return [
        stack.post("info-packet", {"email": f"{prefix}{i}@example.org", "first_name": f"P{i}"}).status_code
        for i in range(count)
    ]


def assert_one_email_each(smtp: SmtpSink, expected: int, db: Db) -> None:
    """Exactly `expected` people got exactly one message each (envelope recipients at the SMTP server)."""
    smtp.wait_for(expected, timeout=60)
    wait_for(
        lambda: db.count(select(func.count()).where(EmailSend.status == "sent")) == expected,
        timeout=30,
        what="every send recorded as sent",
    )
    time.sleep(DUPLICATE_WINDOW)  # no event marks a duplicate that never comes: watch the whole window
    per_person = Counter(rcpt for mail in smtp.received for rcpt in mail.rcpt_tos)
    assert len(per_person) == expected
    assert max(per_person.values()) == 1, [to for to, n in per_person.items() if n > 1]


def test_redis_down_during_100_submissions(stack: LeadsyncStack, redis_server: RedisServer, smtp: SmtpSink) -> None:
    db = Db(stack.env["DATABASE_URL"])
    redis_server.stop()
    assert stack.client.get("/readyz").status_code == 503
    assert post_people(stack, 100, "redis") == [202] * 100  # durable: accepted with the broker down
    assert db.count(select(func.count()).select_from(Submission)) == 100

    restarted = time.monotonic()
    redis_server.start()
    wait_for(
        lambda: db.count(select(func.count()).where(Submission.status == "processed")) == 100,
        timeout=120,
        what="all 100 processed after Redis returned",
    )
    assert_one_email_each(smtp, 100, db)
    print(f"\nredis outage: 100 accepted while down, all processed {time.monotonic() - restarted:.1f}s after restart")
    assert stack.client.get("/readyz").status_code == 200


def test_worker_sigkilled_with_packet_emails_in_flight(stack: LeadsyncStack, smtp: SmtpSink) -> None:
    db = Db(stack.env["DATABASE_URL"])
    smtp.hold()  # every SMTP conversation waits before any message is accepted
    assert post_people(stack, 200, "kill") == [202] * 200
    wait_for(lambda: smtp.held == CONCURRENCY, timeout=30, what="sends in flight at the SMTP server")
    in_flight = db.count(select(func.count()).where(EmailSend.status == "sending"))
    assert in_flight == CONCURRENCY  # one claimed send per pool process, each held at RCPT

    stack.kill_worker(0)  # SIGKILL, the worker's whole process group
    smtp.release()
    killed = time.monotonic()
    stack.start_worker(beat=True)
    wait_for(
        lambda: db.count(select(func.count()).where(Submission.status == "processed")) == 200,
        timeout=120,
        what="all 200 submissions processed by the new worker",
    )
    assert_one_email_each(smtp, 200, db)
    assert db.count(select(func.count()).where(EmailSend.status == "sent")) == 200
    print(f"\nSIGKILL with {in_flight} sends in flight: 200 emails, none twice, {time.monotonic() - killed:.1f}s")


def test_smtp_down_and_hubspot_503_for_30s_during_load(
    stack: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    db = Db(stack.env["DATABASE_URL"])
    smtp.stop()
    hubspot.fail_for(30, status=503)
    started = time.monotonic()
    assert post_people(stack, 50, "outage") == [202] * 50
    wait_for(
        lambda: db.count(select(func.count()).where(Submission.status == "processed")) == 50,
        timeout=30,
        what="intake goes on while SMTP and HubSpot are down",
    )
    time.sleep(max(0.0, 30 - (time.monotonic() - started)))
    smtp.restart()
    back = time.monotonic()

    assert_one_email_each(smtp, 50, db)
    wait_for(
        lambda: db.count(select(func.count()).where(Contact.crm_status == "synced")) == 50,
        timeout=90,
        what="all contacts synced after HubSpot recovered",
    )
    assert len(hubspot.contacts) == 50
    assert hubspot.count(status=503) > 0  # the outage was real and seen
    print(f"\nSMTP + HubSpot down 30s: 50 emails once and 50 records once, {time.monotonic() - back:.1f}s after")


def test_postgres_down_answers_503_then_resumes(
    stack: LeadsyncStack, postgres_server: PostgresServer, smtp: SmtpSink
) -> None:
    db = Db(stack.env["DATABASE_URL"])
    assert post_people(stack, 5, "before") == [202] * 5
    postgres_server.stop()
    statuses = post_people(stack, 5, "during")
    assert statuses == [503] * 5  # never a 500, never a 202 for data not stored
    assert stack.client.get("/readyz").status_code == 503
    postgres_server.start()
    wait_for(lambda: stack.client.get("/readyz").status_code == 200, timeout=30, what="ready again")
    assert post_people(stack, 5, "after") == [202] * 5
    wait_for(
        lambda: db.count(select(func.count()).where(Submission.status == "processed")) == 10,
        timeout=60,
        what="work resumed without intervention",
    )
    assert_one_email_each(smtp, 10, db)


def test_permanent_failure_is_a_dead_letter_and_retry_is_safe_twice(stack: LeadsyncStack, smtp: SmtpSink) -> None:
    db = Db(stack.env["DATABASE_URL"])
    smtp.fail_next(1, code=550, text="5.1.1 Mailbox unavailable")
    assert post_people(stack, 5, "dead") == [202] * 5
    smtp.wait_for(4, timeout=30)

    def leadsync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "leadsync", *args], env=stack.env, capture_output=True, text=True, timeout=60
        )

    letters = wait_for(
        lambda: json.loads(leadsync("failed", "list", "--json").stdout), timeout=15, what="a dead letter"
    )
    assert [(letter["kind"], letter["status"]) for letter in letters] == [("email", "open")]
    assert "550" in letters[0]["error"]
    assert "retried 1" in leadsync("failed", "retry", "--all").stdout
    assert "retried 0" in leadsync("failed", "retry", str(letters[0]["id"])).stdout  # safe to run twice
    assert_one_email_each(smtp, 5, db)


def test_sigterm_lets_in_flight_sends_finish(stack: LeadsyncStack, smtp: SmtpSink) -> None:
    db = Db(stack.env["DATABASE_URL"])
    smtp.hold()
    assert post_people(stack, 10, "term") == [202] * 10
    wait_for(lambda: smtp.held == CONCURRENCY, timeout=30, what="sends in flight")
    worker = stack.workers[0]
    worker.send_signal(signal.SIGTERM)  # warm shutdown: no new tasks, finish the running ones
    time.sleep(1)
    assert worker.poll() is None  # still finishing its in-flight sends
    smtp.release()
    worker.wait(timeout=30)
    finished = db.count(select(func.count()).where(EmailSend.status == "sent"))
    # Posted one at a time, each lead is its own send task: the two held ones finish, no new one starts.
    assert finished == CONCURRENCY and len(smtp.received) == CONCURRENCY

    stack.start_worker(beat=True)  # the rest was left in the queue (late acks) or is swept up
    assert_one_email_each(smtp, 10, db)
