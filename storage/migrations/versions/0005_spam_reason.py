"""submissions.spam_reason: why a post was stored as spam (honeypot, token, rate limits), for operations

Revision ID: 0005_spam_reason
Revises: 0004_newsletter_consent
Create Date: 2026-11-27 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_spam_reason"
down_revision = "0004_newsletter_consent"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spam_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.drop_column("spam_reason")
