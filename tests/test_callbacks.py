"""Completion callbacks, durable handlers and signals: once, with the app context pushed."""

from __future__ import annotations

import logging
import threading
import typing as t

import pytest
from conftest import AppFactory, present, py, wait_until
from flask import current_app

from flask_procman import ProcMan, UnknownHandler, process_finished, process_started


def _pm(app: t.Any) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def test_callback_runs_once_with_its_own_app_context_off_the_watcher(make_app: AppFactory) -> None:
    """This test does not use pytest-flask's ``app`` fixture: no context is pushed for it."""
    app = make_app("ctx-app")
    calls: list[tuple[str, int | None, str, str]] = []

    def on_complete(process_id: str, return_code: int | None) -> None:
        calls.append((process_id, return_code, current_app.name, threading.current_thread().name))

    with app.app_context():
        _pm(app).start_process("cb", py("raise SystemExit(7)"), on_complete=on_complete)
    wait_until(lambda: calls, message="callback")
    with app.app_context():
        _pm(app).wait("cb", timeout=10)
    assert len(calls) == 1
    process_id, code, app_name, thread = calls[0]
    assert (process_id, code, app_name) == ("cb", 7, "ctx-app")
    assert thread.startswith("procman-callback")


def test_callback_runs_for_stopped_timed_out_and_queued(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    pm = _pm(app)
    seen: dict[str, int | None] = {}

    def record(process_id: str, return_code: int | None) -> None:
        seen[process_id] = return_code

    with app.app_context():
        pm.start_process("s", py("import time; print('up', flush=True); time.sleep(60)"), on_complete=record)
        pm.start_process("q", py("pass"), on_complete=record, queue=True)
        pm.start_process("q2", py("pass"), on_complete=record, queue=True)
        pm.stop_process("q2")
        # A SIGTERM landing between the wrapper's fork and the child's exec is lost (then SIGKILL
        # after the grace ends it): stop once the child runs, to test the SIGTERM path itself.
        wait_until(lambda: present(pm.get_process_status("s"))["stdout"] == "up\n", message="child running")
        pm.stop_process("s", timeout=1)
        pm.wait("q", timeout=10)
        pm.start_process("t", py("import time; time.sleep(60)"), on_complete=record, timeout=0.2)
        pm.wait("t", timeout=10)
    wait_until(lambda: len(seen) == 4, message="four callbacks")
    assert seen == {"s": -15, "q2": None, "q": 0, "t": -15}


def test_callback_exception_is_logged_and_changes_nothing(make_app: AppFactory, caplog: t.Any) -> None:
    app = make_app()
    pm = _pm(app)
    done = threading.Event()

    def broken(process_id: str, return_code: int | None) -> None:
        raise ValueError("boom in callback")

    @process_finished.connect_via(app)
    def _finished(sender: t.Any, **kwargs: t.Any) -> None:
        done.set()

    with caplog.at_level(logging.ERROR, logger="flask_procman"), app.app_context():
        pm.start_process("boom", py("pass"), on_complete=broken)
        assert pm.wait("boom", timeout=10)["status"] == "completed"
        assert done.wait(10)
        wait_until(lambda: "boom in callback" in caplog.text, message="logged exception")
        assert pm.start_process("after", py("print('fine')"))
        assert pm.wait("after", timeout=10)["stdout"] == "fine\n"
    process_finished.disconnect(_finished, sender=app)


def test_signals_carry_the_app_as_sender(make_app: AppFactory) -> None:
    app = make_app()
    started: list[dict[str, t.Any]] = []
    finished: list[dict[str, t.Any]] = []

    def on_started(sender: t.Any, **kwargs: t.Any) -> None:
        assert sender is app
        started.append(kwargs)

    def on_finished(sender: t.Any, **kwargs: t.Any) -> None:
        assert sender is app and current_app.name == app.name
        finished.append(kwargs)

    process_started.connect(on_started, app)
    process_finished.connect(on_finished, app)
    try:
        with app.app_context():
            _pm(app).start_process("sig", py("raise SystemExit(2)"))
            _pm(app).wait("sig", timeout=10)
        wait_until(lambda: finished, message="finished signal")
    finally:
        process_started.disconnect(on_started, app)
        process_finished.disconnect(on_finished, app)
    assert started[0]["process_id"] == "sig" and isinstance(started[0]["pid"], int)
    assert finished == [{"process_id": "sig", "status": "completed", "return_code": 2}]


def test_named_handler_runs_once_with_app_context(make_app: AppFactory) -> None:
    procman = ProcMan()
    runs: list[tuple[str, int | None, str]] = []

    @procman.on_complete("evaluate")
    def finish(process_id: str, return_code: int | None) -> None:
        runs.append((process_id, return_code, current_app.name))

    app = make_app("handler-app", procman=procman)
    with app.app_context():
        procman.start_process("h", py("pass"), handler="evaluate")
        procman.wait("h", timeout=10)
        wait_until(lambda: runs, message="handler")
        row = app.extensions["procman"].store.get("h")
        wait_until(lambda: app.extensions["procman"].store.get("h")["handler_state"] == "done", message="done")
        with pytest.raises(UnknownHandler, match="on_complete"):
            procman.start_process("h2", py("pass"), handler="nope")
    assert runs == [("h", 0, "handler-app")]
    assert row["handler"] == "evaluate"
