"""Faults: a manager SIGKILLed mid-write, a read-only or full log folder, a disk filled by a running
process, a job that forks 200 children and exits, a child that closes stdout early, a child that
ignores SIGTERM, and the SQLite database locked for seconds by another writer.

Every wait is on an event (a line on a pipe, a file, a record) or a poll with a deadline; sleeps
only happen inside child processes. The PostgreSQL outage is in ``test_reliability_db_outage.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t

import pytest
from conftest import AppFactory, present, py, wait_until
from flask import Flask
from rel_support import (
    HERE,
    all_problems,
    fill_inodes,
    kill_marked,
    marked_alive,
    remount,
    tmpfs,
)
from test_workers import Workers

from flask_procman import ProcMan, ProcManError, StartError
from flask_procman.engine.local import Identity
from flask_procman.manager import Manager
from flask_procman.store import FINAL


def _manager(app: Flask) -> Manager:
    return t.cast(Manager, app.extensions["procman"])


# ------------------------------------------------------------------ SIGKILL while writing --------
#: A writer: 400 stdout lines (each with every byte value, so the log is not text) and a stderr
#: line every 10, one small write at a time, then the exit given as argv[3] ("term" = own SIGTERM).
WRITER = r"""
import os, signal, sys, time
name, lines, how = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
for i in range(lines):
    os.write(1, b"%s %05d " % (name, i) + bytes(range(256)) + b"\n")
    if i % 10 == 0:
        os.write(2, b"%s err %05d\n" % (name, i))
    time.sleep(0.004)
if how == "term":
    os.kill(os.getpid(), signal.SIGTERM)
