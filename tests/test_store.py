"""Records in a real database: the app's own Flask-SQLAlchemy db or PROCMAN_DATABASE_URI, retention."""

from __future__ import annotations

import datetime as dt
import os
import typing as t

import pytest
import sqlalchemy as sa
from conftest import AppFactory, present, py, wait_until
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_procman import ProcMan, StoreUnavailable


def _pm(app: Flask) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def test_records_in_the_configured_database(make_app: AppFactory, database_uri: str) -> None:
    app = make_app(PROCMAN_DATABASE_URI=database_uri)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("rec", py("print('x')"), env={"API_KEY": "sk-secret-value"}, metadata={"job": 7})
        status = pm.wait("rec", timeout=10)
    for key in ("created_at", "started_at", "finished_at"):
        assert status[key].tzinfo is not None and status[key].utcoffset() == dt.timedelta(0)
    assert status["created_at"] <= status["started_at"] <= status["finished_at"]
    assert status["metadata"] == {"job": 7} and status["env_keys"] == ["API_KEY"]
    engine = sa.create_engine(database_uri)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM procman_processes"))]
    engine.dispose()
    assert len(rows) == 1 and "sk-secret-value" not in repr(rows)


def test_app_db_holds_the_table(tmp_path: t.Any, make_app: AppFactory) -> None:
    db = SQLAlchemy()
    procman = ProcMan(db=db)
    assert "procman_processes" in db.metadata.tables  # so db.create_all() and migrations see it
    app = Flask("withdb", instance_path=str(tmp_path / "inst"))
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app.db", PROCMAN_LOG_DIR=str(tmp_path / "logs"),
                      PROCMAN_POLL_INTERVAL=0.1)
    db.init_app(app)
    procman.init_app(app)
    try:
        with app.app_context():
            with pytest.raises(StoreUnavailable, match=r"db\.create_all"):
                procman.start_process("early", ["true"])
            db.create_all()
            assert procman.start_process("early", py("print('in app db')"))
            assert procman.wait("early", timeout=10)["stdout"] == "in app db\n"
            count = db.session.execute(sa.text("SELECT count(*) FROM procman_processes")).scalar()
            assert count == 1
        assert not os.path.exists(tmp_path / "inst" / "procman.sqlite3")  # no second database
    finally:
        app.extensions["procman"].shutdown(stop_processes=True)


def test_prune_with_retention_zero(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_RETENTION=0)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("old", py("pass"))
        pm.wait("old", timeout=10)
        pm.start_process("live", py("import time; time.sleep(60)"))
        assert pm.prune() == 1
        assert pm.get_process_status("old") is None
        assert not os.path.exists(tmp_path / "logs" / "old")
        assert present(pm.get_process_status("live"))["status"] == "running"


def test_retention_none_keeps_everything_and_age_is_respected(make_app: AppFactory, tmp_path: t.Any) -> None:
    keep = make_app("keep", PROCMAN_RETENTION=None)
    with keep.app_context():
        _pm(keep).start_process("k", py("pass"))
        _pm(keep).wait("k", timeout=10)
        assert _pm(keep).prune() == 0
        assert _pm(keep).get_process_status("k") is not None
    week = make_app("week", PROCMAN_RETENTION=dt.timedelta(days=7),
                    PROCMAN_DATABASE_URI=f"sqlite:///{tmp_path}/week.db", PROCMAN_LOG_DIR=str(tmp_path / "wlogs"))
    manager = week.extensions["procman"]
    with week.app_context():
        for name in ("fresh", "stale"):
            _pm(week).start_process(name, py("pass"))
            _pm(week).wait(name, timeout=10)
        manager.store.update("stale", finished_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=8))
        assert _pm(week).prune() == 1
        assert [p["id"] for p in _pm(week).list_processes()] == ["fresh"]


def test_background_prune(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_RETENTION=0, PROCMAN_PRUNE_INTERVAL=0.2)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("bg", py("pass"))
        pm.wait("bg", timeout=10)
        wait_until(lambda: pm.get_process_status("bg") is None, timeout=10, message="background prune")
