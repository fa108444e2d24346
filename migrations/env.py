"""Alembic environment: the app's tables are the target; the URL comes from the caller's config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.models import Base

config = context.config


def include_object(obj: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
    """The full-text index (a virtual table and its shadow tables) is SQLite's, not the models'."""
    return not (kind == "table" and (name or "").startswith("generations_fts"))


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "the caller sets sqlalchemy.url (see app.db.alembic_config)"
    if context.is_offline_mode():
        context.configure(
            url=url, target_metadata=Base.metadata, render_as_batch=True, include_object=include_object
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        # render_as_batch: SQLite can only alter tables by copying them; batch mode does that.
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
