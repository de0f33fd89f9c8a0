"""The Alembic history builds exactly the schema the models describe, on SQLite and on PostgreSQL, and
upgrades a populated database without losing or changing a row.

Example:
    .venv/bin/pytest tests/storage/test_migrations.py -q
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, insert, select
from sqlalchemy.exc import IntegrityError

from leadsync.config import Settings
from leadsync.storage.db import get_engine
from leadsync.storage.migrate import upgrade
from leadsync.storage.models import Base, Erasure, SpamCount, Submission, Suppression
from tests.conftest import apply_settings


def test_the_migrations_and_the_models_agree(settings: Settings) -> None:
    with get_engine().connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []  # a model change without its migration (or the reverse) shows up here


PREVIOUS = "0008_email_sends_mailbox"  # before the last two revisions, both of which move existing rows
DAY1, DAY2 = datetime(2026, 11, 29, 23, 30, tzinfo=UTC), datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def submission_row(n: int, received_at: datetime, status: str = "pending", reason: str | None = None) -> dict:
    return {
        "id": f"sub{n:029d}",
        "form": "info_packet",
        "email": f"p{n}@example.org",
        "fields": {"first_name": f"P{n}"},
        "raw": {"email": f"p{n}@example.org"},
        "utm": {},
        "consent": {},
        "idempotency_key": f"key-{n}",
        "received_at": received_at,
        "status": status,
        "spam_reason": reason,
    }


def test_upgrading_a_populated_database_keeps_every_row_and_the_new_constraints_hold(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]
) -> None:
    """A live database at the previous schema, with leads in it, upgraded in place (what `leadsync db upgrade`
    does on deploy): every row survives as it was, the data migrations count what they must, and the new
    tables' keys refuse what they must."""
    apply_settings(monkeypatch, base_env)
    upgrade(revision=PREVIOUS)
    engine = get_engine()
    old = MetaData()
    old.reflect(engine)
    rows = [
        submission_row(1, DAY1),
        submission_row(2, DAY2, status="processed"),
        submission_row(3, DAY1, status="spam", reason="honeypot"),
        submission_row(4, DAY1, status="spam", reason=None),  # spam before spam_reason existed: a honeypot
        submission_row(5, DAY2, status="spam", reason="ip_rate"),
    ]
    with engine.begin() as connection:
        connection.execute(insert(old.tables["submissions"]), rows)
        connection.execute(
            insert(old.tables["suppressions"]), [{"email_hash": "a" * 64, "reason": "erasure", "created_at": DAY1}]
        )
    engine.dispose()

    upgrade()  # to head, over the rows

    with get_engine().connect() as connection:
        kept = connection.execute(
            select(
                Submission.id, Submission.email, Submission.status, Submission.spam_reason, Submission.fields
            ).order_by(Submission.id)
        ).all()
        assert [tuple(row) for row in kept] == [
            (r["id"], r["email"], r["status"], r["spam_reason"], r["fields"]) for r in rows
        ]
        assert connection.execute(select(Suppression.email_hash, Suppression.scheme)).all() == [("a" * 64, "sha256")]
        counts = connection.execute(select(SpamCount.day, SpamCount.reason, SpamCount.count).order_by(SpamCount.day))
        assert sorted(tuple(row) for row in counts) == [
            (DAY1.date(), "honeypot", 2),
            (DAY2.date(), "ip_rate", 1),
        ]
    # The new keys hold over the migrated rows: one counter per day, form and reason; one erasure per person;
    # the old unique Idempotency-Key still refuses a second row.
    for table, values in (
        (SpamCount.__table__, {"day": DAY1.date(), "form": "info_packet", "reason": "honeypot", "count": 1}),
        (Submission.__table__, submission_row(6, DAY2) | {"idempotency_key": "key-1"}),
    ):
        with pytest.raises(IntegrityError), get_engine().begin() as connection:
            connection.execute(insert(table), [values])
    erasure = {"email_key": "b" * 64, "email": "x@example.org", "hubspot_ids": {"ids": []}, "version": 1}
    erasure |= {"attempts": 0, "next_attempt_at": DAY2, "created_at": DAY2}
    with get_engine().begin() as connection:
        connection.execute(insert(Erasure.__table__), [erasure])
    with pytest.raises(IntegrityError), get_engine().begin() as connection:
        connection.execute(insert(Erasure.__table__), [erasure])
    get_engine().dispose()
