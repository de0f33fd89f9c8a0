"""The HTTP edge through the real ASGI app and a real SQLite database: what is stored, what is answered."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.storage.db import session_scope
from leadsync.storage.models import Submission
from tests.conftest import apply_settings

PACKET = {"email": "Ann@Example.org", "first_name": "Ann", "last_name": "Lee", "utm_source": "newsletter"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def submissions() -> list[Submission]:
    with session_scope() as session:
        return list(session.scalars(select(Submission).order_by(Submission.received_at)))


def queued_tasks(settings: Settings) -> list[dict]:
    """The task messages waiting on the broker's intake queue (a folder, or a Redis list)."""
    if settings.celery_broker_url.startswith("redis://"):
        client = redis.Redis.from_url(settings.celery_broker_url)
        return [json.loads(raw) for raw in client.lrange("intake", 0, -1)]
    folder = settings.var_dir / "broker" / "queue"
    return [json.loads(path.read_text()) for path in folder.glob("*.msg")]


def test_json_post_is_stored_enqueued_and_answered_202(client: TestClient, settings: Settings) -> None:
    response = client.post(
        "/forms/info-packet",
        json={**PACKET, "page_url": "https://clinic.example/exosomes", "newsletter_opt_in": True},
        headers={"User-Agent": "pytest-browser"},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted" and body["message"] == "Thanks for your interest!"
    # The bytes, as every other JSON answer is written (compact, UTF-8), and their declared length.
    assert response.content == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)

    [row] = submissions()
    assert row.id == body["id"]
    assert (row.form, row.email, row.status) == ("info_packet", "ann@example.org", "pending")
    assert row.fields["first_name"] == "Ann" and row.fields["newsletter_opt_in"] is True
    assert row.raw["email"] == "Ann@Example.org"  # the payload as received
    assert row.utm == {"utm_source": "newsletter"}
    assert row.page_url == "https://clinic.example/exosomes"
    assert row.ip == "testclient" and row.user_agent == "pytest-browser"
    assert row.consent["newsletter"] is True and row.consent["text_version"]
    assert row.received_at.tzinfo is not None
    assert len(queued_tasks(settings)) == 1  # one process_submission message on the broker


def test_urlencoded_and_multipart_bodies_are_accepted(client: TestClient) -> None:
    urlencoded = client.post("/forms/newsletter", data={"email": "bo@example.org"}, headers={"Accept": "*/*"})
    multipart = client.post("/forms/newsletter", files={"email": (None, "cy@example.org")})
    assert urlencoded.status_code == 202, urlencoded.text
    assert multipart.status_code == 202, multipart.text
    assert urlencoded.json()["message"] == "You have Successfully Subscribed!"
    assert sorted(row.email for row in submissions()) == ["bo@example.org", "cy@example.org"]


