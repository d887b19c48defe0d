"""The example app's actions and pages in process (pytest-flask's client): retry and delete, the
CSRF protection of its forms, durations, the favicon, failure texts; and ``make demo``'s port check.
The example as a real gunicorn server and in Chromium: ``test_example_app.py``."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import free_port, present, wait_until
from flask import Flask
from flask.testing import FlaskClient
from test_example_app import REPO, add_evaluation, build_app, close_app, fresh_status

from example_app.models import EvaluateInfo, db
from example_app.service import CLAIM_GRACE, EvaluateService, EvaluationStartError, describe_failure, procman
from example_app.views import format_duration
from flask_procman.store import utcnow


@pytest.fixture
def app(tmp_path: Path) -> t.Iterator[Flask]:
    """The example app in this process (pytest-flask's ``client`` uses it)."""
    app = build_app(tmp_path / "instance")
    yield app
    close_app(app)


def form_token(client: FlaskClient, path: str = "/evaluations/new") -> str:
    """The CSRF token a page's forms carry (Flask-WTF's, bound to this client's session)."""
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


def row_of(uid: str) -> EvaluateInfo | None:
    db.session.rollback()
    db.session.expire_all()
    return db.session.get(EvaluateInfo, uid)


def test_a_not_started_evaluation_can_be_retried_and_deleted(app: Flask, client: FlaskClient) -> None:
    """Issue 9: an evaluation refused at the cap stayed NOT_STARTED for ever, with no way out."""
    with app.app_context():
        uid = add_evaluation(duration=0.2)  # NOT_STARTED: never started
        other = add_evaluation(duration=0.2)
    page = client.get(f"/evaluations/{uid}").get_data(as_text=True)
    assert 'id="retry-form"' in page and 'id="delete-form"' in page and 'id="stop-form"' not in page
    token = form_token(client, f"/evaluations/{uid}")

    # Without the form's token: refused, nothing happens.
    for action in ("retry", "delete"):
        refused = client.post(f"/evaluations/{uid}/{action}", data={})
        assert refused.status_code == 400 and "CSRF token is missing" in refused.get_data(as_text=True)
        forged = client.post(f"/evaluations/{uid}/{action}", data={"csrf_token": "forged"})
        assert forged.status_code == 400
    with app.app_context():
        assert fresh_status(uid) == "NOT_STARTED"

    retried = client.post(f"/evaluations/{uid}/retry", data={"csrf_token": token})
    assert retried.status_code == 303 and retried.headers["Location"].endswith(f"/evaluations/{uid}")
    with app.app_context():
        assert fresh_status(uid) in ("IN_PROGRESS", "COMPLETED")
        EvaluateService._process_manager.wait(uid, timeout=20)
        wait_until(lambda: fresh_status(uid) == "COMPLETED", timeout=10, message="the handler to finish")
    # A completed evaluation is not started again; a running one is not deleted (see below).
    again = client.post(f"/evaluations/{uid}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "cannot be started again" in again.get_data(as_text=True)

    outputs = Path(app.config["EVALUATION_OUTPUT_DIR"]) / uid
    assert (outputs / "metrics.json").is_file()
    deleted = client.post(f"/evaluations/{uid}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303 and deleted.headers["Location"].endswith("/")
    with app.app_context():
        assert row_of(uid) is None and row_of(other) is not None
        assert EvaluateService.process_status(uid) is None  # the process record and log went too
    assert not outputs.exists()
    assert client.get(f"/evaluations/{uid}").status_code == 404
    assert client.post(f"/evaluations/{uid}/delete", data={"csrf_token": token}).status_code == 404

    never = client.post(f"/evaluations/{other}/delete", data={"csrf_token": token})  # never had a process
    assert never.status_code == 303
    with app.app_context():
        assert row_of(other) is None


def test_a_running_evaluation_is_not_deleted_and_not_started_twice(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        uid = add_evaluation(duration=60)
        EvaluateService.run_evaluate(uid)
    token = form_token(client)
    page = client.get(f"/evaluations/{uid}").get_data(as_text=True)
    assert 'id="stop-form"' in page and 'id="retry-form"' not in page and 'id="delete-form"' not in page

    refused = client.post(f"/evaluations/{uid}/delete", data={"csrf_token": token}, follow_redirects=True)
    assert "stop it before deleting it" in refused.get_data(as_text=True)
    twice = client.post(f"/evaluations/{uid}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "cannot be started again" in twice.get_data(as_text=True)
    with app.app_context():
        assert fresh_status(uid) == "IN_PROGRESS"  # not put back to NOT_STARTED by the refused start
        process = present(EvaluateService.process_status(uid))
        assert process["status"] == "running"
        assert EvaluateService.stop_evaluate(uid)
        wait_until(lambda: fresh_status(uid) == "FAILED", timeout=10, message="the handler to record the stop")
    # FAILED: it may be retried and deleted now.
    page = client.get(f"/evaluations/{uid}").get_data(as_text=True)
    assert 'id="retry-form"' in page and ">Retry<" in page and 'id="delete-form"' in page


def test_two_retries_at_once_start_one_process(app: Flask) -> None:
    """The claim is a compare-and-set: the loser neither starts a second run nor resets the row."""
    with app.app_context():
        uid = add_evaluation(duration=30)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def retry() -> None:
        with app.app_context():
            barrier.wait(timeout=10)
            try:
                EvaluateService.run_evaluate(uid)
                outcomes.append("started")
            except EvaluationStartError as exc:
                outcomes.append(str(exc))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes)[-1] == "started" and "cannot be started again" in sorted(outcomes)[0], outcomes
    with app.app_context():
        assert fresh_status(uid) == "IN_PROGRESS"
        assert present(EvaluateService.process_status(uid))["status"] == "running"


def claim_without_a_process(uid: str, ago: float) -> None:
    """The row as a starter leaves it when it dies between its claim's commit and its start (or when
    the database failed the start and the row could not be put back): IN_PROGRESS, no new process."""
    db.session.execute(sa.update(EvaluateInfo).where(EvaluateInfo.uuid == uid).values(
        evaluate_status="IN_PROGRESS", claimed_at=utcnow() - dt.timedelta(seconds=ago)))
    db.session.commit()


def test_a_claim_whose_start_never_came_can_be_retried_and_deleted(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        uid, other = add_evaluation(duration=0.2), add_evaluation(duration=0.2)
        claim_without_a_process(uid, ago=1)  # within the grace: a start may still be on its way
        claim_without_a_process(other, ago=CLAIM_GRACE.total_seconds() + 5)
    token = form_token(client)
    page = client.get(f"/evaluations/{uid}").get_data(as_text=True)
    assert 'id="retry-form"' not in page and 'id="delete-form"' not in page
    twice = client.post(f"/evaluations/{uid}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "cannot be started again" in twice.get_data(as_text=True)
    refused = client.post(f"/evaluations/{uid}/delete", data={"csrf_token": token}, follow_redirects=True)
    assert "stop it before deleting it" in refused.get_data(as_text=True)

    # Past the grace it is stuck: Retry starts it, Delete deletes it.
    page = client.get(f"/evaluations/{other}").get_data(as_text=True)
    assert 'id="retry-form"' in page and 'id="delete-form"' in page
    retried = client.post(f"/evaluations/{other}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "Started the evaluation again" in retried.get_data(as_text=True)
    with app.app_context():
        EvaluateService._process_manager.wait(other, timeout=20)
        wait_until(lambda: fresh_status(other) == "COMPLETED", timeout=10, message="the handler to finish")
        claim_without_a_process(uid, ago=CLAIM_GRACE.total_seconds() + 5)
    deleted = client.post(f"/evaluations/{uid}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    with app.app_context():
        assert row_of(uid) is None


def test_a_run_ended_without_the_row_finished_can_be_retried_and_deleted(app: Flask, client: FlaskClient) -> None:
    """The run since the claim has ended and its handler is done, yet the row is IN_PROGRESS (the
    handler could not write it): stuck at once. A record of an EARLIER run does not count."""
    with app.app_context():
        uid = add_evaluation(duration=0.2)
        EvaluateService.run_evaluate(uid)
        EvaluateService._process_manager.wait(uid, timeout=20)
        wait_until(lambda: fresh_status(uid) == "COMPLETED", timeout=10, message="the handler to finish")
        # The handler writes the row; procman marks the handler done once it has returned.
        wait_until(lambda: present(procman.get_manager().store.get(uid))["handler_state"] == "done",
                   timeout=10, message="the handler marked done")
        record = present(procman.get_manager().store.get(uid))
        # A fresh claim of a retry, its start not there yet: the earlier run's record is no sign.
        claim_without_a_process(uid, ago=0)
        assert not EvaluateService.is_stuck(present(row_of(uid)))
        # The handler of this claim's run failed to record the end.
        db.session.execute(sa.update(EvaluateInfo).where(EvaluateInfo.uuid == uid).values(
            claimed_at=record["created_at"] - dt.timedelta(seconds=1)))
        db.session.commit()
        assert EvaluateService.is_stuck(present(row_of(uid)))
    token = form_token(client)
    retried = client.post(f"/evaluations/{uid}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "Started the evaluation again" in retried.get_data(as_text=True)
    with app.app_context():
        EvaluateService._process_manager.wait(uid, timeout=20)
        wait_until(lambda: fresh_status(uid) == "COMPLETED", timeout=10, message="the handler to finish")
        db.session.execute(sa.update(EvaluateInfo).where(EvaluateInfo.uuid == uid).values(
            evaluate_status="IN_PROGRESS"))
        db.session.commit()
    assert client.post(f"/evaluations/{uid}/delete", data={"csrf_token": token}).status_code == 303
    with app.app_context():
        assert row_of(uid) is None and EvaluateService.process_status(uid) is None


def test_a_retry_whose_row_is_deleted_meanwhile(app: Flask, client: FlaskClient) -> None:
    """A Delete commits between the Retry's read of the row and its claim: no 500, the page is gone."""
    with app.app_context():
        uid = add_evaluation(duration=0.2)
        engine = db.engine
    token = form_token(client)

    def delete_first(conn: t.Any, cursor: t.Any, statement: str, *_args: t.Any) -> None:
        if statement.startswith("UPDATE evaluate_info"):  # the claim: the row goes just before it
            cursor.execute("DELETE FROM evaluate_info WHERE uuid = ?", (uid,))

    sa.event.listen(engine, "before_cursor_execute", delete_first)
    try:
        retried = client.post(f"/evaluations/{uid}/retry", data={"csrf_token": token})
    finally:
        sa.event.remove(engine, "before_cursor_execute", delete_first)
    assert retried.status_code == 303 and retried.headers["Location"].endswith("/")  # to the list
    assert "no longer exists" in client.get(retried.headers["Location"]).get_data(as_text=True)
    assert client.get(f"/evaluations/{uid}").status_code == 404
    with app.app_context():
        assert row_of(uid) is None and EvaluateService.process_status(uid) is None


def test_the_example_runs_without_the_procman_api(tmp_path: Path) -> None:
    app = build_app(tmp_path / "instance", PROCMAN_API_ENABLED=False)
    try:
        assert "procman" not in app.blueprints
        with app.app_context():
            uid = add_evaluation()
        client = app.test_client()
        assert client.get("/").status_code == 200
        assert client.get(f"/evaluations/{uid}").status_code == 200  # without its live log
    finally:
        close_app(app)


def test_csrf_protect_guards_the_forms_but_not_the_procman_api(app: Flask, client: FlaskClient) -> None:
    """Flask-WTF's CSRFProtect checks every form; the procman API keeps its own rule (token or header)."""
    assert app.extensions["csrf"] is not None
    with app.app_context():
        uid = add_evaluation(duration=60)
        EvaluateService.run_evaluate(uid)
    refused = client.post(f"/evaluations/{uid}/stop", data={})
    assert refused.status_code == 400 and "CSRF token is missing" in refused.get_data(as_text=True)
    token = app.config["PROCMAN_API_TOKEN"]
    stopped = client.post(f"/procman/api/processes/{uid}/stop", headers={"Authorization": f"Bearer {token}"})
    assert stopped.status_code == 200, stopped.get_data(as_text=True)
    with app.app_context():
        wait_until(lambda: fresh_status(uid) == "FAILED", timeout=10, message="the handler to record the stop")


def test_the_favicon_is_served(client: FlaskClient) -> None:
    with client.get("/favicon.ico") as icon:  # a file response: closed, or its file is left open
        assert icon.status_code == 200 and icon.mimetype == "image/svg+xml" and b"<svg" in icon.data
    assert 'rel="icon"' in client.get("/").get_data(as_text=True)


def test_durations_on_the_list_and_the_page(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        running = add_evaluation(duration=60)
        EvaluateService.run_evaluate(running)
        waiting = add_evaluation()
    listed = {e["uuid"]: e for e in client.get("/evaluations.json").get_json()}
    assert listed[waiting]["duration"] is None and listed[waiting]["started_at"] is None
    assert listed[running]["duration"] >= 0 and listed[running]["started_at"]
    rows = client.get("/evaluations/rows").get_data(as_text=True)
    live = re.search(rf'data-uuid="{running}".*?<td class="col-duration">(.*?)</td>', rows, re.S)
    assert live is not None and 'data-live="true"' in live.group(1) and re.search(r">\d+ s<", live.group(1))
    page = client.get(f"/evaluations/{running}").get_data(as_text=True)
    assert re.search(r'id="evaluation-duration" data-seconds="[\d.]+" data-live="true">\d+ s<', page), page
    assert "<dt>Started</dt>" in page


def test_a_failure_is_described_by_the_scripts_last_words() -> None:
    tail = "".join(f"progress {i}\n" for i in range(20))
    with_traceback = tail + "Traceback (most recent call last):\n  File x\nRuntimeError: boom\nevaluate: failed\n"
    assert describe_failure("completed", 1, {"error": with_traceback}) == (
        "The evaluation script failed (exit status 1).\n\n"
        "Traceback (most recent call last):\n  File x\nRuntimeError: boom\nevaluate: failed")
    # A stopped record's error only says why it ended; what the script said is the end of its log.
    stopped = describe_failure("stopped", -15, {"error": "stopped by request",
                                                 "stdout": tail + "evaluate: received SIGTERM, stopping\n"})
    assert stopped.endswith("progress 19\nevaluate: received SIGTERM, stopping") and "progress 14" not in stopped
    assert describe_failure("lost", None, None).startswith("The evaluation process was lost")


@pytest.mark.parametrize(("seconds", "live", "text"), [
    (None, False, "—"), (0.04, False, "0.0 s"), (4.25, False, "4.2 s"), (4.9, True, "4 s"),
    (59.96, False, "1 min 00 s"), (59.96, True, "59 s"), (187.4, False, "3 min 07 s"), (186.5, False, "3 min 07 s"),
    (3600, True, "1 h 00 min"), (3 * 3600 + 5 * 60 + 9, False, "3 h 05 min"),
])
def test_duration_format(seconds: float | None, live: bool, text: str) -> None:
    assert format_duration(seconds, live) == text


def test_make_demo_refuses_a_busy_port_at_once(tmp_path: Path) -> None:
    """Issue 9: a busy port ended in gunicorn's bind retries. ``make demo`` checks it first and says what to do."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}  # not `make test`'s
        # VENV points at an empty folder: were the check not first, make would start building a venv there.
        result = subprocess.run(["make", "demo", f"PORT={port}", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert re.search(rf"port {port} is busy.*run make demo PORT=\d+", result.stderr), result.stderr
    assert not (tmp_path / "venv").exists() and "init-db" not in result.stdout
    free = subprocess.run([sys.executable, str(REPO / "example_app" / "check_port.py"), str(free_port())],
                          capture_output=True, text=True, timeout=30, check=False)
    assert free.returncode == 0 and free.stderr == ""
