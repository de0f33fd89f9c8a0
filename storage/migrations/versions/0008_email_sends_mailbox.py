"""email_sends.mailbox: the keyed canonical mailbox, so the daily cap counts every spelling of one inbox

`victim+1@…`, `Victim@…` and `v.ictim@gmail.com` are different contacts but one inbox (leadsync/mailbox.py).
An HMAC under FORM_TOKEN_SECRET, not the address: no second copy of it to erase. Rows from before stay NULL
and count for their own contact (worker/intake.py `EmailHistory`).

Revision ID: 0008_email_sends_mailbox
Revises: 0007_email_sends_submission
Create Date: 2026-12-01 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_email_sends_mailbox"
down_revision = "0007_email_sends_submission"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("email_sends") as batch_op:
        batch_op.add_column(sa.Column("mailbox", sa.String(32), nullable=True))
    op.create_index("ix_email_sends_mailbox", "email_sends", ["mailbox", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_email_sends_mailbox", table_name="email_sends")
    with op.batch_alter_table("email_sends") as batch_op:
        batch_op.drop_column("mailbox")
