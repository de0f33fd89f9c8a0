"""A real leadsync (web + worker processes, SMTP server, HubSpot emulator) and headless Chromium, per module.

Why module scope: starting the stack and the browser costs seconds and every test uses its own email
addresses, so the browser tests share one of each and stay well under a minute. Chromium is Debian's
(`scripts/install-test-services.sh` installs it); Playwright only drives it, it never downloads a browser.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from leadsync.storage.models import Contact, Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink, free_port
from tests.support.stack import LeadsyncStack, services_env

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
MIN_FILL_SECONDS = 1.5  # short, so the tests are quick; long enough that an instant post is "too fast"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "run `bash scripts/install-test-services.sh` as root (installs Debian's chromium)"


@dataclass
class Site:
    """Another website (its own origin) that embeds the snippet, as the clinic's site will."""

    url: str
    root: Path


@dataclass
class Leadsync:
    """The running stack and the servers it talks to, with the questions the tests ask them."""

    stack: LeadsyncStack
    smtp: SmtpSink
    hubspot: HubSpotEmulator
    engine: Engine
    site: Site

    @property
    def url(self) -> str:
        return self.stack.url

    def submissions(self, email: str) -> list[Submission]:
        with Session(self.engine) as session:
            rows = session.scalars(select(Submission).where(Submission.email == email).order_by(Submission.received_at))
            return list(rows)

    def contact(self, email: str) -> Contact | None:
        with Session(self.engine) as session:
            return session.scalars(select(Contact).where(Contact.email == email)).first()

    def mails_to(self, email: str) -> list[Any]:
        return [message for message in self.smtp.messages if message["To"] == email]


def chromium_path() -> str:
    path = os.environ.get("LEADSYNC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"Chromium not found at {path}: {INSTALL_HINT}")
    return path


def _serve(root: Path, port: int) -> http.server.ThreadingHTTPServer:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]  # quiet test output
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leadsync]:
    """`leadsync web` + `leadsync worker` on SQLite and the filesystem broker, in dev mode (the demo at /)."""
    workdir = tmp_path_factory.mktemp("browser-stack")
    site_root = tmp_path_factory.mktemp("clinic-site")
    site_port = free_port()
    smtp = SmtpSink().start()
    hubspot = HubSpotEmulator(token="test-token").start()
    env = {
        "VAR_DIR": str(workdir / "var"),
        "DATABASE_URL": f"sqlite:///{workdir / 'var' / 'leadsync.db'}",
        "BROKER_URL": "filesystem://",
        **services_env(smtp, hubspot),
        "DEV_MODE": "1",
        "FORM_MIN_FILL_SECONDS": str(MIN_FILL_SECONDS),
        "ALLOWED_ORIGINS": f"http://127.0.0.1:{site_port}",
        "LOG_LEVEL": "INFO",
    }
    (workdir / "var").mkdir()
    stack = LeadsyncStack(env, workdir).start()
    site_server = _serve(site_root, site_port)
    engine = create_engine(env["DATABASE_URL"])
    try:
        yield Leadsync(stack, smtp, hubspot, engine, Site(f"http://127.0.0.1:{site_port}", site_root))
    finally:
        engine.dispose()
        site_server.shutdown()
        stack.stop()
        hubspot.stop()
        smtp.stop()
        print(stack.logs())  # pytest shows it for a failed test


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
    yield launched
    launched.close()


def _context(browser: Browser, live: Leadsync, javascript: bool) -> BrowserContext:
    context = browser.new_context(
        base_url=live.url, java_script_enabled=javascript, viewport={"width": 1200, "height": 900}
    )
    context.set_default_timeout(10_000)
    return context


@pytest.fixture
def page(browser: Browser, live: Leadsync) -> Iterator[Page]:
    """A fresh browser profile with JavaScript on."""
    context = _context(browser, live, javascript=True)
    yield context.new_page()
    context.close()


@pytest.fixture
def page_without_js(browser: Browser, live: Leadsync) -> Iterator[Page]:
    """A fresh browser profile with JavaScript off: the forms are plain HTML forms."""
    context = _context(browser, live, javascript=False)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (`test-artifacts/browser/`, gitignored), for people to look at after a run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
