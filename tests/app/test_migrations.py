"""Alembic is the only schema author: migrations run on empty and populated databases alike."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, select, text

from app import db as dbmod
from app.models import Base, Conversation, Generation, Job, Message, Run, Vector


def test_empty_database_upgrades_and_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    dbmod.upgrade(url)
    database = dbmod.Database(url)
    tables = set(inspect(database.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    dbmod.check(url)  # `alembic check`: the models and the migrations agree
    with database.engine.connect() as conn:
        triggers = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))}
        assert {f"generations_fts_{t}" for t in ("insert", "delete", "update")} <= triggers
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == dbmod.BUSY_TIMEOUT_MS
    database.close()


FIRST_ROWS = [
    "INSERT INTO models (id, name, created_at) VALUES (1, 'm', '2026-01-01')",
    "INSERT INTO runs (id, kind, model_id, model_name, spec, prompts, inputs, result, created_at)"
    " VALUES (1, 'melbo', 1, 'm', '{\"prompts\": [\"a\"]}', '[\"a\"]', '{}', '{}', '2026-01-01')",
    "INSERT INTO jobs (id, kind, run_id, created_at) VALUES (1, 'melbo', 1, '2026-01-01')",
    'INSERT INTO vectors (id, run_id, "index", block, width, "values", norm, metrics, created_at)'
    " VALUES (1, 1, 0, 1, 2, x'0000803f00000040', 2.2, '{}', '2026-01-01')",
    "INSERT INTO generations (id, key, model_id, vector_id, prompt, max_new_tokens, text, n_tokens,"
    " finish_reason, metrics, created_at)"
    " VALUES (1, 'k', 1, 1, 'a', 4, '<b>x</b>', 1, 'eos', '{}', '2026-01-01')",
    "INSERT INTO conversations (id, title, created_at, updated_at)"
    " VALUES (1, 't', '2026-01-01', '2026-01-01')",
    "INSERT INTO messages (id, conversation_id, pane, role, content, steering, sampling, created_at)"
    " VALUES (1, 1, 'steered', 'user', 'hi', '{}', '{}', '2026-01-01')",
]


def test_a_database_populated_at_the_first_revision_upgrades_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'full.db'}"
    dbmod.upgrade(url, "0001")
    database = dbmod.Database(url)
    with database.engine.begin() as conn:
        for statement in FIRST_ROWS:
            conn.execute(text(statement))
    database.close()
    dbmod.upgrade(url)  # every later revision runs over rows
    dbmod.check(url)
    database = dbmod.Database(url)
    with database.session() as session:
        vector = session.scalars(select(Vector)).one()
        assert (vector.width, vector.values) == (2, b"\x00\x00\x80?\x00\x00\x00@")
        assert session.scalars(select(Generation.text)).all() == ["<b>x</b>"]
        assert session.get(Job, 1).status == "queued"  # server defaults filled in
        conversation = session.get(Conversation, 1)
        assert conversation is not None and (conversation.steering, conversation.settings) == ([], {})
        assert session.get(Message, 1).finish_reason == ""  # 0002 added columns over existing rows
        generation = session.get(Generation, 1)
        assert generation is not None and (generation.flag, generation.effect) == ("", None)  # 0005
        assert (vector.rank, vector.behaviour_id, session.get(Run, 1).twin_of) == (None, None, None)
        assert (vector.working_scale, vector.broken_at, generation.changes) == (None, None, [])  # 0007
        # The full-text index survived 0004's rebuild of the generations table, old rows and new.
        found = "SELECT rowid FROM generations_fts WHERE generations_fts MATCH :q"
        assert session.execute(text(found), {"q": '"x"'}).scalars().all() == [1]
        generation.text = "a pomegranate"
        session.flush()
        assert session.execute(text(found), {"q": "pomegranate"}).scalars().all() == [1]
    database.close()


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fk.db'}"
    dbmod.upgrade(url)
    database = dbmod.Database(url)
    with database.engine.connect() as conn:
        try:
            conn.execute(
                text(
                    'INSERT INTO vectors (run_id, "index", block, width, "values", norm, metrics, created_at)'
                    " VALUES (999, 0, 0, 1, x'00000000', 0, '{}', CURRENT_TIMESTAMP)"
                )
            )
            conn.commit()
            raise AssertionError("a vector of a missing run was accepted")
        except Exception as exc:
            assert "FOREIGN KEY" in str(exc)
    database.close()
