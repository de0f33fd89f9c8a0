"""The contacts as sales see them: `leadsync contacts list` and `leadsync contacts export --csv`.

Sales work leads in HubSpot; this view answers, from leadsync's side, who asked for what and when,
whether the packet went out, and whether (and where) the person is in HubSpot. The free-text message
is left out on purpose: it may hold health details. CSV cells that a spreadsheet would run as a formula
are prefixed with `'`, because the values come from a public web form: a cell whose first character, after
any whitespace and invisible format characters (zero-width space, BOM, word joiner: Unicode category Cf),
is `=`, `+`, `-`, `@`, a tab or a carriage return (the OWASP CSV-injection rule; spreadsheets skip those
invisible characters before they look for a formula).

Example:
    >>> with session_scope() as session:
    ...     rows = sales_rows(session, settings, limit=20)
    >>> print(render_table(rows))
    Name        Email            Requested             When              Packet  Newsletter  Sync    HubSpot
    Ann Lee     ann@example.org  packet: knee pain     2026-12-01 09:12  sent    subscribed  synced  https://app.hubspot.com/contacts/123/record/0-1/151
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.kinds import EmailKind
from leadsync.storage.models import Contact, EmailSend

HUBSPOT_APP_URL = "https://app.hubspot.com"
FORMULA_STARTS = frozenset("=+-@\t\r")


@dataclass(frozen=True)
class SalesRow:
    name: str
    email: str
    phone: str
    requested: str  # "packet: <interest>" or "newsletter"
    requested_at: datetime | None
    packet: str  # sent | queued | failed | none
    packet_sent_at: datetime | None
    newsletter: str
    sync: str  # synced | pending | rejected
    sync_error: str
    hubspot_id: str
    hubspot_url: str


def record_url(settings: Settings, hubspot_id: str | None) -> str:
    """The HubSpot record page; needs HUBSPOT_PORTAL_ID (empty without it)."""
    if not hubspot_id or not settings.hubspot_portal_id:
        return ""
    return f"{HUBSPOT_APP_URL}/contacts/{settings.hubspot_portal_id}/record/0-1/{hubspot_id}"


def _packets(session: Session, contact_ids: list[int]) -> dict[int, tuple[str, datetime | None]]:
    """The latest packet email per contact: its status and when it was sent."""
    latest: dict[int, tuple[datetime, str, datetime | None]] = {}
    if not contact_ids:
        return {}
    sends = session.execute(
        select(EmailSend.contact_id, EmailSend.created_at, EmailSend.status, EmailSend.sent_at).where(
            EmailSend.kind == EmailKind.INFO_PACKET, EmailSend.contact_id.in_(contact_ids)
        )
    )
    for contact_id, created_at, status, sent_at in sends:
        if contact_id not in latest or created_at > latest[contact_id][0]:
            latest[contact_id] = (created_at, status, sent_at)
    return {cid: (_packet_word(status), sent_at) for cid, (_, status, sent_at) in latest.items()}


def _packet_word(status: str) -> str:
    return {"sent": "sent", "failed": "failed"}.get(status, "queued")


def _rows(session: Session, settings: Settings, contacts: list[Contact]) -> list[SalesRow]:
    packets = _packets(session, [c.id for c in contacts])
    rows = []
    for c in contacts:
        packet, sent_at = packets.get(c.id, ("none", None))
        if c.packet_requested_at is not None:
            requested, requested_at = f"packet: {c.interest or '-'}", c.packet_requested_at
        else:
            requested, requested_at = "newsletter", c.first_seen_at
        rows.append(
            SalesRow(
                name=" ".join(part for part in (c.first_name, c.last_name) if part),
                email=c.email,
                phone=c.phone or "",
                requested=requested,
                requested_at=requested_at,
                packet=packet,
                packet_sent_at=sent_at,
                newsletter=c.newsletter_status,
                sync=c.crm_status,
                sync_error=(c.crm_error or "") if c.crm_status != "synced" else "",
                hubspot_id=c.hubspot_id or "",
                hubspot_url=record_url(settings, c.hubspot_id),
            )
        )
    return rows


def _query(sync: str | None) -> Select[tuple[Contact]]:
    query = select(Contact).order_by(Contact.last_seen_at.desc(), Contact.id.desc())
    return query.where(Contact.crm_status == sync) if sync else query


def sales_rows(session: Session, settings: Settings, limit: int = 50, sync: str | None = None) -> list[SalesRow]:
    """The most recently active contacts, newest first; `sync` filters on pending/synced/rejected."""
    return _rows(session, settings, list(session.scalars(_query(sync).limit(limit))))


def export_bounds(session: Session, sync: str | None = None) -> tuple[int, int]:
    """(highest contact id, how many contacts) when an export starts: it covers exactly those contacts."""
    query = select(func.max(Contact.id), func.count())
    if sync:
        query = query.where(Contact.crm_status == sync)
    top, count = session.execute(query).one()
    return int(top or 0), int(count or 0)


def all_sales_rows(
    session: Session,
    settings: Settings,
    sync: str | None = None,
    chunk: int = 500,
    upto: int | None = None,
    start_before: int | None = None,
) -> Iterator[SalesRow]:
    """Every contact up to id `upto` (default: the highest when called), newest first, a page at a time, by key.

    Pages follow the primary key (`WHERE id < last ORDER BY id DESC LIMIT n`), not OFFSET: each page costs one
    index range scan wherever it is (OFFSET re-reads every row before it), and leads arriving or changing
    during the export neither shift a page nor repeat or skip anyone. Each contact that existed when the
    export started appears exactly once; newer ones wait for the next export.
    """
    if upto is None:
        upto = export_bounds(session, sync)[0]
    last = min(upto + 1, start_before) if start_before is not None else upto + 1
    while True:
        query = select(Contact).where(Contact.id < last).order_by(Contact.id.desc()).limit(chunk)
        if sync:
            query = query.where(Contact.crm_status == sync)
        contacts = list(session.scalars(query))
        if not contacts:
            return
        rows = _rows(session, settings, contacts)
        last = contacts[-1].id
        # One short transaction a page: on SQLite (BEGIN IMMEDIATE) a long one would hold the intake off for the
        # whole export, and a million contacts must not pile up in the session.
        session.rollback()
        session.expunge_all()
        yield from rows


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


TABLE = (  # header, width (0: as wide as needed), value
    ("Name", 22, lambda r: r.name or "-"),
    ("Email", 34, lambda r: r.email),
    ("Requested", 26, lambda r: r.requested),
    ("When (UTC)", 16, lambda r: _when(r.requested_at)),
    ("Packet", 6, lambda r: r.packet),
    ("Newsletter", 12, lambda r: r.newsletter),
    ("Sync", 40, lambda r: f"{r.sync}: {r.sync_error}" if r.sync_error else r.sync),
    ("HubSpot", 0, lambda r: r.hubspot_url or (f"record {r.hubspot_id}" if r.hubspot_id else "-")),
)


def render_table(rows: Iterable[SalesRow]) -> str:
    """A plain-text table, one contact a line; long values are cut with an ellipsis."""
    cells = [[_cut(value(row), width) if width else value(row) for _, width, value in TABLE] for row in rows]
    if not cells:
        return "no contacts"
    headers = [header for header, _, _ in TABLE]
    widths = [max(len(headers[i]), *(len(line[i]) for line in cells)) for i in range(len(headers))]
    lines = [headers, *cells]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines)


CSV_FIELDS = (
    "name",
    "email",
    "phone",
    "requested",
    "requested_at",
    "packet",
    "packet_sent_at",
    "newsletter",
    "sync",
    "sync_error",
    "hubspot_id",
    "hubspot_url",
)


def _first_visible(text: str) -> str:
    """The first character a spreadsheet would read: leading whitespace (but tab and CR, which are
    themselves a trigger) and format characters (category Cf: U+200B..U+200D, U+2060, U+FEFF...) skipped."""
    for char in text:
        if char in FORMULA_STARTS:
            return char
        if char.isspace() or unicodedata.category(char) == "Cf":
            continue
        return char
    return ""


def safe_cell(value: object) -> str:
    """One CSV cell; text a spreadsheet would run as a formula gets a leading `'` (shown, never run)."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    text = "" if value is None else str(value)
    return "'" + text if _first_visible(text) in FORMULA_STARTS else text


def write_csv(rows: Iterable[SalesRow], out: IO[str]) -> int:
    """Write a header and one line per contact; returns how many contacts were written."""
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    count = 0
    for row in rows:
        writer.writerow([safe_cell(getattr(row, name)) for name in CSV_FIELDS])
        count += 1
    return count
