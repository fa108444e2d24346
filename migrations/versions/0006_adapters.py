"""steering adapters: the factors of vectors that are adapters

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("vector_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("radius", sa.Float(), nullable=False),
        sa.Column("factors", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["vector_id"], ["vectors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vector_id"),
    )


def downgrade() -> None:
    op.drop_table("adapters")
