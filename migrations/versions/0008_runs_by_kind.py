"""runs indexed by kind: the home page and the runs list count runs per kind

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Counting runs per kind read every run row (bench/web.py's plan check found the scan).
    op.create_index("ix_runs_kind", "runs", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_runs_kind", table_name="runs")
