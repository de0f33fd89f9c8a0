"""The website side end to end: the demo page and an embedding site in headless Chromium, against a real leadsync.

Each test submits through the browser and then asks the database, the SMTP server and the HubSpot emulator
what arrived. Screenshots land in test-artifacts/browser/ for a person to look at.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import MIN_FILL_SECONDS, Leadsync
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

NEWSLETTER_DONE = "You have Successfully Subscribed!"
PACKET_DONE = "Thanks for your interest!"


def open_page(page: Page, url: str) -> float:
    """Open `url` once the snippet has its render-time token; returns when that token's clock started."""
    with page.expect_response(lambda response: response.url.endswith("/forms/token")) as token:
        page.goto(url)
    assert token.value.status == 200
    return time.monotonic()


def let_fill_time_pass(started: float) -> None:
    """A person takes a moment; leadsync stores a faster post as spam."""
    time.sleep(max(0.0, started + MIN_FILL_SECONDS + 0.3 - time.monotonic()))


def record_posts(page: Page) -> list[Request]:
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    return posts


def test_demo_page_mirrors_the_clinic_page_with_labelled_fields(page: Page, artifacts: Path) -> None:
    open_page(page, "/")
    expect(page.locator("article")).to_have_count(6)
    expect(page.locator("form[action='/forms/newsletter']")).to_have_count(1)
    assert page.locator("form[action='/forms/info-packet']").count() >= 5
    expect(page.get_by_role("heading", name="Subscribe To Our Newsletter")).to_have_count(1)
    expect(page.locator("form[data-leadsync-state=ready]")).to_have_count(page.locator("form").count())
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('form[data-leadsync] :is(input, textarea, select)')]
              .filter(el => !el.closest('[aria-hidden=true]') && el.labels.length === 0).map(el => el.name)"""
    )
    assert unlabelled == []
    honeypot = page.locator("#ip1 input[name=website]")
    assert honeypot.get_attribute("type") is None and honeypot.get_attribute("tabindex") == "-1"
    page.screenshot(path=artifacts / "demo-page.png", full_page=True)


def test_newsletter_with_javascript_shows_the_message_and_carries_utm_page_and_hutk(
    page: Page, live: Leadsync, artifacts: Path
) -> None:
    page.context.add_cookies([{"name": "hubspotutk", "value": "5f0c1d2e3a4b", "url": live.url}])
    started = open_page(page, "/?utm_source=google&utm_medium=cpc&utm_campaign=exosomes")
    form = page.locator("#newsletter")
    form.get_by_label("First name").fill("Nora")
    form.get_by_label("Email").fill("nora@example.org")
    let_fill_time_pass(started)
    with page.expect_response(lambda r: r.url.endswith("/forms/newsletter")) as answer:
        form.get_by_role("button", name="Subscribe!").click()

    assert answer.value.status == 202
    assert answer.value.request.headers["content-type"] == "application/json"
    assert answer.value.request.headers["idempotency-key"]
    expect(form.locator("[data-leadsync-status]")).to_have_text(NEWSLETTER_DONE)
    expect(form.get_by_label("Email")).to_be_hidden()
    assert page.url == f"{live.url}/?utm_source=google&utm_medium=cpc&utm_campaign=exosomes"  # still on the page
    form.screenshot(path=artifacts / "js-newsletter-success.png")

    [row] = live.submissions("nora@example.org")
    assert row.status != "spam" and row.form == "newsletter"
    assert row.utm == {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "exosomes"}
    assert row.page_url == page.url
    assert row.fields["hutk"] == "5f0c1d2e3a4b" and row.raw["ts_token"]
    record = wait_for(lambda: live.hubspot.contact_by_email("nora@example.org"), what="the HubSpot record")
    assert record["properties"]["firstname"] == "Nora"
    assert record["properties"]["leadsync_utm_campaign"] == "exosomes"
    assert record["properties"]["leadsync_newsletter_status"] == "pending"  # until the person confirms
    assert live.contact("nora@example.org").hutk == "5f0c1d2e3a4b"
    # Double opt-in: a sign-up sends the confirmation email, no packet.
    [mail] = wait_for(lambda: live.mails_to("nora@example.org"), timeout=20, what="the confirmation email")
    assert mail["Subject"] == "Please confirm your newsletter subscription"


def test_info_packet_with_javascript_by_keyboard_only(page: Page, live: Leadsync, artifacts: Path) -> None:
    started = open_page(page, "/")
    form = page.locator("#ip3")  # a later copy of the repeated form
    form.get_by_label("First name").focus()
    for text in ("Kim", "Lee", "kim.lee@example.org", "555-0100", "knees"):
        page.keyboard.type(text)
        page.keyboard.press("Tab")
    page.keyboard.press("Space")  # the newsletter checkbox
    page.keyboard.press("Tab")  # the honeypot is skipped: the button is next
    button = form.get_by_role("button", name="Send Me The Packet")
    expect(button).to_be_focused()
    let_fill_time_pass(started)
    page.keyboard.press("Enter")

    status = form.locator("[data-leadsync-status]")
    expect(status).to_have_text(PACKET_DONE)
    expect(status).to_be_focused()  # announced, and the keyboard user is where the news is
    form.screenshot(path=artifacts / "js-info-packet-success.png")

    [row] = live.submissions("kim.lee@example.org")
    assert row.form == "info_packet" and row.status != "spam"
    assert row.fields["newsletter_opt_in"] is True and row.fields["interest"] == "knees"
    # The packet, and (newsletter box ticked) the double opt-in confirmation.
    mails = wait_for(
        lambda: len(live.mails_to("kim.lee@example.org")) == 2 and live.mails_to("kim.lee@example.org"),
        timeout=20,
        what="the packet and the confirmation email",
    )
    subjects = sorted(mail["Subject"] for mail in mails)
    assert subjects == ["Please confirm your newsletter subscription", "Your FREE information packet"]
    record = wait_for(lambda: live.hubspot.contact_by_email("kim.lee@example.org"), what="the HubSpot record")
    assert record["properties"]["lastname"] == "Lee" and record["properties"]["phone"] == "555-0100"


def test_field_errors_are_shown_inline_and_tied_to_their_fields(page: Page, live: Leadsync, artifacts: Path) -> None:
    started = open_page(page, "/")
    posts = record_posts(page)
    form = page.locator("#ip1")
    first_name, email = form.get_by_label("First name"), form.get_by_label("Email")
    button = form.get_by_role("button", name="Send Me The Packet")
    first_name.fill("Ann")
    email.fill("ann@example")  # the browser accepts it; leadsync does not
    let_fill_time_pass(started)
    button.click()

    error = form.locator("[data-leadsync-error-for=email]")
    expect(error).to_have_text("Enter a valid email address.")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_have_attribute("aria-describedby", re.compile(rf"\b{error.get_attribute('id')}\b"))
    expect(email).to_have_accessible_description("Enter a valid email address.")
    expect(email).to_be_focused()
    expect(first_name).not_to_have_attribute("aria-invalid", "true")
    form.screenshot(path=artifacts / "js-inline-field-error.png")
    assert len(posts) == 1  # the server's answer, shown inline

    first_name.fill("")
    button.click()
    expect(form.locator("[data-leadsync-error-for=first_name]")).to_have_text("This field is required.")
    expect(first_name).to_be_focused()
    assert len(posts) == 1  # caught in the browser, in the server's words, without a request

    first_name.fill("Ann")
    email.fill("ann.lee@example.org")
    expect(email).not_to_have_attribute("aria-invalid", "true")  # editing a field clears its error
    button.click()
    expect(form.locator("[data-leadsync-status]")).to_have_text(PACKET_DONE)
    assert len(live.submissions("ann.lee@example.org")) == 1
    assert live.submissions("ann@example") == []


def test_double_click_and_double_submit_give_one_submission(page: Page, live: Leadsync, artifacts: Path) -> None:
    started = open_page(page, "/")
    posts = record_posts(page)
    form = page.locator("#ip2")
    form.get_by_label("First name").fill("Dan")
    form.get_by_label("Email").fill("dan@example.org")
    other = page.locator("#ip6")
    other.get_by_label("First name").fill("Eve")
    other.get_by_label("Email").fill("eve@example.org")
    let_fill_time_pass(started)

    form.get_by_role("button", name="Send Me The Packet").dblclick()
    # Two submits in one go (Enter pressed twice, a script): the second finds the first still sending.
    other.evaluate("form => { form.requestSubmit(); form.requestSubmit(); }")

    expect(form.locator("[data-leadsync-status]")).to_have_text(PACKET_DONE)
    expect(other.locator("[data-leadsync-status]")).to_have_text(PACKET_DONE)
    form.screenshot(path=artifacts / "js-double-click.png")
    page.wait_for_timeout(500)  # a second request would have left by now
    assert len(posts) == 2, [post.url for post in posts]
    for email in ("dan@example.org", "eve@example.org"):
        assert len(live.submissions(email)) == 1
        wait_for(lambda email=email: live.mails_to(email), timeout=20, what=f"the packet email to {email}")
    wait_for(lambda: all(row.status == "processed" for row in live.submissions("dan@example.org")), what="processed")
    assert len(live.mails_to("dan@example.org")) == 1


def test_newsletter_without_javascript_lands_on_the_thank_you_page(
    page_without_js: Page, live: Leadsync, artifacts: Path
) -> None:
    page = page_without_js
    answers: list[tuple[str, int]] = []
    page.on("response", lambda response: answers.append((response.url, response.status)))
    page.goto("/")
    form = page.locator("#newsletter")
    form.get_by_label("First name").fill("Olga")
    form.get_by_label("Email").fill("olga@example.org")
    with page.expect_navigation(url=re.compile(r"/thank-you\?form=newsletter(&back=[^&]+)?$")):
        form.get_by_role("button", name="Subscribe!").click()

    assert (f"{live.url}/forms/newsletter", 303) in answers
    expect(page.get_by_role("heading", level=1)).to_have_text(NEWSLETTER_DONE)
    page.screenshot(path=artifacts / "nojs-newsletter-thank-you.png")
    page.get_by_role("link", name="Back to the article").click()  # a plain link: no script, so the CSP allows it
    expect(page.locator("#newsletter")).to_be_visible()
    [row] = live.submissions("olga@example.org")
    assert row.status != "spam" and row.idempotency_key is None and "ts_token" not in row.raw
    wait_for(lambda: live.hubspot.contact_by_email("olga@example.org"), what="the HubSpot record")


def test_info_packet_without_javascript_lands_on_the_thank_you_page(
    page_without_js: Page, live: Leadsync, artifacts: Path
) -> None:
    page = page_without_js
    page.goto("/")
    form = page.locator("#ip4")
    form.get_by_label("First name").fill("Pat")
    form.get_by_label("Email").fill("pat@example.org")
    form.get_by_label("What are you interested in?").fill("hips")
    with page.expect_navigation(url=re.compile(r"/thank-you\?form=info-packet(&back=[^&]+)?$")):
        form.get_by_role("button", name="Send Me The Packet").click()

    expect(page.get_by_role("heading", level=1)).to_have_text(PACKET_DONE)
    page.screenshot(path=artifacts / "nojs-info-packet-thank-you.png")
    [row] = live.submissions("pat@example.org")
    assert row.fields["interest"] == "hips"
    [mail] = wait_for(lambda: live.mails_to("pat@example.org"), timeout=20, what="the packet email")
    assert mail["To"] == "pat@example.org"
    record = wait_for(lambda: live.hubspot.contact_by_email("pat@example.org"), what="the HubSpot record")
    assert record["properties"]["lifecyclestage"] == "lead"


def test_too_fast_fill_and_honeypot_are_stored_as_spam_and_go_nowhere(
    page: Page, live: Leadsync, artifacts: Path
) -> None:
    started = open_page(page, "/")
    fast = page.locator("#ip5")
    fast.get_by_label("First name").fill("Quick")
    fast.get_by_label("Email").fill("quick@example.org")
    fast.get_by_role("button").click()  # well under FORM_MIN_FILL_SECONDS after the page rendered
    expect(fast.locator("[data-leadsync-status]")).to_have_text(PACKET_DONE)  # the same answer as for people

    trap = page.locator("#newsletter")
    trap.get_by_label("Email").fill("trap@example.org")
    trap.locator("input[name=website]").evaluate("input => { input.value = 'https://spam.example' }")
    let_fill_time_pass(started)
    trap.get_by_role("button").click()
    expect(trap.locator("[data-leadsync-status]")).to_have_text(NEWSLETTER_DONE)
    fast.screenshot(path=artifacts / "js-too-fast-same-answer.png")

    time.sleep(1.5)  # a few CRM flushes and worker polls
    for email in ("quick@example.org", "trap@example.org"):
        [row] = live.submissions(email)
        assert row.status == "spam", email
        assert live.mails_to(email) == []
        assert live.hubspot.contact_by_email(email) is None
        assert live.contact(email) is None


def test_snippet_embedded_on_another_site_posts_cross_origin(page: Page, live: Leadsync, artifacts: Path) -> None:
    snippet = httpx.get(f"{live.url}/static/v1/snippet.html").text.replace("https://leads.clinic.example", live.url)
    (live.site.root / "article.html").write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>An article</title></head>"
        f"<body><h1>Exosomes and Their Critical Role in Stem Cell Therapy</h1>{snippet}</body></html>"
    )
    page.context.add_cookies([{"name": "hubspotutk", "value": "0a1b2c3d", "url": live.site.url}])
    started = open_page(page, f"{live.site.url}/article.html?utm_source=facebook&utm_campaign=embed")
    form = page.locator("form[action$='/forms/info-packet']")
    form.get_by_label("First name").fill("Rae")
    form.get_by_label("Email").fill("rae@example.org")
    let_fill_time_pass(started)
    form.get_by_role("button", name="Send Me The Packet").click()

    expect(form.locator("[data-leadsync-status]")).to_have_text(PACKET_DONE)
    page.screenshot(path=artifacts / "js-embedded-other-site.png")
    [row] = live.submissions("rae@example.org")
    assert row.status != "spam"  # the token fetched cross-origin verified
    assert row.page_url == f"{live.site.url}/article.html?utm_source=facebook&utm_campaign=embed"
    assert row.utm == {"utm_source": "facebook", "utm_campaign": "embed"} and row.fields["hutk"] == "0a1b2c3d"
    wait_for(lambda: live.mails_to("rae@example.org"), timeout=20, what="the packet email")
