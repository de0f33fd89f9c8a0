"""contacts.hubspot_newsletter_status: the newsletter status last pushed to HubSpot's communication preferences

Revision ID: 0006_hubspot_newsletter
Revises: 0005_spam_reason
Create Date: 2026-11-27 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_hubspot_newsletter"
down_revision = "0005_spam_reason"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hubspot_newsletter_status", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("hubspot_newsletter_status")
