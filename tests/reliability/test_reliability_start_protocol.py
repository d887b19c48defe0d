"""The start protocol under faults at its exact steps: a worker SIGKILLed just before or after a
spawn, a stop that lands during a promotion, a raising ``process_started`` receiver, the database
failing between the spawn and the commit of the pid."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import typing as t

import pytest
from conftest import AppFactory, present, py, wait_until
from rel_support import HERE, TESTS

from flask_procman import StoreUnavailable, process_started
from flask_procman.engine.local import Identity
from flask_procman.engine.logfiles import LogFiles
from flask_procman.engine.runtag import processes_with_tag
from flask_procman.manager import Manager
from flask_procman.recovery import NEVER_STARTED


def _manager(app: t.Any) -> Manager:
    return t.cast(Manager, app.extensions["procman"])


def _run_crash_worker(mode: str, process_id: str, database_uri: str, logs: str, tmp_path: t.Any) -> None:
    env = {
        **os.environ, "WORKER_INSTANCE": str(tmp_path / "instance"), "WORKER_DB": database_uri,
        "WORKER_LOGS": logs, "WORKER_CAP": "1", "WORKER_STOP_ON_EXIT": "0",
        "PYTHONPATH": os.pathsep.join([HERE, TESTS, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, os.path.join(HERE, "crash_worker.py"), mode, process_id], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr  # it died at the step, by SIGKILL


@pytest.mark.parametrize("mode", ["direct-before-spawn", "direct-after-spawn", "queued-before-spawn",
                                  "queued-after-spawn"])
def test_a_starter_killed_at_the_spawn_leaves_nothing_untracked(mode: str, make_app: AppFactory,
                                                                database_uri: str, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_DATABASE_URI=database_uri, PROCMAN_MAX_PROCESSES=1)
    pm = _manager(app)
    _run_crash_worker(mode, "job", database_uri, app.config["PROCMAN_LOG_DIR"], tmp_path)
    row = present(pm.store.get("job"))  # a record exists whatever the instant of the kill
    assert row["status"] in ("starting", "queued")
    with app.app_context():
        pm.stats()  # a live manager notices the dead starter and settles its start
        if mode == "direct-before-spawn":
            final = pm.wait("job", timeout=20)
            assert (final["status"], final["error"]) == ("failed", NEVER_STARTED)
            assert not processes_with_tag(row["run_tag"])
            return
        # The process started (by the dead worker, or again from the queue): it runs, with its env,
        # under a record that points to it; a promoted start's env file is gone once it runs.
        wait_until(lambda: present(pm.store.get("job"))["status"] == "running"
                   and pm.read_output("job")[0] == b"value=v42\n", timeout=20, message="job running with its env")
        running = present(pm.store.get("job"))
        assert Identity(running["pid"], running["pid_started"]).is_alive()
        tagged = processes_with_tag(running["run_tag"])
        assert tagged and running["pid"] in {p.pid for p in tagged}
        if mode == "direct-after-spawn" or mode == "queued-after-spawn":
            assert running["run_tag"] == row["run_tag"]  # the dead worker's process was adopted
        assert not os.path.exists(os.path.join(LogFiles(pm.settings.log_dir, "job").folder, "env.json"))
        assert pm.stop_process("job", timeout=1)
        assert not processes_with_tag(running["run_tag"])


def test_a_stop_during_a_promotion_wins(make_app: AppFactory, database_uri: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop lands after the promotion committed and before the spawn: the promoter notices it
    lost and stops what it spawned; the stop reports success and nothing runs outside the cap."""
    app = make_app(PROCMAN_DATABASE_URI=database_uri, PROCMAN_MAX_PROCESSES=1)
    pm = _manager(app)
    promoted, go = threading.Event(), threading.Event()
    original = pm._launch  # holds the promoter between its commit and its spawn

    def launch(record: t.Mapping[str, t.Any], overrides: dict[str, str]) -> Identity:
        if record["id"] == "queued":
            promoted.set()
            go.wait(20)
        return original(record, overrides)

    monkeypatch.setattr(pm, "_launch", launch)
    with app.app_context():
        assert pm.start_process("first", py("import time; time.sleep(0.2)"))
        assert pm.start_process("queued", ["sleep", "60"], queue=True)
        assert promoted.wait(20)
        assert present(pm.store.get("queued"))["status"] == "starting"
        result: list[bool] = []
        stopper = threading.Thread(target=lambda: result.append(pm.stop_process("queued", timeout=1)))
        stopper.start()
        wait_until(lambda: present(pm.store.get("queued"))["stop_requested"] == "stop", message="stop requested")
        go.set()
        stopper.join(30)
        assert result == [True]
        row = present(pm.store.get("queued"))
        assert row["status"] == "stopped" and row["pid"] is None
        wait_until(lambda: not processes_with_tag(row["run_tag"]), message="the spawned process stopped")
        assert pm.stats()["running"] == 0


def test_a_raising_process_started_receiver_breaks_nothing(make_app: AppFactory, database_uri: str) -> None:
    app = make_app(PROCMAN_DATABASE_URI=database_uri, PROCMAN_MAX_PROCESSES=1)
    pm = _manager(app)

    def receiver(sender: t.Any, **kwargs: t.Any) -> None:
        raise RuntimeError("receiver failed")

    process_started.connect(receiver)
    try:
        with app.app_context():
            assert pm.start_process("a", py("print('a')"))
            for name in ("b", "c", "d"):
                assert pm.start_process(name, py(f"import os; print(os.environ['V'] + '{name}')"), env={"V": "v"},
                                        queue=True)
            for name in ("a", "b", "c", "d"):
                final = pm.wait(name, timeout=30)
                assert final["status"] == "completed", final
            assert pm.get_process_status("d")["stdout"] == "vd\n"  # type: ignore[index]
    finally:
        process_started.disconnect(receiver)


