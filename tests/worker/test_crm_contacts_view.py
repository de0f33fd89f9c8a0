"""The sales view (`leadsync contacts list|export --csv`) and the HubSpot commands, through the real CLI."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import Contact, EmailSend, ServiceState, utcnow
from leadsync.worker.crm import clients
from leadsync.worker.crm.service_state import AUTH_STATE
from leadsync.worker.crm.sync import flush_pending
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import PORTAL_ID, HubSpotEmulator
from tests.worker.helpers import process, submit


@pytest.fixture
def synced(settings: Settings, hubspot: HubSpotEmulator, monkeypatch: pytest.MonkeyPatch, base_env: dict) -> Settings:
    """Three people through intake and one flush: a packet request (sent), a newsletter sign-up, a refusal."""
    configured = apply_settings(
        monkeypatch,
        {
            **base_env,
            "HUBSPOT_ACCESS_TOKEN": hubspot.token,
            "HUBSPOT_BASE_URL": hubspot.url,
            "HUBSPOT_PORTAL_ID": str(PORTAL_ID),
        },
    )
    process(
        submit("info-packet", email="ann@example.org", first_name="Ann", last_name="Lee", interest="knees"), configured
    )
    process(submit("newsletter", email="bob@example.org", first_name='=HYPERLINK("x")'), configured)
    process(submit("info-packet", email="cy@example.org", first_name="Cy"), configured)
    with session_scope() as session:
        ann = select(Contact.id).where(Contact.email == "ann@example.org").scalar_subquery()
        session.execute(update(EmailSend).where(EmailSend.contact_id == ann).values(status="sent", sent_at=utcnow()))
        session.execute(update(Contact).where(Contact.email == "cy@example.org").values(newsletter_status="bogus"))
    crm = clients.crm_client()
    assert crm is not None
    crm.bootstrap(clients.crm_mapping())
    report = flush_pending(get_sessionmaker(), crm, clients.crm_mapping(), configured)
    assert (report.synced, report.rejected) == (2, 1)
    return configured


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_contacts_list_is_a_readable_table(synced: Settings) -> None:
    code, out = run("contacts", "list")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["Name", "Email", "Requested"]
    ann = next(line for line in lines if "ann@example.org" in line)
    with session_scope() as session:
        ann_id = session.scalars(select(Contact.hubspot_id).where(Contact.email == "ann@example.org")).one()
    assert "Ann Lee" in ann and "packet: knees" in ann and " sent " in ann and "synced" in ann
    assert f"https://app.hubspot.com/contacts/{PORTAL_ID}/record/0-1/{ann_id}" in ann
    bob = next(line for line in lines if "bob@example.org" in line)
    with session_scope() as session:
        bob_newsletter = session.scalars(
            select(Contact.newsletter_status).where(Contact.email == "bob@example.org")
        ).one()
    assert "newsletter" in bob and f" {bob_newsletter} " in bob and " none " in bob
    cy = next(line for line in lines if "cy@example.org" in line)
    assert "rejected: INVALID_OPTION" in cy and "queued" in cy
    code, only = run("contacts", "list", "--sync", "rejected")
    assert code == 0 and "cy@example.org" in only and "ann@example.org" not in only


def test_contacts_export_csv_for_a_spreadsheet(synced: Settings, tmp_path) -> None:
    code, out = run("contacts", "export", "--csv")
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["email"] for r in rows] == ["cy@example.org", "bob@example.org", "ann@example.org"]  # newest first
    ann = rows[2]
    assert ann["name"] == "Ann Lee" and ann["packet"] == "sent" and ann["sync"] == "synced"
    assert ann["requested"] == "packet: knees" and ann["requested_at"].endswith("+00:00")
    assert ann["hubspot_url"].endswith(f"/record/0-1/{ann['hubspot_id']}")
    assert rows[1]["name"] == '\'=HYPERLINK("x")'  # never a live formula
    assert rows[0]["sync"] == "rejected" and rows[0]["sync_error"].startswith("INVALID_OPTION")
    assert "message" not in rows[0]
    target = tmp_path / "contacts.csv"
    code, note = run("contacts", "export", "--csv", "--output", str(target))
    assert code == 0 and "exported 3 contacts" in note
    assert target.read_text().splitlines()[0].startswith("name,email,phone")
    code, usage = run("contacts", "export")
    assert code == 2 and "--csv" in usage


def test_status_json_shows_the_hubspot_budget(synced: Settings) -> None:
    _, out = run("status", "--json")
    report = json.loads(out)
    assert report["hubspot"]["daily_limit"] == 250_000
    assert 0 < report["hubspot"]["daily_used"] < 50
    assert report["hubspot"]["last_429_at"] is None and report["hubspot"]["rate_limit"] == 100
    assert any(note.startswith("HubSpot: ") for note in report["notes"])


def test_hubspot_check_lifts_a_stop(synced: Settings, hubspot: HubSpotEmulator) -> None:
    with session_scope() as session:
        session.get_one(ServiceState, AUTH_STATE).value = {
            "ok": False,
            "detail": "HubSpot 401",
            "token": clients.crm_client().fingerprint,
            "retry_at": "2999-01-01T00:00:00+00:00",
        }
    code, out = run("status")
    assert code == 1 and "refuses the token" in out
    code, out = run("hubspot", "check")
    assert code == 0 and "token ok" in out and "left today" in out
    with session_scope() as session:
        assert session.get(ServiceState, AUTH_STATE) is None
    hubspot.set_token("rotated")
    code, out = run("hubspot", "check")
    assert code == 1 and "401" in out


def test_bootstrap_command_reports_what_it_created(synced: Settings) -> None:
    code, out = run("hubspot", "bootstrap")
    assert code == 0 and out.strip() == "nothing to create: all properties exist"
