"""A database a 0.1.0 flask-procman created: the extension's own table gains the columns added
since (generically, from the table's definition); an app's own table (``db=``) gets a clear error
that says to migrate."""

from __future__ import annotations

import datetime as dt
import threading
import typing as t

import pytest
import sqlalchemy as sa
from conftest import AppFactory, present, py
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_procman import ProcMan, StoreUnavailable
from flask_procman.store import TABLE_NAME, make_table


def table_0_1_0(metadata: sa.MetaData) -> sa.Table:
    """The table as 0.1.0 defined it (``git show a7a76e7:flask_procman/store.py``), kept as data."""
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("cmd", sa.JSON, nullable=False),
        sa.Column("cwd", sa.Text),
        sa.Column("env_keys", sa.JSON),
        sa.Column("program", sa.String(128)),
        sa.Column("handler", sa.String(128)),
        sa.Column("meta", sa.JSON),
        sa.Column("merge_stderr", sa.Boolean, nullable=False, default=False),
        sa.Column("timeout", sa.Float),
        sa.Column("return_code", sa.Integer),
        sa.Column("pid", sa.Integer),
        sa.Column("pid_started", sa.Float),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("stop_requested", sa.String(16)),
        sa.Column("error", sa.Text),
        sa.Column("survivors", sa.JSON),
        sa.Column("handler_state", sa.String(16)),
    )


OLD_FINISHED = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


def make_old_database(url: str) -> None:
    """Create the 0.1.0 table at ``url`` with one finished record in it."""
    engine = sa.create_engine(url)
    table = table_0_1_0(sa.MetaData())
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), {
                "id": "old", "status": "completed", "cmd": ["echo", "old"], "host": "somewhere",
                "merge_stderr": False, "return_code": 0, "created_at": OLD_FINISHED,
                "started_at": OLD_FINISHED, "finished_at": OLD_FINISHED, "meta": {"from": "0.1.0"},
            })
    finally:
        engine.dispose()


def columns_at(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(TABLE_NAME)}
    finally:
        engine.dispose()


def test_the_0_1_0_table_lacks_columns_of_today() -> None:
    """Guards the tests below: they upgrade something (run_tag at least)."""
    old = set(table_0_1_0(sa.MetaData()).columns.keys())
    assert set(make_table(sa.MetaData()).columns.keys()) - old >= {"run_tag"}


def test_an_own_0_1_0_table_is_upgraded_in_place(make_app: AppFactory, database_uri: str) -> None:
    make_old_database(database_uri)
    app = make_app(PROCMAN_DATABASE_URI=database_uri)
    procman = t.cast(ProcMan, app.extensions["procman"].extension)
    with app.app_context():
        old = present(procman.get_process_status("old"))
        assert old["status"] == "completed" and old["metadata"] == {"from": "0.1.0"}
        assert old["finished_at"] == OLD_FINISHED
        assert procman.start_process("new", py("print('after the upgrade')"))
        final = procman.wait("new", timeout=20)
    assert final["status"] == "completed" and final["stdout"] == "after the upgrade\n"
    assert columns_at(database_uri) == set(make_table(sa.MetaData()).columns.keys())


def test_concurrent_first_uses_upgrade_once(make_app: AppFactory, database_uri: str) -> None:
    """Several workers meet the old table at once: the creation lock makes each column added once
    (a second ADD COLUMN would fail with 'duplicate column')."""
    make_old_database(database_uri)
    apps = [make_app(f"worker{i}", PROCMAN_DATABASE_URI=database_uri) for i in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(apps))

    def first_use(app: Flask) -> None:
        try:
            barrier.wait(10)
            app.extensions["procman"].store.ensure_table()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert columns_at(database_uri) == set(make_table(sa.MetaData()).columns.keys())


def test_an_app_db_table_of_0_1_0_asks_for_a_migration(tmp_path: t.Any, database_uri: str) -> None:
    url = database_uri
    make_old_database(url)
    db = SQLAlchemy()
    procman = ProcMan(db=db)
    app = Flask("withdb", instance_path=str(tmp_path / "inst"))
    app.config.update(SQLALCHEMY_DATABASE_URI=url, PROCMAN_LOG_DIR=str(tmp_path / "logs"), PROCMAN_POLL_INTERVAL=0.1)
    db.init_app(app)
    procman.init_app(app)
    try:
        with app.app_context(), pytest.raises(StoreUnavailable) as caught:
            procman.get_process_status("old")
        assert "run_tag" in str(caught.value) and "flask db migrate && flask db upgrade" in str(caught.value)
        assert "run_tag" not in columns_at(url)  # the app's table is the app's to change
    finally:
        app.extensions["procman"].shutdown(stop_processes=True)
