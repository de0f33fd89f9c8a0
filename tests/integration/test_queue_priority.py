"""Intake before email: a `leadsync worker` on Redis takes the intake queue first (issue 18, the burst).

Why: under a burst the CRM sync waits for intake (it makes the contacts), and intake is short, while an email
backlog is long; round robin between the queues made each intake message wait behind an email batch
(bench/burst.py). The Redis transport's `queue_order_strategy` is `priority` (worker/celery_app.py), so BRPOP
asks `intake` first.

The drill: one pool process (concurrency 1) held at RCPT by the SMTP sink on a first lead's email; meanwhile
three email messages are published, then two leads posted (two intake messages). Released, the worker must run
both intake tasks before any of the waiting email messages; round robin would run intake, email, intake.

Example:
    .venv/bin/pytest tests/integration/test_queue_priority.py -q -p no:cacheprovider
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from leadsync.worker import enqueue
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration
TASK_DONE = re.compile(r"Task (leadsync\.\w+)\[[^\]]+\] succeeded")


@pytest.fixture
def stack(
    tmp_path: Path, production_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    # No beat flushes or sweeps in the way: the order of the tasks this test publishes is what is looked at.
    env = {
        **production_env,
        **services_env(smtp, hubspot),
        "CRM_FLUSH_INTERVAL_SECONDS": "3600",
        "SWEEP_INTERVAL_SECONDS": "3600",
        "SMTP_TIMEOUT": "60",
        "LOG_LEVEL": "INFO",
    }
    stack = LeadsyncStack(env, tmp_path, workers=1, concurrency=1).start()
    yield stack
    smtp.release()
    stack.stop()


def finished(log: Path) -> list[str]:
    """The worker's finished tasks, in order (its JSON log lines), but the sweep it publishes when it starts
    (an intake task too, whenever it runs)."""
    names = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and (match := TASK_DONE.search(json.loads(line)["event"])):
            names.append(match.group(1))
    return [name for name in names if name != "leadsync.sweep"]


def test_the_worker_takes_intake_before_a_waiting_email_backlog(
    stack: LeadsyncStack, smtp: SmtpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "worker0.log"
    smtp.hold()
    assert stack.post("info-packet", {"email": "first@example.org", "first_name": "Lead"}).status_code == 202
    wait_for(lambda: smtp.held == 1, timeout=30, what="the only pool process held at RCPT")
    before = len(finished(log))

    apply_settings(monkeypatch, {key: stack.env[key] for key in ("BROKER_URL", "DATABASE_URL", "VAR_DIR")})
    for n in range(3):  # an email backlog (ids of nothing: each message is quick once it runs)
        assert enqueue.enqueue_emails([f"no-such-email-{n}"])
    for address in ("second@example.org", "third@example.org"):
        assert stack.post("info-packet", {"email": address, "first_name": "Lead"}).status_code == 202

    smtp.release()
    smtp.wait_for(3, timeout=30)
    wait_for(lambda: len(finished(log)) >= before + 6, timeout=30, what="the held task and the five waiting ones")
    after = finished(log)[before:]
    assert after[0] == "leadsync.send_emails"  # the held one
    assert after[1:3] == ["leadsync.process_submissions", "leadsync.process_submissions"], after
    assert sorted(mail.rcpt_tos[0] for mail in smtp.received) == [
        "first@example.org",
        "second@example.org",
        "third@example.org",
    ]
