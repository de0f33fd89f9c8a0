"""Double opt-in and unsubscribe, end to end in-process: sign up, the confirmation email, the links."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.signing import sign
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Contact
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import FolderTransport
from tests.worker.helpers import process, submit


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def confirmation(settings: Settings, address: str = "nia@example.org") -> EmailMessage:
    [send_id] = process(submit("newsletter", email=address, first_name="Nia"), settings).email_send_ids
    assert deliver(get_sessionmaker(), send_id, FolderTransport(settings.mail_outbox_dir), settings).status == "sent"
    [path] = settings.mail_outbox_dir.glob("*.eml")
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def status() -> str:
    with session_scope() as session:
        return session.scalars(select(Contact)).one().newsletter_status


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_confirmation_email_carries_a_confirm_link_and_one_click_unsubscribe(settings: Settings) -> None:
    message = confirmation(settings)
    assert message["Subject"] == "Please confirm your newsletter subscription"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(
        r"<http://127\.0\.0\.1:8000/newsletter/unsubscribe\?token=[\w.%-]+>", message["List-Unsubscribe"]
    )
    text = message.get_body(("plain",)).get_content()
    assert "/newsletter/confirm?token=" in text and "/newsletter/unsubscribe?token=" in text


def test_prefetching_the_link_does_not_confirm_clicking_the_button_does(settings: Settings, client: TestClient) -> None:
    text = confirmation(settings).get_body(("plain",)).get_content()
    confirm_url = re.search(r"http://\S+/newsletter/confirm\?token=\S+", text).group(0)  # type: ignore[union-attr]

    page = client.get(path_of(confirm_url))  # what a mail scanner does
    assert page.status_code == 200 and "<button" in page.text
    assert status() == "pending"

    token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = client.post("/newsletter/confirm", data={"token": token})
    assert done.status_code == 200 and "You have Successfully Subscribed!" in done.text
    assert status() == "subscribed"
    with session_scope() as session:
        contact = session.scalars(select(Contact)).one()
        assert contact.newsletter_confirmed_at is not None and contact.crm_status == "pending"  # synced next


def test_one_click_unsubscribe_works_without_a_page(settings: Settings, client: TestClient) -> None:
    message = confirmation(settings)
    url = message["List-Unsubscribe"].strip("<>")
    response = client.post(
        path_of(url),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert status() == "unsubscribed"
    assert client.post(path_of(url), content=b"List-Unsubscribe=One-Click").status_code == 200  # twice is harmless


@pytest.mark.parametrize("action", ["confirm", "unsubscribe"])
def test_forged_expired_or_misused_tokens_change_nothing(settings: Settings, client: TestClient, action: str) -> None:
    confirmation(settings)
    with session_scope() as session:
        contact = session.scalars(select(Contact)).one()
        cid, address = contact.id, contact.email
    other = "unsubscribe" if action == "confirm" else "confirm"
    tokens = [
        "garbage",
        sign(b"wrong key", action, cid, address, ttl=3600),
        sign(settings.signing_key, action, cid, address, ttl=-1),  # expired
        sign(settings.signing_key, other, cid, address, ttl=3600),  # for the other action
        sign(settings.signing_key, action, cid, "someone.else@example.org", ttl=3600),  # another address
    ]
    for token in tokens[:4]:
        assert client.get(f"/newsletter/{action}", params={"token": token}).status_code == 400
    for token in tokens:  # the last one is genuine but its address is not this contact's any more
        assert client.post(f"/newsletter/{action}", params={"token": token}).status_code == 400
    assert status() == "pending"


def test_a_malformed_body_is_a_bad_link_not_a_server_error(settings: Settings, client: TestClient) -> None:
    confirmation(settings)
    for content_type in ("multipart/form-data; boundary=x", "multipart/form-data", "application/x-www-form-urlencoded"):
        response = client.post("/newsletter/confirm", content=b"--x\r\nbroken", headers={"Content-Type": content_type})
        assert response.status_code == 400, content_type
    assert status() == "pending"
