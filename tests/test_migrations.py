"""Flask-Migrate with ``ProcMan(db=db)``: the real ``flask db init / migrate / upgrade`` commands, as
a user runs them, on SQLite and PostgreSQL. The generated migration must run unedited, a second
``migrate`` must find nothing to change, and the migrated table must work for procman.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_procman.store import Store, make_table

BIN = Path(sys.executable).parent

_APP = textwrap.dedent('''
    """A user's app: its own model, procman in the same db, Flask-Migrate."""
    import os

    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    from flask_procman import ProcMan

    db = SQLAlchemy()
    procman = ProcMan(db=db)


    class Note(db.Model):
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(200))


    def create_app():
        here = os.path.dirname(os.path.abspath(__file__))
        app = Flask(__name__, instance_path=os.path.join(here, "instance"))
        app.config.update(SQLALCHEMY_DATABASE_URI=os.environ["MIGRATION_TEST_DB"], PROCMAN_POLL_INTERVAL=0.1)
        db.init_app(app)
        procman.init_app(app)
        Migrate(app, db)
        return app
''')

_USE = textwrap.dedent('''
    import json, sys, time
    from migapp import create_app, procman

    app = create_app()
    with app.app_context():
        procman.start_process("migrated", [sys.executable, "-c", "print('ok')"])
        deadline = time.monotonic() + 60
        while procman.get_process_status("migrated")["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = procman.get_process_status("migrated")
        print(json.dumps({"stdout": status["stdout"], "created": status["created_at"].isoformat(),
                          "finished": status["finished_at"].isoformat(), "duration": status["duration"]}))
    procman.shutdown(app)
''')


@pytest.fixture(params=["sqlite", "postgresql"])
def migration_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or an own schema on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


def test_flask_db_init_migrate_upgrade_run_unedited(migration_db: str, tmp_path: Path) -> None:
    (tmp_path / "migapp.py").write_text(_APP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MIGRATION_TEST_DB=migration_db, FLASK_APP="migapp:create_app")

    def flask(*args: str) -> str:
        done = subprocess.run([str(BIN / "flask"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"flask {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    flask("db", "init")
    flask("db", "migrate", "-m", "initial")
    [migration] = (tmp_path / "migrations" / "versions").glob("*.py")
    text = migration.read_text()
    assert "procman_processes" in text and "note" in text
    assert "flask_procman" not in text, "the migration must need nothing from this package:\n" + text
    assert "sa.DateTime(timezone=True)" in text
    flask("db", "upgrade")
    again = flask("db", "migrate", "-m", "nothing")
    assert "No changes in schema detected" in again, again
    assert len(list((tmp_path / "migrations" / "versions").glob("*.py"))) == 1

    done = subprocess.run([sys.executable, "-c", _USE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["stdout"] == "ok\n"
    # Aware UTC on every database (SQLite stores naive values; the store reads them back as UTC).
    assert result["created"].endswith("+00:00") and result["finished"].endswith("+00:00"), result
    assert 0 <= result["duration"] < 60


def test_timestamps_are_written_and_read_as_utc(database_uri: str) -> None:
    """The table keeps plain ``DateTime(timezone=True)`` columns; the store converts at the edges."""
    engine = sa.create_engine(database_uri)
    table = make_table(sa.MetaData())
    assert all(type(table.c[name].type) is sa.DateTime for name in ("created_at", "started_at", "finished_at"))
    store = Store(engine, table, owns_table=True)
    try:
        store.ensure_table()
        paris = dt.datetime(2026, 3, 29, 3, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        with store.transaction() as conn:
            conn.execute(store.table.insert(), {"id": "t", "status": "completed", "cmd": ["x"], "host": "h",
                                                "created_at": paris, "finished_at": paris})
        row = store.get("t")
        assert row is not None
        assert row["created_at"] == paris and row["created_at"].tzinfo == dt.timezone.utc
        assert row["created_at"].hour == 1
        assert store.expired(paris + dt.timedelta(seconds=1)) == ["t"]
        assert store.expired(paris) == []
        with engine.connect() as conn:  # what the plain table (an app's own query) reads: the UTC instant
            raw = conn.execute(sa.select(table.c.created_at)).scalar_one()
        assert raw.replace(tzinfo=raw.tzinfo or dt.timezone.utc) == paris
    finally:
        engine.dispose()
