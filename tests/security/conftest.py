"""Shared helpers for the security tests: posting one form in each of the encodings a client may use."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from starlette.testclient import TestClient

from leadsync.storage.db import session_scope
from leadsync.storage.models import Submission

FORMS = {
    "newsletter": {"email": "ann@example.org", "first_name": "Ann"},
    "info-packet": {"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"},
}
ENCODINGS = ("json", "urlencoded-html", "multipart")


def post(client: TestClient, form: str, data: dict[str, Any], encoding: str, **headers: str) -> httpx.Response:
    """POST `data` as JSON (a script), urlencoded with Accept: text/html (a browser) or multipart."""
    if encoding == "json":
        return client.post(f"/forms/{form}", json=data, headers=headers)
    if encoding == "urlencoded-html":
        headers = {"Accept": "text/html", **headers}
        return client.post(f"/forms/{form}", data=data, headers=headers, follow_redirects=False)
    files = {name: (None, str(value)) for name, value in data.items()}
    return client.post(f"/forms/{form}", files=files, headers=headers)


def assert_success_answer(response: httpx.Response, encoding: str) -> None:
    """The answer a real person gets: 202 JSON, or 303 to the thank-you page."""
    if encoding == "urlencoded-html":
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/thank-you")
    else:
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "accepted"


def rows() -> list[Submission]:
    with session_scope() as session:
        return list(session.scalars(select(Submission).order_by(Submission.received_at)))
