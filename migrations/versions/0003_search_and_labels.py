"""full-text search over generations, and the starting label set

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# name, colour, key, description: a starting point users edit on the labels page.
STARTING_LABELS = [
    ("unchanged", "#9ca3af", 1, "Reads like the unsteered completion."),
    ("rephrase", "#60a5fa", 2, "Same content, different words."),
    ("refusal", "#f97316", 3, "Declines or hedges."),
    ("jailbreak", "#dc2626", 4, "Complies where the unsteered model refuses."),
    ("code", "#16a34a", 5, "Answers with code."),
    ("other language", "#9333ea", 6, "Switches language."),
    ("role-play", "#db2777", 7, "Takes on a persona."),
    ("list/format", "#0891b2", 8, "Changes the shape: lists, headings, tables."),
    ("gibberish", "#78350f", 9, "No longer fluent."),
]


def upgrade() -> None:
    # An external-content FTS5 index: the text stays in generations; triggers keep the index in step.
    op.execute(
        "CREATE VIRTUAL TABLE generations_fts USING fts5(text, content='generations', content_rowid='id')"
    )
    op.execute(
        "CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN "
        "INSERT INTO generations_fts(rowid, text) VALUES (new.id, new.text); END"
    )
    op.execute(
        "CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN "
        "INSERT INTO generations_fts(generations_fts, rowid, text) VALUES ('delete', old.id, old.text); END"
    )
    op.execute(
        "CREATE TRIGGER generations_fts_update AFTER UPDATE OF text ON generations BEGIN "
        "INSERT INTO generations_fts(generations_fts, rowid, text) VALUES ('delete', old.id, old.text); "
        "INSERT INTO generations_fts(rowid, text) VALUES (new.id, new.text); END"
    )
    op.execute("INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')")  # rows already there

    connection = op.get_bind()
    if connection.execute(sa.text("SELECT count(*) FROM label_sets")).scalar():
        return
    connection.execute(
        sa.text("INSERT INTO label_sets (name, created_at) VALUES ('default', CURRENT_TIMESTAMP)")
    )
    set_id = connection.execute(sa.text("SELECT id FROM label_sets WHERE name = 'default'")).scalar()
    for name, colour, key, description in STARTING_LABELS:
        connection.execute(
            sa.text(
                "INSERT INTO labels (label_set_id, name, colour, key, description) "
                "VALUES (:set, :name, :colour, :key, :description)"
            ),
            {"set": set_id, "name": name, "colour": colour, "key": key, "description": description},
        )


def downgrade() -> None:
    for trigger in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS generations_fts_{trigger}")
    op.execute("DROP TABLE IF EXISTS generations_fts")
