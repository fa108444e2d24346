"""working scales of vectors, typed trait changes of completions, behaviours' subtitles

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# A migration is a snapshot: 0005's triggers, as they were written then.
FTS_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS generations_fts_insert AFTER INSERT ON generations BEGIN "
    "INSERT INTO generations_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS generations_fts_delete AFTER DELETE ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS generations_fts_update AFTER UPDATE OF text ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO generations_fts(rowid, text) VALUES (new.id, new.text); END",
)


def upgrade() -> None:
    # Plain ADD COLUMNs: no table is rebuilt, so the full-text index's triggers stay as they are.
    op.add_column("vectors", sa.Column("working_scale", sa.Float(), nullable=True))
    op.add_column("vectors", sa.Column("broken_at", sa.Float(), nullable=True))
    op.add_column("generations", sa.Column("changes", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
    op.add_column("behaviours", sa.Column("subtitle", sa.String(length=300), server_default="", nullable=False))
    op.add_column("behaviours", sa.Column("trait", sa.String(length=100), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("behaviours", schema=None) as batch_op:
        batch_op.drop_column("trait")
        batch_op.drop_column("subtitle")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("changes")
    # A rebuilt generations table has lost its full-text triggers: made again as 0005 does.
    for statement in FTS_TRIGGERS:
        op.execute(statement)
    op.execute("INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')")
    with op.batch_alter_table("vectors", schema=None) as batch_op:
        batch_op.drop_column("broken_at")
        batch_op.drop_column("working_scale")
