"""A stop ends everything the run started, daemons included: a double-forked daemon (setsid, fork,
re-parented to init) is found by the run tag in its environment, at a stop, a timeout and the end of
the job's main process."""

from __future__ import annotations

import typing as t

import psutil
import pytest
from conftest import PY, AppFactory, wait_until

#: ``daemon.py PIDFILE MODE``: double-forks a daemon (that ignores SIGTERM when MODE is "stubborn")
#: which writes its pid to PIDFILE; the main process then sleeps ("stay", "stubborn") or exits 0
#: once the daemon is up ("end").
DAEMON = """
import os, signal, sys, time
pidfile, mode = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        time.sleep(3600)
        os._exit(0)
    os._exit(0)
os.wait()
while not os.path.exists(pidfile):
    time.sleep(0.01)
if mode == "end":
    sys.exit(0)
time.sleep(3600)
"""


@pytest.fixture
def pidfile(tmp_path: t.Any) -> t.Iterator[t.Any]:
    """Where the daemon writes its pid; a daemon still alive after the test is killed (by its pid)."""
    path = tmp_path / "daemon.pid"
    yield path
    if path.exists():
        try:
            psutil.Process(int(path.read_text())).kill()
        except psutil.NoSuchProcess:
            pass


def _gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie nobody reaps counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _daemon_pid(pidfile: t.Any) -> int:
    wait_until(pidfile.exists, timeout=20, message="the daemon's pid file")
    pid = int(pidfile.read_text())
    assert not _gone(pid)
    assert psutil.Process(pid).ppid() != psutil.Process().pid  # it left the job's tree
    return pid


@pytest.mark.parametrize("mode", ["stay", "stubborn"])
def test_a_stop_ends_a_double_forked_daemon(make_app: AppFactory, pidfile: t.Any, mode: str) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=1.0)
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.start_process("d", [PY, "-c", DAEMON, str(pidfile), mode])
        daemon = _daemon_pid(pidfile)
        assert pm.stop_process("d")
        status = pm.get_process_status("d")
    assert status is not None and status["status"] == "stopped" and status["survivors"] == []
    assert _gone(daemon), "the daemon outlived the stop"


def test_a_timeout_ends_a_double_forked_daemon(make_app: AppFactory, pidfile: t.Any) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=1.0)
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.start_process("d", [PY, "-c", DAEMON, str(pidfile), "stubborn"], timeout=1.5)
        daemon = _daemon_pid(pidfile)
        final = pm.wait("d", timeout=30)
    assert final["status"] == "timed_out"
    wait_until(lambda: _gone(daemon), timeout=10, message="the daemon to be killed")


def test_the_end_of_the_main_process_ends_its_daemon(make_app: AppFactory, pidfile: t.Any) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=1.0)
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.start_process("d", [PY, "-c", DAEMON, str(pidfile), "end"])
        final = pm.wait("d", timeout=30)
        daemon = int(pidfile.read_text())
    assert (final["status"], final["return_code"]) == ("completed", 0)
    wait_until(lambda: _gone(daemon), timeout=10, message="the daemon to be stopped after the job's end")


def test_a_stop_over_http_ends_the_daemon(make_app: AppFactory, pidfile: t.Any) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=1.0, PROCMAN_API_TOKEN="test-token-0123456789")
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.start_process("d", [PY, "-c", DAEMON, str(pidfile), "stay"])
        daemon = _daemon_pid(pidfile)
    answer = app.test_client().post("/procman/api/processes/d/stop",
                                    headers={"Authorization": "Bearer test-token-0123456789"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["survivors"] == []
    assert _gone(daemon)
