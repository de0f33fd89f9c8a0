"""One SMTP connection for a batch of emails, and a connection dropped mid-batch: nothing lost, nothing twice.

Against the real SmtpSink (aiosmtpd): `drop_connection(after=n, at=...)` closes the client's connection
without a reply once n more messages are accepted, at the next MAIL (a relay closing a used connection)
or at the end of a DATA (the message sent whole and not kept: the client cannot know which).

Example:
    .venv/bin/pytest tests/worker/test_smtp_reuse.py -q -p no:cacheprovider
"""

from __future__ import annotations

from collections import Counter

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker
from leadsync.worker import tasks
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import SmtpTransport
from tests.support.services import SmtpSink
from tests.worker.test_sending import attempts, queued_packet, smtp_settings, status_of

BATCH = 10


def queued(settings: Settings) -> list[str]:
    return [queued_packet(settings, f"reader{n}@example.org") for n in range(BATCH)]


def copies(smtp: SmtpSink) -> Counter[str]:
    return Counter(recipient for mail in smtp.received for recipient in mail.rcpt_tos)


def test_a_dropped_connection_before_mail_is_reopened_and_each_email_arrives_once(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_ids = queued(settings)
    smtp.drop_connection(after=4, at="MAIL")  # the 5th message finds its connection gone at MAIL
    transport = SmtpTransport(settings)
    with transport.batch():
        outcomes = [deliver(get_sessionmaker(), send_id, transport, settings).status for send_id in send_ids]

    assert outcomes == ["sent"] * BATCH
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(BATCH)})
    assert transport.connections == 2 and smtp.commands.count("EHLO") == 2
    assert smtp.commands.count("MAIL") == BATCH + 1  # the 5th: once on the dead connection, once on the new
    assert all(attempts(send_id) == [("sent", None)] for send_id in send_ids)  # one attempt each


def test_a_connection_dropped_at_data_leaves_that_email_to_the_retry_and_it_arrives_once(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_ids = queued(settings)
    smtp.drop_connection(after=4, at="DATA")  # the 5th message is sent whole, then the line goes dead
    transport = SmtpTransport(settings)
    with transport.batch():
        outcomes = [deliver(get_sessionmaker(), send_id, transport, settings).status for send_id in send_ids]

    # The server may have kept it (the client cannot know): never re-sent at once, left to the claim's retry.
    assert outcomes == ["sent"] * 4 + ["retry"] + ["sent"] * 5
    assert status_of(send_ids[4]) == "retry" and attempts(send_ids[4])[0][0] == "temporary"
    assert "reader4@example.org" not in copies(smtp) and len(smtp.received) == BATCH - 1
    assert transport.connections == 2  # the rest of the batch went on over a fresh connection

    # The retry (what send_email does after its backoff) delivers it, once, with its own Message-ID.
    assert deliver(get_sessionmaker(), send_ids[4], SmtpTransport(settings), settings).status == "sent"
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(BATCH)})
    [late] = [mail.message for mail in smtp.received if mail.rcpt_tos == ("reader4@example.org",)]
    assert late["Message-ID"].startswith(f"<{send_ids[4]}.packet@")


def test_the_send_emails_task_sends_its_batch_over_one_connection(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = smtp_settings(monkeypatch, base_env, smtp)
    send_ids = queued(settings)
    assert tasks.send_emails(send_ids) == {"done": BATCH}
    assert copies(smtp) == Counter({f"reader{n}@example.org": 1 for n in range(BATCH)})
    assert smtp.commands.count("EHLO") == 1 and smtp.commands.count("MAIL") == BATCH
    assert all(status_of(send_id) == "sent" for send_id in send_ids)
