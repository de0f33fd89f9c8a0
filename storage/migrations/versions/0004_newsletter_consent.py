"""contacts.newsletter_confirmed_at / newsletter_unsubscribed_at; suppressions for erased people

Revision ID: 0004_newsletter_consent
Revises: 0003_dead_letters
Create Date: 2026-11-27 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_newsletter_consent"
down_revision = "0003_dead_letters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("newsletter_confirmed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("newsletter_unsubscribed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "suppressions",
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email_hash"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("newsletter_unsubscribed_at")
        batch_op.drop_column("newsletter_confirmed_at")
