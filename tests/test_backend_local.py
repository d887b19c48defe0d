"""The Backend seam: the local engine behind it, and the manager's modules that sit above it."""

from __future__ import annotations

import ast
import os
import pathlib
import signal
import typing as t

import pytest
from conftest import PY, AppFactory, present, wait_until

import flask_procman
from flask_procman.backends.base import Backend, RunSpec
from flask_procman.backends.local import LocalBackend
from flask_procman.engine.identity import Identity
from flask_procman.engine.logfiles import LogFiles
from flask_procman.engine.runtag import new_tag
from flask_procman.manager import Manager

PACKAGE = pathlib.Path(flask_procman.__file__).parent
#: The modules the manager was split into (issue 11): each one job, none over about 400 lines.
MANAGER_MODULES = ["manager.py", "runtime.py", "starting.py", "ends.py", "adoption.py", "stopping.py",
                   "reads.py", "retention.py", "backends/base.py", "backends/local.py"]


def _backend(make_app: AppFactory) -> tuple[Backend[Identity], str]:
    app = make_app()
    settings = app.extensions["procman"].settings
    os.makedirs(settings.log_dir, exist_ok=True)
    return LocalBackend(settings, lambda: None), settings.log_dir


def _run(process_id: str, code: str, env: t.Mapping[str, str] | None = None) -> RunSpec:
    return RunSpec(process_id=process_id, run_tag=new_tag(), cmd=(PY, "-c", code), cwd=None,
                   env=dict(env or {}), merge_stderr=False)


def test_a_submitted_run_writes_its_logs_and_its_exit_status(make_app: AppFactory) -> None:
    backend, log_dir = _backend(make_app)
    run = _run("ends", "import os, sys; print(os.environ['GREETING']); sys.exit(3)", {"GREETING": "hello"})
    handle = backend.submit(run)
    wait_until(lambda: backend.read_exit_status("ends") is not None, message="the exit status")
    assert backend.exit_code_after_stop(handle, "ends", own=True) == 3  # reaped: no zombie left
    assert not backend.is_alive(handle)
    assert LogFiles(log_dir, "ends").tail("stdout", 100) == b"hello\n"
    assert backend.read_exit_status("ends") == 3


def test_a_stop_ends_the_tree_and_a_run_tag_finds_a_live_run(make_app: AppFactory) -> None:
    backend, _ = _backend(make_app)
    run = _run("sleeper", "import subprocess, time; subprocess.Popen(['sleep', '60']); print('up', flush=True); "
                          "time.sleep(60)")
    handle = backend.submit(run)
    assert backend.is_alive(handle)
    # Adoption looks for a run long after its spawn; right after it, a loaded machine may not show
    # the new process's environment in /proc yet (seen once): poll, with a deadline.
    found = wait_until(lambda: (f := backend.find(run.run_tag, "sleeper")).root is not None and f,
                       message="the run found by its tag")
    assert found.root is not None and found.root.pid == handle.pid  # what adoption relies on
    assert backend.handle_of({"pid": handle.pid, "pid_started": handle.started, "owner": "", "run_tag": None}) \
        == Identity(handle.pid, handle.started)
    assert backend.stop([handle], 2.0) == [[]]  # nothing of the tree survived
    assert backend.exit_code_after_stop(handle, "sleeper", own=True) == -signal.SIGTERM
    assert backend.find(run.run_tag, "sleeper").root is None


def test_a_cancelled_run_leaves_no_process_and_no_exit_status(make_app: AppFactory) -> None:
    backend, log_dir = _backend(make_app)
    run = _run("undone", "import time; time.sleep(60)")
    handle = backend.submit(run)
    backend.cancel(handle, "undone")
    assert not backend.is_alive(handle)
    assert not os.path.exists(LogFiles(log_dir, "undone").exit_status_path)  # it never counted as a run
    with pytest.raises(ChildProcessError):
        os.waitpid(handle.pid, os.WNOHANG)  # reaped


def test_following_needs_the_engine_of_this_process(make_app: AppFactory) -> None:
    backend, _ = _backend(make_app)
    with pytest.raises(RuntimeError):
        backend.follow("x", Identity(os.getpid(), 0.0), own=False, timeout_left=None)


def test_the_manager_runs_its_starts_through_its_backend(make_app: AppFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    manager: Manager = app.extensions["procman"]
    submitted: list[str] = []
    real = manager.backend.submit

    def submit(run: RunSpec) -> Identity:
        submitted.append(run.process_id)
        return real(run)

    monkeypatch.setattr(manager.backend, "submit", submit)
    with app.app_context():
        assert manager.start_process("through", [PY, "-c", "pass"])
        assert manager.wait("through", timeout=20)["status"] == "completed"
    assert submitted == ["through"]


@pytest.mark.parametrize("name", MANAGER_MODULES)
def test_each_manager_module_stays_small(name: str) -> None:
    lines = (PACKAGE / name).read_text().count("\n")
    assert lines <= 400, f"{name} has {lines} lines"


def test_no_module_of_the_package_passes_400_lines() -> None:
    """api, cli, store and the watcher were split (issue 11) so that none holds several jobs."""
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := p.read_text().count("\n")) > 400}
    assert big == {}


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [f"{path.relative_to(PACKAGE)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_the_manager_stops_through_its_backend(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    manager: Manager = app.extensions["procman"]
    stopped: list[list[int]] = []
    real = manager.backend.stop

    def stop(handles: t.Sequence[Identity], grace: float) -> list[list[int]]:
        stopped.append([h.pid for h in handles])
        return real(handles, grace)

    monkeypatch.setattr(manager.backend, "stop", stop)
    with app.app_context():
        assert manager.start_process("victim", ["sleep", "60"])
        pid = present(manager.store.get("victim"))["pid"]
        assert manager.stop_process("victim", timeout=2)
        assert manager.wait("victim", timeout=20)["status"] == "stopped"
    assert stopped == [[pid]]
