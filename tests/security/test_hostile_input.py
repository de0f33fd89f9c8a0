"""Hostile input: every case is a 4xx with a field message (never a 5xx) and nothing half-written; what is
accepted is normalized and can never reach an email header or unescaped HTML.

Runs on SQLite and on PostgreSQL: NUL, lone surrogates and NaN are what PostgreSQL refuses with a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.forms.schemas import CONTROL_MESSAGE, PHONE_MESSAGE
from leadsync.storage.db import session_scope
from leadsync.storage.models import Contact, Submission
from leadsync.worker.intake import process_submission
from leadsync.worker.mail.compose import compose
from tests.security.conftest import rows

PACKET = {"email": "ann@example.org", "first_name": "Ann"}


def post_json(client: TestClient, path: str, data: dict) -> httpx.Response:
    """JSON with \\u escapes, as any client may send: lone surrogates included."""
    return client.post(path, content=json.dumps(data), headers={"Content-Type": "application/json"})


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"first_name": "Ann\r\nBcc: victim@example.org"}, "first_name", CONTROL_MESSAGE),
        ({"last_name": "Lee\nSubject: hi"}, "last_name", CONTROL_MESSAGE),
        ({"first_name": "A\x00nn"}, "first_name", CONTROL_MESSAGE),
        ({"first_name": "A\x1bnn"}, "first_name", CONTROL_MESSAGE),
        ({"first_name": "Ann\u2028Bcc: x@example.org"}, "first_name", CONTROL_MESSAGE),
        ({"first_name": "\u202egnp.exe"}, "first_name", CONTROL_MESSAGE),  # a bidi override
        ({"first_name": "\ud800"}, "first_name", CONTROL_MESSAGE),  # a lone surrogate (JSON allows it)
        ({"interest": "knees\x00"}, "interest", CONTROL_MESSAGE),
        ({"utm_source": "a\r\nb"}, "utm_source", CONTROL_MESSAGE),
        ({"message": "hello\x00"}, "message", CONTROL_MESSAGE),
        ({"email": "ann@example.org\r\nBcc: x@example.org"}, "email", CONTROL_MESSAGE),
        ({"email": "ann@exa\ud800mple.org"}, "email", CONTROL_MESSAGE),
        ({"phone": "call me maybe"}, "phone", PHONE_MESSAGE),
        ({"phone": "<script>1</script>"}, "phone", PHONE_MESSAGE),
        ({"page_url": "javascript:alert(1)"}, "page_url", "Must be a web address (http or https)."),
        ({"first_name": "A" * 101}, "first_name", "Must be at most 100 characters."),
        ({"message": "m" * 5001}, "message", "Must be at most 5000 characters."),
        ({"page_url": "https://x.example/" + "a" * 2048}, "page_url", "Must be at most 2048 characters."),
        ({"email": "a" * 250 + "@example.org"}, "email", "Must be at most 254 characters."),
    ],
)
def test_hostile_fields_get_a_422_with_a_field_message_and_nothing_is_written(
    client: TestClient, fields: dict[str, str], field: str, message: str
) -> None:
    response = post_json(client, "/forms/info-packet", {**PACKET, **fields})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][field] == message
    assert rows() == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"email": "a@example.org", "first_name": NaN}', "application/json", 400),
        (b'{"email": "a@example.org", "x": Infinity}', "application/json", 400),
        (b"[" * 100_000, "application/json", 413),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),  # deep nesting: no RecursionError 500
        (b'{"email": "a@example.org", "first_name": "' + b"1" * 5000 + b'"}', "application/json", 422),
        (b"email=a%40example.org&first_name=A%00nn", "application/x-www-form-urlencoded", 422),
        (b"email=a%40example.org&first_name=%ED%A0%80", "application/x-www-form-urlencoded", 400),
    ],
)
def test_unreadable_or_hostile_bodies_get_a_4xx(
    client: TestClient, body: bytes, content_type: str, status: int
) -> None:
    response = client.post("/forms/info-packet", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["errors"]
    assert rows() == []


def test_oversized_body_is_413_even_without_a_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"email": "a@example.org", "message": "'
        for _ in range(100):
            yield b"x" * 1024

    response = client.post("/forms/info-packet", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["errors"]["body"]
    assert rows() == []


def test_unknown_and_hostile_extra_keys_are_not_stored(client: TestClient) -> None:
    payload = {**PACKET, "evil\x00key": "v\x00", "nested": {"a": [1]}, "website": "", "n": 1e308}
    response = client.post("/forms/info-packet", json=payload)
    assert response.status_code == 202, response.text
    [row] = rows()
    assert row.raw == {"email": "ann@example.org", "first_name": "Ann", "website": ""}


def test_a_hostile_honeypot_value_is_spam_and_stored_safely(client: TestClient) -> None:
    honeypot = "\x00\ud800" + "x" * 500
    response = post_json(client, "/forms/newsletter", {"email": "bot@example.org", "website": honeypot})
    assert response.status_code == 202
    [row] = rows()
    assert row.status == "spam" and "\x00" not in row.raw["website"]


def test_accepted_text_is_normalized(client: TestClient) -> None:
    payload = {
        **PACKET,
        "first_name": "\uff21nn\ufb01",  # fullwidth A, the fi ligature: NFKC folds them
        "message": "Cafe\u0301\r\nsecond line\ttab",  # free text keeps line breaks, NFC composes
        "phone": "(212) 555-0123",
    }
    assert client.post("/forms/info-packet", json=payload).status_code == 202
    [row] = rows()
    assert row.fields["first_name"] == "Annfi"
    assert row.fields["message"] == "Caf\u00e9\nsecond line\ttab"
    assert row.fields["phone"] == "(212) 555-0123"  # as typed: E.164 is the worker's (next test)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("+44 20 7946 0958", "+442079460958"),
        ("212.555.0123", "+12125550123"),
        ("\uff12\uff11\uff12 555 0123", "+12125550123"),  # fullwidth digits (NFKC at the form, then E.164)
        ("+1 212 555 0123 ext. 12", "+12125550123 ext. 12"),
        ("555-0100", "555-0100"),  # shaped like a phone number, unknown to the numbering plan: kept as typed
    ],
)
def test_phone_numbers_reach_the_contact_as_e164_when_known(
    client: TestClient, settings: Settings, typed: str, stored: str
) -> None:
    assert client.post("/forms/info-packet", json={**PACKET, "phone": typed}).status_code == 202
    [row] = rows()
    with session_scope() as session:
        result = process_submission(session, row.id, settings)
        contact = session.get_one(Contact, result.contact_id)
        assert contact.phone == stored
        # So does the submission, which the note sales read and HubSpot's form entry are built from.
        assert session.get_one(Submission, row.id).fields["phone"] == stored


def test_overlong_or_odd_headers_never_break_the_insert(client: TestClient) -> None:
    headers = {"Referer": "https://x.example/" + "r" * 5000, "User-Agent": "ua\x7f" + "u" * 2000}
    assert client.post("/forms/newsletter", json={"email": "a@example.org"}, headers=headers).status_code == 202
    [row] = rows()
    assert row.page_url is None and len(row.user_agent or "") == 512


def test_nothing_from_a_field_reaches_an_email_header_and_html_is_escaped(settings: Settings) -> None:
    # The edge refuses CR/LF; compose_packet is the second line of defence for data from anywhere else.
    contact = SimpleNamespace(
        id=1,
        email="ann@example.org",
        first_name="<b>Ann</b>\r\nBcc: victim@example.org",
        last_name=None,
        phone=None,
        interest="<script>alert(1)</script>",
        message=None,
    )
    message = compose("info_packet", contact, message_id="<x.packet@clinic.example>", settings=settings)
    assert message.get_all("Bcc") is None
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    html = next(part for part in message.walk() if part.get_content_type() == "text/html").get_content()
    assert "<b>Ann</b>" not in html and "&lt;b&gt;" not in html  # not plainly a name: left out of the greeting
    assert "<script>" not in html
