"""Records that say what happened: why a process ended, a replaced id, errors that name the fix,
a reused id that never shows an earlier run's output, the namespace of a shared table and a
deleted SQLite file."""

from __future__ import annotations

import json
import os
import typing as t

import pytest
from conftest import AppFactory, present, py, wait_until
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_procman import ProcMan, StoreUnavailable
from flask_procman.manager import Manager

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/procman/api"


def _manager(app: Flask) -> Manager:
    return t.cast(Manager, app.extensions["procman"])


# ---------------------------------------------------------------------------- why it ended -------
def test_error_says_why_a_process_was_stopped_or_timed_out(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=0.3)
    pm = _manager(app)
    with app.app_context():
        assert pm.start_process("stopped", py("import time; print('ready', flush=True); time.sleep(60)"))
        # (A SIGTERM in the first instant of its life can be lost: README, Limits.)
        wait_until(lambda: pm.read_output("stopped")[0] == b"ready\n", message="ready")
        assert pm.stop_process("stopped", timeout=2)
        assert present(pm.get_process_status("stopped"))["error"] == "stopped by request"
        stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                    "print('ready', flush=True); time.sleep(60)")
        assert pm.start_process("stubborn", py(stubborn))
        wait_until(lambda: pm.read_output("stubborn")[0] == b"ready\n", message="stubborn ready")
        assert pm.stop_process("stubborn", timeout=0.3)
        error = present(pm.get_process_status("stubborn"))["error"]
        assert error.startswith("stopped by request") and "SIGKILL" in error
        assert pm.start_process("slow", ["sleep", "60"], timeout=0.5)
        final = pm.wait("slow", timeout=20)
        assert (final["status"], final["error"]) == ("timed_out", "timed out after 0.5 s")


# ---------------------------------------------------------------------------- replaced ids -------
def test_a_reused_id_says_replaced_and_never_shows_the_old_output(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_MAX_PROCESSES=1,
                   PROCMAN_PROGRAMS={"say": {"cmd": ["sh", "-c", 'echo "$0"'], "allow_args": True}})
    pm = _manager(app)
    client = app.test_client()
    with app.app_context():
        assert pm.start_process("r", ["sh", "-c", "echo old-run; echo old-err >&2"])
        old = pm.wait("r", timeout=10)
        assert old["stdout"] == "old-run\n" and not old["replaced"]
        assert pm.start_process("blocker", ["sleep", "60"])
        assert pm.start_process("r", ["sh", "-c", "echo new-run"], queue=True)  # the same id, queued
        queued = present(pm.get_process_status("r"))
        # From the claim on, the record is the new run's: no byte of the old run is shown.
        assert (queued["status"], queued["stdout"], queued["stderr"], queued["replaced"]) == ("queued", "", "", True)
        assert pm.read_output("r") == (b"", 0)
        # An SSE client that followed the old run resumes with its old id: it starts the new run at 0.
        stale = f"{len(b'old-run')}:{len(b'old-err')}:{old['run_tag']}"
        assert pm.stop_process("blocker", timeout=1)
        final = pm.wait("r", timeout=10)
        assert final["stdout"] == "new-run\n" and final["replaced"] and final["run_tag"] != old["run_tag"]
        body = client.get(f"{API}/processes/r/events", headers={**AUTH, "Last-Event-ID": stale}).get_data(as_text=True)
        chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ") and '"offset"' in line]
        assert "".join(c["data"] for c in chunks) == "new-run\n" and chunks[0]["offset"] == 0
        assert f":{final['run_tag']}\n" in body  # ids carry the run tag
    answer = client.post(f"{API}/programs/say/start", json={"process_id": "r", "args": ["third"]}, headers=AUTH)
    assert answer.status_code == 201 and answer.get_json()["replaced"] is True
    with app.app_context():
        pm.wait("r", timeout=10)  # the cap is 1
    fresh = client.post(f"{API}/programs/say/start", json={"process_id": "fresh"}, headers=AUTH)
    assert fresh.status_code == 201 and fresh.get_json()["replaced"] is False