sys.exit(int(how))
"""
LINES = 400


def _expected(name: str) -> tuple[bytes, bytes]:
    out = b"".join(b"%s %05d " % (name.encode(), i) + bytes(range(256)) + b"\n" for i in range(LINES))
    err = b"".join(b"%s err %05d\n" % (name.encode(), i) for i in range(0, LINES, 10))
    return out, err


@pytest.fixture
def workers(tmp_path: t.Any, database_uri: str) -> t.Iterator[Workers]:
    """Worker processes (tests/workerapp.py's app) on SQLite and PostgreSQL, cleaned up after."""
    w = Workers(tmp_path, database_uri)
    yield w
    w.close()


def test_sigkill_while_writing_keeps_byte_exact_logs_and_real_return_codes(workers: Workers) -> None:
    """The manager is SIGKILLed while its children write: another manager adopts them; logs are
    byte-exact, return codes are the real ones (0, 3, death by SIGTERM) and each handler runs once."""
    exits = {"k-zero": "0", "k-three": "3", "k-term": "term"}
    specs = [{"id": pid, "cmd": [sys.executable, "-c", WRITER, pid, str(LINES), how]} for pid, how in exits.items()]
    worker = subprocess.Popen([sys.executable, os.path.join(HERE, "rel_worker.py"), json.dumps(specs)],
                              env=workers.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    workers.procs.append(worker)
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started", worker.stderr
    app = workers.app()
    pm = _manager(app)
    line = len(_expected("k-zero")[0]) // LINES
    with app.app_context():
        # Kill once every child has written a good part of its output, but not all of it.
        wait_until(lambda: all(pm.read_output(pid, "stdout", 0, 1 << 20)[1] >= 40 * line for pid in exits),
                   timeout=20, message="children writing")
        sizes = {pid: pm.read_output(pid, "stdout", 0, 1 << 20)[1] for pid in exits}
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert all(size < LINES * line for size in sizes.values()), "the children ended before the kill"
        assert all(present(pm.get_process_status(pid))["status"] == "running" for pid in exits)
        finals = {pid: pm.wait(pid, timeout=30) for pid in exits}
        for pid in exits:
            out, err = _expected(pid)
            assert pm.read_output(pid, "stdout", 0, 1 << 20) == (out, len(out))
            assert pm.read_output(pid, "stderr", 0, 1 << 20) == (err, len(err))
        rows = pm.store.page()[0]
    codes = {pid: (final["status"], final["return_code"]) for pid, final in finals.items()}
    assert codes == {"k-zero": ("completed", 0), "k-three": ("completed", 3), "k-term": ("completed", -15)}
    assert not all_problems(rows)
    wait_until(lambda: len(workers.handler_runs()) >= 3, timeout=15, message="handlers")
    runs = sorted((r[0], r[1]) for r in workers.handler_runs())
    assert runs == [("k-term", "-15"), ("k-three", "3"), ("k-zero", "0")]  # once each, real codes


# ------------------------------------------------------------------ log folder: read-only, full --
def test_read_only_log_folder_fails_starts_clearly_and_leaves_no_half_record(make_app: AppFactory,
                                                                              tmp_path: t.Any) -> None:
    logs = str(tmp_path / "logs")
    with tmpfs(logs, "size=2m"):
        app = make_app()
        pm = _manager(app)
        with app.app_context():
            pm.stats()  # engine up (it creates the log folder)
            remount(logs, "ro")
            with pytest.raises(StartError, match="Read-only file system"):
                pm.start_process("ro-direct", ["true"])
            rows = {r["id"]: r for r in pm.store.page()[0]}
            assert rows["ro-direct"]["status"] == "failed"
            assert "Read-only file system" in rows["ro-direct"]["error"]
            assert not [r for r in rows.values() if r["status"] == "running"]
            assert not all_problems(rows.values())
            remount(logs, "rw")
            assert pm.start_process("ro-direct", py("print('back')"))  # the id is reusable
            assert pm.wait("ro-direct", timeout=10)["stdout"] == "back\n"


def test_queued_start_with_env_on_a_read_only_log_folder_is_a_start_error(make_app: AppFactory,
                                                                           tmp_path: t.Any) -> None:
    """A queued start keeps its env in a private file; when it cannot be written the start fails
    with StartError (not a raw OSError) and nothing is recorded."""
    logs = str(tmp_path / "logs")
    with tmpfs(logs, "size=2m"):
        app = make_app(PROCMAN_MAX_PROCESSES=0)  # every start is queued
        pm = _manager(app)
        with app.app_context():
            pm.stats()
            remount(logs, "ro")
            with pytest.raises(StartError, match="Read-only file system"):
                pm.start_process("queued-env", ["true"], env={"TOKEN": "x"}, queue=True)
            assert pm.get_process_status("queued-env") is None
            remount(logs, "rw")
            assert pm.start_process("queued-env", ["true"], env={"TOKEN": "x"}, queue=True)
            assert present(pm.get_process_status("queued-env"))["status"] == "queued"
            assert pm.stop_process("queued-env")


def test_full_log_folder_fails_starts_clearly_and_the_id_is_reusable(make_app: AppFactory, tmp_path: t.Any) -> None:
    """No inode left: the start fails with StartError naming ENOSPC, a final ``failed`` record, no
    running record; once space is back the same id starts."""
    logs = str(tmp_path / "logs")
    with tmpfs(logs, "size=2m,nr_inodes=64"):
        app = make_app()
        pm = _manager(app)
        with app.app_context():
            pm.stats()  # engine up
            filler = os.path.join(logs, "filler")
            os.mkdir(filler)
            assert fill_inodes(filler) > 0
            with pytest.raises(StartError, match="No space left on device") as caught:
                pm.start_process("full", ["true"])
            assert isinstance(caught.value, ProcManError)
            status = present(pm.get_process_status("full"))
            assert status["status"] == "failed" and "No space left" in status["error"]
            assert pm.stats()["running"] == 0
            for name in os.listdir(filler):
                os.unlink(os.path.join(filler, name))
            assert pm.start_process("full", py("print('room again')"))
            assert pm.wait("full", timeout=10)["stdout"] == "room again\n"


def test_a_process_that_fills_the_disk_fails_alone(make_app: AppFactory, tmp_path: t.Any) -> None:
    """Its own writes fail (ENOSPC, its exit code here); the manager survives, the status and the
    output are readable, and other processes still start and are recorded."""
    fill = ("import os, sys\n"
            "chunk = b'x' * 4096\n"
            "try:\n"
            "    while True:\n"
            "        os.write(1, chunk)\n"
            "except OSError as exc:\n"
            "    os._exit(exc.errno)\n")
    logs = str(tmp_path / "logs")
    with tmpfs(logs, "size=2m"):
        app = make_app()
        pm = _manager(app)
        with app.app_context():
            assert pm.start_process("filler", py(fill))
            final = pm.wait("filler", timeout=20)
            assert (final["status"], final["return_code"]) == ("completed", 28)  # ENOSPC
            assert "exited with code 28" in final["error"]
            data, end = pm.read_output("filler", "stdout", 0, 4 << 20)
            assert 1 << 20 < end == len(data) <= 2 << 20 and set(data) == {ord("x")}
            # The disk is still full: a start still works (empty files need no block), and ends.
            assert pm.start_process("while-full", ["true"])
            assert pm.wait("while-full", timeout=10)["status"] == "completed"
            assert pm.remove_process("filler")
            assert pm.start_process("after", py("print('fine')"))
            assert pm.wait("after", timeout=10)["stdout"] == "fine\n"
            assert not all_problems(pm.store.page()[0])


# ------------------------------------------------------------------ a job that forks 200 ---------
#: Forks 200 children that stay (every other one ignores SIGTERM), waits until each is set up,
#: then exits 0 (argv[2] == "exit") or stays until stopped (argv[2] == "stay").
FORKER = r"""
import os, signal, sys, time
r, w = os.pipe()
for i in range(200):
    if os.fork() == 0:
        os.close(r)
        if i % 2:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(w, b"x")
        while True:
            time.sleep(60)
os.close(w)
got = 0
while got < 200:
    got += len(os.read(r, 200 - got))
print("forked", flush=True)
if sys.argv[2] == "stay":
    while True:
        time.sleep(60)
"""


def _forker(marker: str, mode: str) -> list[str]:
    return [sys.executable, "-c", FORKER, marker, mode]


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> t.Iterator[str]:
    """A unique command-line marker; whatever still carries it is killed after the test."""
    value = f"procman-rel-{request.node.name}-{os.getpid()}".replace("[", "-").replace("]", "")
    yield value
    kill_marked(value)


def test_children_left_by_a_finished_job_are_stopped_within_the_grace(make_app: AppFactory, marker: str) -> None:
    app = make_app()  # PROCMAN_STOP_TIMEOUT=2.0
    pm = _manager(app)
    with app.app_context():
        pm.start_process("forker", _forker(marker, "exit"))
        final = pm.wait("forker", timeout=30)
        ended = time.monotonic()
    assert (final["status"], final["return_code"], final["stdout"]) == ("completed", 0, "forked\n")
    assert marked_alive(marker)  # the SIGTERM-ignoring half waits for the SIGKILL after the grace
    wait_until(lambda: not marked_alive(marker), timeout=2.0 + 1.5, message="the 200 children gone")
    assert time.monotonic() - ended < 2.0 + 1.5


def test_shutdown_right_after_a_job_ended_leaves_none_of_its_200_children(make_app: AppFactory,
                                                                          marker: str) -> None:
    """The leftovers of a finished job are still being stopped when the manager shuts down: the
    shutdown finishes that stop (SIGKILL after the grace) instead of dropping it."""
    app = make_app()
    pm = _manager(app)
    with app.app_context():
        pm.start_process("forker", _forker(marker, "exit"))
        assert pm.wait("forker", timeout=30)["status"] == "completed"
    assert marked_alive(marker)  # the SIGTERM-ignoring half, within the grace
    started = time.monotonic()
    pm.shutdown(stop_processes=True)
    assert time.monotonic() - started < 2.0 + 1.0
    wait_until(lambda: not marked_alive(marker), timeout=0.5, message="no child left after shutdown")


@pytest.mark.parametrize("how", ["stop", "shutdown"])
def test_stop_and_shutdown_of_a_running_job_kill_its_200_children(make_app: AppFactory, marker: str,
                                                                  how: str) -> None:
    app = make_app()
    pm = _manager(app)
    with app.app_context():
        pm.start_process("forker", _forker(marker, "stay"))
        wait_until(lambda: pm.read_output("forker")[0] == b"forked\n", timeout=30, message="forked")
        assert len(marked_alive(marker)) == 202  # the /bin/sh wrapper, the job and its 200 children
        started = time.monotonic()
        if how == "stop":
            assert pm.stop_process("forker", timeout=1.0)
        else:
            pm.shutdown(stop_processes=True)
        took = time.monotonic() - started
        assert not marked_alive(marker)
        status = present(pm.get_process_status("forker"))
    assert took < 1.0 + 2.0 + 1.0
    assert (status["status"], status["return_code"]) == ("stopped", -15)


# ------------------------------------------------------------------ odd children -----------------
def test_a_child_that_closes_stdout_early_is_still_tracked(make_app: AppFactory, tmp_path: t.Any) -> None:
    go = tmp_path / "go"
    code = ("import os, sys, time\n"
            "os.write(1, b'before close\\n')\n"
            "os.close(1)\n"
            "os.write(2, b'after close\\n')\n"
            f"while not os.path.exists({str(go)!r}):\n"
            "    time.sleep(0.01)\n"
            "os.write(2, b'bye\\n')\n"
            "sys.exit(5)\n")
    app = make_app()
    pm = _manager(app)
    with app.app_context():
        pm.start_process("closer", py(code))
        wait_until(lambda: pm.read_output("closer", "stderr")[0] == b"after close\n", message="stdout closed")
        status = present(pm.get_process_status("closer"))
        started = present(pm.store.get("closer"))["pid_started"]
        assert status["status"] == "running" and Identity(status["pid"], started).is_alive()
        go.touch()
        final = pm.wait("closer", timeout=10)
    assert (final["status"], final["return_code"]) == ("completed", 5)
    assert (final["stdout"], final["stderr"]) == ("before close\n", "after close\nbye\n")
    assert final["error"] == "after close\nbye\n"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(make_app: AppFactory) -> None:
    """``stop_process`` returns within grace + 1 s with -9; a timeout on such a child escalates too."""
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    app = make_app()  # PROCMAN_STOP_TIMEOUT=2.0 (used by the timeout's escalation)
    pm = _manager(app)
    with app.app_context():
        pm.start_process("stubborn", py(code))
        pm.start_process("stubborn-timeout", py(code), timeout=0.3)
        wait_until(lambda: pm.read_output("stubborn")[0] == b"ready\n", message="ready")
        started = time.monotonic()
        assert pm.stop_process("stubborn", timeout=1.0)
        took = time.monotonic() - started
        final = present(pm.get_process_status("stubborn"))
        timed = pm.wait("stubborn-timeout", timeout=10)
    assert 1.0 <= took < 1.0 + 1.0
    assert (final["status"], final["return_code"]) == ("stopped", -9)
    assert (timed["status"], timed["return_code"]) == ("timed_out", -9)


# ------------------------------------------------------------------ SQLite locked by another writer
LOCKER = ("import sqlite3, sys, time\n"
          "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
          "conn.execute('BEGIN EXCLUSIVE')\n"
          "print('locked', flush=True)\n"
          "time.sleep(float(sys.argv[2]))\n"
          "conn.execute('COMMIT')\n"
          "print('released', flush=True)\n")


def test_sqlite_locked_for_seconds_loses_and_duplicates_nothing(make_app: AppFactory, tmp_path: t.Any) -> None:
    """Another connection holds ``BEGIN EXCLUSIVE`` for 2 s: a start waits (busy timeout) and then
    succeeds; processes that ended meanwhile are recorded afterwards with their real codes; each
    durable handler runs once; no record is duplicated."""
    ext = ProcMan()
    runs: list[tuple[str, int | None]] = []

    @ext.on_complete("count")
    def count(process_id: str, return_code: int | None) -> None:
        runs.append((process_id, return_code))

    go = tmp_path / "go"
    app = make_app(procman=ext)
    pm = _manager(app)
    wait_go = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\nsys.exit(int(sys.argv[1]))\n"
    with app.app_context():
        for pid, code in (("ends-3", "3"), ("ends-4", "4")):
            pm.start_process(pid, [*py(wait_go), code], handler="count")
        identities = {pid: Identity(row["pid"], row["pid_started"]) for pid in ("ends-3", "ends-4")
                      if (row := pm.store.get(pid))}
        db_path = pm.settings.database_uri.removeprefix("sqlite:///")
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, db_path, "2.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        go.touch()  # both children end now, while the database is locked
        result: dict[str, t.Any] = {}

        def start_during_lock() -> None:
            with app.app_context():
                try:
                    result["ok"] = pm.start_process("during", py("print('late')"), handler="count")
                except ProcManError as exc:  # failing clearly would be acceptable too
                    result["error"] = exc
                result["at"] = time.monotonic()

        starter = threading.Thread(target=start_during_lock)
        starter.start()
        wait_until(lambda: not any(i.is_alive() for i in identities.values()), message="children ended")
        with app.app_context():
            seen = {pid: present(pm.get_process_status(pid))["status"] for pid in identities}  # reads still work (WAL)
        still_locked = locker.poll() is None
        if still_locked:
            assert seen == {"ends-3": "running", "ends-4": "running"}  # their ends wait for the lock
            assert starter.is_alive()  # the start waits for the lock too
        assert locker.stdout.readline().strip() == "released"
        starter.join(timeout=40)
        assert not starter.is_alive()
    finally:
        if locker.poll() is None:
            locker.kill()
        locker.communicate()
    if "error" in result:
        assert "locked" in str(result["error"]) or "database" in str(result["error"])
    else:
        assert result["ok"] is True and result["at"] - locked_at >= 1.5  # it waited for the lock
    with app.app_context():
        finals = {pid: pm.wait(pid, timeout=15) for pid in ("ends-3", "ends-4")}
        if result.get("ok"):
            assert pm.wait("during", timeout=15)["stdout"] == "late\n"
        rows = pm.store.page()[0]
    assert {pid: (f["status"], f["return_code"]) for pid, f in finals.items()} == {
        "ends-3": ("completed", 3), "ends-4": ("completed", 4)}
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows})
    assert all(r["status"] in FINAL for r in rows) and not all_problems(rows)
    expected = {("ends-3", 3), ("ends-4", 4)} | ({("during", 0)} if result.get("ok") else set())
    wait_until(lambda: len(runs) >= len(expected), message="handlers")
    assert sorted(runs) == sorted(expected)  # once each
