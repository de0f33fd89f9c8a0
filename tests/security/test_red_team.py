"""Red team: issue 14's attacks against the real stack, one test an attack, named for it.

Real `leadsync web` and `leadsync worker` processes on PostgreSQL + Redis, a real SMTP server (what reaches a
mailbox is counted from the RCPT envelopes it accepted) and the HubSpot emulator. Before the fix each of these
attacks worked (issue 14); now:

| attack                                         | before                          | now                            |
|------------------------------------------------|---------------------------------|--------------------------------|
| link forged with the DATABASE_URL-derived key  | confirmed a stranger            | 400, nothing changes           |
| +tag / case / Gmail-dot bombing, link in name  | 18 emails to one mailbox        | name 422; 3 emails a mailbox   |
| confirm link replayed after unsubscribe        | subscribed again                | 400, stays unsubscribed        |
| non-ASCII / malformed link and form tokens     | 500                             | 400 page; form post is spam    |
| guessing link tokens from one address          | unlimited                       | 429 after RATE_LIMIT_LINKS_... |
| key rotation                                   | (no rotation)                   | old key verifies, never signs  |
| IPv4-mapped IPv6 client address                | one shared ::/64 bucket         | counted and stored as IPv4     |
| X-Forwarded-For from an untrusted client       | (believed from 127.0.0.1 only)  | ignored: FORWARDED_ALLOW_IPS   |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from leadsync.forms.tokens import check, issue
from leadsync.mailbox import canonical_mailbox
from leadsync.signing import sign, verify
from leadsync.storage.models import Contact, EmailSend, Submission
from tests.integration.test_pipeline import count
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, wait_for

pytestmark = pytest.mark.integration
SECRET = "red-team-current-secret-0123456789abcdef"
OLD_SECRET = "red-team-previous-secret-0123456789abcdef"
LINK_LIMIT = 12


@pytest.fixture
def backend() -> str:
    return "redis-postgres"  # the production pair: counters in Redis, advisory locks in PostgreSQL


@pytest.fixture
def env(base_env: dict[str, str], smtp: SmtpSink) -> Iterator[dict[str, str]]:
    emulator = HubSpotEmulator(token="test-token").start()
    yield {
        **base_env,
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "HUBSPOT_ACCESS_TOKEN": "test-token",
        "HUBSPOT_BASE_URL": emulator.url,
        "CRM_FLUSH_INTERVAL_SECONDS": "0.5",
        "FORM_TOKEN_SECRET": SECRET,
        "FORM_TOKEN_SECRET_PREVIOUS": OLD_SECRET,
        "RATE_LIMIT_LINKS_PER_IP": f"{LINK_LIMIT} per 10 minutes",
        "PACKET_RESEND_WINDOW_DAYS": "0",  # every request is due: only the daily cap stands in the way
        "OPTIN_RESEND_WINDOW_HOURS": "0",
    }
    emulator.stop()


@pytest.fixture
def stack(env: dict[str, str], tmp_path: Path) -> Iterator[LeadsyncStack]:
    running = LeadsyncStack(env, tmp_path / "stack").start()
    yield running
    running.stop()


def settled(stack: LeadsyncStack) -> None:
    """Every stored, non-spam submission processed and every queued email sent (or failed)."""
    wait_for(
        lambda: count(stack, select(func.count()).where(Submission.status == "pending")) == 0,
        what="submissions processed",
    )
    wait_for(
        lambda: count(stack, select(func.count()).where(EmailSend.status.not_in(["sent", "failed"]))) == 0,
        what="emails sent",
    )


def newsletter_links(stack: LeadsyncStack, smtp: SmtpSink, address: str) -> dict[str, str]:
    """Sign `address` up; the confirm and unsubscribe paths from the email the SMTP server received."""
    before = len(smtp.received)
    assert stack.post("newsletter", {"email": address, "first_name": "Nia"}).status_code == 202
    smtp.wait_for(before + 1, timeout=20)
    text = smtp.received[before].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return {
        action: re.search(rf"/newsletter/{action}\?token=[A-Za-z0-9_.\-]+", text).group(0)  # type: ignore[union-attr]
        for action in ("confirm", "unsubscribe")
    }


def newsletter_status(stack: LeadsyncStack, address: str) -> str | None:
    return count(stack, select(Contact.newsletter_status).where(Contact.email == address)) or None


def contact_id(stack: LeadsyncStack, address: str) -> int:
    return count(stack, select(Contact.id).where(Contact.email == address))


def test_forged_link_from_a_database_url_derived_key_is_refused(
    env: dict[str, str], smtp: SmtpSink, tmp_path: Path
) -> None:
    # As the compose default ran before: no FORM_TOKEN_SECRET. Only dev mode may start so (a secret is then
    # generated under VAR_DIR); production processes refuse (tests/security/test_startup_checks.py).
    unset = {**env, "FORM_TOKEN_SECRET": "", "FORM_TOKEN_SECRET_PREVIOUS": "", "DEV_MODE": "1"}
    with LeadsyncStack(unset, tmp_path / "stack") as stack:
        newsletter_links(stack, smtp, "stranger@example.org")
        victim = contact_id(stack, "stranger@example.org")
        # The key leadsync fell back to, from the DATABASE_URL (public in the compose default): what an attacker had.
        derived = hashlib.sha256(f"leadsync form token|{env['DATABASE_URL']}".encode()).digest()
        for action in ("confirm", "unsubscribe"):
            forged = sign(derived, action, victim, "stranger@example.org", ttl=3600)
            assert stack.client.get(f"/newsletter/{action}", params={"token": forged}).status_code == 400
            assert stack.client.post(f"/newsletter/{action}", params={"token": forged}).status_code == 400
        assert newsletter_status(stack, "stranger@example.org") == "pending"  # nothing confirmed, nothing withdrawn
        generated = Path(env["VAR_DIR"]) / "form-token-secret"
        assert generated.stat().st_mode & 0o777 == 0o600 and len(generated.read_text().strip()) >= 43


def test_plus_tag_case_and_dot_bombing_with_a_link_in_the_name_reaches_each_mailbox_three_times(
    stack: LeadsyncStack, smtp: SmtpSink
) -> None:
    phishing = {"email": "victim@example.org", "first_name": "Your refund: visit http://evil.example/claim"}
    refused = stack.post("info-packet", phishing)
    assert refused.status_code == 422
    assert "first_name" in refused.json()["errors"]
    assert count(stack, select(func.count()).select_from(Submission)) == 0  # nothing stored

    spellings = [f"victim+{n}@example.org" for n in range(1, 9)] + ["VICTIM@Example.org", "Victim+x@EXAMPLE.org"]
    spellings += ["v.ictim@gmail.com", "vic.tim+1@googlemail.com", "VICTIM@gmail.com", "v.i.c.t.i.m+2@gmail.com"]
    for address in spellings:
        for form in ("info-packet", "newsletter"):
            response = stack.post(form, {"email": address, "first_name": "Bob"})
            assert response.status_code == 202, response.text
    settled(stack)
    time.sleep(1)  # a sweep or two more: nothing else may arrive
    reached = Counter(canonical_mailbox(rcpt) for mail in smtp.received for rcpt in mail.rcpt_tos)
    assert reached == {"victim@example.org": 3, "victim@gmail.com": 3}
    assert all(b"evil.example" not in mail.raw for mail in smtp.received)


def test_confirm_link_replayed_after_unsubscribe_stays_unsubscribed(stack: LeadsyncStack, smtp: SmtpSink) -> None:
    links = newsletter_links(stack, smtp, "nia@example.org")
    assert stack.client.post(links["confirm"]).status_code == 200
    assert newsletter_status(stack, "nia@example.org") == "subscribed"
    assert stack.client.post(links["unsubscribe"]).status_code == 200
    assert newsletter_status(stack, "nia@example.org") == "unsubscribed"

    replay = stack.client.post(links["confirm"])
    assert replay.status_code == 400 and "not valid" in replay.text
    assert newsletter_status(stack, "nia@example.org") == "unsubscribed"


def _signed_payload(claims: Any) -> str:
    """A token whose signature is right (the test knows the secret) but whose claims are not well formed."""
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac.rstrip(b'=').decode()}"


def test_non_ascii_and_malformed_tokens_are_a_400_page_never_a_500(stack: LeadsyncStack) -> None:
    future = int(time.time()) + 3600
    signed_garbage = base64.urlsafe_b64encode(b"\xff\xfe not json").rstrip(b"=").decode()
    tokens = [
        "caf\u00e9",
        "\u0661\u0662\u0663.\u00fc\u00fc",
        "a" * 10 + "." + "\u00e9" * 43,
        "!!!.???",
        "x" * 5000,
        _signed_payload(["confirm", "1", "abc", future]),  # contact id as a string
        _signed_payload(["confirm", 1, None, future, 0]),  # hash not a string
        _signed_payload({"purpose": "confirm"}),  # not a list
        _signed_payload(["confirm", True, "abc", future]),  # a bool is no id
        f"{signed_garbage}.{'A' * 43}",
    ]
    for index, token in enumerate(tokens):
        client = {"X-Forwarded-For": f"192.0.2.{index}"}  # one client a token: this is not the rate-limit test
        for action in ("confirm", "unsubscribe"):
            shown = stack.client.get(f"/newsletter/{action}", params={"token": token}, headers=client)
            assert shown.status_code == 400, token
            posted = stack.client.post(f"/newsletter/{action}", data={"token": token}, headers=client)
            assert posted.status_code == 400, token

    # The form's render-time token: non-ASCII digits pass str.isdigit(); the post is spam, not a 500.
    for index, token in enumerate(["v1.\u0661\u0662\u0663.abc", "v1.123.\u00e9" * 3, "v1.1." + "\u0661" * 43]):
        posted = stack.post("info-packet", {"email": f"t{index}@example.org", "first_name": "T", "ts_token": token})
        assert posted.status_code == 202, posted.text
    assert count(stack, select(func.count()).where(Submission.spam_reason == "token_bad")) == 3


def test_guessing_link_tokens_from_one_address_is_rate_limited(stack: LeadsyncStack) -> None:
    answers = [stack.client.get("/newsletter/confirm", params={"token": f"guess{n}"}).status_code for n in range(20)]
    assert answers == [400] * LINK_LIMIT + [429] * (20 - LINK_LIMIT)
    # Another client address (through the trusted local proxy) has its own allowance.
    other = stack.client.get("/newsletter/confirm", params={"token": "x"}, headers={"X-Forwarded-For": "192.0.2.7"})
    assert other.status_code == 400


def test_rotation_previous_secret_still_verifies_but_never_signs(stack: LeadsyncStack, smtp: SmtpSink) -> None:
    links = newsletter_links(stack, smtp, "rota@example.org")
    token = links["confirm"].split("token=")[1]
    assert verify(token, [SECRET.encode()], "confirm")  # new links: the current secret
    with pytest.raises(ValueError):
        verify(token, [OLD_SECRET.encode()], "confirm")
    form_token = stack.client.get("/forms/token").json()["token"]
    assert check(form_token, SECRET.encode(), 0, 60) != "bad" and check(form_token, OLD_SECRET.encode(), 0, 60) == "bad"

    # A link from an email sent before the rotation (signed with the previous secret) still works...
    cid = contact_id(stack, "rota@example.org")
    old_link = sign(OLD_SECRET.encode(), "unsubscribe", cid, "rota@example.org", ttl=3600)
    assert stack.client.post("/newsletter/unsubscribe", params={"token": old_link}).status_code == 200
    assert newsletter_status(stack, "rota@example.org") == "unsubscribed"
    # ...and so does a form rendered before it; a key that was never configured does not.
    old_form = issue(OLD_SECRET.encode(), now=time.time() - 30)
    never = issue(b"never-configured-secret-0123456789abcdef", now=time.time() - 30)
    for address, token in (("o@example.org", old_form), ("n@example.org", never)):
        assert stack.post("info-packet", {"email": address, "first_name": "O", "ts_token": token}).status_code == 202
    spam = dict(count_rows(stack, select(Submission.email, Submission.spam_reason)))
    assert spam["o@example.org"] is None and spam["n@example.org"] == "token_bad"
    forged = sign(b"never-configured-secret-0123456789abcdef", "confirm", cid, "rota@example.org", ttl=3600)
    assert stack.client.post("/newsletter/confirm", params={"token": forged}).status_code == 400


def count_rows(stack: LeadsyncStack, statement: Any) -> list[tuple[Any, ...]]:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(stack.env["DATABASE_URL"])
    try:
        with Session(engine) as session:
            return [tuple(row) for row in session.execute(statement)]
    finally:
        engine.dispose()


def test_ipv4_mapped_address_is_counted_and_stored_as_its_ipv4(env: dict[str, str], tmp_path: Path) -> None:
    with LeadsyncStack({**env, "RATE_LIMIT_PER_IP": "4 per 10 minutes"}, tmp_path / "stack") as stack:
        for index in range(6):  # the same visitor, spelled both ways (uvicorn bound to :: reports the mapped form)
            ip = "::ffff:203.0.113.7" if index % 2 else "203.0.113.7"
            data = {"email": f"m{index}@example.org", "first_name": "M"}
            assert stack.post("info-packet", data, headers={"X-Forwarded-For": ip}).status_code == 202
        rows = count_rows(stack, select(Submission.ip, Submission.spam_reason).order_by(Submission.received_at))
    assert [ip for ip, _ in rows] == ["203.0.113.7"] * 6  # stored unwrapped too (consent evidence, exports)
    assert [reason for _, reason in rows] == [None] * 4 + ["ip_rate"] * 2


def test_forwarded_for_from_an_untrusted_client_is_ignored(env: dict[str, str], tmp_path: Path) -> None:
    # Our proxy is 10.9.9.9; the test client (127.0.0.1) is not it, so its X-Forwarded-For is a lie.
    settings = {**env, "FORWARDED_ALLOW_IPS": "10.9.9.9", "RATE_LIMIT_PER_IP": "2 per 10 minutes"}
    with LeadsyncStack(settings, tmp_path / "stack") as stack:
        for index in range(4):  # a bot rotating made-up addresses to walk past the per-IP limit
            spoof = {"X-Forwarded-For": f"198.51.100.{index}"}
            data = {"email": f"s{index}@example.org", "first_name": "S"}
            assert stack.post("info-packet", data, headers=spoof).status_code == 202
        rows = count_rows(stack, select(Submission.ip, Submission.spam_reason).order_by(Submission.received_at))
    assert [ip for ip, _ in rows] == ["127.0.0.1"] * 4
    assert [reason for _, reason in rows] == [None, None, "ip_rate", "ip_rate"]


def test_direct_clients_cannot_read_metrics_without_the_ops_token(stack: LeadsyncStack) -> None:
    assert stack.client.get("/metrics").status_code == 403  # OPS_TOKEN unset: fails closed
    assert httpx.get(f"{stack.url}/metrics", headers={"Authorization": "Bearer guess"}).status_code == 403
