"""crm_activities: notes, tasks and Forms API submissions written to HubSpot, one row per submission and kind

The row is the idempotency key of a HubSpot write that has none of its own (a note or a task created twice
is two notes): the flush stores the HubSpot id once the write is known to have landed, and looks for an
earlier attempt in HubSpot before writing again. contacts.owner_id holds the round-robin owner;
email_sends.reason why staff resent a packet (`leadsync packet resend`).

Revision ID: 0011_crm_activities
Revises: 0010_spam_counts
Create Date: 2026-12-01 07:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_crm_activities"
down_revision = "0010_spam_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_activities",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.Integer(), sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hubspot_id", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("kind", "submission_id", name="uq_crm_activities_kind_submission"),
    )
    op.create_index("ix_crm_activities_due", "crm_activities", ["kind", "status", "id"])
    op.create_index("ix_crm_activities_contact", "crm_activities", ["contact_id"])
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(length=32), nullable=True))
    with op.batch_alter_table("email_sends") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("email_sends") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("owner_id")
    op.drop_index("ix_crm_activities_contact", table_name="crm_activities")
    op.drop_index("ix_crm_activities_due", table_name="crm_activities")
    op.drop_table("crm_activities")
