"""Exit statuses are recorded exactly as the job ended, the same by the starter and by an adopter."""

from __future__ import annotations

import json
import os
import resource
import signal
import typing as t

import pytest
from conftest import PY, AppFactory, wait_until
from test_workers import Workers

#: (case, how the job ends, expected return_code): code N is exit(N), signal N is os.kill(self, N).
CASES = [
    ("code0", "code", 0, 0), ("code1", "code", 1, 1), ("code143", "code", 143, 143),
    ("code147", "code", 147, 147), ("code150", "code", 150, 150), ("code255", "code", 255, 255),
    ("sigterm", "signal", signal.SIGTERM, -signal.SIGTERM), ("sigkill", "signal", signal.SIGKILL, -signal.SIGKILL),
    ("sigsegv", "signal", signal.SIGSEGV, -signal.SIGSEGV),
]


def _job(how: str, number: int, go: str) -> list[str]:
    """A job that waits for the file ``go`` to exist, then ends as told."""
    end = f"os._exit({number})" if how == "code" else f"os.kill(os.getpid(), {number})"
    code = f"import os, time\nwhile not os.path.exists({go!r}): time.sleep(0.01)\n{end}\n"
    return [PY, "-c", code]


@pytest.fixture
def workers(tmp_path: t.Any, database_uri: str) -> t.Iterator[Workers]:
    w = Workers(tmp_path, database_uri)
    yield w
    w.close()


def test_the_starter_records_every_status_exactly(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=20)
    pm = app.extensions["procman"]
    go = str(tmp_path / "go")
    open(go, "w").close()
    with app.app_context():
        for name, how, number, _ in CASES:
            assert pm.start_process(name, _job(how, number, go))
        for name, _, _, expected in CASES:
            final = pm.wait(name, timeout=30)
            assert (name, final["status"], final["return_code"]) == (name, "completed", expected)
            # The file an adopter would read says the same.
            assert (name, pm.read_exit_status(name)) == (name, expected)


def test_an_adopter_records_every_status_exactly(workers: Workers) -> None:
    go = str(workers.tmp_path / "go")
    jobs = [[name, _job(how, number, go)] for name, how, number, _ in CASES]
    worker = workers.spawn("startjson", json.dumps(jobs))
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    worker.send_signal(signal.SIGKILL)  # the starter dies before any job ends
    worker.wait()
    open(go, "w").close()
    app = workers.app()
    pm = app.extensions["procman"]
    with app.app_context():
        for name, _, _, expected in CASES:
            final = pm.wait(name, timeout=30)
            assert (name, final["status"], final["return_code"]) == (name, "completed", expected)


def test_exit_147_does_not_stop_the_wrapper(make_app: AppFactory) -> None:
    """147 = 128 + SIGSTOP: the 0.1 wrapper re-raised it as a signal, stopped itself, and the
    record stayed running forever."""
    app = make_app()
    pm = app.extensions["procman"]
    with app.app_context():
        assert pm.start_process("stopper", [PY, "-c", "raise SystemExit(147)"])
        final = pm.wait("stopper", timeout=20)
    assert (final["status"], final["return_code"]) == ("completed", 147)


def test_the_core_dump_left_is_the_jobs(make_app: AppFactory, tmp_path: t.Any) -> None:
    """With core dumps on (and core_pattern 'core': a file in the dying process's cwd), the job's core
    is the one left: the wrapper does not dump its own over it."""
    try:
        with open("/proc/sys/kernel/core_pattern") as f:
            pattern = f.read().strip()
    except OSError:
        pattern = ""
    if pattern != "core":
        pytest.skip(f"core_pattern is {pattern!r}: core files are not written to the cwd here")
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard != resource.RLIM_INFINITY and hard < 1 << 30:
        pytest.skip("core dumps cannot be turned on (hard limit)")
    workdir = tmp_path / "work"
    workdir.mkdir()
    # The marker exists only in the job's heap (built at run time): a shell's core cannot hold it.
    code = "import os, signal\nmarker = ''.join(['JOB', 'CORE', str(6 * 7)]) * 1000\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # inherited by the wrapper and the job
    try:
        app = make_app()
        pm = app.extensions["procman"]
        with app.app_context():
            assert pm.start_process("dumper", [PY, "-c", code], cwd=str(workdir))
            final = pm.wait("dumper", timeout=30)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    assert final["return_code"] == -signal.SIGSEGV
    core = workdir / "core"
    wait_until(core.exists, timeout=10, message="a core file")
    assert b"JOBCORE42" in core.read_bytes()
    assert os.listdir(workdir) == ["core"]