# ---------------------------------------------------------------------------- HTTP errors --------
def test_a_missing_table_over_http_names_the_fix(tmp_path: t.Any) -> None:
    db = SQLAlchemy()
    procman = ProcMan(db=db)
    app = Flask("withdb", instance_path=str(tmp_path / "inst"))
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app.db", PROCMAN_LOG_DIR=str(tmp_path / "logs"),
                      PROCMAN_POLL_INTERVAL=0.1, PROCMAN_API_TOKEN=TOKEN)
    db.init_app(app)
    procman.init_app(app)
    try:
        answer = app.test_client().get(f"{API}/processes", headers=AUTH)
        assert answer.status_code == 500
        error = answer.get_json()["error"]
        assert error["code"] == "table_missing" and "db.create_all()" in error["message"]
        assert "try again" not in error["message"]
    finally:
        app.extensions["procman"].shutdown(stop_processes=True)


@pytest.mark.parametrize("offset", ["99999999999999999999999", str(2**63), "-1", "x"])
def test_every_bad_offset_gets_the_same_message(app: Flask, offset: str) -> None:
    answer = app.test_client().get(f"{API}/processes?offset={offset}", headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["message"] == "'offset' must be an integer between 0 and 9007199254740991."


# ---------------------------------------------------------------------------- shared tables ------
def test_apps_with_different_log_folders_never_run_each_others_records(make_app: AppFactory, tmp_path: t.Any,
                                                                        database_uri: str) -> None:
    app_a = make_app("a", PROCMAN_DATABASE_URI=database_uri, PROCMAN_LOG_DIR=str(tmp_path / "logs-a"),
                     PROCMAN_MAX_PROCESSES=0)
    app_b = make_app("b", PROCMAN_DATABASE_URI=database_uri, PROCMAN_LOG_DIR=str(tmp_path / "logs-b"),
                     PROCMAN_MAX_PROCESSES=5)
    pm_a, pm_b = _manager(app_a), _manager(app_b)
    with app_a.app_context():
        assert pm_a.start_process("a-job", ["sh", "-c", 'echo "$SECRET"'], env={"SECRET": "a"}, queue=True)
    with app_b.app_context():
        assert pm_b.start_process("b-job", py("print('b')"))
        assert pm_b.wait("b-job", timeout=10)["stdout"] == "b\n"
        # B's watcher has ticked many times with free slots: A's queued job is not B's to run.
        wait_until(lambda: pm_b.store.get("b-job") is not None and pm_b._ticks > 5, message="B ticks")
        assert present(pm_b.store.get("a-job"))["status"] == "queued"
        assert [p["id"] for p in pm_b.list_processes()] == ["b-job"]
        assert not os.path.exists(tmp_path / "logs-b" / "a-job")


# ---------------------------------------------------------------------------- a deleted SQLite ---
def test_a_deleted_sqlite_file_fails_loudly(make_app: AppFactory, tmp_path: t.Any) -> None:
    path = tmp_path / "records.sqlite3"
    app = make_app(PROCMAN_DATABASE_URI=f"sqlite:///{path}")
    pm = _manager(app)
    with app.app_context():
        assert pm.start_process("before", py("pass"))
        pm.wait("before", timeout=10)
        os.unlink(path)
        with pytest.raises(StoreUnavailable, match=str(path)):
            pm.start_process("after", py("pass"))
        with pytest.raises(StoreUnavailable, match="deleted or replaced"):
            pm.get_process_status("before")


def test_the_cli_says_when_a_start_replaced_a_finished_process(make_app: AppFactory) -> None:
    app = make_app()
    runner = app.test_cli_runner()
    first = runner.invoke(args=["procman", "start", "--wait", "again", "--", "true"], catch_exceptions=False)
    assert first.exit_code == 0 and "replaced" not in first.stderr
    second = runner.invoke(args=["procman", "start", "--wait", "again", "--", "true"], catch_exceptions=False)
    assert second.exit_code == 0 and "was the id of a finished process" in second.stderr
