"""The pages visitors see, judged by axe-core (WCAG 2.1 A and AA rules) in a real Chromium.

axe-core is the npm package pinned in `tests/browser/package.json` (`npm ci` in `scripts/test` installs it with
the lock file's integrity hash); Playwright injects it into each page. A violation of impact `serious` or
`critical` fails the test, with axe's own description of each offending element.

Example (what a failure prints):
    color-contrast (serious): Elements must meet minimum color contrast ratio thresholds
      button[type=submit]: Element has insufficient color contrast of 3.2 ...
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.conftest import Leadsync

AXE = Path(__file__).with_name("node_modules") / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
FAILING_IMPACTS = {"serious", "critical"}

pytestmark = pytest.mark.integration


@pytest.fixture
def page(browser: Browser, live: Leadsync) -> Iterator[Page]:
    """A JavaScript page that may inject axe: our CSP (rightly) refuses inline scripts, so bypass it here only."""
    context = browser.new_context(base_url=live.url, bypass_csp=True, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2.1 AA violations on the page as it is now."""
    if not AXE.exists():
        pytest.fail(f"axe-core missing at {AXE}: run `npm ci --prefix tests/browser` (scripts/test does)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        WCAG_21_AA,
    )
    return [v for v in result["violations"] if v["impact"] in FAILING_IMPACTS]


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"  {' '.join(node['target'])}: {node['failureSummary'].splitlines()[-1].strip()}")
    return "\n".join(lines)


def test_demo_page_forms_have_no_serious_accessibility_violation(page: Page) -> None:
    page.goto("/")
    page.wait_for_selector("form[data-leadsync] button")
    violations = axe_violations(page)
    assert not violations, describe(violations)


def test_demo_page_after_field_errors_has_no_serious_accessibility_violation(page: Page) -> None:
    """The snippet's error texts and status line (its default styles) are judged too, not only the blank form."""
    page.goto("/")
    form = page.locator("form[action='/forms/info-packet']").first
    form.locator("input[name=first_name]").fill("Ann")
    form.locator("input[name=email]").fill("ann@example")  # the server's 422 names the field
    page.evaluate("document.querySelectorAll('form').forEach((f) => f.noValidate = true)")
    form.locator("button[type=submit]").click()
    page.wait_for_selector(".leadsync-error:not(:empty)")
    violations = axe_violations(page)
    assert not violations, describe(violations)


def test_thank_you_page_has_no_serious_accessibility_violation_and_a_main_landmark(page: Page) -> None:
    page.goto("/thank-you?form=info-packet")
    assert page.locator("main").count() == 1
    violations = axe_violations(page)
    assert not violations, describe(violations)


def test_error_page_has_no_serious_accessibility_violation(page: Page, live: Leadsync) -> None:
    """The 422 page a browser without JavaScript lands on, as served (a urlencoded post asking for HTML)."""
    response = page.request.post("/forms/newsletter", form={"email": "not-an-address"}, headers={"Accept": "text/html"})
    assert response.status == 422
    page.goto("/thank-you")  # our origin, so the page's relative links and styles resolve the same way
    page.set_content(response.text())
    assert page.locator("h1").inner_text() == "Please check the form"
    assert page.locator("main").count() == 1
    violations = axe_violations(page)
    assert not violations, describe(violations)
