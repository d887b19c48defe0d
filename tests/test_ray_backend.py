"""Runs with ``backend="cluster"`` through procman's normal API, on the session's real Ray cluster
(tests/ray_support.py): records, caps, queues, stops, timeouts, output, the REST API and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import typing as t
import uuid

import psutil
import pytest
from conftest import PY, AppFactory, free_port, present, wait_until
from flask import Flask
from ray_support import TOKEN, WORKER_RESOURCE, RayCluster
from test_workers import Workers

from flask_procman import ProcMan, errors
from flask_procman.backends import InfeasibleResources
from flask_procman.backends.ray_jobs import RayJobsBackend

pytestmark = pytest.mark.ray

#: A job takes 1-3 s on an idle machine; the machine is shared.
END_DEADLINE = 90.0
API_TOKEN = "test-token-0123456789"


@pytest.fixture
def cluster_app(make_app: AppFactory, ray_cluster: RayCluster) -> Flask:
    """An app with the session's Ray cluster as backend ``cluster`` (cap 8) and a declared program."""
    return make_app(
        PROCMAN_API_TOKEN=API_TOKEN,
        PROCMAN_BACKENDS={"cluster": {"type": "ray", "address": ray_cluster.address, "token": TOKEN,
                                      "max_processes": 8}},
        PROCMAN_PROGRAMS={"hello": {"cmd": [PY, "-c", "import time; print('hello from ray', flush=True); time.sleep(1)"],
                                    "backend": "cluster", "resources": {"cpus": 0.1}}},
    )


def pm(app: Flask) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def new_id() -> str:
    return "ray-" + uuid.uuid4().hex[:12]


def wait_final(app: Flask, process_id: str, timeout: float = END_DEADLINE) -> dict[str, t.Any]:
    with app.app_context():
        return pm(app).get_manager().wait(process_id, timeout=timeout)


def test_env_cwd_output_and_a_zero_exit(cluster_app: Flask, tmp_path: t.Any) -> None:
    process_id = new_id()
    code = "import os, sys; print(os.getcwd()); print(os.environ['SECRET_X']); print('to-stderr', file=sys.stderr)"
    with cluster_app.app_context():
        assert pm(cluster_app).start_process(process_id, [PY, "-c", code], cwd=str(tmp_path),
                                             env={"SECRET_X": "v-" + process_id}, backend="cluster",
                                             resources={"cpus": 0.1})
    final = wait_final(cluster_app, process_id)
    assert final["status"] == "completed" and final["return_code"] == 0, final
    assert final["backend"] == "cluster" and final["merge_stderr"] is True and final["pid"] is None
    assert final["resources"] == {"cpus": 0.1}
    out = final["stdout"]
    assert str(tmp_path) in out and "v-" + process_id in out and "to-stderr" in out
    with cluster_app.app_context():
        store = pm(cluster_app).get_manager().store
        row = present(store.get(process_id))
        assert row["backend"] == "cluster" and row["env_keys"] == ["SECRET_X"]
        assert "v-" + process_id not in json.dumps(row, default=str)  # procman never stores env values
        data, _ = pm(cluster_app).read_output(process_id)
    assert b"to-stderr" in data


def test_nonzero_and_killed_exits(cluster_app: Flask) -> None:
    failing, killed = new_id(), new_id()
    with cluster_app.app_context():
        pm(cluster_app).start_process(failing, [PY, "-c", "import sys; print('bad'); sys.exit(3)"], backend="cluster")
        pm(cluster_app).start_process(killed, [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                                      backend="cluster")
    first, second = wait_final(cluster_app, failing), wait_final(cluster_app, killed)
    assert first["status"] == "completed" and first["return_code"] == 3 and "bad" in (first["error"] or "")
    assert second["status"] == "completed" and second["return_code"] == -9, second


def test_a_stop_ends_the_whole_tree_and_a_timeout_is_timed_out(cluster_app: Flask, tmp_path: t.Any) -> None:
    process_id, slow = new_id(), new_id()
    marker = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
            f" open({str(marker)!r}, 'w').write(str(c.pid)); print('tree up', flush=True); time.sleep(300)")
    with cluster_app.app_context():
        pm(cluster_app).start_process(process_id, [PY, "-c", code], backend="cluster")
        pm(cluster_app).start_process(slow, [PY, "-c", "import time; time.sleep(300)"], backend="cluster", timeout=1.5)
        wait_until(lambda: marker.exists() and marker.read_text(), timeout=END_DEADLINE, message="the tree is up")
        child = int(marker.read_text())
        assert pm(cluster_app).stop_process(process_id)
        status = present(pm(cluster_app).get_process_status(process_id))
    assert status["status"] == "stopped", status
    wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
               timeout=30, message="the child of the stopped job is gone")
    timed = wait_final(cluster_app, slow)
    assert timed["status"] == "timed_out" and "timed out after 1.5 s" in (timed["error"] or ""), timed