def test_a_direct_start_undone_by_the_database_leaves_no_zombie(make_app: AppFactory, tmp_path: t.Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The pid cannot be committed: the start fails with StoreUnavailable, the spawned process is
    stopped and reaped (no zombie), and the record ends ``failed`` once the database is back."""
    app = make_app()
    pm = _manager(app)
    original = pm.store.update
    spawned: list[int] = []

    def update(process_id: str, **kwargs: t.Any) -> bool:
        if kwargs.get("status") == "running" and process_id == "undone":
            spawned.append(kwargs["pid"])
            raise StoreUnavailable("The process database cannot be reached (test).")
        return original(process_id, **kwargs)

    with app.app_context():
        pm.stats()
        monkeypatch.setattr(pm.store, "update", update)
        with pytest.raises(StoreUnavailable):
            pm.start_process("undone", ["sleep", "60"])
        monkeypatch.setattr(pm.store, "update", original)
        assert spawned
        with pytest.raises(ChildProcessError):  # reaped: not even a zombie is left
            os.waitpid(spawned[0], os.WNOHANG)
        final = pm.wait("undone", timeout=20)
        assert final["status"] == "failed" and final["error"] == NEVER_STARTED


def test_a_pid_commit_whose_answer_was_lost_is_settled(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit of the pid reaches the database but its answer is lost (a cut connection), and
    the follow-up write fails too: the starter is told the start failed and stops its process, while
    the record says ``running``. Our own watcher must settle that record (it follows no such
    process), not leave it ``running`` (holding a slot) until this worker dies."""
    app = make_app()
    pm = _manager(app)
    original = pm.store.update
    spawned: list[int] = []

    def update(process_id: str, **kwargs: t.Any) -> bool:
        if process_id == "ambiguous" and kwargs.get("status") == "running":
            original(process_id, **kwargs)  # committed...
            spawned.append(kwargs["pid"])
            raise StoreUnavailable("The process database cannot be reached (test).")  # ...answer lost
        if process_id == "ambiguous" and kwargs.get("status") == "failed":
            raise StoreUnavailable("The process database cannot be reached (test).")  # still down
        return original(process_id, **kwargs)

    with app.app_context():
        pm.stats()
        monkeypatch.setattr(pm.store, "update", update)
        with pytest.raises(StoreUnavailable):
            pm.start_process("ambiguous", ["sleep", "60"])
        assert spawned
        assert present(pm.store.get("ambiguous"))["status"] == "running"  # what the lost answer left
        monkeypatch.setattr(pm.store, "update", original)
        final = pm.wait("ambiguous", timeout=20)
        assert final["status"] == "lost", final
        assert processes_with_tag(final["run_tag"]) == []  # and nothing of the run is left


def test_a_promotion_whose_pid_cannot_be_committed_goes_back_to_the_queue(make_app: AppFactory,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The database fails between a promotion's spawn and the commit of its pid (twice): the
    process is stopped and reaped, the record goes back to the queue on a later tick and then runs,
    with its env; ``wait`` and ``stop`` behave meanwhile."""
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    pm = _manager(app)
    original = pm.store.update
    failures: list[int] = []

    def update(process_id: str, **kwargs: t.Any) -> bool:
        if kwargs.get("status") == "running" and process_id == "promoted" and len(failures) < 2:
            failures.append(kwargs["pid"])
            raise StoreUnavailable("The process database cannot be reached (test).")
        return original(process_id, **kwargs)

    monkeypatch.setattr(pm.store, "update", update)
    with app.app_context():
        assert pm.start_process("first", py("pass"))
        assert pm.start_process("promoted", ["sh", "-c", 'echo "$V"'], env={"V": "with-env"}, queue=True)
        assert pm.start_process("stopped-in-queue", ["sleep", "60"], queue=True)
        final = pm.wait("promoted", timeout=30)
        assert (final["status"], final["stdout"]) == ("completed", "with-env\n")
        assert len(failures) == 2
        for pid in failures:  # each undone spawn was reaped
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        assert pm.stop_process("stopped-in-queue", timeout=1)
        assert present(pm.get_process_status("stopped-in-queue"))["status"] == "stopped"


def test_a_second_start_of_an_id_in_flight_leaves_the_first_alone(make_app: AppFactory,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """While the first start of ``x`` is between its claim and its spawn, a second start of ``x``
    is refused; the watcher's ticks meanwhile must not take the first for an abandoned start."""
    from flask_procman.errors import ProcessExists

    app = make_app()
    pm = _manager(app)
    entered, go = threading.Event(), threading.Event()
    original = pm._launch

    def launch(record: t.Mapping[str, t.Any], overrides: dict[str, str]) -> Identity:
        entered.set()
        go.wait(20)
        return original(record, overrides)

    monkeypatch.setattr(pm, "_launch", launch)
    with app.app_context():
        pm.stats()
        result: list[bool] = []
        first = threading.Thread(target=lambda: result.append(pm.start_process("x", ["sleep", "60"])))
        first.start()
        assert entered.wait(20)
        with pytest.raises(ProcessExists):
            pm.start_process("x", ["sleep", "60"])
        ticks = pm._ticks
        wait_until(lambda: pm._ticks >= ticks + 3, message="three ticks")
        go.set()
        first.join(20)
        assert result == [True]
        row = present(pm.store.get("x"))
        assert row["status"] == "running" and Identity(row["pid"], row["pid_started"]).is_alive()
