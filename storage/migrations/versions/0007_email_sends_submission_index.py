"""email_sends.submission_id indexed: deleting a submission (retention purge, erasure) checks this foreign key

Without it PostgreSQL scans every email row for each submission deleted: found by `bench/scale.py`, where
deleting 50,000 submissions beside 1,000,000 emails ran for minutes.

Revision ID: 0007_email_sends_submission
Revises: 0006_hubspot_newsletter
Create Date: 2026-11-28 01:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007_email_sends_submission"
down_revision = "0006_hubspot_newsletter"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_email_sends_submission", "email_sends", ["submission_id"])


def downgrade() -> None:
    op.drop_index("ix_email_sends_submission", table_name="email_sends")
