"""chat state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 11:36:21.316613
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_name", sa.String(length=500), server_default="", nullable=False))
        batch_op.add_column(sa.Column("steering", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
        batch_op.add_column(sa.Column("settings", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("turn", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("n_tokens", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("finish_reason", sa.String(length=20), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("finish_reason")
        batch_op.drop_column("n_tokens")
        batch_op.drop_column("turn")

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("settings")
        batch_op.drop_column("steering")
        batch_op.drop_column("model_name")
