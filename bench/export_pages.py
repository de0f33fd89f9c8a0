"""Time per page of `leadsync contacts export` at 1,000,000 contacts: keyset pages against OFFSET pages.

Starts a throwaway PostgreSQL (tests/support/services.py), migrates it, fills `contacts` with N rows in
SQL (generate_series, seconds), then times pages of 1,000 at the start, middle and end of the table through
the export's own code (`leadsync.sales_view.all_sales_rows`, one page = one keyset query + its packet lookup +
row building), and the same pages fetched with OFFSET for comparison.

    .venv/bin/python -m bench.export_pages                  # 1,000,000 contacts
    .venv/bin/python -m bench.export_pages --contacts 200000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.processes import BENCH_FORM_TOKEN_SECRET

ROOT = Path(__file__).resolve().parents[1]

PAGE = 1000


def _fill(count: int) -> None:
    from sqlalchemy import text

    from leadsync.storage.db import session_scope

    with session_scope() as session:
        session.execute(
            text(
                "INSERT INTO contacts (email, first_name, field_times, lifecycle_stage, newsletter_status, "
                "first_seen_at, last_seen_at, submissions_count, crm_status, crm_version, crm_synced_version, "
                "crm_changed_at, crm_attempts, packet_requested_at, interest) "
                "SELECT 'lead' || g || '@example.org', 'Lead', '{}', 'lead', 'none', now(), now(), 1, 'synced', "
                "1, 1, now(), 0, now(), 'knee pain' FROM generate_series(1, :n) g"
            ),
            {"n": count},
        )
        session.execute(text("ANALYZE contacts"))


def _keyset_page(after: int) -> float:
    """The page of contacts after+1 .. after+PAGE (the export walks down from the newest)."""
    from leadsync.config import get_settings
    from leadsync.sales_view import all_sales_rows
    from leadsync.storage.db import get_sessionmaker

    with get_sessionmaker()() as session:
        started = time.perf_counter()
        rows = all_sales_rows(session, get_settings(), chunk=PAGE, upto=after + PAGE)
        got = 0
        for _ in rows:  # one page: stop before the generator asks for the next
            got += 1
            if got == PAGE:
                break
        elapsed = time.perf_counter() - started
    assert got == PAGE, got
    return elapsed


def _offset_page(offset: int) -> float:
    from sqlalchemy import select

    from leadsync.storage.db import get_sessionmaker
    from leadsync.storage.models import Contact

    with get_sessionmaker()() as session:
        started = time.perf_counter()
        got = len(session.scalars(select(Contact).order_by(Contact.id).offset(offset).limit(PAGE)).all())
        elapsed = time.perf_counter() - started
    assert got == PAGE, got
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    args = parser.parse_args()
    from tests.support.services import PostgresServer

    with PostgresServer() as server:
        workdir = Path(tempfile.mkdtemp(prefix="leadsync-export-"))
        os.environ.update(
            DATABASE_URL=server.url,
            VAR_DIR=str(workdir),
            FORM_TOKEN_SECRET=BENCH_FORM_TOKEN_SECRET,
            LOG_LEVEL="WARNING",
        )
        from leadsync.storage.migrate import upgrade

        upgrade()
        started = time.perf_counter()
        _fill(args.contacts)
        print(f"{args.contacts:,} contacts in PostgreSQL in {time.perf_counter() - started:.1f}s; pages of {PAGE:,}")
        print("| page at | keyset (export code) ms | OFFSET (rows only) ms |")
        print("|---|---:|---:|")
        for where in (0, args.contacts // 2, args.contacts - PAGE):
            keyset = min(_keyset_page(where) for _ in range(3)) * 1000
            offset = min(_offset_page(where) for _ in range(3)) * 1000
            print(f"| contact {where:,} | {keyset:.1f} | {offset:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
