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


def _refuse_signals_to(monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
    """Fault injection: the OS refuses to end ``pid`` (as for a process in uninterruptible sleep):
    signals sent to it through psutil are dropped."""
    real = psutil.Process.send_signal

    def send_signal(self: psutil.Process, sig: int) -> None:
        if self.pid != pid:
            real(self, sig)

    monkeypatch.setattr(psutil.Process, "send_signal", send_signal)


def test_a_daemon_that_survives_sigkill_is_listed_in_the_record_and_the_answer(
        make_app: AppFactory, pidfile: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=0.5, PROCMAN_API_TOKEN="test-token-0123456789")
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.start_process("d", [PY, "-c", DAEMON, str(pidfile), "stay"])
        daemon = _daemon_pid(pidfile)
    _refuse_signals_to(monkeypatch, daemon)
    answer = app.test_client().post("/procman/api/processes/d/stop",
                                    headers={"Authorization": "Bearer test-token-0123456789"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["survivors"] == [daemon] and body["process"]["survivors"] == [daemon]
    assert f"still alive after SIGKILL: [{daemon}]" in body["process"]["error"]
    assert not _gone(daemon)


def test_a_daemon_left_by_an_ended_job_that_survives_sigkill_is_recorded(
        make_app: AppFactory, pidfile: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=0.5)
    pm = app.extensions["procman"]
    go = pidfile.parent / "go"
    # The main process waits for "go" before ending, so that the fault is in place before the sweep.
    wait_for_go = f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\n"
    script = DAEMON.replace('if mode == "end":', wait_for_go + 'if mode == "end":')
    with app.app_context():
        assert pm.start_process("d", [PY, "-c", script, str(pidfile), "end"])
        daemon = _daemon_pid(pidfile)
        _refuse_signals_to(monkeypatch, daemon)
        go.touch()
        assert pm.wait("d", timeout=30)["status"] == "completed"
        status = wait_until(lambda: (s := pm.get_process_status("d")) and s["survivors"] and s, timeout=20,
                            message="the survivor in the record")
    assert status["survivors"] == [daemon] and "still alive after SIGKILL" in status["error"]
    assert status["status"] == "completed" and status["return_code"] == 0
