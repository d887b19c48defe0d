"""Many workers (separate OS processes) sharing one database and log folder; crashes and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import typing as t

import psutil
import pytest
import workerapp
from conftest import present, stop_everything, wait_until
from flask import Flask

from flask_procman import ProcMan

HERE = os.path.dirname(__file__)


class Workers:
    """Environment shared by the worker subprocesses and the test's own app."""

    def __init__(self, tmp_path: t.Any, database_uri: str) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "WORKER_INSTANCE": str(tmp_path / "instance"),
            "WORKER_DB": database_uri,
            "WORKER_LOGS": str(tmp_path / "logs"),
            "WORKER_HANDLER_LOG": str(tmp_path / "handler.log"),
            "WORKER_CAP": "20",
            "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.procs: list[subprocess.Popen[str]] = []
        self.apps: list[Flask] = []

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "workerapp.py"), *args],
                                env={**self.env, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def app(self, **env: str) -> Flask:
        """An app in this test process, configured like the workers (a fresh ProcMan each)."""
        old = dict(os.environ)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("WORKER_")}, **env)
        try:
            workerapp.procman = ProcMan()
            workerapp.procman.on_complete("record")(workerapp.record)
            app = workerapp.create_app()
        finally:
            os.environ.clear()
            os.environ.update(old)
        self.apps.append(app)
        return app

    def handler_runs(self) -> list[list[str]]:
        path = self.tmp_path / "handler.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for app in self.apps:
            stop_everything(app)


@pytest.fixture
def workers(tmp_path: t.Any, database_uri: str) -> t.Iterator[Workers]:
    w = Workers(tmp_path, database_uri)
    yield w
    w.close()


def _max_overlap(path: t.Any) -> int:
    """The largest number of [start, end] intervals (one line each) open at the same instant."""
    events = []
    for line in path.read_text().splitlines():
        start, end = map(float, line.split())
        events += [(start, 1), (end, -1)]
    peak = running = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts on ties
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("queue", [False, True], ids=["refuse", "queue"])
def test_the_cap_is_global_across_os_processes(workers: Workers, queue: bool) -> None:
    cap, per_worker = 3, 50
    go = workers.tmp_path / "go"
    workers.env["WORKER_CAP"] = str(cap)  # every manager of a deployment shares its config
    # A worker owns the queued starts it promotes, whoever queued them; with several workers,
    # processes must outlive the worker that happened to start them (see README, gunicorn).
    workers.env["WORKER_STOP_ON_EXIT"] = "0"
    intervals = workers.tmp_path / "intervals.txt"
    workers.env["WORKER_INTERVALS"] = str(intervals)
    workers.app().extensions["procman"].stats()  # create the table before the burst
    procs = [workers.spawn("burst", str(per_worker), f"w{n}", "0.05", *(["queue"] if queue else []),
                           WORKER_GO=str(go)) for n in range(4)]
    peak_db = 0
    app = workers.apps[0]
    stop = threading.Event()

    def sample_db() -> None:
        nonlocal peak_db
        with app.app_context():
            while not stop.is_set():
                peak_db = max(peak_db, app.extensions["procman"].store.count_by_status().get("running", 0))

    sampler = threading.Thread(target=sample_db)
    sampler.start()
    go.touch()
    try:
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        stop.set()
        sampler.join()
    answers: dict[str, bool] = {}
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        answers.update(json.loads(out))
    assert len(answers) == 4 * per_worker
    assert peak_db <= cap
    assert peak_db >= 1
    started = {pid for pid, ok in answers.items() if ok}
    with app.app_context():
        for pid in started:  # promoted by a worker that has exited since: adopted here
            app.extensions["procman"].wait(pid, timeout=30)
        records = {p["id"]: p for p in app.extensions["procman"].list_processes()}
    assert set(records) == started  # every True is recorded, no False is
    bad = {pid: (r["status"], r["return_code"], r["error"]) for pid, r in records.items()
           if (r["status"], r["return_code"]) != ("completed", 0)}
    assert not bad
    assert len(intervals.read_text().splitlines()) == len(started)
    assert 1 <= _max_overlap(intervals) <= cap  # never more than the cap at any instant
    if queue:
        assert len(started) == 4 * per_worker
    else:
        assert 0 < len(started) < 4 * per_worker


def test_any_worker_lists_reads_and_stops_what_another_started(workers: Workers) -> None:
    worker = workers.spawn("start", "shared:60")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    app = workers.app()
    pm = app.extensions["procman"]
    with app.app_context():
        assert [p["id"] for p in pm.list_processes("running")] == ["shared"]
        wait_until(lambda: pm.read_output("shared", "stdout", 0, 100)[0].startswith(b"shared line 0"), message="output")
        assert pm.stop_process("shared", timeout=2)
        status = pm.get_process_status("shared")
    assert status["status"] == "stopped"
    assert worker.poll() is None  # the starting worker is alive and still owns the record
    wait_until(lambda: len(workers.handler_runs()) == 1, message="handler ran")
    assert workers.handler_runs()[0][:2] == ["shared", "-15"]


