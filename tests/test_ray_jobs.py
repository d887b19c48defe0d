"""The Ray Jobs backend on a real two-node Ray cluster (tests/ray_support.py), through its module only.

The head and the second node run on this host, so the tests also look at the jobs' processes
with psutil. Each job asks for a CPU fraction: they run side by side, which keeps the file short.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import signal
import time
import typing as t
import uuid

import psutil
import pytest
from conftest import PY, present, wait_until
from ray_support import JOB_START_TIMEOUT, TOKEN, WORKER_RESOURCE, RayCluster

from flask_procman.backends import BackendAuthError, BackendError, BackendUnavailable, InfeasibleResources
from flask_procman.backends.ray_jobs import JobEnd, RayJobsBackend
from flask_procman.backends.ray_logs import LogMirror, MirrorMismatch

pytestmark = pytest.mark.ray

#: A job's whole life here is 1-3 s on an idle machine; the machine is shared, so allow far more.
END_DEADLINE = 90.0


@pytest.fixture
def backend(ray_cluster: RayCluster) -> t.Iterator[RayJobsBackend]:
    """A backend on the session's cluster, with the cluster's token."""
    b = RayJobsBackend(ray_cluster.address, TOKEN)
    yield b
    b.close()


def new_id() -> str:
    return "pm-" + uuid.uuid4().hex


def wait_end(backend: RayJobsBackend, sid: str, timeout: float = END_DEADLINE) -> JobEnd:
    return t.cast(JobEnd, wait_until(lambda: backend.end(sid), timeout=timeout, interval=0.1, message=f"job {sid} to end"))


def script(tmp_path: t.Any, code: str) -> list[str]:
    """A command running ``code`` from a file: Ray's header line then shows the path, not the code."""
    path = tmp_path / f"job_{uuid.uuid4().hex[:8]}.py"
    path.write_text(code)
    return [PY, str(path)]


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def mirror_until(mirror: LogMirror, needle: bytes, timeout: float = END_DEADLINE) -> bytes:
    """Poll the mirror until the local file holds ``needle``; returns the file's bytes."""
    def holds() -> bytes | None:
        mirror.poll()
        data = read(mirror.path) if os.path.exists(mirror.path) else b""
        return data if needle in data else None

    return t.cast(bytes, wait_until(holds, timeout=timeout, interval=0.1, message=f"{needle!r} in the mirror"))


def test_env_cwd_and_argv_reach_the_job(backend: RayJobsBackend, tmp_path: t.Any) -> None:
    sid = new_id()
    workdir = tmp_path / "work dir 'quoted'"
    workdir.mkdir()
    argv = ["it's", "two words", "$HOME", "*", "a;b"]
    code = "import json, os, sys; print('RESULT ' + json.dumps([os.getcwd(), os.environ['PM_VALUE'], sys.argv[1:]]))"
    backend.submit(submission_id=sid, process_id="env-test", cmd=[PY, "-c", code, *argv], cwd=str(workdir),
                   env={"PM_VALUE": "a value with 'quotes' and $dollars"})
    assert wait_end(backend, sid) == JobEnd("completed", 0, None)
    mirror = LogMirror(backend.client, sid, str(tmp_path / "stdout.log"))
    mirror.poll()
    line = next(ln for ln in read(mirror.path).decode().splitlines() if ln.startswith("RESULT "))
    assert json.loads(line[len("RESULT "):]) == [str(workdir), "a value with 'quotes' and $dollars", argv]
    details = present(backend.details(sid))
    assert details["metadata"] == {"procman_id": "env-test", "procman_run_tag": sid}
    # A retried submit of the same run (its manager died before recording it) finds the job;
    # the same id for another process is refused.
    assert backend.submit(submission_id=sid, process_id="env-test", cmd=["true"]) == sid
    with pytest.raises(BackendError, match="already exists"):
        backend.submit(submission_id=sid, process_id="someone-else", cmd=["true"])


def test_exit_codes_zero_nonzero_and_signal(backend: RayJobsBackend) -> None:
    jobs = {
        new_id(): ([PY, "-c", "print('fine')"], JobEnd("completed", 0, None)),
        new_id(): ([PY, "-c", "import sys; print('bad input', file=sys.stderr); sys.exit(3)"], None),
        new_id(): ([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], None),
    }
    for sid, (cmd, _) in jobs.items():
        backend.submit(submission_id=sid, process_id="rc", cmd=cmd)
    ends = {sid: wait_end(backend, sid) for sid in jobs}
    fine, bad, killed = (ends[sid] for sid in jobs)
    assert fine == JobEnd("completed", 0, None)
    assert (bad.status, bad.return_code) == ("completed", 3)
    assert "bad input" in (bad.error or "")  # Ray's message carries the last lines of the merged log
    assert (killed.status, killed.return_code) == ("completed", -signal.SIGKILL)


