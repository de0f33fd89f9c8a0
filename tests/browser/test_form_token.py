"""The render-time token the snippet carries (forms/tokens.py) and the static snippet, without a browser.

Why here: these are the server halves of what the browser tests drive end to end; they pin the edge cases
(bad signature, expiry, garbage) that a browser cannot produce, in milliseconds.
"""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.config.settings import MissingSecret
from leadsync.forms.app import create_app
from leadsync.forms.tokens import check, issue, looks_like_spam

SECRET = b"test secret"


@pytest.mark.parametrize(
    ("age", "verdict"),
    [(0.0, "too_fast"), (1.999, "too_fast"), (2.0, "ok"), (3600.0, "ok"), (86400.0, "ok"), (86401.0, "expired")],
)
def test_a_token_is_ok_between_the_minimum_fill_time_and_the_maximum_age(age: float, verdict: str) -> None:
    token = issue(SECRET, now=1_800_000_000.0)
    assert check(token, SECRET, min_age=2, max_age=86400, now=1_800_000_000.0 + age) == verdict


def test_a_token_from_the_future_is_too_fast() -> None:
    token = issue(SECRET, now=1_800_000_010.0)
    assert check(token, SECRET, min_age=2, max_age=86400, now=1_800_000_000.0) == "too_fast"


def test_a_backdated_or_foreign_token_is_bad() -> None:
    token = issue(SECRET, now=1_800_000_000.0)
    version, stamp, signature = token.split(".")
    backdated = f"{version}.{int(stamp) - 60_000}.{signature}"
    assert check(backdated, SECRET, 2, 86400, now=1_800_000_005.0) == "bad"
    assert check(token, b"another deployment", 2, 86400, now=1_800_000_005.0) == "bad"


@pytest.mark.parametrize("garbage", ["", "v1", "v1..", "v2.1800000000000.x", "v1.abc.x", "v1.-5.x", "v1." + "9" * 40])
def test_garbage_is_bad_not_an_error(garbage: str) -> None:
    assert check(garbage, SECRET, 2, 86400) == "bad"


def test_no_token_is_not_spam_but_a_young_one_is() -> None:
    settings = Settings(form_token_secret="s", form_min_fill_seconds=2)
    assert looks_like_spam(None, settings) is False  # plain HTML forms on other sites carry none
    assert looks_like_spam("", settings) is False
    assert looks_like_spam(issue(b"s"), settings) is True
    assert looks_like_spam(issue(b"s", now=0), settings) is True  # expired
    assert looks_like_spam(issue(b"s", now=time.time() - 10), settings) is False


def test_no_key_is_ever_derived_from_the_database_url() -> None:
    # It was: DATABASE_URL is public in the compose default, so anyone could sign tokens and links (issue 14).
    with pytest.raises(MissingSecret):
        _ = Settings(database_url="postgresql+psycopg://u:p@db/leads", form_token_secret=None).form_token_key
    assert Settings(form_token_secret="x").form_token_key == b"x"


def test_token_endpoint_and_snippet_files_are_served_cross_origin() -> None:
    settings = Settings(allowed_origins=["https://clinic.example"], form_token_secret="s", dev_mode=False)
    client = TestClient(create_app(settings))
    response = client.get("/forms/token", headers={"Origin": "https://clinic.example"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["access-control-allow-origin"] == "https://clinic.example"
    assert check(response.json()["token"], b"s", min_age=0, max_age=60) == "ok"

    script = client.get("/static/v1/leadsync-forms.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "public, max-age=3600"
    assert "data-leadsync" in client.get("/static/v1/snippet.html").text
    assert client.get("/static/v1/leadsync-forms.css").status_code == 200
    assert client.get("/static/v2/leadsync-forms.js").status_code == 404
    assert client.post("/forms/token", json={}).status_code == 404  # not a form name
