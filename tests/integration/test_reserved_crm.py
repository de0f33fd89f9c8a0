"""The HubSpot sync keeps going while every email process is stuck: `leadsync worker` reserves a crm process.

The default topology (one `leadsync worker --concurrency 2`) on Redis + PostgreSQL, with the SMTP sink holding
every conversation at RCPT: two leads' emails occupy both intake/email processes, and a CRM flush published
now must still reach HubSpot (the emulator) before a single email is delivered. Beat's own flush is pushed
out (an hour) so the one flush is the one this test publishes, after both processes are stuck.

Example:
    .venv/bin/pytest tests/integration/test_reserved_crm.py -q -p no:cacheprovider
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from leadsync.worker import enqueue
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink, descendants
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(
    tmp_path: Path, production_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    # SMTP_TIMEOUT: the held conversations must not time out (and free a process) within the test.
    env = {**production_env, **services_env(smtp, hubspot), "CRM_FLUSH_INTERVAL_SECONDS": "3600", "SMTP_TIMEOUT": "60"}
    stack = LeadsyncStack(env, tmp_path, workers=1, concurrency=2).start()
    yield stack
    smtp.release()
    stack.stop()


def test_hubspot_gets_the_contacts_while_both_email_processes_are_stuck(
    stack: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp.hold()
    for index, address in enumerate(("ann@example.org", "bob@example.org"), start=1):
        assert stack.post("info-packet", {"email": address, "first_name": "Lead"}).status_code == 202
        # Each lead's email holds one of the two processes at RCPT before the next lead is posted.
        wait_for(lambda index=index: smtp.held >= index, timeout=30, what=f"{index} email process(es) held")

    apply_settings(monkeypatch, {key: stack.env[key] for key in ("BROKER_URL", "DATABASE_URL", "VAR_DIR")})
    assert enqueue.enqueue_crm_flush()
    wait_for(
        lambda: hubspot.contact_by_email("ann@example.org") and hubspot.contact_by_email("bob@example.org"),
        timeout=20,
        what="both contacts in HubSpot",
    )
    assert smtp.received == [] and smtp.held == 2  # the sync did not wait for a single email

    smtp.release()
    smtp.wait_for(2, timeout=30)
    assert Counter(r for mail in smtp.received for r in mail.rcpt_tos) == {"ann@example.org": 1, "bob@example.org": 1}
    assert hubspot.count("/batch/upsert", status=200) == 1  # both contacts in one call


def test_the_reserved_process_stops_with_its_worker(stack: LeadsyncStack) -> None:
    [worker] = stack.workers
    crm = [
        pid for pid in descendants(worker.pid) if b"--reserved-crm-child" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert crm  # the child worker and its one pool process
    os.kill(worker.pid, signal.SIGTERM)  # what `docker compose stop` sends
    worker.wait(timeout=60)
    wait_for(lambda: all(_gone(pid) for pid in crm), timeout=30, what="the crm processes gone")


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its (exited) parent left for init to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
