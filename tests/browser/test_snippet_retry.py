"""The snippet under load shedding: a 503 with Retry-After is retried once, after the wait, as the same submission.

The web's own shedding (a full group-commit queue answers 503 + Retry-After, nothing stored) is proven in
tests/forms/test_overload.py; here Chromium's network layer answers the snippet's first post(s) with that exact
503 (body and headers as forms/app.py sends them), so the browser side is tested against a real leadsync
for everything after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from leadsync.forms.app import OVERLOADED_MESSAGE
from tests.browser.conftest import Leadsync
from tests.browser.test_forms_in_browser import PACKET_DONE, let_fill_time_pass, open_page, record_posts

pytestmark = pytest.mark.integration


def shed(page: Page, times: int) -> list[float]:
    """Answer the first `times` form posts 503 + Retry-After: 1; the rest reach leadsync. Returns when each was shed."""
    when: list[float] = []

    def handle(route: Route) -> None:
        if route.request.method == "POST" and len(when) < times:
            when.append(time.monotonic())
            route.fulfill(
                status=503,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body=json.dumps({"errors": {"service": OVERLOADED_MESSAGE}}),
            )
        else:
            route.continue_()

    page.route("**/forms/info-packet", handle)
    return when


def fill(page: Page, first_name: str, address: str) -> None:
    form = page.locator("#ip2")
    form.get_by_label("First name").fill(first_name)
    form.get_by_label("Email").fill(address)


def test_a_503_is_retried_once_after_retry_after_and_stored_once(page: Page, live: Leadsync, artifacts: Path) -> None:
    started = open_page(page, "/")
    posts = record_posts(page)
    shed_at = shed(page, times=1)
    fill(page, "Fay", "fay@example.org")
    let_fill_time_pass(started)
    page.locator("#ip2").get_by_role("button", name="Send Me The Packet").click()

    expect(page.locator("#ip2 [data-leadsync-status]")).to_have_text(PACKET_DONE, timeout=10_000)
    retried_at = time.monotonic()
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]  # one submission
    assert retried_at - shed_at[0] >= 1.0  # Retry-After was honoured
    assert len(live.submissions("fay@example.org")) == 1


def test_a_second_503_shows_the_servers_message(page: Page, live: Leadsync, artifacts: Path) -> None:
    started = open_page(page, "/")
    posts = record_posts(page)
    shed(page, times=2)
    fill(page, "Gus", "gus@example.org")
    let_fill_time_pass(started)
    page.locator("#ip2").get_by_role("button", name="Send Me The Packet").click()

    expect(page.locator("#ip2 [data-leadsync-status]")).to_have_text(OVERLOADED_MESSAGE, timeout=10_000)
    page.locator("#ip2").screenshot(path=artifacts / "js-503-twice.png")
    assert len(posts) == 2  # once, then once more: no retry loop
    assert live.submissions("gus@example.org") == []
    expect(page.locator("#ip2").get_by_role("button", name="Send Me The Packet")).to_be_enabled()
