"""Requests never stop processes; shutdown and interpreter exit do (when configured to)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing as t

import psutil
import pytest
from conftest import AppFactory, present, py
from flask import Flask

from flask_procman import ProcMan

SLEEP = py("import time; time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_request_does_not_stop_a_running_process(make_app: AppFactory) -> None:
    app = make_app()
    procman = app.extensions["procman"].extension

    @app.post("/start")
    def start() -> str:
        procman.start_process("req", SLEEP)
        return "ok"

    @app.get("/status")
    def status() -> str:
        return t.cast(str, present(procman.get_process_status("req"))["status"])

    client = app.test_client()
    assert client.post("/start").status_code == 200
    for _ in range(3):
        assert client.get("/status").get_data(as_text=True) == "running"
    with app.app_context():
        pid = present(procman.get_process_status("req"))["pid"]
    assert _alive(pid)


def test_shutdown_stops_owned_processes(make_app: AppFactory) -> None:
    app = make_app()
    procman = app.extensions["procman"].extension
    with app.app_context():
        procman.start_process("s1", SLEEP)
        pid = present(procman.get_process_status("s1"))["pid"]
    procman.shutdown(app)
    assert not _alive(pid)
    with app.app_context():
        assert present(procman.get_process_status("s1"))["status"] == "stopped"


def test_shutdown_leaves_processes_when_stop_on_exit_is_false(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_STOP_ON_EXIT=False)
    procman = app.extensions["procman"].extension
    with app.app_context():
        procman.start_process("keep", SLEEP)
        pid = present(procman.get_process_status("keep"))["pid"]
    procman.shutdown(app)
    assert _alive(pid)
    with app.app_context():  # using it again restarts the engine, which finds it still running
        assert present(procman.get_process_status("keep"))["status"] == "running"
        assert procman.stop_process("keep", timeout=1)


SCRIPT = textwrap.dedent(
    """
    import sys
    from flask import Flask
    from flask_procman import ProcMan
    app = Flask("exit-app", instance_path=sys.argv[1])
    app.config.update(PROCMAN_STOP_ON_EXIT=sys.argv[2] == "stop", PROCMAN_STOP_TIMEOUT=2)
    pm = ProcMan(app)
    with app.app_context():
        pm.start_process("child", [sys.executable, "-c", "import time; time.sleep(60)"])
        print(pm.get_process_status("child")["pid"], flush=True)
    """
)


@pytest.mark.parametrize("mode", ["stop", "keep"])
def test_interpreter_exit(tmp_path: t.Any, mode: str) -> None:
    script = tmp_path / "exit_app.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "inst"), mode], capture_output=True,
                         text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    app = Flask("exit-app", instance_path=str(tmp_path / "inst"))
    app.config.update(PROCMAN_POLL_INTERVAL=0.1)
    pm = ProcMan(app)
    with app.app_context():
        if mode == "stop":
            assert not _alive(pid)
            assert present(pm.get_process_status("child"))["status"] == "stopped"
        else:
            assert _alive(pid)
            # The exited manager's process is adopted by this one and can be stopped from here.
            assert pm.stop_process("child", timeout=1)
            assert present(pm.get_process_status("child"))["status"] == "stopped"
            assert not _alive(pid)
    app.extensions["procman"].shutdown(stop_processes=True)
    assert os.path.exists(tmp_path / "inst" / "procman.sqlite3")
