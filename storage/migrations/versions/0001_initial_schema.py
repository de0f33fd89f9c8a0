"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 20:51:47.404776
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "contacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=200), nullable=True),
        sa.Column("last_name", sa.String(length=200), nullable=True),
        sa.Column("phone", sa.String(length=64), nullable=True),
        sa.Column("interest", sa.String(length=200), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("hutk", sa.String(length=128), nullable=True),
        sa.Column("page_url", sa.String(length=2048), nullable=True),
        sa.Column("utm_source", sa.String(length=255), nullable=True),
        sa.Column("utm_medium", sa.String(length=255), nullable=True),
        sa.Column("utm_campaign", sa.String(length=255), nullable=True),
        sa.Column("utm_term", sa.String(length=255), nullable=True),
        sa.Column("utm_content", sa.String(length=255), nullable=True),
        sa.Column("field_times", sa.JSON(), nullable=False),
        sa.Column("lifecycle_stage", sa.String(length=32), nullable=False),
        sa.Column("newsletter_status", sa.String(length=16), nullable=False),
        sa.Column("packet_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submissions_count", sa.Integer(), nullable=False),
        sa.Column("crm_status", sa.String(length=16), nullable=False),
        sa.Column("crm_version", sa.Integer(), nullable=False),
        sa.Column("crm_synced_version", sa.Integer(), nullable=False),
        sa.Column("crm_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("crm_claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("crm_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("crm_attempts", sa.Integer(), nullable=False),
        sa.Column("crm_error", sa.Text(), nullable=True),
        sa.Column("hubspot_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.create_index("ix_contacts_crm_pending", ["crm_status", "crm_changed_at"], unique=False)

    op.create_table(
        "service_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "submissions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("form", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("page_url", sa.String(length=2048), nullable=True),
        sa.Column("utm", sa.JSON(), nullable=False),
        sa.Column("consent", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.create_index("ix_submissions_contact", ["contact_id"], unique=False)
        batch_op.create_index("ix_submissions_status_received", ["status", "received_at"], unique=False)

    op.create_table(
        "email_sends",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    with op.batch_alter_table("email_sends", schema=None) as batch_op:
        batch_op.create_index("ix_email_sends_contact_kind", ["contact_id", "kind", "created_at"], unique=False)
        batch_op.create_index("ix_email_sends_status", ["status", "created_at"], unique=False)

    op.create_table(
        "email_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("send_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["send_id"],
            ["email_sends.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("email_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_email_attempts_send_id"), ["send_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("email_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_email_attempts_send_id"))

    op.drop_table("email_attempts")
    with op.batch_alter_table("email_sends", schema=None) as batch_op:
        batch_op.drop_index("ix_email_sends_status")
        batch_op.drop_index("ix_email_sends_contact_kind")

    op.drop_table("email_sends")
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.drop_index("ix_submissions_status_received")
        batch_op.drop_index("ix_submissions_contact")

    op.drop_table("submissions")
    op.drop_table("service_state")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index("ix_contacts_crm_pending")

    op.drop_table("contacts")
