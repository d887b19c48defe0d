"""Load: 2,000 short processes (``true``) started through the REST API of a gunicorn server with 2
sync workers, by 8 client threads spread over 2 client OS processes, with ``"queue": true``, a cap
of 8 and ``PROCMAN_STOP_ON_EXIT`` False. Eight one-second holders fill the slots first, so that the
starts queue and the promotion of queued starts by both workers carries the load.

Checked: the cap is never exceeded (a sampling thread reads the database's running count and counts
the workers' live children), every one of the 2,000 known ids reaches ``completed`` with code 0,
and the gunicorn workers leak no file descriptor, thread or zombie (compared after a warm-up).
The total time and the rate are printed (``pytest -s``) and recorded with ``record_property``.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t

import psutil
import pytest
import requests
from conftest import free_port, no_control_socket, wait_until
from rel_support import HERE

from flask_procman.runtime import CALLBACK_THREADS

TOKEN = "load-token-5e0c1f2a9b8d7c6e"
CAP = 8
CLIENT_PROCESSES, THREADS_PER_CLIENT, PER_THREAD = 2, 4, 250  # 2 x 4 x 250 = 2,000
TOTAL = CLIENT_PROCESSES * THREADS_PER_CLIENT * PER_THREAD


class Server:
    """gunicorn serving ``rel_loadapp`` on a free port; the records are a SQLite file on tmp_path."""

    def __init__(self, tmp_path: t.Any) -> None:
        self.db = str(tmp_path / "instance" / "procman.sqlite3")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "gunicorn.log"
        env = {
            **os.environ,
            "LOAD_INSTANCE": str(tmp_path / "instance"), "LOAD_DB": f"sqlite:///{self.db}",
            "LOAD_LOGS": str(tmp_path / "logs"), "LOAD_CAP": str(CAP), "LOAD_TOKEN": TOKEN,
            "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "sync", "--timeout", "120",
                 "--bind", f"127.0.0.1:{self.port}", *no_control_socket(), "rel_loadapp:create_app()"],
                env=env, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return str(self.log_path.read_text(errors="replace"))

    def workers(self) -> list[int]:
        return sorted(c.pid for c in psutil.Process(self.proc.pid).children())

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(f"{self.url}/procman/api/health", timeout=2).status_code == 200 \
                and len(self.workers()) == 2
        except requests.ConnectionError:
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _clients(server: Server, prefix: str, processes: int, threads: int, per_thread: int) -> list[dict[str, t.Any]]:
    """Run ``processes`` client OS processes at once; their JSON summaries."""
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "rel_loadclient.py"), server.url, TOKEN,
                               f"{prefix}{n}", str(threads), str(per_thread)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(processes)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def _counts(db: str, prefix: str) -> dict[tuple[str, int | None], int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT status, return_code, count(*) FROM procman_processes WHERE id LIKE ? "
                            "GROUP BY status, return_code", (prefix + "%",)).fetchall()
    return {(status, code): count for status, code, count in rows}


def _all_final(db: str, prefix: str, total: int) -> bool:
    return _counts(db, prefix).get(("completed", 0), 0) == total


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _live_children(pid: int) -> int:
    count = 0
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                count += 1
        except psutil.NoSuchProcess:
            pass
    return count


def _live_children_of(parents: list[int]) -> int:
    """Live (non-zombie) children of ``parents``, from one pass over /proc/*/stat (psutil's
    ``children()`` would scan /proc once per parent: too slow for a sampler on a busy machine)."""
    wanted = set(parents)
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in wanted and fields[0] != b"Z":
            count += 1
    return count


def _zombies(pid: int) -> list[int]:
    found = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def _fd_kinds(pid: int) -> dict[str, int]:
    """What a worker's fds point to, by kind (a file's name without its folder, ``pipe``, ``pidfd``...)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/"):
            kind = os.path.basename(target)
        else:  # pipe:[123], socket:[456], anon_inode:[pidfd], anon_inode:[eventpoll]
            kind = target if target.startswith("anon_inode:") else target.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


DB_FILE = "procman.sqlite3"


def _without_db(kinds: dict[str, int]) -> dict[str, int]:
    """The fd kinds other than the SQLite connections' files (database, WAL; the shm is shared)."""
    return {kind: n for kind, n in kinds.items() if kind not in (DB_FILE, DB_FILE + "-wal")}


def _footprint(workers: list[int]) -> dict[int, tuple[int, int]]:
    """``{worker: (open fds, threads)}``."""
    return {pid: (_fds(pid), psutil.Process(pid).num_threads()) for pid in workers}


# --junitxml with the default xunit2 family warns about record_property (the figures are then only printed).
@pytest.mark.filterwarnings("ignore:record_property is incompatible with junit_family:pytest.PytestWarning")
def test_2000_short_processes_through_the_rest_api(tmp_path: t.Any, record_property: t.Callable[[str, t.Any], None]) -> None:
    server = Server(tmp_path)
    try:
        wait_until(server.ready, timeout=30, message="gunicorn up")
        workers = server.workers()

        # Warm-up: every worker has served requests, recorded ends and run its callbacks; the
        # database connection pools and the callback threads exist.
        for round_ in range(2):
            warm = _clients(server, f"warm{round_}-", 1, 4, 25)
            assert warm[0]["codes"].get("201", 0) + warm[0]["codes"].get("202", 0) == 100, warm
            all_final = functools.partial(_all_final, server.db, f"warm{round_}-", 100)
            wait_until(all_final, timeout=60, message="warm-up done")
        wait_until(lambda: not any(_live_children(pid) or _zombies(pid) for pid in workers), message="idle")
        before = _footprint(workers)
        kinds_before = {pid: _fd_kinds(pid) for pid in workers}

        # The load, with a sampler of the running count (database) and of live processes (OS).
        peaks = {"db": 0, "os": 0, "samples": 0}
        stop = threading.Event()

        def sample() -> None:
            conn = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True, timeout=30)
            try:
                while not stop.is_set():
                    running = conn.execute("SELECT count(*) FROM procman_processes WHERE status = 'running'").fetchone()[0]
                    live = _live_children_of(workers)
                    peaks["db"], peaks["os"] = max(peaks["db"], running), max(peaks["os"], live)
                    peaks["samples"] += 1
                    stop.wait(0.002)  # pacing, not synchronisation
            finally:
                conn.close()

        sampler = threading.Thread(target=sample, name="load-sampler")
        sampler.start()
        # Eight one-second holders take every slot: the load's first starts queue behind them, and
        # from then on queued starts are first in line, so the queue and its promotion by both
        # workers' watchers carry the load (the cap is reached, not just approached).
        with requests.Session() as session:
            for n in range(CAP):
                answer = session.post(f"{server.url}/procman/api/programs/hold/start", timeout=30,
                                      headers={"Authorization": f"Bearer {TOKEN}"},
                                      json={"process_id": f"hold-{n}", "queue": True})
                assert answer.status_code == 201, answer.text
        started = time.monotonic()
        try:
            results = _clients(server, "load", CLIENT_PROCESSES, THREADS_PER_CLIENT, PER_THREAD)
            requests_done = time.monotonic() - started
            wait_until(lambda: _all_final(server.db, "load", TOTAL), timeout=120, interval=0.05,
                       message=f"all {TOTAL} completed")
            total = time.monotonic() - started
        finally:
            stop.set()
            sampler.join()

        codes: dict[str, int] = {}
        for result in results:
            assert not result["failures"], result["failures"]
            for code, count in result["codes"].items():
                codes[code] = codes.get(code, 0) + count
        assert codes.get("201", 0) + codes.get("202", 0) == TOTAL, codes
        assert {pid for r in results for pid in r["workers"]} == {str(pid) for pid in workers}  # both served
        with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
            ids = {row[0] for row in conn.execute(
                "SELECT id FROM procman_processes WHERE id LIKE 'load%' AND status = 'completed' AND return_code = 0")}
        expected = {f"load{c}-{th}-{i}" for c in range(CLIENT_PROCESSES) for th in range(THREADS_PER_CLIENT)
                    for i in range(PER_THREAD)}
        assert ids == expected  # every one of the 2,000 known ids, completed with 0
        assert _all_final(server.db, "hold-", CAP)
        assert codes.get("202", 0) > 0  # the queue was used
        assert peaks["samples"] > 10
        assert peaks["db"] == CAP and peaks["os"] <= CAP, peaks  # reached, never exceeded

        rate = TOTAL / total
        record_property("load_processes", TOTAL)
        record_property("load_total_seconds", round(total, 2))
        record_property("load_requests_seconds", round(requests_done, 2))
        record_property("load_processes_per_second", round(rate, 1))
        record_property("load_peak_running_db", peaks["db"])
        record_property("load_peak_live_os", peaks["os"])
        record_property("load_status_codes", json.dumps(codes))
        print(f"\nload: {TOTAL} processes through the REST API (2 gunicorn workers, 8 client threads in 2 "
              f"processes, cap {CAP}): all answered in {requests_done:.2f} s, all completed in {total:.2f} s "
              f"= {rate:.0f} processes/s; peak running {peaks['db']} (db) / {peaks['os']} (os) over "
              f"{peaks['samples']} samples; answers {codes}; worker (fds, threads) after warm-up {before}, "
              f"after the load {_footprint(workers)}")
        # Nothing leaked in the workers: the same fds as after the warm-up, no zombie. Two pools may
        # still grow lazily to their bounds, never beyond: the callback threads (to
        # CALLBACK_THREADS, beside the main thread and the watcher) and the database connections
        # (one per thread that uses the database at once). A leak of 2,000 would show either way.
        assert server.workers() == workers  # no worker was restarted
        most_threads = 2 + CALLBACK_THREADS

        def settled() -> bool:
            for pid in workers:
                kinds, old = _fd_kinds(pid), kinds_before[pid]
                threads = psutil.Process(pid).num_threads()
                if not before[pid][1] <= threads <= most_threads or _without_db(kinds) != _without_db(old) \
                        or max(kinds.get(DB_FILE, 0), kinds.get(DB_FILE + "-wal", 0)) > threads:
                    return False
            return True

        wait_until(settled, timeout=10, message=f"worker fds/threads back to {before} {kinds_before} "
                                                f"(now {_footprint(workers)} {[_fd_kinds(pid) for pid in workers]})")
        assert not any(_zombies(pid) for pid in workers)
    finally:
        server.close()