def test_an_infeasible_request_fails_at_once_and_leaves_a_failed_record(cluster_app: Flask) -> None:
    process_id = new_id()
    with cluster_app.app_context(), pytest.raises(InfeasibleResources, match="No node"):
        pm(cluster_app).start_process(process_id, [PY, "-c", "pass"], backend="cluster", resources={"gpus": 64})
    with cluster_app.app_context():
        status = present(pm(cluster_app).get_process_status(process_id))
        assert status["status"] == "failed" and "gpus" not in status["error"] and "GPU" in status["error"]
        with pytest.raises(errors.InvalidCommand, match="No backend named"):
            pm(cluster_app).start_process(new_id(), [PY, "-c", "pass"], backend="nowhere")
        with pytest.raises(ValueError, match="not a resource name"):
            pm(cluster_app).start_process(new_id(), [PY, "-c", "pass"], backend="cluster", resources={"CPU": 1})


def test_a_custom_resource_places_the_job_on_the_second_node(cluster_app: Flask, ray_cluster: RayCluster) -> None:
    process_id = new_id()
    code = "import os; print('PID', os.getpid(), flush=True); import time; time.sleep(300)"
    with cluster_app.app_context():
        pm(cluster_app).start_process(process_id, [PY, "-c", code], backend="cluster", resources={WORKER_RESOURCE: 1})
        status = wait_until(lambda: (s := present(pm(cluster_app).get_process_status(process_id)))["stdout"].count("PID ")
                            and s, timeout=END_DEADLINE, message="the job prints its pid")
        pid = int(status["stdout"].split("PID ")[1].split()[0])
        assert pid in {p.pid for p in present(ray_cluster.worker).processes()}, "it runs under the second node"
        assert pm(cluster_app).stop_process(process_id)


def test_live_output_through_sse_and_a_declared_program_from_the_rest_api(cluster_app: Flask) -> None:
    client = cluster_app.test_client()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    answer = client.post("/procman/api/programs/hello/start", json={}, headers=headers)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    process = answer.get_json()["process"]
    assert process["backend"] == "cluster"
    listed = client.get("/procman/api/processes", headers=headers).get_json()["processes"]
    assert any(p["id"] == process["id"] and p["backend"] == "cluster" for p in listed)
    events = client.get(f"/procman/api/processes/{process['id']}/events", headers=headers, buffered=False)
    seen = b""
    for chunk in events.response:
        seen += chunk if isinstance(chunk, bytes) else chunk.encode()
        if b"event: end" in seen:
            break
    events.close()
    assert b"hello from ray" in seen and b"event: end" in seen
    assert b'"status": "completed"' in seen or b'"status":"completed"' in seen


def test_the_cli_stops_a_ray_run(cluster_app: Flask) -> None:
    process_id = new_id()
    with cluster_app.app_context():
        pm(cluster_app).start_process(process_id, [PY, "-c", "import time; print('up', flush=True); time.sleep(300)"],
                                      backend="cluster")
        wait_until(lambda: "up" in present(pm(cluster_app).get_process_status(process_id))["stdout"],
                   timeout=END_DEADLINE, message="the job prints")
    result = cluster_app.test_cli_runner().invoke(args=["procman", "stop", process_id])
    assert result.exit_code == 0, result.output
    with cluster_app.app_context():
        assert present(pm(cluster_app).get_process_status(process_id))["status"] == "stopped"


def test_the_cli_starts_on_a_backend(cluster_app: Flask) -> None:
    process_id = new_id()
    result = cluster_app.test_cli_runner().invoke(
        args=["procman", "start", "--backend", "cluster", process_id, "--", PY, "-c", "print('from the cli')"])
    assert result.exit_code == 0, result.output
    final = wait_final(cluster_app, process_id)  # the app's own manager adopts it (the CLI's is gone)
    assert final["backend"] == "cluster" and final["status"] == "completed" and "from the cli" in final["stdout"]


def test_config_errors_are_clear(make_app: AppFactory) -> None:
    from flask_procman.errors import ConfigurationError

    for bad, message in [({"c": {"type": "slurm", "address": "http://x:1"}}, "'type' must be 'ray'"),
                         ({"c": {"type": "ray", "address": "head:8265"}}, "'address' must be"),
                         ({"local": {"type": "ray", "address": "http://x:1"}}, "is not a backend name"),
                         ({"c": {"type": "ray", "address": "http://x:1", "max_processes": -1}}, "max_processes"),
                         ([], "must be a dict")]:
        with pytest.raises(ConfigurationError, match=message):
            make_app(PROCMAN_BACKENDS=bad)