def test_html_form_post_redirects_to_the_thank_you_page(client: TestClient) -> None:
    response = client.post(
        "/forms/info-packet",
        data=PACKET,
        headers={"Accept": "text/html,application/xhtml+xml"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/thank-you?form=info-packet"
    page = client.get(response.headers["location"])
    assert "Thanks for your interest!" in page.text and "FREE information packet" in page.text


def test_invalid_json_post_gets_field_messages_and_writes_nothing(client: TestClient) -> None:
    response = client.post("/forms/info-packet", json={"email": "ann@", "phone": "5" * 80})
    assert response.status_code == 422
    assert response.json() == {
        "errors": {
            "email": "Enter a valid email address.",
            "first_name": "This field is required.",
            "phone": "Must be at most 40 characters.",
        }
    }
    assert submissions() == []


def test_invalid_html_post_gets_a_422_page_naming_the_fields(client: TestClient) -> None:
    response = client.post("/forms/newsletter", data={"email": "nope"}, headers={"Accept": "text/html"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert "Email" in response.text and "Enter a valid email address." in response.text
    assert submissions() == []


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "body"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 422, "body"),
        (b"email=a%40b.org", {"Content-Type": "text/plain"}, 415, "body"),
        (b"email=" + b"a" * 70_000, {"Content-Type": "application/x-www-form-urlencoded"}, 413, "body"),
        (b"\xff\xfe=\xff", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "body"),
        (b'{"email": null}', {"Content-Type": "application/json"}, 422, "email"),
        (b'{"email": ["a@b.org"]}', {"Content-Type": "application/json"}, 422, "email"),
    ],
)
def test_unreadable_bodies_get_a_4xx_with_a_message(
    client: TestClient, body: bytes, headers: dict[str, str], status: int, field: str
) -> None:
    response = client.post("/forms/newsletter", content=body, headers=headers)
    assert response.status_code == status
    assert field in response.json()["errors"]
    assert submissions() == []


def test_unknown_form_is_404(client: TestClient) -> None:
    response = client.post("/forms/contact-us", json={"email": "a@b.org"})
    assert response.status_code == 404 and "form" in response.json()["errors"]


def test_same_idempotency_key_same_answer_one_submission(client: TestClient, settings: Settings) -> None:
    headers = {"Idempotency-Key": "fill-123"}
    first = client.post("/forms/info-packet", json=PACKET, headers=headers)
    second = client.post("/forms/info-packet", json=PACKET, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert len(submissions()) == 1 and len(queued_tasks(settings)) == 1


def test_idempotency_key_reused_for_other_data_is_refused(client: TestClient) -> None:
    client.post("/forms/info-packet", json=PACKET, headers={"Idempotency-Key": "k1"})
    other = client.post("/forms/info-packet", json={**PACKET, "first_name": "Eve"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["errors"]
    assert len(submissions()) == 1


def test_honeypot_gets_the_normal_answer_but_is_never_enqueued(client: TestClient, settings: Settings) -> None:
    response = client.post("/forms/newsletter", json={"email": "bot@example.org", "website": "http://spam.example"})
    assert response.status_code == 202
    [row] = submissions()
    assert row.status == "spam"
    assert queued_tasks(settings) == []


def test_health_ready_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    document = client.get("/openapi.json").json()
    assert set(document["paths"]) >= {"/forms/newsletter", "/forms/info-packet", "/healthz", "/readyz"}
    schema = document["components"]["schemas"]["InfoPacketForm"]
    assert {"email", "first_name"} <= set(schema["required"])


def test_database_down_answers_503_never_500(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> None:
    # Nothing listens on port 1: every connection is refused, as when PostgreSQL is down.
    settings = apply_settings(monkeypatch, {**base_env, "DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x"})
    with TestClient(create_app(settings)) as client:
        response = client.post("/forms/info-packet", json=PACKET)
        assert response.status_code == 503
        assert "try again" in response.json()["errors"]["service"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unavailable")


def test_dev_mode_serves_the_demo_page(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> None:
    settings = apply_settings(monkeypatch, {**base_env, "DEV_MODE": "1"})
    with TestClient(create_app(settings)) as client:
        page = client.get("/")
    assert page.status_code == 200
    assert "Subscribe To Our Newsletter" in page.text and "Request Information Packet" in page.text


def test_thank_you_page_links_back_to_the_article_only_on_this_site(client: TestClient) -> None:
    here = client.post(
        "/forms/newsletter",
        data={"email": "bo@example.org", "page_url": "http://testserver/exosome-therapy"},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert here.status_code == 303
    page = client.get(here.headers["location"])
    assert 'href="http://testserver/exosome-therapy"' in page.text and "javascript:" not in page.text
    elsewhere = client.post(
        "/forms/newsletter",
        data={"email": "cy@example.org", "page_url": "https://evil.example/phish"},
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert elsewhere.headers["location"] == "/thank-you?form=newsletter"
    forged = client.get("/thank-you", params={"form": "newsletter", "back": "https://evil.example/phish"})
    assert "evil.example" not in forged.text
