"""suppressions.scheme (keyed HMAC from now on; older rows marked 'sha256'); erasures: owed HubSpot deletes

Rows written before this revision hold an unkeyed sha256 of the address. They cannot be re-keyed (the
address is gone, which was the point), so they are marked `sha256` and still checked (worker/privacy.py):
dropping them could let a submission that was in flight at the erasure bring the person back. A new
`leadsync forget` of the same address replaces its legacy row with a keyed one.

Revision ID: 0009_keyed_suppressions_erasures
Revises: 0008_email_sends_mailbox
Create Date: 2026-12-01 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_keyed_suppressions_erasures"
down_revision = "0008_email_sends_mailbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        # Every row that exists now was written by the unkeyed hash; the model writes 'hmac-sha256' from now on.
        batch_op.add_column(sa.Column("scheme", sa.String(length=16), nullable=False, server_default="sha256"))
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.alter_column("scheme", server_default=None)
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("email_key", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("hubspot_ids", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hold_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email_key"),
    )
    op.create_index("ix_erasures_due", "erasures", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_erasures_due", table_name="erasures")
    op.drop_table("erasures")
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_column("scheme")