def test_an_unreachable_head_fails_a_start_clearly(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_BACKENDS={"gone": {"type": "ray", "address": f"http://127.0.0.1:{free_port()}"}})
    process_id = new_id()
    with app.app_context(), pytest.raises(errors.StartError, match="unreachable"):
        pm(app).start_process(process_id, [PY, "-c", "pass"], backend="gone")
    with app.app_context():
        assert present(pm(app).get_process_status(process_id))["status"] == "failed"


def test_the_token_is_not_in_the_settings_repr(cluster_app: Flask) -> None:
    with cluster_app.app_context():
        settings = pm(cluster_app).get_manager().settings
    assert TOKEN not in repr(settings) and os.environ.get("RAY_AUTH_TOKEN") != TOKEN


# ---------------------------------------------------------------------- several OS processes
class RayWorkers(Workers):
    """Worker subprocesses (tests/workerapp.py) and the test's own app, sharing one SQLite file,
    one log folder and the session's Ray cluster as backend ``cluster``."""

    def __init__(self, tmp_path: t.Any, cluster: RayCluster, cap: int) -> None:
        super().__init__(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}")
        self.env.update({"WORKER_CAP": "5", "WORKER_RAY_ADDRESS": cluster.address, "WORKER_RAY_TOKEN": TOKEN,
                         "WORKER_RAY_CAP": str(cap), "WORKER_BACKEND": "cluster", "WORKER_STOP_ON_EXIT": "0"})


def max_overlap(path: t.Any) -> int:
    """The most intervals (``start end`` lines) open at one instant."""
    events: list[tuple[float, int]] = []
    for line in path.read_text().splitlines():
        start, end = map(float, line.split())
        events += [(start, 1), (end, -1)]
    most = current = 0
    for _, step in sorted(events):
        current += step
        most = max(most, current)
    return most


def test_the_cap_and_queue_in_front_of_ray_hold_across_os_processes(tmp_path: t.Any, ray_cluster: RayCluster) -> None:
    workers = RayWorkers(tmp_path, ray_cluster, cap=1)
    try:
        intervals = tmp_path / "intervals"
        go = tmp_path / "go"
        procs = [workers.spawn("burst", "2", f"w{n}", "0.5", "queue", WORKER_INTERVALS=str(intervals),
                               WORKER_GO=str(go)) for n in range(2)]
        go.write_text("")
        answers: dict[str, bool] = {}
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            answers.update(json.loads(out.strip().splitlines()[-1]))
        assert all(answers.values()) and len(answers) == 4
        assert len(intervals.read_text().splitlines()) == 4
        assert max_overlap(intervals) == 1  # the cluster's cap of 1, across both OS processes
        app = workers.app()
        with app.app_context():
            finals = [present(pm(app).get_process_status(i)) for i in answers]
            assert {f["status"] for f in finals} == {"completed"} and {f["backend"] for f in finals} == {"cluster"}
            assert sum(1 for f in finals if f["status"] == "completed") == 4
    finally:
        workers.close()


def test_a_worker_killed_while_its_ray_job_runs_is_adopted_without_loss(tmp_path: t.Any, ray_cluster: RayCluster) -> None:
    workers = RayWorkers(tmp_path, ray_cluster, cap=8)
    try:
        process_id = "adopted"
        worker = workers.spawn("start", f"{process_id}:6.0")
        assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
        log = tmp_path / "logs" / process_id / "stdout.log"
        # Killed once its own mirror has copied part of the output: the adopter resumes from there.
        wait_until(lambda: log.exists() and b"line 3\n" in log.read_bytes(), timeout=END_DEADLINE,
                   message="the worker mirrors the first lines")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        app = workers.app()
        with app.app_context():
            final = pm(app).get_manager().wait(process_id, timeout=END_DEADLINE)
            data, _ = pm(app).read_output(process_id, "stdout", 0, 1 << 20)
        assert (final["status"], final["return_code"]) == ("completed", len(process_id) % 7), final
        expected = "".join(f"{process_id} line {i}\n" for i in range(30)).encode() + b"bye\n"
        assert expected in data and data.count(b"line 0\n") == 1 and data.endswith(expected), data[-400:]
        wait_until(lambda: len(workers.handler_runs()) >= 1, timeout=30, message="the handler")
        runs = workers.handler_runs()
        assert [r[0] for r in runs] == [process_id] and runs[0][2] == str(os.getpid())  # once, by the adopter
    finally:
        workers.close()


