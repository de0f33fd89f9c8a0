"""Batched sending (worker/mail/sending.py `deliver_batch`, issue 18): claims and outcomes in chunks, draining.

Against the real SmtpSink (aiosmtpd) and both backends; assertions are on what the server received and on the
rows. A `send_emails` message drains other due emails up to 100, over one connection; outcomes are committed
every RECORD_EVERY (25) messages, so a worker killed mid-batch leaves at most 25 rows `sending`.

Example:
    .venv/bin/pytest tests/worker/test_email_batches.py -q -p no:cacheprovider
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import EmailAttempt, EmailSend, utcnow
from leadsync.worker import tasks
from leadsync.worker.mail.sending import RECORD_EVERY, deliver_batch
from leadsync.worker.mail.transport import SmtpTransport
from tests.support.services import SmtpSink
from tests.worker.test_sending import attempts, queued_packet, smtp_settings, status_of


def queued(settings: Settings, count: int, prefix: str = "reader") -> list[str]:
    return [queued_packet(settings, f"{prefix}{n}@example.org") for n in range(count)]


def copies(smtp: SmtpSink) -> Counter[str]:
    return Counter(recipient for mail in smtp.received for recipient in mail.rcpt_tos)


def statuses() -> Counter[str]:
    with session_scope() as session:
        return Counter(dict(session.execute(select(EmailSend.status, func.count()).group_by(EmailSend.status)).all()))


def test_one_message_drains_every_due_email_over_one_connection_and_the_others_find_nothing_to_do(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_ids = queued(settings, 30)
    messages = [send_ids[0:10], send_ids[10:20], send_ids[20:30]]  # as three group commits would publish them

    assert tasks.send_emails(messages[0]) == {"done": 30}
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(30)})
    assert smtp.commands.count("EHLO") == 1 and smtp.commands.count("MAIL") == 30
    assert all(attempts(send_id) == [("sent", None)] for send_id in send_ids)

    # The two messages behind it: every email already sent, nothing more reaches the server.
    assert tasks.send_emails(messages[1]) == {"done": 10} and tasks.send_emails(messages[2]) == {"done": 10}
    assert len(smtp.received) == 30 and smtp.commands.count("EHLO") == 1  # no connection opened for nothing
    assert statuses() == Counter({"sent": 30})


def test_draining_leaves_a_retry_before_its_time_and_a_live_claim_alone(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    waiting, held, due = queued(settings, 3)
    now = utcnow()
    with session_scope() as session:
        session.execute(
            update(EmailSend)
            .where(EmailSend.id == waiting)
            .values(status="retry", attempts=1, next_attempt_at=now + timedelta(minutes=5))
        )
        session.execute(update(EmailSend).where(EmailSend.id == held).values(status="sending", claimed_at=now))

    report = deliver_batch(get_sessionmaker(), [], SmtpTransport(settings), settings, drain=100)
    assert {send_id: delivery.status for send_id, delivery in report.deliveries.items()} == {due: "sent"}
    assert copies(smtp) == Counter({"reader2@example.org": 1})
    assert (status_of(waiting), status_of(held)) == ("retry", "sending")
    assert attempts(waiting) == [] and attempts(held) == []

    # Once its backoff is over, the retry is due and drained like any queued email.
    with session_scope() as session:
        session.execute(update(EmailSend).where(EmailSend.id == waiting).values(next_attempt_at=now))
    report = deliver_batch(get_sessionmaker(), [], SmtpTransport(settings), settings, drain=100)
    assert list(report.deliveries) == [waiting] and status_of(waiting) == "sent"
    assert status_of(held) == "sending"  # still the live claim's, until its lease runs out


class HoldAfter(SmtpSink):
    """The sink, holding every sender at RCPT once `after` messages are accepted (the gate of `hold()`)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def _deliver(self, envelope: Any) -> None:
        super()._deliver(envelope)
        if len(self.received) == self.after:
            self.hold()


