"""contacts.hubspot_stage: the lifecycle stage last written to HubSpot

Why: lifecyclestage is sent only when leadsync's stage moved past what it last wrote, so a later stage
that sales set in HubSpot is never overwritten with `lead`.

Revision ID: 0002_hubspot_stage
Revises: 0001
Create Date: 2026-11-27 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_hubspot_stage"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hubspot_stage", sa.String(length=32), nullable=True))
    # Contacts already synced wrote their stage then: record it, so they are not sent again for nothing.
    op.execute("UPDATE contacts SET hubspot_stage = lifecycle_stage WHERE hubspot_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("hubspot_stage")
