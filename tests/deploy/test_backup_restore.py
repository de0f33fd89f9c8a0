"""The backup and restore drill (README "Backup and restore"): the rehearsal's database holds contacts and the
consent evidence (each submission's consent, page, address and time; newsletter confirmations). `pg_dump -Fc`
of it, `pg_restore` into a fresh database, and every row of every table is back, byte for byte.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from tests.deploy.rehearsal import Rehearsal
from tests.support.services import find_binary
from tests.support.stack import wait_for


def table_rows(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every row of every table in the public schema, as sorted text (order-free, type-exact)."""
    tables = [name for (name,) in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )]  # fmt: skip
    return {
        table: sorted(
            row for (row,) in conn.execute(sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier(table)))
        )
        for table in tables
    }


def test_pg_dump_and_pg_restore_bring_back_every_contact_and_its_consent_evidence(
    rehearsal: Rehearsal, tmp_path: Path
) -> None:
    people = [f"drill{index}@example.org" for index in range(10)]
    for index, email in enumerate(people):
        with rehearsal.client(local_address=f"127.0.1.{index + 1}") as client:
            data = {"email": email, "first_name": "Drill", "newsletter_opt_in": True,
                    "page_url": f"https://www.clinic.test/articles/{index}"}  # fmt: skip
            assert client.post("/forms/info-packet", json=data).status_code == 202

    source_dsn = rehearsal.postgres.dsn("leadsync")

    def processed() -> bool:
        with psycopg.connect(source_dsn) as conn:
            query = "SELECT count(*) FROM submissions WHERE email = ANY(%s) AND status = 'processed'"
            return conn.execute(query, (people,)).fetchone() == (len(people),)

    wait_for(processed, timeout=30, what="the drill's submissions processed")

    dump = tmp_path / "leadsync.dump"
    pg_dump, pg_restore = find_binary("pg_dump"), find_binary("pg_restore")
    assert pg_dump and pg_restore, "pg_dump/pg_restore come with PostgreSQL: scripts/install-test-services.sh"
    # The workers keep writing during the backup, as in production: compare against the snapshot pg_dump took.
    with psycopg.connect(source_dsn) as source:
        source.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        (snapshot,) = source.execute("SELECT pg_export_snapshot()").fetchone()
        subprocess.run([pg_dump, "-Fc", f"--snapshot={snapshot}", "-d", source_dsn, "-f", str(dump)],
                       check=True, capture_output=True)  # fmt: skip
        before = table_rows(source)

    rehearsal.postgres.create_database("leadsync_restored")
    restored_dsn = rehearsal.postgres.dsn("leadsync_restored")
    subprocess.run([pg_restore, "--exit-on-error", "-d", restored_dsn, str(dump)], check=True, capture_output=True)
    with psycopg.connect(restored_dsn) as restored:
        after = table_rows(restored)
        consent = restored.execute(
            "SELECT count(*) FROM submissions s JOIN contacts c ON c.id = s.contact_id "
            "WHERE c.email = ANY(%s) AND s.ip IS NOT NULL AND s.page_url IS NOT NULL AND s.received_at IS NOT NULL",
            (people,),
        ).fetchone()

    assert {"contacts", "submissions", "email_sends", "alembic_version"} <= set(before)
    assert len(before["contacts"]) >= len(people)
    assert after == before
    assert consent == (len(people),)
