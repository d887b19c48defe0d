"""A real gunicorn with 4 workers: a process started through one is seen and stopped through others."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t

import pytest
import requests
from conftest import free_port, no_control_socket, wait_until

HERE = os.path.dirname(__file__)
TOKEN = "gunicorn-test-token-0123456789"

pytest.importorskip("gunicorn")




@pytest.fixture(params=["plain", "preload"])
def server(request: pytest.FixtureRequest, tmp_path: t.Any, database_uri: str) -> t.Iterator[str]:
    """gunicorn with 4 workers; "preload": the master loads the app and uses the manager before forking."""
    port = free_port()
    preload = request.param == "preload"
    env = {**os.environ, "WORKER_INSTANCE": str(tmp_path / "instance"), "WORKER_DB": database_uri,
           "WORKER_LOGS": str(tmp_path / "logs"), "WORKER_TOKEN": TOKEN, "WORKER_STOP_ON_EXIT": "0",
           "WORKER_CAP": "10", "WORKER_USE_AT_IMPORT": "1" if preload else "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "4", "--bind", f"127.0.0.1:{port}", *no_control_socket(),
         *(["--preload"] if preload else []), "workerapp:create_app()"],
        cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}/procman/api"

    def up() -> bool:
        try:
            return requests.get(f"{base}/health", timeout=5).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False

    try:
        wait_until(up, timeout=30, message="gunicorn up")
        yield base
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a worker that does not exit is a failure, not a leak
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"gunicorn did not exit within 30 s of SIGTERM:\n{out[-3000:]}")
        if proc.returncode not in (0, -15):
            print(out)


def _call(method: str, url: str) -> requests.Response:
    # A new connection per request, so that gunicorn hands requests to different workers.
    with requests.Session() as session:
        return session.request(method, url, headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
                               timeout=30)


def test_start_on_one_worker_status_and_stop_on_others(server: str) -> None:
    started = _call("POST", f"{server}/programs/sleeper/start")
    assert started.status_code == 201, started.text
    process_id = started.json()["process"]["id"]
    starter = started.headers["X-Worker-Pid"]

    def seen_elsewhere() -> requests.Response | None:
        response = _call("GET", f"{server}/processes/{process_id}")
        assert response.status_code == 200 and response.json()["status"] == "running"
        return response if response.headers["X-Worker-Pid"] != starter else None

    wait_until(seen_elsewhere, timeout=30, message="a status answered by another worker")
    for _attempt in range(12):
        response = _call("POST", f"{server}/processes/{process_id}/stop")
        assert response.status_code == 200, response.text
        assert response.json()["process"]["status"] == "stopped"
        if response.headers["X-Worker-Pid"] != starter:
            break  # stopped by a worker that did not start it
        # Stopped by the worker that started it: try again with a new process.
        started = _call("POST", f"{server}/programs/sleeper/start")
        process_id, starter = started.json()["process"]["id"], started.headers["X-Worker-Pid"]
    else:
        pytest.fail("every stop landed on the starting worker")
    listing = _call("GET", f"{server}/processes?status=stopped").json()
    assert process_id in {p["id"] for p in listing["processes"]}


def test_workers_record_ends_by_themselves(server: str) -> None:
    """Every worker's own watcher runs (after a --preload fork too): a short process's end is
    recorded without anyone stopping it."""
    started = _call("POST", f"{server}/programs/quick/start")
    assert started.status_code == 201, started.text
    process_id = started.json()["process"]["id"]
    final = wait_until(lambda: (r := _call("GET", f"{server}/processes/{process_id}").json())["status"] != "running"
                       and r, timeout=30, message="end recorded")
    assert (final["status"], final["return_code"]) == ("completed", 0)