def test_a_forgotten_job_is_gone_from_the_head_but_its_log_stays_readable(backend: RayJobsBackend,
                                                                         tmp_path: t.Any) -> None:
    sid = new_id()
    backend.submit(submission_id=sid, process_id="forget", cmd=["echo", "kept"])
    end = wait_end(backend, sid)
    assert end.return_code == 0, end
    mirror = LogMirror(backend.client, sid, str(tmp_path / "a.log"))
    assert mirror.poll() > 0, f"nothing mirrored from node {mirror.node_id}"
    assert backend.forget(sid) is True
    assert backend.details(sid) is None, "still known after the delete"
    assert backend.forget(sid) is False
    late = LogMirror(backend.client, sid, str(tmp_path / "b.log"))
    late.node_id = mirror.node_id  # the node is what the record must keep to read the log later
    assert late.poll() > 0
    assert read(late.path) == read(mirror.path), (read(late.path), read(mirror.path))
    assert read(late.path).endswith(b"kept\n")
    running = new_id()
    backend.submit(submission_id=running, process_id="running", cmd=["sleep", "300"])
    with pytest.raises(BackendError, match="non-terminal"):
        backend.forget(running)
    assert backend.stop(running, wait=END_DEADLINE) is not None


def test_a_command_that_cannot_start_is_a_nonzero_exit(backend: RayJobsBackend) -> None:
    sid = new_id()
    backend.submit(submission_id=sid, process_id="missing", cmd=["/no/such/program"], cwd="/")
    end = wait_end(backend, sid)
    assert (end.status, end.return_code) == ("completed", 127)
    sid = new_id()
    backend.submit(submission_id=sid, process_id="no-cwd", cmd=["true"], cwd="/no/such/dir")
    assert wait_end(backend, sid).return_code == 2  # /bin/sh: cd: can't cd


