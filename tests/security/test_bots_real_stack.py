"""Bots against real processes (`leadsync web`, `leadsync worker`, an SMTP server, the HubSpot emulator): a
bot filling the honeypot, one posting faster than a person can, and one posting 100 times from one IP
get their normal answers, but no email and no HubSpot record; a real person alongside gets both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from leadsync.config import Settings
from leadsync.forms.tokens import issue
from leadsync.storage.models import SpamCount, Submission
from tests.integration.test_pipeline import count
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, wait_for

pytestmark = pytest.mark.integration
HUBSPOT_TOKEN = "pat-na1-SECRET-do-not-log-7f3a"
IP_LIMIT = 3


@pytest.fixture
def stack(tmp_path: Path, base_env: dict[str, str], smtp: SmtpSink) -> Iterator[tuple[LeadsyncStack, HubSpotEmulator]]:
    emulator = HubSpotEmulator(token=HUBSPOT_TOKEN).start()
    env = {
        **base_env,
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN,
        "HUBSPOT_BASE_URL": emulator.url,
        "CRM_FLUSH_INTERVAL_SECONDS": "0.5",
        "RATE_LIMIT_PER_IP": f"{IP_LIMIT} per 10 minutes",
        "RATE_LIMIT_PER_EMAIL": "5 per hour",
        "FORM_TOKEN_SECRET": "fixed-secret-for-the-test-0123456789",
        "FORM_MIN_FILL_SECONDS": "2",
    }
    running = LeadsyncStack(env, tmp_path).start()
    yield running, emulator
    running.stop()
    emulator.stop()
    print(running.logs())


def test_bots_get_no_email_and_no_hubspot_record(stack: tuple[LeadsyncStack, HubSpotEmulator], smtp: SmtpSink) -> None:
    running, hubspot = stack
    key = Settings(form_token_secret="fixed-secret-for-the-test-0123456789").form_token_key

    def post(data: dict, ip: str) -> None:
        # `leadsync web` trusts X-Forwarded-For from 127.0.0.1 (uvicorn's proxy headers): one IP per bot.
        response = running.post("info-packet", data, headers={"X-Forwarded-For": ip})
        assert response.status_code == 202, response.text  # every bot gets the normal answer

    for index in range(20):  # the honeypot bot
        honeypot = {"email": f"hp{index}@example.org", "first_name": "Bot", "website": "http://x.example"}
        post(honeypot, f"198.51.100.{index}")
    for index in range(20):  # the bot that posts the instant the form renders
        token = issue(key)
        post({"email": f"fast{index}@example.org", "first_name": "Bot", "ts_token": token}, f"198.51.101.{index}")
    for index in range(100):  # one IP, 100 posts, each a different (victim's) address
        post({"email": f"victim{index}@example.org", "first_name": "Bot"}, "203.0.113.66")
    person = issue(key, now=time.time() - 30)  # a person who took 30 seconds
    post({"email": "ann@example.org", "first_name": "Ann", "ts_token": person}, "192.0.2.10")

    def reasons() -> dict[str | None, int]:
        return {
            # spam is counted per day and reason, not stored whole (storage/submissions.py)
            reason: count(running, select(func.sum(SpamCount.count)).where(SpamCount.reason == reason))
            for reason in ("honeypot", "token_too_fast", "ip_rate")
        }

    assert reasons() == {"honeypot": 20, "token_too_fast": 20, "ip_rate": 100 - IP_LIMIT}
    expected = 1 + IP_LIMIT  # the person, and the IP's allowance before it was cut off
    wait_for(
        lambda: count(running, select(func.count()).where(Submission.status == "processed")) == expected,
        what="the non-spam submissions processed",
    )
    smtp.wait_for(expected, timeout=20)
    wait_for(lambda: len(hubspot.contacts) == expected, timeout=20, what="the non-spam HubSpot records")
    time.sleep(2)  # a few more flush and sweep cycles: nothing else may arrive
    recipients = sorted(rcpt for mail in smtp.received for rcpt in mail.rcpt_tos)  # the envelopes, not headers
    people = ["ann@example.org"] + [f"victim{i}@example.org" for i in range(IP_LIMIT)]
    assert recipients == sorted(people)
    assert len(hubspot.contacts) == expected
    assert hubspot.created == dict.fromkeys(people, 1)  # nobody else was ever written, not even briefly
    for index in range(20):
        assert hubspot.contact_by_email(f"hp{index}@example.org") is None
        assert hubspot.contact_by_email(f"fast{index}@example.org") is None
    assert all(hubspot.contact_by_email(f"victim{i}@example.org") is None for i in range(IP_LIMIT, 100))
    # Every line of every log, from the first (stack.logs() shows only each file's tail, for humans).
    logs = {path.name: path.read_text(errors="replace") for path in running.workdir.glob("*.log")}
    assert set(logs) == {"web.log", "worker0.log"} and " ready." in logs["worker0.log"]
    assert all(HUBSPOT_TOKEN not in text for text in logs.values())
    assert HUBSPOT_TOKEN[-12:] not in "".join(logs.values())  # nor a recognisable piece of it
