"""spam_counts: spam posts counted per day, form and reason instead of stored whole

A flood of honeypot or over-limit posts used to add a full row each (up to ~24 KB with long fields);
now it bumps one counter, and only a small daily sample is kept as submissions (storage/submissions.py).
Spam rows stored before this revision are counted into the table, so the totals go on from where they were.

Revision ID: 0010_spam_counts
Revises: 0009_keyed_suppressions_erasures
Create Date: 2026-12-01 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_spam_counts"
down_revision = "0009_keyed_suppressions_erasures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spam_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("form", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "form", "reason"),
    )
    # The spam rows already stored, counted once (their rows stay until retention purges them). The UTC day:
    # SQLite keeps the datetime as 'YYYY-MM-DD HH:MM:SS...' text in UTC, PostgreSQL as timestamptz.
    sqlite = op.get_bind().dialect.name == "sqlite"
    day = "substr(received_at, 1, 10)" if sqlite else "CAST((received_at AT TIME ZONE 'UTC') AS DATE)"
    op.execute(
        f"INSERT INTO spam_counts (day, form, reason, count) "
        f"SELECT {day}, form, COALESCE(spam_reason, 'honeypot'), COUNT(*) FROM submissions "
        f"WHERE status = 'spam' GROUP BY {day}, form, COALESCE(spam_reason, 'honeypot')"
    )


def downgrade() -> None:
    op.drop_table("spam_counts")