def test_stop_ends_the_whole_tree_even_when_the_parent_ignores_sigterm(backend: RayJobsBackend, tmp_path: t.Any) -> None:
    sid = new_id()
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print('PIDS', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    backend.submit(submission_id=sid, process_id="tree", cmd=script(tmp_path, code))
    mirror = LogMirror(backend.client, sid, str(tmp_path / "stdout.log"))
    data = mirror_until(mirror, b"PIDS ")
    child_pid = int(data.split(b"PIDS ")[1].split()[0])
    child = psutil.Process(child_pid)
    parent = present(child.parent())
    assert parent.cmdline()[0] == PY  # exec: the shell became the command
    began = time.monotonic()
    end = backend.stop(sid, wait=END_DEADLINE)
    took = time.monotonic() - began
    assert end == JobEnd("stopped", None, None)
    assert took >= 2.5, "the parent ignores SIGTERM: only Ray's SIGKILL (3 s later) can end it"
    gone, alive = psutil.wait_procs([parent, child], timeout=10)
    assert not alive, f"still running after the stop: {alive}"
    assert backend.client.stop(sid) is False  # already ended


def test_live_output_is_mirrored_incrementally_and_resumes_exactly(backend: RayJobsBackend, tmp_path: t.Any) -> None:
    go = tmp_path / "go"
    sid = new_id()
    code = (
        "import os, sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'first line\\n' + bytes(range(256)) + b'\\nno newline yet'); out.flush()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
        "out.write(b' ... now\\n' + b'x' * 1_000_000 + b'\\nlast line\\n'); out.flush()\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    backend.submit(submission_id=sid, process_id="mirror", cmd=script(tmp_path, code))
    path = str(tmp_path / "stdout.log")
    first = LogMirror(backend.client, sid, path)
    before = mirror_until(first, b"no newline yet")
    assert before.endswith(b"first line\n" + bytes(range(256)) + b"\nno newline yet")  # raw bytes, not decoded
    assert backend.end(sid) is None, "the job is still waiting: the mirror copied output while it ran"
    assert first.poll() == 0  # nothing new: nothing appended twice

    # "Restart": the first mirror is gone; a new one resumes from the local file's size.
    del first
    go.touch()
    second = LogMirror(backend.client, sid, path)
    assert wait_end(backend, sid).return_code == 0
    second.poll()
    local = read(path)
    ray_copy = present(backend.client.log_bytes(present(second.node_id), sid))
    assert local == ray_copy  # not one byte lost or duplicated
    assert local.count(b"first line") == 1 and local.count(b"last line") == 1
    assert local.endswith(b"last line\nto stderr\n")  # one merged stream
    assert second.poll() == 0

    # Mirrors of the same run in several threads (or workers) at once: each byte lands once.
    copy = str(tmp_path / "copy.log")
    mirrors = [LogMirror(backend.client, sid, copy) for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(mirrors)) as pool:
        appended = list(pool.map(lambda m: m.poll(), mirrors))
    assert read(copy) == ray_copy and sum(appended) == len(ray_copy)
    # ... because each appends under an exclusive flock: a holder of the lock makes a mirror wait.
    locked = str(tmp_path / "locked.log")
    with open(locked, "wb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(LogMirror(backend.client, sid, locked).poll)
            with pytest.raises(concurrent.futures.TimeoutError):
                waiting.result(timeout=1.0)
            fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
            assert waiting.result(timeout=30) == len(ray_copy)

    with open(path, "r+b") as f:  # a local copy that is not a prefix of Ray's is never appended to
        f.seek(len(local) - 5)
        f.write(b"XXXXX")
        f.truncate(len(local) - 2)
    with pytest.raises(MirrorMismatch):
        second.poll()


def test_infeasible_requests_fail_at_once(backend: RayJobsBackend) -> None:
    for resources in ({"gpus": 1}, {"cpus": 3}, {WORKER_RESOURCE: 2}, {"no_such_thing": 1}, {"memory": "1TiB"},
                      {"cpus": 2, WORKER_RESOURCE: 1}):  # each fits one node, never both at once
        sid = new_id()
        began = time.monotonic()
        with pytest.raises(InfeasibleResources, match="No node of the Ray cluster"):
            backend.submit(submission_id=sid, process_id="big", cmd=["true"], resources=resources)
        assert time.monotonic() - began < 5
        assert backend.details(sid) is None  # nothing was submitted


def test_a_custom_resource_places_the_job_on_the_node_that_has_it(backend: RayJobsBackend, ray_cluster: RayCluster,
                                                                   tmp_path: t.Any) -> None:
    nodes = backend.client.nodes()
    worker_id = next(n["node_id"] for n in nodes if n["state"] == "ALIVE" and not n["is_head_node"])
    worker = present(ray_cluster.worker)
    sid = new_id()
    code = "import os, time; print('PID', os.getpid(), flush=True); time.sleep(300)"
    backend.submit(submission_id=sid, process_id="placed", cmd=script(tmp_path, code),
                   resources={WORKER_RESOURCE: 1})
    data = mirror_until(LogMirror(backend.client, sid, str(tmp_path / "out.log")), b"PID ")
    assert present(backend.details(sid))["driver_node_id"] == worker_id
    pid = int(data.split(b"PID ")[1].split()[0])
    node_pids = {p.pid for p in worker.processes()}
    assert pid in node_pids, "the job's process descends from the second node's `ray start`, not the head's"

    # A second job for the one evalbox is feasible but waits in Ray's PENDING, which is no queue:
    # Ray fails it after its start timeout, an infrastructure failure with Ray's message.
    waiting = new_id()
    backend.submit(submission_id=waiting, process_id="waits", cmd=["true"], resources={WORKER_RESOURCE: 1})
    assert present(backend.details(waiting))["status"] == "PENDING"
    end = wait_end(backend, waiting, timeout=JOB_START_TIMEOUT + END_DEADLINE)
    assert (end.status, end.return_code) == ("failed", None)
    assert "JOB_SUPERVISOR_ACTOR_START_TIMEOUT" in (end.error or "") and "resources" in (end.error or "")
    assert backend.stop(sid, wait=END_DEADLINE) == JobEnd("stopped", None, None)


def test_the_token_is_required_and_never_shown(ray_cluster: RayCluster) -> None:
    for token in (None, "wrong-token-0123456789"):
        b = RayJobsBackend(ray_cluster.address, token)
        with pytest.raises(BackendAuthError) as info:
            b.client.version()
        assert "RAY_AUTH_TOKEN" in str(info.value)
        assert TOKEN not in str(info.value) and TOKEN not in repr(b) and TOKEN not in repr(b.client)
        b.close()


def test_a_head_that_goes_away_is_unavailable_then_works_again(ray_cluster: RayCluster) -> None:
    # Last in this file: it restarts the session's cluster (same address, empty job history).
    backend = RayJobsBackend(ray_cluster.address, TOKEN, connect_timeout=2, read_timeout=5)
    sid = new_id()
    backend.submit(submission_id=sid, process_id="before", cmd=["sleep", "300"])
    wait_until(lambda: present(backend.details(sid))["status"] == "RUNNING", timeout=END_DEADLINE, interval=0.1)
    ray_cluster.stop_head()
    for call in (lambda: backend.details(sid), lambda: backend.submit(submission_id=new_id(), process_id="x",
                                                                      cmd=["true"]), lambda: backend.stop(sid)):
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match="unreachable"):
            call()
        assert time.monotonic() - began < 10
    ray_cluster.restart()
    assert backend.end(sid) == JobEnd("lost", None, present(backend.end(sid)).error)  # Ray lost its history
    assert "lost its job history" in (present(backend.end(sid)).error or "")
    again = new_id()
    backend.submit(submission_id=again, process_id="after", cmd=["true"])
    assert wait_end(backend, again) == JobEnd("completed", 0, None)
    backend.close()
