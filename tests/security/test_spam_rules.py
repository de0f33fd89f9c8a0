"""Every spam rule, on both forms and every body encoding: the bot gets the normal answer, the post is stored
as spam with its reason, and nothing is enqueued (so no email and no CRM record can follow).

Runs on the embedded default (counters in memory) and on Redis + PostgreSQL (counters in Redis)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.forms.spam import client_key, is_disposable
from leadsync.forms.tokens import issue
from leadsync.storage.db import session_scope
from leadsync.storage.migrate import upgrade
from leadsync.storage.models import EmailSend
from tests.conftest import apply_settings
from tests.forms.test_forms_api import queued_tasks
from tests.security.conftest import ENCODINGS, FORMS, assert_success_answer, post, rows
from tests.worker.helpers import process, submit

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> Iterator[MakeClient]:
    """A client on a freshly migrated database, with extra settings (the rate limits are off by default)."""
    clients: list[TestClient] = []

    def make(**env: str) -> TestClient:
        settings = apply_settings(monkeypatch, {**base_env, **env})
        upgrade()
        client = TestClient(create_app(settings))
        client.__enter__()
        client.app_settings = settings  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def spam_reasons() -> list[str | None]:
    return [row.spam_reason for row in rows()]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("form", FORMS)
def test_honeypot_is_spam_on_every_form_and_encoding(make_client: MakeClient, form: str, encoding: str) -> None:
    client = make_client()
    response = post(client, form, {**FORMS[form], "website": "http://spam.example"}, encoding)
    assert_success_answer(response, encoding)
    [row] = rows()
    assert (row.status, row.spam_reason) == ("spam", "honeypot")
    assert queued_tasks(client.app_settings) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("token_at", "reason"),
    [
        (lambda now: now - 0.5, "token_too_fast"),  # filled faster than a person can
        (lambda now: now - 3 * 86400, "token_expired"),
        (None, "token_bad"),  # not signed by us
    ],
)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_bad_render_time_token_is_spam_on_every_encoding(
    make_client: MakeClient, encoding: str, token_at: Callable[[float], float] | None, reason: str
) -> None:
    client = make_client()
    settings: Settings = client.app_settings  # type: ignore[attr-defined]
    now = time.time()
    token = issue(settings.form_token_key, now=token_at(now)) if token_at else issue(b"not our secret", now - 10)
    for form in FORMS:
        assert_success_answer(post(client, form, {**FORMS[form], "ts_token": token}, encoding), encoding)
    assert [(row.status, row.spam_reason) for row in rows()] == [("spam", reason)] * 2
    assert queued_tasks(settings) == []


def test_a_good_token_and_an_absent_token_are_accepted(make_client: MakeClient) -> None:
    client = make_client()
    token = issue(client.app_settings.form_token_key, now=time.time() - 10)  # type: ignore[attr-defined]
    assert client.post("/forms/newsletter", json={**FORMS["newsletter"], "ts_token": token}).status_code == 202
    assert client.post("/forms/info-packet", json=FORMS["info-packet"]).status_code == 202
    assert [(row.status, row.spam_reason) for row in rows()] == [("pending", None)] * 2
    assert len(queued_tasks(client.app_settings)) == 2  # type: ignore[attr-defined]


def test_one_ip_over_its_limit_is_spam_across_forms_and_encodings(make_client: MakeClient) -> None:
    client = make_client(RATE_LIMIT_PER_IP="3 per minute")
    plan = [(form, encoding) for encoding in ENCODINGS for form in FORMS]  # 6 posts, one counter
    for index, (form, encoding) in enumerate(plan):
        response = post(client, form, {**FORMS[form], "email": f"person{index}@example.org"}, encoding)
        assert_success_answer(response, encoding)  # the bot cannot tell when it was cut off
    assert spam_reasons() == [None, None, None, "ip_rate", "ip_rate", "ip_rate"]
    assert len(queued_tasks(client.app_settings)) == 3  # type: ignore[attr-defined]


def test_one_address_over_its_limit_is_spam_however_it_is_spelled(make_client: MakeClient) -> None:
    client = make_client(RATE_LIMIT_PER_EMAIL="2 per hour")
    for spelling in ["ann@example.org", "Ann+1@Example.org", " ANN+news@EXAMPLE.ORG ", "ann+2@example.org"]:
        response = client.post("/forms/info-packet", json={**FORMS["info-packet"], "email": spelling})
        assert response.status_code == 202
    assert spam_reasons() == [None, None, "email_rate", "email_rate"]
    for spelling in ["a.nn@gmail.com", "ANN+x@googlemail.com", "an.n@gmail.com"]:  # Gmail ignores dots
        assert client.post("/forms/newsletter", json={"email": spelling}).status_code == 202
    assert spam_reasons()[4:] == [None, None, "email_rate"]
    other = client.post("/forms/newsletter", json={"email": "bo@example.org"})
    assert other.status_code == 202 and spam_reasons()[-1] is None  # other people are not affected


def test_a_bots_honeypot_posts_do_not_use_up_the_victims_address(make_client: MakeClient) -> None:
    client = make_client(RATE_LIMIT_PER_EMAIL="1 per hour")
    for _ in range(3):
        client.post("/forms/newsletter", json={"email": "ann@example.org", "website": "x"})
    assert client.post("/forms/newsletter", json={"email": "ann@example.org"}).status_code == 202
    assert spam_reasons() == ["honeypot", "honeypot", "honeypot", None]


def test_counters_down_means_posts_are_let_through(make_client: MakeClient) -> None:
    # Nothing listens on port 1: a lead is never lost because the rate-limit store is away.
    client = make_client(RATE_LIMIT_PER_IP="1 per minute", RATE_LIMIT_STORAGE_URL="redis://127.0.0.1:1/0")
    for index in range(3):
        response = client.post("/forms/newsletter", json={"email": f"p{index}@example.org"})
        assert response.status_code == 202
    assert spam_reasons() == [None, None, None]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("email", ["bot@mailinator.com", "x@Yopmail.COM", "x@sub.guerrillamail.com"])
def test_disposable_addresses_are_refused_with_a_field_message(make_client: MakeClient, form: str, email: str) -> None:
    client = make_client()
    response = client.post(f"/forms/{form}", json={**FORMS[form], "email": email})
    assert response.status_code == 422
    assert "permanent email address" in response.json()["errors"]["email"]
    html = client.post(f"/forms/{form}", data={**FORMS[form], "email": email}, headers={"Accept": "text/html"})
    assert html.status_code == 422 and "permanent email address" in html.text
    assert rows() == []


def test_disposable_check_can_be_switched_off(make_client: MakeClient) -> None:
    client = make_client(BLOCK_DISPOSABLE_EMAILS="false")
    assert client.post("/forms/newsletter", json={"email": "x@mailinator.com"}).status_code == 202


def test_disposable_list_and_client_keys() -> None:
    assert is_disposable("a@mailinator.com") and is_disposable("a@deep.sub.mailinator.com")
    assert not is_disposable("a@gmail.com") and not is_disposable("a@example.org")
    assert client_key("203.0.113.9") == "203.0.113.9"
    # One IPv6 host usually owns a /64: rotating addresses inside it does not reset the counter.
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key(None) == "unknown"
    # uvicorn bound to :: reports IPv4 visitors as IPv4-mapped IPv6: the same visitor, the same counter.
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"


def parsed_key(ip: str) -> str:
    """The key by ipaddress alone, as client_key worked out every key before its IPv4 shortcut."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if (mapped := getattr(address, "ipv4_mapped", None)) is not None:
        return str(mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False)) if address.version == 6 else str(address)


