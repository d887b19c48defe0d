"""Runs with ``backend="cluster"`` through procman's normal API, on the session's real Ray cluster
(tests/ray_support.py): records, caps, queues, stops, timeouts, output, the REST API and the CLI."""

from __future__ import annotations

import json
import os
import typing as t
import uuid

import psutil
import pytest
from conftest import PY, AppFactory, present, wait_until
from flask import Flask
from ray_support import TOKEN, WORKER_RESOURCE, RayCluster

from flask_procman import ProcMan, errors
from flask_procman.backends import InfeasibleResources

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
    from conftest import free_port

    app = make_app(PROCMAN_BACKENDS={"gone": {"type": "ray", "address": f"http://127.0.0.1:{free_port()}"}})
    process_id = new_id()
    with app.app_context(), pytest.raises(errors.StartError, match="unreachable"):
        pm(app).start_process(process_id, [PY, "-c", "pass"], backend="gone")
    with app.app_context():
        assert present(pm(app).get_process_status(process_id))["status"] == "failed"


def test_os_sees_no_token(cluster_app: Flask) -> None:
    with cluster_app.app_context():
        settings = pm(cluster_app).get_manager().settings
    assert TOKEN not in repr(settings) and os.environ.get("RAY_AUTH_TOKEN") != TOKEN
