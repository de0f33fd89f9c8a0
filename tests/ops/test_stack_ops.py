"""Operations with real processes (`leadsync web` + `leadsync worker`): the backlog gauges move and drain, the
worker serves its task counters, one submission id runs through every line, and no log has an email address or
a phone number in it.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink, free_port
from tests.support.stack import LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


OPS_TOKEN = "ops-token-for-the-scrapes"


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gauge(found: Samples, name: str, **labels: str) -> float:
    """The sample's value; -1 when absent (a status with no rows has no sample)."""
    return found.get((name, tuple(sorted(labels.items()))), -1.0)


def scrape(url: str) -> Samples:
    # The web's /metrics wants the token; a worker's METRICS_PORT server ignores the header.
    response = httpx.get(f"{url}/metrics", timeout=10, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert response.status_code == 200, response.text
    return samples(response.text)


def stop_worker(stack: LeadsyncStack, index: int = 0) -> None:
    """SIGTERM: Celery's warm shutdown, as an operator stopping the service does."""
    process = stack.workers[index]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def stack_env(base_env: dict[str, str], metrics_port: int) -> dict[str, str]:
    return {
        **base_env,
        "METRICS_PORT": str(metrics_port),
        "SWEEP_INTERVAL_SECONDS": "1",
        "LOG_FORMAT": "json",
        "OPS_TOKEN": OPS_TOKEN,
    }


def test_a_backlog_moves_the_queue_and_outbox_gauges_then_drains(
    tmp_path: Path, stack_env: dict[str, str], metrics_port: int
) -> None:
    backlog = 12
    with LeadsyncStack(stack_env, tmp_path / "stack") as stack:
        stop_worker(stack)
        for i in range(backlog):
            assert stack.post("info-packet", {"email": f"b{i}@example.org", "first_name": "B"}).status_code == 202

        waiting = scrape(stack.url)
        assert gauge(waiting, "leadsync_queue_messages", queue="intake") >= backlog  # (+ beat's last ticks)
        assert gauge(waiting, "leadsync_outbox_pending") == backlog
        assert gauge(waiting, "leadsync_outbox_oldest_pending_age_seconds") > 0
        assert gauge(waiting, "leadsync_submissions_accepted_total", form="info_packet") == backlog

        stack.start_worker(beat=True)

        def drained() -> bool:
            now = scrape(stack.url)
            return (
                all(gauge(now, "leadsync_queue_messages", queue=q) == 0 for q in ("intake", "email"))
                and gauge(now, "leadsync_outbox_pending") == 0
                and gauge(now, "leadsync_emails_sent_total") == backlog
            )

        wait_for(drained, timeout=60, interval=0.5, what="queues and outbox drained")
        assert gauge(scrape(stack.url), "leadsync_outbox_oldest_pending_age_seconds") == 0

        # The worker's own counters, summed over its pool processes.
        worker = scrape(f"http://127.0.0.1:{metrics_port}")
        # Posted one at a time, each submission was its own group commit: one message, one task each.
        assert gauge(worker, "leadsync_tasks_total", task="leadsync.process_submissions", state="succeeded") == backlog
        assert gauge(worker, "leadsync_tasks_total", task="leadsync.send_emails", state="succeeded") == backlog


EMAIL = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
PHONES = ("+1 650-253-0000", "(650) 253-0001", "+44 20 7946 0958")
PHONE_DIGITS = ("6502530000", "6502530001", "2079460958", "650-253", "253-0001", "7946 0958", "79460958")


def test_no_email_address_or_phone_number_reaches_any_log(
    tmp_path: Path,
    stack_env: dict[str, str],
    backend: str,
    smtp: SmtpSink,
    hubspot: HubSpotEmulator,
) -> None:
    env = {
        **stack_env,
        **services_env(smtp, hubspot),
        "HUBSPOT_TIMEOUT": "2",
        "EMAIL_RETRY_BASE_SECONDS": "0.5",
        "LOG_LEVEL": "DEBUG" if backend == "embedded" else "INFO",  # DEBUG too: Celery says more there
    }
    with LeadsyncStack(env, tmp_path / "stack") as stack:

        def post(form: str, data: dict[str, str]) -> str:
            answer = stack.post(form, data)
            assert answer.status_code == 202, answer.text
            return answer.json()["id"]

        def emails(status: str) -> float:
            return gauge(scrape(stack.url), f"leadsync_emails_{status}_total")

        # Failures whose SMTP answers name the person, logged by the worker: a permanent refusal (a dead
        # letter), then a temporary one (a retry).
        smtp.fail_next(1, code=550, text="5.1.1 <pii0@example.org>: Recipient address rejected")
        ids = [post("info-packet", {"email": "pii0@example.org", "first_name": "P0", "phone": PHONES[0]})]
        wait_for(lambda: emails("failed") == 1, timeout=30, what="the 550 recorded")
        smtp.fail_next(1, code=451, text="4.2.0 <pii1@example.org> mailbox busy, call +1 650-253-0000")
        for i, phone in enumerate(PHONES[1:], start=1):
            ids.append(post("info-packet", {"email": f"pii{i}@example.org", "first_name": f"P{i}", "phone": phone}))
        ids.append(post("newsletter", {"email": "pii9@example.org", "first_name": "Nine"}))
        # Refused at the edge: the address is in the body, the query string and the error answer.
        assert stack.post("info-packet", {"email": "pii5@example.org", "phone": "+1 650-253-0001"}).status_code == 422
        stack.client.get("/thank-you", params={"form": "newsletter", "email": "pii6@example.org"})
        stack.client.post("/forms/newsletter", data={"email": "pii7@example.org"}, headers={"Accept": "text/html"})
        assert stack.post("newsletter", {"email": "not-an-address@"}).status_code == 422

        def settled() -> bool:
            now = scrape(stack.url)
            busy = [gauge(now, "leadsync_emails", status=s) for s in ("pending", "sending", "retry")]
            return gauge(now, "leadsync_outbox_pending") == 0 and max(busy) <= 0 and emails("sent") >= 3

        wait_for(settled, timeout=60, what="every email sent or failed (one after a retry)")
        wait_for(lambda: len(hubspot.contacts) >= 4, timeout=60, what="contacts synced to HubSpot")
    text = "\n".join(path.read_text(errors="replace") for path in sorted((tmp_path / "stack").glob("*.log")))
    assert "Recipient address rejected" in text and "mailbox busy" in text  # the failures were logged ...
    addresses = EMAIL.findall(text)
    assert not addresses, addresses[:10]  # ... without the addresses
    leaked = [digits for digits in PHONE_DIGITS if digits in text]
    assert not leaked, leaked

    # Every line is JSON, and one submission id follows its lead from the request through every task.
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]  # (Celery's banner is not)
    first = [event for event in events if event.get("submission_id") == ids[0]]
    assert {event.get("task") for event in first} >= {"leadsync.process_submissions", "leadsync.send_emails"}
    # The web's line for the commit that stored it (one line a group commit, the ids in a list).
    assert any("stored" in event["event"] for event in events if ids[0] in event.get("submission_ids", []))
