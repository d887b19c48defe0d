"""Constant threads, no leaked fds and no zombies, whatever the number of processes."""

from __future__ import annotations

import os
import threading
import typing as t

import psutil
from conftest import AppFactory, count_fds, py, wait_until

from flask_procman import ProcMan


def _fds_outside(path: str) -> tuple[int, int]:
    """(fds not pointing into ``path``, fds that do): the database's are bounded by its pool."""
    inside = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        inside += target.startswith(path)
    return count_fds() - inside, inside


def _zombies() -> list[int]:
    return [c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]


def test_thousands_of_starts_leak_nothing(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=64)
    pm = t.cast(ProcMan, app.extensions["procman"].extension)
    with app.app_context():
        # Warm up: the engine, the callback pool and the connection pool reach their sizes.
        for i in range(100):
            assert pm.start_process(f"warm{i}", ["true"], queue=True)
        for i in range(100):
            pm.wait(f"warm{i}", timeout=10)
        database = app.extensions["procman"].settings.database_uri.removeprefix("sqlite:///")
        fds, _ = _fds_outside(database)
        threads = threading.active_count()
        ids = [f"p{i}" for i in range(1000)]
        for batch in range(0, len(ids), 50):
            for process_id in ids[batch:batch + 50]:
                assert pm.start_process(process_id, ["true"])
            assert threading.active_count() <= threads + 1  # the callback pool may add its 2nd thread
            for process_id in ids[batch:batch + 50]:
                assert pm.wait(process_id, timeout=30)["return_code"] == 0
        wait_until(lambda: not _zombies(), timeout=5, message="no zombies")
        others, in_database = _fds_outside(database)
        assert others == fds
        assert in_database <= 2 * 5 + 1  # at most pool_size connections (file + WAL each) + the shm map
        assert threading.active_count() <= threads + 1
        assert pm.stats()["by_status"] == {"completed": 1100}


def test_many_concurrent_processes_use_one_watcher_thread(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=200)
    pm = t.cast(ProcMan, app.extensions["procman"].extension)
    with app.app_context():
        before = threading.active_count()
        for i in range(200):
            assert pm.start_process(f"s{i}", py("import time; time.sleep(60)") if i == 0 else ["sleep", "60"])
        # main + watcher + at most 2 callback threads, whatever the number of processes
        assert threading.active_count() - before <= 3
        assert len(pm.stop_all(timeout=2)) == 200
        assert pm.stats()["by_status"] == {"stopped": 200}