octets = st.one_of(st.integers(0, 999).map(str), st.integers(0, 255).map(lambda n: f"0{n}"), st.sampled_from(["", "x"]))


@hypothesis_settings(max_examples=2000, deadline=None, derandomize=True)
@given(
    st.one_of(
        st.lists(octets, min_size=3, max_size=5).map(".".join),
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda v4: f"::ffff:{v4}"),  # IPv4-mapped, written as uvicorn reports it
        st.ip_addresses(v=4).map(lambda v4: f"2001:db8::{v4}"),  # IPv6 with a dotted tail
        st.text(max_size=20),
    )
)
def test_the_ipv4_shortcut_gives_every_address_the_key_ipaddress_gives_it(ip: str) -> None:
    assert client_key(ip) == (parsed_key(ip) if ip else "unknown")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "name",
    [
        "Your refund: visit http://evil.example/claim",
        "hxxps://evil.example",
        "www.evil-site",
        "evil.example/claim",
        "claim at refunds.com",
        "bob@evil.example",
        "<b>Ann</b>",
        "Ann >",
    ],
)
def test_a_name_with_a_link_an_address_or_markup_is_refused(make_client: MakeClient, form: str, name: str) -> None:
    client = make_client()
    for field in ("first_name", "last_name") if form == "info-packet" else ("first_name",):
        data = {**FORMS[form], field: name}
        response = client.post(f"/forms/{form}", json=data)
        assert response.status_code == 422
        assert response.json()["errors"] == {field: "Enter just your name: no web addresses, email addresses or < >."}
        html = client.post(f"/forms/{form}", data=data, headers={"Accept": "text/html"})
        assert html.status_code == 422 and "Enter just your name" in html.text
    assert rows() == []


@pytest.mark.parametrize("name", ["Ann", "St.Clair", "J.R.R.", "Dr. Ann-Marie O'Neil", "Zoë", "李", "Ann.Lee"])
def test_ordinary_names_with_dots_and_accents_are_accepted(make_client: MakeClient, name: str) -> None:
    client = make_client()
    assert client.post("/forms/info-packet", json={**FORMS["info-packet"], "first_name": name}).status_code == 202


def test_no_more_than_the_daily_cap_of_emails_reaches_one_address(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]
) -> None:
    # Resend window 0 would allow a packet per request; the per-recipient cap still stops at 2 a day.
    settings = apply_settings(
        monkeypatch, {**base_env, "PACKET_RESEND_WINDOW_DAYS": "0", "EMAIL_DAILY_CAP_PER_RECIPIENT": "2"}
    )
    upgrade()
    results = [process(submit("info-packet", email="ann@example.org", first_name="Ann"), settings) for _ in range(5)]
    assert [len(result.email_send_ids) for result in results] == [1, 1, 0, 0, 0]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EmailSend)) == 2
