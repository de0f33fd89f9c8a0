"""The sales and operator commands: `contacts show`, keyset `contacts export`, `packet resend`, `emails preview`,
and content read from the configured directory (a template changed on disk shows in the next email).

Through the real command (click's runner), the real database and the real mail path (FolderTransport writes
the bytes that would go to the SMTP server).
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.config.settings import CONFIG_DIR
from leadsync.sales_view import all_sales_rows, export_bounds
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import EmailSend
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import FolderTransport
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.worker import test_crm_notes
from tests.worker.helpers import process, submit
from tests.worker.test_crm_notes import flush, packet

crm = test_crm_notes.crm  # the fixture


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_contacts_show_tells_the_whole_story(settings: Settings, hubspot: HubSpotEmulator, crm: HubSpotCrm) -> None:
    first = packet("ann@example.org", settings, interest="knee pain", page_url="https://clinic.example/knee")
    second = packet("ann@example.org", settings, interest="back pain", utm_source="newsletter")
    flush(crm, settings)
    code, out = run("contacts", "show", "Ann@Example.org")
    assert code == 0, out
    record = hubspot.contact_by_email("ann@example.org")["id"]
    notes = {n["id"] for n in hubspot.engagements.notes_for("ann@example.org")}
    assert "Ann <ann@example.org>" in out and f"HubSpot: synced  record {record}" in out
    assert f"[{first}]" in out and f"[{second}]" in out
    assert "interest: knee pain" in out and "page: https://clinic.example/knee" in out and "source=newsletter" in out
    assert out.count("info_packet  pending") == 1  # the second request fell inside the packet window
    assert all(f"note  done     {note_id}" in out for note_id in notes) and len(notes) == 2
    assert run("contacts", "show", "nobody@example.org")[0] == 1


def _add_contacts(count: int, start: int) -> None:
    """Leads as the intake makes them (one transaction for many, as a group commit does)."""
    from leadsync.worker.intake import process_submissions

    ids = [submit("newsletter", email=f"n{start + i}@example.org") for i in range(count)]
    with session_scope() as session:
        process_submissions(session, ids, Settings())


def test_the_keyset_export_is_stable_while_1000_leads_arrive(settings: Settings) -> None:
    _add_contacts(1500, 0)
    with get_sessionmaker()() as session:
        upto, total = export_bounds(session)
        pages = all_sales_rows(session, settings, chunk=100, upto=upto)
        exported: list[str] = []
        arrived = 0
        for index, row in enumerate(pages):
            exported.append(row.email)
            if index % 100 == 50 and arrived < 1000:  # mid-page, ten times: 100 new leads and 100 repeat visits
                _add_contacts(100, 10_000 + arrived)
                process(submit("newsletter", email=f"n{arrived}@example.org", first_name="Again"), settings)
                arrived += 100
    assert arrived == 1000 and total == 1500
    assert sorted(exported) == sorted(f"n{i}@example.org" for i in range(1500))  # each once, none new


def test_contacts_export_writes_every_contact_once(settings: Settings, tmp_path: Path) -> None:
    _add_contacts(250, 0)
    target = tmp_path / "contacts.csv"
    code, out = run("contacts", "export", "--csv", "-o", str(target), "--page-size", "60")
    assert code == 0 and "exported 250 contacts" in out
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert sorted(r["email"] for r in rows) == sorted(f"n{i}@example.org" for i in range(250))


def test_packet_resend_is_recorded_with_its_reason_and_respects_the_daily_cap(settings: Settings) -> None:
    packet("ann@example.org", settings)
    code, out = run("packet", "resend", "ann@example.org", "--reason", "went to spam")
    assert code == 0, out
    with session_scope() as session:
        sends = session.scalars(select(EmailSend).order_by(EmailSend.created_at)).all()
        assert [s.reason for s in sends] == [None, "resend: went to spam"]
    code, out = run("contacts", "show", "ann@example.org")
    assert "resend: went to spam" in out
    assert settings.email_daily_cap_per_recipient == 3
    assert run("packet", "resend", "ann@example.org", "--reason", "again")[0] == 0  # the third email today
    code, out = run("packet", "resend", "ann@example.org", "--reason", "once more")
    assert code == 1 and "daily cap reached" in out
    assert run("packet", "resend", "bo@example.org", "--reason", "x")[0] == 1  # nobody by that address
    with session_scope() as session:
        assert len(session.scalars(select(EmailSend)).all()) == 3


@pytest.fixture
def content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> tuple[Settings, Path]:
    """A content directory like the one compose mounts: copies of the shipped templates and emails.toml."""
    folder = tmp_path / "content"
    shutil.copytree(CONFIG_DIR / "templates", folder / "templates")
    shutil.copy(CONFIG_DIR / "emails.toml", folder / "emails.toml")
    env = {
        **base_env,
        "EMAIL_TEMPLATES_DIR": str(folder / "templates"),
        "EMAILS_CONFIG_PATH": str(folder / "emails.toml"),
    }
    from leadsync.storage.migrate import upgrade

    configured = apply_settings(monkeypatch, env)
    upgrade()
    return configured, folder


def _sent_text(settings: Settings, email_address: str) -> str:
    with session_scope() as session:
        send = session.scalars(select(EmailSend).order_by(EmailSend.created_at.desc())).first()
        assert send is not None
        send_id = send.id
    outbox = settings.mail_outbox_dir
    deliver(get_sessionmaker(), send_id, FolderTransport(outbox), settings)
    newest = max(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    message = email.message_from_bytes(newest.read_bytes(), policy=email.policy.default)
    assert message["To"] == email_address
    return message.get_body(("plain",)).get_content()


def test_a_template_changed_on_disk_shows_in_the_next_email(content: tuple[Settings, Path]) -> None:
    settings, folder = content
    packet("ann@example.org", settings)
    assert "Thank you for shopping with Wicked Witch Enterprises" not in _sent_text(settings, "ann@example.org")
    text = folder / "templates" / "email" / "info_packet.txt"
    text.write_text(text.read_text() + "\nThank you for shopping with Wicked Witch Enterprises\n")
    packet("bo@example.org", settings)
    assert "Thank you for shopping with Wicked Witch Enterprises" in _sent_text(settings, "bo@example.org")


def test_emails_preview_writes_html_and_text_from_the_content_directory(
    content: tuple[Settings, Path], tmp_path: Path
) -> None:
    _settings, folder = content
    html = folder / "templates" / "email" / "info_packet.html"
    html.write_text(html.read_text().replace("</body>", "<p>Preview marker 7731</p></body>"))
    code, out = run("emails", "preview", "info_packet", "-o", str(tmp_path / "preview"))
    assert code == 0, out
    assert "Preview marker 7731" in (tmp_path / "preview" / "info_packet.html").read_text()
    assert "Ann" in (tmp_path / "preview" / "info_packet.txt").read_text()
    assert (tmp_path / "preview" / "info_packet.eml").read_bytes().startswith(b"Subject:")
    code, out = run("emails", "preview", "nope", "-o", str(tmp_path))
    assert code == 2 and "info_packet" in out
