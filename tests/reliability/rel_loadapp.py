"""The app the load test serves with gunicorn: ``gunicorn 'rel_loadapp:create_app()'``.

Configured from the environment: LOAD_INSTANCE, LOAD_DB, LOAD_LOGS, LOAD_CAP, LOAD_TOKEN.
Declared programs: ``true``, and ``hold`` (sleeps 1 s: it fills the slots so that starts queue).
Processes outlive the worker that started them (``PROCMAN_STOP_ON_EXIT`` False), as the README
advises for several workers.
"""

from __future__ import annotations

import os

from flask import Flask, Response

from flask_procman import ProcMan


def create_app() -> Flask:
    """The load-test app."""
    app = Flask("rel_loadapp", instance_path=os.environ["LOAD_INSTANCE"])
    app.config.update(
        PROCMAN_DATABASE_URI=os.environ.get("LOAD_DB") or None,
        PROCMAN_LOG_DIR=os.environ["LOAD_LOGS"],
        PROCMAN_MAX_PROCESSES=int(os.environ.get("LOAD_CAP", "8")),
        PROCMAN_STOP_ON_EXIT=False,
        PROCMAN_POLL_INTERVAL=0.5,
        PROCMAN_API_TOKEN=os.environ["LOAD_TOKEN"],
        PROCMAN_PROGRAMS={"true": {"cmd": ["true"]}, "hold": {"cmd": ["sleep", "1"]}},
    )
    ProcMan(app)

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app