def test_a_reused_pid_is_never_signalled(workers: Workers) -> None:
    app = workers.app()
    pm = app.extensions["procman"]
    innocent = subprocess.Popen(["sleep", "60"])
    try:
        with app.app_context():
            pm.start_process("victim", [sys.executable, "-c", "pass"])
            pm.wait("victim", timeout=10)
            # Forge a running record whose pid now belongs to an unrelated process.
            pm.store.update("victim", status="running", pid=innocent.pid,
                            pid_started=psutil.Process(innocent.pid).create_time() - 1000,
                            owner="elsewhere|1|0|dead", finished_at=None, return_code=None)
            # Either the stop or the watcher's adoption (which sees the pid is not that process)
            # ends the record first; in both cases the unrelated process is never signalled.
            pm.stop_process("victim", timeout=1)
            assert innocent.poll() is None  # untouched
            assert pm.get_process_status("victim")["status"] in ("stopped", "lost", "completed")
    finally:
        innocent.kill()
        innocent.wait()


def test_a_killed_worker_loses_nothing(workers: Workers) -> None:
    ids = [f"job{i}" for i in range(10)]
    worker = workers.spawn("start", *[f"{pid}:1.5" for pid in ids])
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    app = workers.app()
    pm = app.extensions["procman"]
    with app.app_context():
        pids = {pid: pm.store.get(pid)["pid"] for pid in ids}
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    with app.app_context():
        finals = {pid: pm.wait(pid, timeout=30) for pid in ids}
        for pid in ids:
            assert finals[pid]["status"] == "completed", finals[pid]
            assert finals[pid]["return_code"] == len(pid) % 7
            data, _ = pm.read_output(pid, "stdout", 0, 1 << 20)
            assert data == "".join(f"{pid} line {i}\n" for i in range(30)).encode()
            assert pm.read_output(pid, "stderr")[0] == b"bye\n"
    wait_until(lambda: len(workers.handler_runs()) >= 10, timeout=15, message="handlers")
    runs = workers.handler_runs()
    assert sorted(r[0] for r in runs) == sorted(ids)  # each exactly once
    assert all(int(r[1]) == len(r[0]) % 7 for r in runs)
    assert {r[2] for r in runs} == {str(os.getpid())}  # run by the adopting manager
    assert all(pids.values())


def test_processes_outlive_a_worker_that_exits_and_are_adopted(workers: Workers) -> None:
    worker = workers.spawn("start", "outlive:1.0", WORKER_STOP_ON_EXIT="0")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    worker.communicate(input="")  # close stdin: the worker exits normally (atexit runs)
    assert worker.returncode == 0
    app = workers.app()
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.get_process_status("outlive")["status"] in ("running", "completed")
        final = pm.wait("outlive", timeout=20)
    assert (final["status"], final["return_code"]) == ("completed", len("outlive") % 7)
    wait_until(lambda: len(workers.handler_runs()) == 1, message="handler")


def test_a_zombie_counts_as_ended(workers: Workers) -> None:
    """A child whose manager died and that nobody reaps (PID 1 here does not) is ended, not running."""
    worker = workers.spawn("start", "orphan:1.0")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    worker.send_signal(signal.SIGSTOP)  # its manager is frozen (before the child ends): nobody reaps it
    app = workers.app()
    pm = app.extensions["procman"]
    with app.app_context():
        pid = pm.store.get("orphan")["pid"]
    try:
        wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10, message="zombie")
        from flask_procman.engine.local import Identity

        with app.app_context():
            row = pm.store.get("orphan")
        assert not Identity(pid, row["pid_started"]).is_alive()
    finally:
        worker.send_signal(signal.SIGCONT)
    with app.app_context():
        assert pm.wait("orphan", timeout=10)["status"] == "completed"


def test_a_handler_interrupted_by_its_workers_death_runs_again(workers: Workers) -> None:
    """The recorder died inside the durable handler: a later manager runs it (at least once)."""
    worker = workers.spawn("start", "dying:0.1", WORKER_HANG_IN_HANDLER="1")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    wait_until(lambda: len(workers.handler_runs()) == 1, message="handler began in the worker")
    assert workers.handler_runs()[0][2] == str(worker.pid)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    app = workers.app()
    with app.app_context():
        assert present(app.extensions["procman"].get_process_status("dying"))["status"] == "completed"
        wait_until(lambda: len(workers.handler_runs()) == 2, timeout=15, message="handler run again")
        wait_until(lambda: present(app.extensions["procman"].store.get("dying"))["handler_state"] == "done",
                   message="handler done")
    assert workers.handler_runs()[1][:3] == ["dying", str(len("dying") % 7), str(os.getpid())]


def test_a_process_of_another_host_is_stopped_by_a_request_its_owner_carries_out(workers: Workers) -> None:
    owner_app = workers.app()
    other_app = workers.app()
    other = other_app.extensions["procman"]
    other.host = "another-host"  # as if it ran on another machine sharing the database
    with owner_app.app_context():
        owner_app.extensions["procman"].start_process("far", ["sleep", "60"])
    with other_app.app_context():
        assert other.stop_process("far", timeout=1)  # it cannot signal: it asks the owner
        status = present(other.get_process_status("far"))
    assert (status["status"], status["return_code"]) == ("stopped", -15)