def test_outcomes_are_committed_every_25_messages_so_a_kill_leaves_at_most_25_rows_sending(
    settings: Settings, monkeypatch, base_env
) -> None:
    accepted = RECORD_EVERY + 5
    smtp = HoldAfter(accepted).start()
    try:
        settings = smtp_settings(monkeypatch, base_env, smtp)
        send_ids = queued(settings, 60)
        transport = SmtpTransport(settings)

        def send() -> None:
            with transport.batch():
                deliver_batch(get_sessionmaker(), send_ids[:1], transport, settings, drain=100)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            deadline = time.monotonic() + 30
            while smtp.held == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert smtp.held == 1 and len(smtp.received) == accepted
            # Frozen mid-batch, as a SIGKILL would leave it: the first chunk committed `sent`; the second claimed
            # (5 of it accepted by the server, its outcomes not yet committed); the rest untouched.
            assert statuses() == Counter({"sent": RECORD_EVERY, "sending": RECORD_EVERY, "pending": 10})
        finally:
            smtp.release()
            sender.join(30)
        assert statuses() == Counter({"sent": 60})
        assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(60)})
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(EmailAttempt)) == 60
    finally:
        smtp.stop()


def test_a_connection_dropped_at_data_mid_batch_leaves_that_email_to_its_retry_and_the_rest_go_once(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_ids = queued(settings, 40)
    smtp.drop_connection(after=29, at="DATA")  # the 30th message (in the second chunk) is sent whole, then lost
    transport = SmtpTransport(settings)
    with transport.batch():
        report = deliver_batch(get_sessionmaker(), send_ids[:1], transport, settings, drain=100)

    outcomes = Counter(delivery.status for delivery in report.deliveries.values())
    assert outcomes == Counter({"sent": 39, "retry": 1})
    [dropped] = [send_id for send_id, delivery in report.deliveries.items() if delivery.status == "retry"]
    assert status_of(dropped) == "retry" and attempts(dropped)[0][0] == "temporary"
    assert len(smtp.received) == 39 and transport.connections == 2
    # Its retry (send_email after the backoff) sends it once; nobody got anything twice.
    assert tasks.send_email(dropped) == "sent"
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(40)})


def test_two_batches_draining_the_same_backlog_at_once_send_each_email_once(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_ids = queued(settings, 120)
    errors: list[BaseException] = []

    def drain(own: list[str]) -> None:
        transport = SmtpTransport(settings)
        try:
            with transport.batch():
                while deliver_batch(get_sessionmaker(), own, transport, settings, drain=100).deliveries:
                    own = []
        except BaseException as error:  # surfaced below
            errors.append(error)

    workers = [threading.Thread(target=drain, args=(send_ids[i * 10 : i * 10 + 10],)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(120)})
    assert statuses() == Counter({"sent": 120})
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EmailAttempt)) == 120


def test_claims_that_outlive_their_lease_behind_a_slow_server_are_renewed_or_given_up_never_sent_twice(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp).model_copy(update={"email_claim_lease_seconds": 1})
    send_ids = queued(settings, 5)
    smtp.hold()  # every conversation waits at RCPT until released

    def batch(own: list[str]) -> None:
        transport = SmtpTransport(settings)
        with transport.batch():
            deliver_batch(get_sessionmaker(), own, transport, settings, drain=100)

    slow = threading.Thread(target=batch, args=(send_ids,))  # claims all five, held at the first
    slow.start()
    deadline = time.monotonic() + 10
    while smtp.held < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.2)  # the lease runs out for the four still waiting behind the held one
    # A retry takes the four waiting ones (claims expired); the held one (a batch sends in id order) stays A's.
    other = threading.Thread(target=batch, args=(sorted(send_ids)[1:],))
    other.start()
    while smtp.held < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    smtp.release()
    slow.join(30)
    other.join(30)
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(5)})  # the slow batch let them go
    assert statuses() == Counter({"sent": 5})
