"""scores, behaviours, random twins and detectors

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# SQLite's batch mode rebuilds the generations table, which drops the triggers that keep its
# full-text index (0003) in step: they are created again after each rebuild.
FTS_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS generations_fts_insert AFTER INSERT ON generations BEGIN "
    "INSERT INTO generations_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS generations_fts_delete AFTER DELETE ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS generations_fts_update AFTER UPDATE OF text ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO generations_fts(rowid, text) VALUES (new.id, new.text); END",
)


def restore_search_index() -> None:
    for statement in FTS_TRIGGERS:
        op.execute(statement)
    op.execute("INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')")


def upgrade() -> None:
    op.create_table(
        "behaviours",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), server_default="cluster", nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("words", sa.JSON(), nullable=False),
        sa.Column("exemplar_id", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), server_default="0", nullable=False),
        sa.Column("n_vectors", sa.Integer(), server_default="0", nullable=False),
        sa.Column("n_random", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_behaviours_run_id"), "behaviours", ["run_id"], unique=False)
    op.create_table(
        "detectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("judge_model", sa.String(length=500), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "detector_scores",
        sa.Column("detector_id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["detector_id"], ["detectors.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("detector_id", "generation_id"),
    )
    op.create_index("ix_detector_scores_rank", "detector_scores", ["detector_id", "score"], unique=False)
    op.create_index(
        op.f("ix_detector_scores_generation_id"), "detector_scores", ["generation_id"], unique=False
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("effect", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("fluency", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("repetition", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("beyond_random", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("interest", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("flag", sa.String(length=20), server_default="", nullable=False))
        batch_op.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("behaviour_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_generations_behaviour_id"), ["behaviour_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_generations_behaviour_id", "behaviours", ["behaviour_id"], ["id"], ondelete="SET NULL"
        )
    restore_search_index()
    with op.batch_alter_table("vectors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("interest", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rank", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("behaviour_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_vectors_interest"), ["interest"], unique=False)
        batch_op.create_index(batch_op.f("ix_vectors_rank"), ["rank"], unique=False)
        batch_op.create_index(batch_op.f("ix_vectors_behaviour_id"), ["behaviour_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_vectors_behaviour_id", "behaviours", ["behaviour_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("twin_of", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_twin_of"), ["twin_of"], unique=False)
        batch_op.create_foreign_key("fk_runs_twin_of", "runs", ["twin_of"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_runs_twin_of", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_runs_twin_of"))
        batch_op.drop_column("twin_of")
    with op.batch_alter_table("vectors", schema=None) as batch_op:
        batch_op.drop_constraint("fk_vectors_behaviour_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_vectors_behaviour_id"))
        batch_op.drop_index(batch_op.f("ix_vectors_rank"))
        batch_op.drop_index(batch_op.f("ix_vectors_interest"))
        for name in ("behaviour_id", "rank", "interest"):
            batch_op.drop_column(name)
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_constraint("fk_generations_behaviour_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_generations_behaviour_id"))
        for name in (
            "behaviour_id",
            "embedding",
            "flag",
            "interest",
            "beyond_random",
            "repetition",
            "fluency",
            "effect",
        ):
            batch_op.drop_column(name)
    restore_search_index()
    op.drop_index(op.f("ix_detector_scores_generation_id"), table_name="detector_scores")
    op.drop_index("ix_detector_scores_rank", table_name="detector_scores")
    op.drop_table("detector_scores")
    op.drop_table("detectors")
    op.drop_index(op.f("ix_behaviours_run_id"), table_name="behaviours")
    op.drop_table("behaviours")
