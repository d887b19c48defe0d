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




@pytest.fixture
def server(tmp_path: t.Any, database_uri: str) -> t.Iterator[str]:
    port = free_port()
    env = {**os.environ, "WORKER_INSTANCE": str(tmp_path / "instance"), "WORKER_DB": database_uri,
           "WORKER_LOGS": str(tmp_path / "logs"), "WORKER_TOKEN": TOKEN, "WORKER_STOP_ON_EXIT": "0",
           "WORKER_CAP": "10"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "4", "--bind", f"127.0.0.1:{port}", *no_control_socket(),
         "workerapp:create_app()"],
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
        out, _ = proc.communicate(timeout=30)
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
