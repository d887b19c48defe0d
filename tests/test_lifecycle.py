"""Starting, the cap and the queue, stopping whole trees, timeouts and start errors."""

from __future__ import annotations

import os
import stat
import time
import typing as t

import psutil
import pytest
import sqlalchemy as sa
from conftest import AppFactory, present, py, wait_until

from flask_procman import InvalidCommand, InvalidProcessId, ProcessExists, ProcessNotFinished, ProcMan, StartError

SLEEP = py("import time; time.sleep(60)")


def _pm(app: t.Any) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def test_cap_refuses_the_next_start(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=2)
    pm = _pm(app)
    with app.app_context():
        assert pm.start_process("a", SLEEP)
        assert pm.start_process("b", SLEEP)
        assert pm.start_process("c", SLEEP) is False
        assert pm.get_process_status("c") is None  # nothing recorded for a refused start
        assert pm.stop_process("a", timeout=1)
        assert pm.start_process("c", SLEEP)


def test_queue_runs_in_order_when_slots_free(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    pm = _pm(app)
    order = tmp_path / "order.txt"
    with app.app_context():
        assert pm.start_process("blocker", SLEEP)
        for name in ("q1", "q2", "q3"):
            assert pm.start_process(name, py(f"open({str(order)!r}, 'a').write('{name}\\n')"), queue=True)
            assert present(pm.get_process_status(name))["status"] == "queued"
        assert pm.stats()["queued"] == 3
        pm.stop_process("blocker", timeout=1)
        for name in ("q1", "q2", "q3"):
            assert pm.wait(name, timeout=15)["status"] == "completed"
    assert order.read_text().split() == ["q1", "q2", "q3"]


def test_queued_env_waits_in_a_private_file_then_disappears(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("blocker", SLEEP)
        pm.start_process("q", py("import os; print(os.environ['SECRET_TOKEN'])"), env={"SECRET_TOKEN": "hunter2"},
                         queue=True)
        env_file = tmp_path / "logs" / "q" / "env.json"
        assert env_file.exists()
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        pm.stop_process("blocker", timeout=1)
        final = pm.wait("q", timeout=15)
    assert final["stdout"] == "hunter2\n"
    assert final["env_keys"] == ["SECRET_TOKEN"]
    assert not env_file.exists()
    engine = sa.create_engine(app.extensions["procman"].settings.database_uri)
    with engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.execute(sa.text("SELECT * FROM procman_processes")))
    engine.dispose()
    assert "hunter2" not in dump and "SECRET_TOKEN" in dump


def test_env_is_merged_over_os_environ_with_unbuffered_python(make_app: AppFactory, monkeypatch: t.Any) -> None:
    monkeypatch.setenv("FROM_PARENT", "parent")
    app = make_app()
    pm = _pm(app)
    code = "import os; print(os.environ.get('FROM_PARENT'), os.environ.get('EXTRA'), os.environ.get('PYTHONUNBUFFERED'))"
    with app.app_context():
        pm.start_process("e1", py(code), env={"EXTRA": "x"})
        assert pm.wait("e1", timeout=10)["stdout"] == "parent x 1\n"
        pm.start_process("e2", py(code), env={"PYTHONUNBUFFERED": ""})
        assert pm.wait("e2", timeout=10)["stdout"] == "parent None \n"


def test_cwd_is_used(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app()
    with app.app_context():
        _pm(app).start_process("cwd", ["pwd"], cwd=tmp_path)
        assert _pm(app).wait("cwd", timeout=10)["stdout"] == f"{tmp_path}\n"


def test_stop_a_term_ignoring_child_within_grace(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    with app.app_context():
        pm.start_process("stubborn", py(code))
        wait_until(lambda: "ready" in present(pm.get_process_status("stubborn"))["stdout"], message="ready")
        started = time.monotonic()
        assert pm.stop_process("stubborn", timeout=1.0)
        elapsed = time.monotonic() - started
        status = present(pm.get_process_status("stubborn"))
    assert elapsed < 1.0 + 1.0
    assert status["status"] == "stopped" and status["return_code"] == -9


def test_sigterm_caught_and_exit_0_is_still_stopped(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    code = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    with app.app_context():
        pm.start_process("polite", py(code))
        wait_until(lambda: "ready" in present(pm.get_process_status("polite"))["stdout"], message="ready")
        assert pm.stop_process("polite")
        status = present(pm.get_process_status("polite"))
    assert (status["status"], status["return_code"]) == ("stopped", 0)


def _pids_from(path: t.Any, count: int) -> list[int]:
    text = wait_until(lambda: len(path.read_text().split()) >= count if path.exists() else False, message="pids")
    assert text
    return [int(p) for p in path.read_text().split()]


def test_stop_kills_grandchildren_and_setsid_escapees(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app()
    pm = _pm(app)
    pids = tmp_path / "pids"
    script = (f"sleep 1000 & echo $! >> {pids}; setsid sleep 1000 & echo $! >> {pids}; "
              f"sh -c 'sleep 1000 & echo $! >> {pids}; wait' & sleep 1000; wait")
    with app.app_context():
        pm.start_process("tree", ["sh", "-c", script])
        children = _pids_from(pids, 3)
        assert all(psutil.pid_exists(p) for p in children)
        assert pm.stop_process("tree", timeout=2)
        status = present(pm.get_process_status("tree"))
    for pid in children:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert status["status"] == "stopped" and status["survivors"] == []


def test_the_documented_tree_leaves_nothing_behind(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    with app.app_context():
        pm.start_process("tree2", ["sh", "-c", "sleep 1000 & sleep 1000; wait"])
        root = wait_until(lambda: present(pm.get_process_status("tree2"))["pid"], message="pid")
        wait_until(lambda: len(psutil.Process(root).children(recursive=True)) >= 3, message="tree")
        tree = [p.pid for p in psutil.Process(root).children(recursive=True)]
        assert pm.stop_process("tree2", timeout=2)
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in tree), timeout=3, message="tree gone")


def test_timeout_stops_and_records_timed_out(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    with app.app_context():
        pm.start_process("slow", SLEEP, timeout=0.5)
        final = pm.wait("slow", timeout=10)
    assert final["status"] == "timed_out"
    assert final["return_code"] == -15
    assert 0.4 < final["duration"] < 5


def test_timeout_escalates_to_kill(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=0.5)
    pm = _pm(app)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with app.app_context():
        pm.start_process("slow2", py(code), timeout=0.3)
        final = pm.wait("slow2", timeout=10)
    assert (final["status"], final["return_code"]) == ("timed_out", -9)


def test_stop_queued_unknown_and_ended(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("run", SLEEP)
        pm.start_process("waiting", SLEEP, queue=True)
        assert pm.stop_process("waiting")
        assert present(pm.get_process_status("waiting"))["status"] == "stopped"
        assert pm.stop_process("nope") is False
        pm.stop_process("run", timeout=1)
        assert pm.stop_process("run") is False


def test_nonzero_exit_keeps_the_stderr_tail_in_error(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_ERROR_TAIL=100)
    pm = _pm(app)
    code = "import sys; sys.stderr.write('x' * 5000 + 'Traceback: the real reason\\n'); sys.exit(4)"
    with app.app_context():
        pm.start_process("bad", py(code))
        final = pm.wait("bad", timeout=10)
    assert (final["status"], final["return_code"]) == ("completed", 4)
    assert final["error"].endswith("Traceback: the real reason\n")
    assert len(final["error"]) <= 100


def test_merge_stderr_keeps_the_true_order(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    code = "import sys\nfor i in range(50):\n    (sys.stdout if i % 2 else sys.stderr).write(f'{i}\\n'); sys.stdout.flush()"
    with app.app_context():
        pm.start_process("merged", py(code), merge_stderr=True)
        final = pm.wait("merged", timeout=10)
        data, _ = pm.read_output("merged", "stdout")
    assert data.decode().split() == [str(i) for i in range(50)]
    assert final["stderr"] == "" and final["merge_stderr"] is True


@pytest.mark.parametrize("bad", ["", "-x", ".hidden", "a/b", "../up", "a" * 129, "sp ace", "ü", None, 5, "a\0b"])
def test_invalid_ids_are_refused(make_app: AppFactory, bad: object) -> None:
    app = make_app()
    with app.app_context(), pytest.raises(InvalidProcessId):
        _pm(app).start_process(bad, ["true"])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["echo hi", [], [""], ["echo", 3], None, ["a\0b"], b"true"])
def test_invalid_commands_are_refused(make_app: AppFactory, bad: object) -> None:
    app = make_app()
    with app.app_context():
        with pytest.raises(InvalidCommand):
            _pm(app).start_process("cmd", bad)  # type: ignore[arg-type]
        assert _pm(app).get_process_status("cmd") is None


def test_invalid_env_timeout_and_metadata(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    with app.app_context():
        for kwargs in ({"env": {"A": 1}}, {"env": {"A=B": "x"}}, {"env": "A=1"}, {"timeout": -1},
                       {"timeout": "5"}, {"metadata": {"x": object()}}, {"metadata": [1]}):
            with pytest.raises(InvalidCommand):
                pm.start_process("v", ["true"], **kwargs)
        assert pm.list_processes() == []


def test_an_id_in_use_is_refused(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("dup", SLEEP)
        with pytest.raises(ProcessExists):
            pm.start_process("dup", ["true"])
        pm.start_process("dupq", SLEEP, queue=True)
        with pytest.raises(ProcessExists):
            pm.start_process("dupq", ["true"], queue=True)


@pytest.mark.parametrize(
    ("cmd", "cwd", "needle"),
    [
        (["/definitely/not/here"], None, "No such file"),
        (["no-such-program-xyz"], None, "No such file"),
        (["true"], "/no/such/dir", "working directory does not exist"),
    ],
)
def test_start_errors_keep_a_failed_record_and_free_the_id(make_app: AppFactory, cmd: list[str], cwd: str | None,
                                                            needle: str) -> None:
    app = make_app()
    pm = _pm(app)
    with app.app_context():
        with pytest.raises(StartError, match=needle):
            pm.start_process("broken", cmd, cwd=cwd)
        status = present(pm.get_process_status("broken"))
        assert status["status"] == "failed" and needle in status["error"]
        assert pm.stats()["running"] == 0
        assert pm.start_process("broken", py("print('again')"))
        assert pm.wait("broken", timeout=10)["stdout"] == "again\n"


def test_not_executable_is_a_start_error(make_app: AppFactory, tmp_path: t.Any) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    app = make_app()
    with app.app_context(), pytest.raises(StartError, match="Permission denied"):
        _pm(app).start_process("noexec", [str(script)])


def test_wait_times_out(make_app: AppFactory) -> None:
    app = make_app()
    with app.app_context():
        _pm(app).start_process("w", SLEEP)
        with pytest.raises(TimeoutError):
            _pm(app).wait("w", timeout=0.2)


def test_list_remove_and_stop_all(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=2)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("done", py("print(1)"))
        pm.wait("done", timeout=10)
        pm.start_process("r1", SLEEP)
        pm.start_process("r2", SLEEP)
        pm.start_process("q1", SLEEP, queue=True)
        assert [p["id"] for p in pm.list_processes()] == ["q1", "r2", "r1", "done"]
        assert [p["id"] for p in pm.list_processes("running")] == ["r2", "r1"]
        with pytest.raises(ProcessNotFinished):
            pm.remove_process("r1")
        assert sorted(pm.stop_all(timeout=1)) == ["q1", "r1", "r2"]
        assert {p["status"] for p in pm.list_processes()} == {"stopped", "completed"}
        assert os.path.isdir(tmp_path / "logs" / "done")
        assert pm.remove_process("done")
        assert not os.path.exists(tmp_path / "logs" / "done")
        assert pm.get_process_status("done") is None
        assert pm.remove_process("done") is False
