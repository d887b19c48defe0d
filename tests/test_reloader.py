"""The debug reloader: a code change restarts the server process; running processes survive it
and the new server process adopts them (they are not killed on every edit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import typing as t

import psutil
import requests
from conftest import free_port, wait_until

APP = textwrap.dedent(
    """
    import os, sys
    from flask import Flask
    from flask_procman import ProcMan

    app = Flask("reloadapp", instance_path=os.environ["RELOAD_INSTANCE"])
    app.config.update(PROCMAN_POLL_INTERVAL=0.1)
    procman = ProcMan(app)
    VERSION = 1

    @app.post("/start")
    def start():
        procman.start_process("job", [sys.executable, "-c", "import time; time.sleep(60)"])
        return str(procman.get_process_status("job")["pid"])

    @app.get("/state")
    def state():
        status = procman.get_process_status("job")
        row = procman.get_manager().store.get("job")
        return {"server": os.getpid(), "version": VERSION, "status": status and status["status"],
                "owner_pid": row and int(row["owner"].split("|")[1])}

    @app.post("/stop")
    def stop():
        return {"stopped": procman.stop_process("job", timeout=2)}
    """
)



def test_processes_survive_a_reload_and_are_adopted(tmp_path: t.Any) -> None:
    (tmp_path / "reloadapp.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "RELOAD_INSTANCE": str(tmp_path / "instance"), "FLASK_APP": "reloadapp"}
    server = subprocess.Popen([sys.executable, "-m", "flask", "run", "--debug", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def state() -> dict[str, t.Any] | None:
        try:
            return t.cast(dict[str, t.Any], requests.get(f"{base}/state", timeout=5).json())
        except (requests.ConnectionError, requests.Timeout, ValueError):
            return None

    try:
        first = wait_until(state, timeout=30, message="dev server up")
        pid = int(requests.post(f"{base}/start", timeout=10).text)
        (tmp_path / "reloadapp.py").write_text(APP.replace("VERSION = 1", "VERSION = 2"))
        second = wait_until(lambda: (s := state()) and s["version"] == 2 and s, timeout=30, message="reloaded")
        assert second["server"] != first["server"]  # a new server process
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # the job survived the reload
        assert second["status"] == "running"
        wait_until(lambda: (s := state()) and s["owner_pid"] == second["server"], timeout=10, message="adopted")
        assert requests.post(f"{base}/stop", timeout=10).json() == {"stopped": True}
        assert state()["status"] == "stopped"  # type: ignore[index]
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   message="job ended")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)