def test_the_list_filters_by_backend_and_the_dashboard_offers_the_filter(cluster_app: Flask) -> None:
    remote, local = new_id(), new_id()
    with cluster_app.app_context():
        pm(cluster_app).start_process(remote, [PY, "-c", "pass"], backend="cluster")
        pm(cluster_app).start_process(local, [PY, "-c", "pass"])
        wait_final(cluster_app, remote), wait_final(cluster_app, local)
    client = cluster_app.test_client()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}

    def ids(backend: str) -> set[str]:
        answer = client.get(f"/procman/api/processes?backend={backend}", headers=headers).get_json()
        return {p["id"] for p in answer["processes"]}

    assert remote in ids("cluster") and local not in ids("cluster")
    assert local in ids("local") and remote not in ids("local")
    assert client.get("/procman/api/processes?backend=nope", headers=headers).status_code == 400
    page = client.get("/procman/", headers=headers).get_data(as_text=True)
    assert 'id="backend-filter"' in page and '<option value="cluster">cluster</option>' in page
    schema = client.get("/procman/api/openapi.json", headers=headers).get_json()
    assert "backend" in schema["components"]["schemas"]["Process"]["properties"]


# ---------------------------------------------------------------------- a head that goes away
class Proxy:
    """A TCP relay to the Ray head that the test can cut and restore on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.resume()

    def resume(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        """Refuse new connections and cut the open ones (the head seems gone)."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_records_wait_for_a_head_that_went_away_and_settle_when_it_is_back(make_app: AppFactory,
                                                                           ray_cluster: RayCluster) -> None:
    head_port = int(ray_cluster.address.rsplit(":", 1)[1])
    proxy = Proxy(head_port)
    try:
        app = make_app(PROCMAN_BACKENDS={"cluster": {"type": "ray", "address": f"http://127.0.0.1:{proxy.port}",
                                                     "token": TOKEN}})
        process_id = new_id()
        code = "import time; print('before', flush=True); time.sleep(2); print('after', flush=True)"
        with app.app_context():
            pm(app).start_process(process_id, [PY, "-c", code], backend="cluster")
            wait_until(lambda: "before" in present(pm(app).get_process_status(process_id))["stdout"],
                       timeout=END_DEADLINE, message="the first line")
            tag = present(pm(app).get_process_status(process_id))["run_tag"]
            proxy.pause()
            direct = RayJobsBackend(ray_cluster.address, TOKEN)
            end = wait_until(lambda: direct.end(tag), timeout=END_DEADLINE, message="the job ends in Ray")
            assert end.status == "completed"
            status = present(pm(app).get_process_status(process_id))
            assert status["status"] == "running" and "\nafter\n" not in status["stdout"]  # nothing to know it by
            with pytest.raises(errors.StartError, match="unreachable"):
                pm(app).start_process(new_id(), [PY, "-c", "pass"], backend="cluster")
            proxy.resume()
            final = pm(app).get_manager().wait(process_id, timeout=END_DEADLINE)
            direct.close()
        assert (final["status"], final["return_code"]) == ("completed", 0), final
        assert final["stdout"].count("\nbefore\n") == 1 and final["stdout"].endswith("\nbefore\nafter\n")
    finally:
        proxy.pause()


def test_a_starting_record_whose_starter_died_is_adopted_through_its_run_tag(cluster_app: Flask,
                                                                              ray_cluster: RayCluster) -> None:
    from flask_procman.engine.identity import owner_id
    from flask_procman.store import utcnow

    dead = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    owner = owner_id(socket.gethostname(), dead.pid, "dead")
    dead.kill()
    dead.wait()
    submitted, never = new_id(), new_id()
    manager = pm(cluster_app).get_manager(cluster_app)
    with cluster_app.app_context():
        manager.stats()  # the engine runs
        for process_id in (submitted, never):
            tag, cmd = uuid.uuid4().hex, [PY, "-c", "print('made it')"]
            record: dict[str, t.Any] = {
                      "id": process_id, "cmd": cmd, "cwd": None, "env_keys": [],
                      "merge_stderr": True, "host": manager.host, "owner": owner, "created_at": utcnow(),
                      "run_tag": tag, "namespace": manager.settings.namespace, "backend": "cluster",
                      "resources": None}
            if process_id == submitted:  # the dead starter's submit had arrived
                manager.remote.backend("cluster").submit(submission_id=tag, process_id=process_id, cmd=cmd)
            assert manager.store.claim(record, 8, False)[0] == "starting"
        found = manager.wait(submitted, timeout=END_DEADLINE)
        gone = manager.wait(never, timeout=END_DEADLINE)
    assert (found["status"], found["return_code"]) == ("completed", 0) and "made it" in found["stdout"], found
    assert gone["status"] == "failed" and gone["error"], gone
