"""Newsletter consent as HubSpot communication preferences (HUBSPOT_SUBSCRIPTION_ID), through the real
hubspot-api-client, the real forms app and the HubSpot emulator: only a confirmed double opt-in subscribes.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hubspot import HubSpot
from hubspot.communication_preferences import PublicUpdateSubscriptionStatusRequest
from sqlalchemy import select
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.signing import sign
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import DeadLetter, ServiceState, utcnow
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.service_state import PAUSE_STATE
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import FolderTransport
from tests.conftest import apply_settings
from tests.forms.test_subscriptions import path_of
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.worker import test_crm_sync
from tests.worker.helpers import process, submit
from tests.worker.test_crm_sync import FAST, contact, flush, state

PREFERENCES = "/communication-preferences/v3/"

crm = test_crm_sync.crm  # the fixture: a client like the worker's, on a portal whose properties exist


@pytest.fixture
def newsletter(hubspot: HubSpotEmulator) -> str:
    """The newsletter's subscription type, as a marketer creates it in HubSpot's settings."""
    return hubspot.add_subscription("Newsletter", "The clinic's monthly newsletter")


@pytest.fixture
def configured(
    settings: Settings, newsletter: str, monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]
) -> Settings:
    return apply_settings(monkeypatch, {**base_env, "HUBSPOT_SUBSCRIPTION_ID": newsletter})


@pytest.fixture
def web(configured: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(configured)) as client:
        yield client


def sign_up(address: str, settings: Settings) -> None:
    process(submit("newsletter", email=address, first_name="Nia"), settings)


def click(web: TestClient, action: str, address: str, settings: Settings) -> None:
    """The person clicks the confirm button, or their mail client sends the RFC 8058 one-click POST."""
    row = contact(address)
    token = sign(settings.signing_key, action, row.id, row.email, ttl=3600)
    if action == "confirm":
        response = web.post("/newsletter/confirm", data={"token": token})
    else:
        response = web.post(
            "/newsletter/unsubscribe",
            params={"token": token},
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200, response.text


def sent(hubspot: HubSpotEmulator, action: str, status: int | None = 200) -> list[dict[str, Any]]:
    """Bodies of the subscribe/unsubscribe calls HubSpot answered with `status`."""
    return [c.body for c in hubspot.calls(PREFERENCES + action) if status is None or c.status == status]


def newsletter_property(hubspot: HubSpotEmulator, address: str) -> str:
    return hubspot.contact_by_email(address)["properties"]["leadsync_newsletter_status"]


def test_a_confirmed_subscriber_is_subscribed_at_hubspot_and_a_pending_one_is_not(
    configured: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, web: TestClient, newsletter: str
) -> None:
    sign_up("ann@example.org", configured)
    sign_up("bo@example.org", configured)
    click(web, "confirm", "ann@example.org", configured)

    report = flush(crm, configured)
    assert (report.synced, report.preferences, report.calls) == (2, 1, 2)  # one upsert, one subscribe
    assert hubspot.subscription_status("ann@example.org", newsletter) == "SUBSCRIBED"
    assert hubspot.subscription_status("bo@example.org", newsletter) is None  # pending: never sent
    [body] = sent(hubspot, "subscribe")
    assert body["emailAddress"] == "ann@example.org" and body["subscriptionId"] == newsletter
    assert body["legalBasis"] == "CONSENT_WITH_NOTICE" and "double opt-in" in body["legalBasisExplanation"]
    assert hubspot.count(PREFERENCES) == 1  # nothing at all for bo
    assert newsletter_property(hubspot, "bo@example.org") == "pending"
    assert newsletter_property(hubspot, "ann@example.org") == "subscribed"
    assert contact("ann@example.org").hubspot_newsletter_status == "subscribed"
    assert contact("bo@example.org").hubspot_newsletter_status is None

    assert flush(crm, configured).claimed == 0  # pushed once; nothing pending
    click(web, "confirm", "bo@example.org", configured)  # bo confirms later
    assert flush(crm, configured).preferences == 1
    assert hubspot.subscription_status("bo@example.org", newsletter) == "SUBSCRIBED"
    assert len(sent(hubspot, "subscribe")) == 2


def test_one_click_unsubscribe_reaches_hubspot_as_unsubscribed(
    configured: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, web: TestClient, newsletter: str
) -> None:
    sign_up("ann@example.org", configured)
    click(web, "confirm", "ann@example.org", configured)
    flush(crm, configured)
    click(web, "unsubscribe", "ann@example.org", configured)
    report = flush(crm, configured)
    assert (report.synced, report.preferences) == (1, 1)
    assert hubspot.subscription_status("ann@example.org", newsletter) == "NOT_SUBSCRIBED"
    [body] = sent(hubspot, "unsubscribe")
    assert body["emailAddress"] == "ann@example.org" and "unsubscribe link" in body["legalBasisExplanation"]
    assert newsletter_property(hubspot, "ann@example.org") == "unsubscribed"
    assert contact("ann@example.org").hubspot_newsletter_status == "unsubscribed"
    # Unsubscribing before ever confirming: HubSpot records the opt-out too.
    sign_up("bo@example.org", configured)
    click(web, "unsubscribe", "bo@example.org", configured)
    assert flush(crm, configured).preferences == 1
    assert hubspot.subscription_status("bo@example.org", newsletter) == "NOT_SUBSCRIBED"


def _subscribed_then_unsubscribed(configured: Settings, crm: HubSpotCrm, web: TestClient) -> None:
    sign_up("ann@example.org", configured)
    click(web, "confirm", "ann@example.org", configured)
    flush(crm, configured)
    click(web, "unsubscribe", "ann@example.org", configured)
    flush(crm, configured)
    sign_up("ann@example.org", configured)  # back: pending again, then confirmed again
    click(web, "confirm", "ann@example.org", configured)


def test_a_resubscribe_hit_by_a_429_waits_and_lands_once(
    configured: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, web: TestClient, newsletter: str
) -> None:
    _subscribed_then_unsubscribed(configured, crm, web)
    hubspot.fail_next(1, status=429, path_contains=PREFERENCES)
    report = flush(crm, configured)
    assert (report.synced, report.preferences, report.rate_limited) == (1, 1, 1)
    assert [c.status for c in hubspot.calls(PREFERENCES + "subscribe")] == [200, 429, 200]
    assert hubspot.subscription_status("ann@example.org", newsletter) == "SUBSCRIBED"
    assert state("hubspot_rate")["rate_limited_today"] == 1  # counted like any other 429


def test_a_resubscribe_during_an_outage_stays_pending_and_is_pushed_once_hubspot_is_back(
    configured: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, web: TestClient, newsletter: str
) -> None:
    _subscribed_then_unsubscribed(configured, crm, web)
    hubspot.fail_next(FAST.attempts, status=503, path_contains=PREFERENCES)
    report = flush(crm, configured)
    assert (report.synced, report.deferred, report.preferences) == (0, 1, 0)
    assert "503" in (report.error or "")
    row = contact("ann@example.org")
    assert row.crm_status == "pending" and row.crm_claimed_until is None and row.crm_attempts == 1
    assert row.hubspot_newsletter_status == "unsubscribed"  # the change is not lost
    assert row.hubspot_id == hubspot.contact_by_email("ann@example.org")["id"]
    assert hubspot.subscription_status("ann@example.org", newsletter) == "NOT_SUBSCRIBED"
    assert flush(crm, configured).claimed == 0  # every flusher pauses
    pause = state(PAUSE_STATE)
    with session_scope() as session:  # the pause runs out
        session.get_one(ServiceState, PAUSE_STATE).value = {**pause, "until": utcnow().isoformat()}
    report = flush(crm, configured)
    assert (report.synced, report.preferences) == (1, 1)
    assert hubspot.subscription_status("ann@example.org", newsletter) == "SUBSCRIBED"
    assert len(sent(hubspot, "subscribe")) == 2  # the first subscription and the re-subscribe, once
    assert contact("ann@example.org").crm_status == "synced"
    assert hubspot.count("batch/update", status=200) == 3  # by record id, never a duplicate record
    assert len(hubspot.contacts) == 1


def test_already_in_that_state_at_hubspot_counts_as_pushed(
    configured: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, web: TestClient, newsletter: str
) -> None:
    # As after a push that landed but was never recorded here (a timeout, a crash): HubSpot says "already".
    HubSpot(access_token=hubspot.token, host=hubspot.url).communication_preferences.status_api.subscribe(
        PublicUpdateSubscriptionStatusRequest(email_address="ann@example.org", subscription_id=newsletter)
    )
    sign_up("ann@example.org", configured)
    click(web, "confirm", "ann@example.org", configured)
    report = flush(crm, configured)
    assert (report.synced, report.rejected, report.preferences) == (1, 0, 1)
    assert [c.status for c in hubspot.calls(PREFERENCES + "subscribe")] == [200, 400]
    assert contact("ann@example.org").hubspot_newsletter_status == "subscribed"
    assert flush(crm, configured).claimed == 0


def test_a_refused_push_rejects_the_contact_with_the_reason_and_does_not_loop(
    settings: Settings,
    hubspot: HubSpotEmulator,
    crm: HubSpotCrm,
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
) -> None:
    wrong = apply_settings(monkeypatch, {**base_env, "HUBSPOT_SUBSCRIPTION_ID": "999"})  # no such subscription
    with TestClient(create_app(wrong)) as web:
        sign_up("ann@example.org", wrong)
        sign_up("bo@example.org", wrong)
        click(web, "confirm", "ann@example.org", wrong)
    report = flush(crm, wrong)
    assert (report.synced, report.rejected, report.preferences) == (1, 1, 0)
    row = contact("ann@example.org")
    assert row.crm_status == "rejected" and "999" in (row.crm_error or "")
    assert row.hubspot_id == hubspot.contact_by_email("ann@example.org")["id"]  # the properties went through
    with session_scope() as session:
        [letter] = session.scalars(select(DeadLetter).where(DeadLetter.kind == "crm")).all()
        assert letter.ref == str(row.id)
    assert flush(crm, wrong).claimed == 0
    assert hubspot.count(PREFERENCES) == 1


def test_without_a_subscription_id_only_the_custom_property_carries_the_status(
    settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm
) -> None:
    assert settings.hubspot_subscription_id is None
    with TestClient(create_app(settings)) as web:
        sign_up("ann@example.org", settings)
        sign_up("bo@example.org", settings)
        click(web, "confirm", "ann@example.org", settings)
        click(web, "unsubscribe", "bo@example.org", settings)
    report = flush(crm, settings)
    assert (report.synced, report.preferences) == (2, 0)
    assert hubspot.count(PREFERENCES) == 0
    assert newsletter_property(hubspot, "ann@example.org") == "subscribed"
    assert newsletter_property(hubspot, "bo@example.org") == "unsubscribed"
    assert contact("ann@example.org").hubspot_newsletter_status is None


def test_end_to_end_form_post_confirm_link_flush(
    configured: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm, web: TestClient, newsletter: str
) -> None:
    posted = web.post("/forms/newsletter", data={"email": "Nia@Example.org", "first_name": "Nia"})
    assert posted.status_code == 202, posted.text
    [send_id] = process(posted.json()["id"], configured).email_send_ids
    assert flush(crm, configured).preferences == 0  # pending: HubSpot hears of the person, not of consent
    assert hubspot.subscription_status("nia@example.org", newsletter) is None

    transport = FolderTransport(configured.mail_outbox_dir)
    assert deliver(get_sessionmaker(), send_id, transport, configured).status == "sent"
    [path] = configured.mail_outbox_dir.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    link = re.search(r"http://\S+/newsletter/confirm\?token=\S+", text).group(0)  # type: ignore[union-attr]
    page = web.get(path_of(link))
    token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert web.post("/newsletter/confirm", data={"token": token}).status_code == 200

    assert flush(crm, configured).preferences == 1
    assert hubspot.subscription_status("nia@example.org", newsletter) == "SUBSCRIBED"
    assert newsletter_property(hubspot, "nia@example.org") == "subscribed"
