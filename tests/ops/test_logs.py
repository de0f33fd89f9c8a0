"""Logging: JSON lines with the bound context, readable console lines, and no email address or phone number."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog
from starlette.testclient import TestClient

from leadsync import logs
from leadsync.config import Settings
from leadsync.forms.app import create_app


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail ann@example.org now", "mail [email] now"),
        ("GET /thank-you?email=ann%40example.org", "GET /thank-you?email=[email]"),
        ("call +1 (555) 010-2030 or 0151 2345678", "call [phone] or [phone]"),
        ("555-010-4477, (555) 010-2030, +4915123456789", "[phone], [phone], [phone]"),
        # Not phones: times, addresses, ids, durations.
        ("at 2026-05-01T12:00:00.123+00:00", "at 2026-05-01T12:00:00.123+00:00"),
        ("2026-05-01 12:00:00,123 from 192.168.100.200:8000", "2026-05-01 12:00:00,123 from 192.168.100.200:8000"),
        ("task d9b2c1e4-1234-5678-9abc-123456789012 succeeded in 0.05s", None),
        ("submission 3f2a9b1234567890abcdef1234567890, contact 12345678901", None),
    ],
)
def test_redact(text: str, expected: str | None) -> None:
    assert logs.redact(text) == (text if expected is None else expected)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The leadsync handler, writing to a buffer instead of stderr."""
    logs.configure("json", "INFO")
    root = logging.getLogger()
    [handler] = [h for h in root.handlers if getattr(h, "_leadsync_handler", False)]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    yield buffer
    root.removeHandler(handler)
    logs.clear()


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_stdlib_and_structlog_lines_are_json_with_the_bound_submission_id(captured: io.StringIO) -> None:
    logs.bind(submission_id="abc123")
    logging.getLogger("leadsync.worker.tasks").warning("email %s failed: %s", "e1", "550 <ann@example.org> unknown")
    structlog.get_logger("leadsync.test").info("stored", phone="+1 555 010 2030", form="newsletter")
    logs.clear()
    logging.getLogger("celery.app.trace").info("Task x[1] succeeded in 0.1s: {'contact_id': 3}")
    first, second, third = lines(captured)
    assert first["event"] == "email e1 failed: 550 <[email]> unknown"
    assert first["submission_id"] == "abc123" and first["level"] == "warning"
    assert first["logger"] == "leadsync.worker.tasks" and first["timestamp"].endswith("Z")
    assert second["phone"] == "[phone]" and second["submission_id"] == "abc123"
    assert "submission_id" not in third


def test_tracebacks_are_redacted_too(captured: io.StringIO) -> None:
    try:
        raise ValueError("duplicate key (email)=(ann@example.org)")
    except ValueError:
        logging.getLogger("leadsync").exception("store failed")
    [line] = lines(captured)
    assert "ValueError" in line["exception"] and "ann@example.org" not in json.dumps(line)


def test_a_foreign_handler_gets_redacted_records_through_the_filter() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(logs.RedactingFilter())
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("rejected %s (%s)", "zoe@example.org", "+44 20 7946 0958")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert buffer.getvalue() == "rejected [email] ([phone])\n"


def test_outgoing_headers_carry_the_submission_id() -> None:
    logs.bind(submission_id="s1")
    headers: dict[str, object] = {}
    logs.outgoing_headers(headers)
    logs.clear()
    assert headers == {"submission_id": "s1"}


def test_console_format_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.formatter("console"))
    logger = logging.getLogger("leadsync.console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.info("packet for %s queued", "ann@example.org")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = buffer.getvalue()
    assert "packet for [email] queued" in text and not text.startswith("{")


def test_each_request_s_lines_carry_its_request_id_and_the_writer_s_lines_none(
    captured: io.StringIO, settings: Settings
) -> None:
    """README "Logs": requests carry `request_id`, X-Request-ID if the proxy sent one (forms/edge.py)."""
    refused = {"email": "not an address", "first_name": "Ann"}
    with TestClient(create_app(settings)) as client:
        proxied = client.post("/forms/info-packet", json=refused, headers={"X-Request-ID": "nginx-7f3a"})
        answers = [proxied, *(client.post("/forms/info-packet", json=refused) for _ in range(2))]
        # Not printable (NEL): never written as sent; the request gets an id of its own.
        answers.append(client.post("/forms/info-packet", json=refused, headers={"X-Request-ID": b"id\x85"}))
        answers.append(client.post("/forms/newsletter", json={"email": "ann@example.org"}))
    assert [answer.status_code for answer in answers] == [422, 422, 422, 422, 202]
    refusals = [line for line in lines(captured) if line["event"].startswith("post to info-packet refused")]
    stored = [line for line in lines(captured) if line["event"].startswith("stored 1 submission")]
    assert [line["request_id"] for line in refusals[:1]] == ["nginx-7f3a"]
    made = [line["request_id"] for line in refusals[1:]]
    assert len(made) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made) and len(set(made)) == 3
    assert stored and all("request_id" not in line for line in stored)  # the writer serves a batch, not a request
