"""Exactly-once at its real edge: the worker SIGKILLed after the SMTP server answered 250 and before `sent`.

This is the one window the claim in mail/sending.py cannot close. The drill opens it on purpose, many times
over, and measures what leaves the system: the envelope recipients and raw bytes the SMTP server received,
watched for longer than lease + sweep + grace after the last send, so a late duplicate cannot slip past.

Example:
    .venv/bin/pytest tests/integration/test_exactly_once.py -q -s   # -s prints the measured duplicate rate
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from leadsync.storage.models import Contact, EmailAttempt, EmailSend
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.smtp_faults import AcceptThenStall
from tests.support.stack import LeadsyncStack, count, services_env, wait_for

pytestmark = pytest.mark.integration

# EMAIL_CLAIM_LEASE_SECONDS: production's 600 s, shortened so it expires inside the test, yet longer than a
# round of 10 posts on a loaded machine (measured > 3 s): a lease shorter than the stall hands a send out
# again while its first sender still waits, which is a duplicate before any kill.
LEASE = 10.0
SWEEP = 1.0  # SWEEP_INTERVAL_SECONDS
GRACE = 1.0  # SWEEP_GRACE_SECONDS
HELD = 10  # sends killed in the window per round: one per pool process
ROUNDS = 2  # 2 x 10 = 20 accepted-then-killed sends


@pytest.fixture
def stall_smtp() -> Iterator[AcceptThenStall]:
    with AcceptThenStall() as server:
        yield server


@pytest.fixture
def stack(
    tmp_path: Path, base_env: dict[str, str], stall_smtp: AcceptThenStall, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    """Both backends: the embedded default (SQLite + filesystem broker, what `leadsync dev` runs) and Redis +
    PostgreSQL. Neither broker brings back a task whose whole worker was SIGKILLed in time: the lease does."""
    env = {
        **base_env,
        **services_env(stall_smtp, hubspot),
        "EMAIL_CLAIM_LEASE_SECONDS": str(LEASE),
        "SWEEP_INTERVAL_SECONDS": str(SWEEP),
        "SWEEP_GRACE_SECONDS": str(GRACE),
        # smtplib gives up on the QUIT reply after SMTP_TIMEOUT and then counts the send as done: the stall must
        # outlast the slowest round (10 posts one by one on a loaded CI machine), or a send leaves the window.
        "SMTP_TIMEOUT": "300",
    }
    # One pool process per held send: a stalled sender blocks its process, as a slow 250 would.
    running = LeadsyncStack(env, tmp_path, concurrency=HELD).start()
    yield running
    running.stop()


def test_sigkill_after_250_before_sent_gives_one_second_copy_with_the_same_message_id(
    stack: LeadsyncStack, stall_smtp: AcceptThenStall
) -> None:
    url = stack.env["DATABASE_URL"]
    began = time.monotonic()
    killed: list[str] = []
    for round_ in range(ROUNDS):
        stall_smtp.arm()
        for i in range(HELD):
            address = f"edge{round_}-{i}@example.org"
            assert stack.post("info-packet", {"email": address, "first_name": "Edge"}).status_code == 202
            # One lead at a time, so each send runs in its own pool process and every one gets stalled.
            stall_smtp.wait_stalled(len(killed) % HELD + 1)
            killed.append(address)
        # The window, checked from both sides: the server holds HELD accepted messages of this round, and
        # the database still says `sending` for exactly those rows (nothing committed `sent`).
        accepted_now = {rcpt for mail in stall_smtp.received for rcpt in mail.rcpt_tos}
        assert set(killed[-HELD:]) <= accepted_now
        this_round = EmailSend.contact_id.in_(select(Contact.id).where(Contact.email.in_(killed[-HELD:])))
        assert count(url, select(func.count()).where(this_round, EmailSend.status == "sending")) == HELD
        stack.kill_worker(len(stack.workers) - 1)  # SIGKILL to the process group: no ack, no commit
        stall_smtp.disarm()
        stall_smtp.wait_stalled(0)  # the killed senders' sockets closed
        stack.start_worker(beat=True)

    total = ROUNDS * HELD
    wait_for(
        lambda: count(url, select(func.count()).where(EmailSend.status == "sent")) == total,
        timeout=60,
        what="every killed send recovered by the lease and the sweeper",
    )
    # Keep counting after the last `sent`: a further copy would need one more lease + sweep + grace.
    watched = time.monotonic()
    time.sleep(LEASE + SWEEP + GRACE + 2)

    copies = stall_smtp.copies_per_recipient()
    assert set(copies) == set(killed)  # nobody else got mail, and everyone killed in the window got it
    assert sorted(copies.values()) == [2] * total  # exactly one second copy each, never a third
    for address in killed:
        mails = [mail for mail in stall_smtp.received if mail.rcpt_tos == (address,)]
        assert len({str(mail.message["Message-ID"]) for mail in mails}) == 1  # same Message-ID: clients fold them
        assert len({mail.message.get_body(("plain",)).get_content() for mail in mails}) == 1
    # Two attempts a send in the database: the killed one left `started`, the second one `sent`.
    assert count(url, select(func.count()).select_from(EmailAttempt)) == 2 * total
    assert count(url, select(func.count()).where(EmailAttempt.outcome == "started")) == total
    identical_bytes = sum(
        len({mail.raw for mail in stall_smtp.received if mail.rcpt_tos == (address,)}) == 1 for address in killed
    )
    seconds = sum(copies.values()) - total
    print(
        f"\nexactly-once edge ({url.split(':')[0]}): {total} sends SIGKILLed after 250, {seconds} second copies "
        f"({seconds / total:.0%}), none third in {time.monotonic() - watched:.0f}s after the last `sent`, "
        f"{watched - began:.0f}s to recover; raw bytes identical for {identical_bytes}/{total} (Date is per attempt)"
    )
