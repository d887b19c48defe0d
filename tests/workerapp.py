"""A small app that tests run as separate OS processes (workers) sharing one database and log folder.

Configured from the environment: WORKER_INSTANCE, WORKER_DB, WORKER_LOGS, WORKER_CAP, WORKER_STOP_ON_EXIT,
WORKER_TOKEN, WORKER_HANDLER_LOG (a file the durable handler appends ``id rc`` lines to); with
WORKER_RAY_ADDRESS (and WORKER_RAY_TOKEN, WORKER_RAY_CAP) a Ray backend ``cluster``, which
WORKER_BACKEND=cluster makes ``burst`` and ``start`` use.
"""

from __future__ import annotations

import json
import os
import sys
import time

from flask import Flask, Response, current_app

from flask_procman import ProcMan

procman = ProcMan()


@procman.on_complete("record")
def record(process_id: str, return_code: int | None) -> None:
    """Append one line per run, so tests can count how often it ran."""
    path = current_app.config.get("WORKER_HANDLER_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{process_id} {return_code} {os.getpid()}\n")
    if current_app.config.get("WORKER_HANG_IN_HANDLER"):  # a worker that dies in the middle of it
        time.sleep(3600)


def create_app() -> Flask:
    """The worker app."""
    app = Flask("workerapp", instance_path=os.environ["WORKER_INSTANCE"])
    app.config.update(
        PROCMAN_DATABASE_URI=os.environ.get("WORKER_DB") or None,
        PROCMAN_LOG_DIR=os.environ["WORKER_LOGS"],
        PROCMAN_MAX_PROCESSES=int(os.environ.get("WORKER_CAP", "5")),
        PROCMAN_STOP_ON_EXIT=os.environ.get("WORKER_STOP_ON_EXIT", "1") == "1",
        PROCMAN_POLL_INTERVAL=0.1,
        PROCMAN_STOP_TIMEOUT=2.0,
        PROCMAN_API_TOKEN=os.environ.get("WORKER_TOKEN") or None,
        WORKER_HANDLER_LOG=os.environ.get("WORKER_HANDLER_LOG"),
        WORKER_HANG_IN_HANDLER=os.environ.get("WORKER_HANG_IN_HANDLER") == "1",
        PROCMAN_PROGRAMS={"sleeper": {"cmd": [sys.executable, "-c", "import time; time.sleep(60)"]},
                          "quick": {"cmd": [sys.executable, "-c", "print('done')"]}},
    )
    if os.environ.get("WORKER_RAY_ADDRESS"):  # the Ray cluster of tests/ray_support.py as backend "cluster"
        app.config["PROCMAN_BACKENDS"] = {"cluster": {
            "type": "ray", "address": os.environ["WORKER_RAY_ADDRESS"], "token": os.environ.get("WORKER_RAY_TOKEN"),
            "max_processes": int(os.environ.get("WORKER_RAY_CAP", "8"))}}
    procman.init_app(app)
    if os.environ.get("WORKER_USE_AT_IMPORT") == "1":
        # As an app that touches the manager while loading (in a `gunicorn --preload` master,
        # before the fork): each forked worker must start its own engine.
        with app.app_context():
            procman.stats()

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app


def main(argv: list[str]) -> None:
    """``burst N PREFIX SECONDS [queue]`` | ``start ID SECONDS...`` | ``startjson JSON`` | ``serve``: see the tests."""
    app = create_app()
    command = argv[0]
    with app.app_context():
        if command == "burst":
            count, prefix, seconds = int(argv[1]), argv[2], float(argv[3])
            queue = len(argv) > 4 and argv[4] == "queue"
            go = os.environ.get("WORKER_GO")
            while go and not os.path.exists(go):  # a barrier: every worker starts at once
                time.sleep(0.005)
            # Each child appends its own [start, end] wall-clock interval, so that the test can
            # compute the true maximum overlap (one clock for every process of the machine).
            intervals = os.environ["WORKER_INTERVALS"]
            script = f't0=$(date +%s.%N); sleep {seconds}; echo "$t0 $(date +%s.%N)" >> "$1"'
            cmd = ["sh", "-c", script, "sh", intervals]
            backend = os.environ.get("WORKER_BACKEND")
            answers = {f"{prefix}-{i}": procman.start_process(f"{prefix}-{i}", cmd, queue=queue, backend=backend)
                       for i in range(count)}
            for process_id, ok in answers.items():
                if ok:
                    procman.wait(process_id, timeout=120)
            print(json.dumps(answers), flush=True)
        elif command == "start":
            # start ID SECONDS: a child that writes a known pattern then exits with code len(ID) % 7.
            for spec in argv[1:]:
                process_id, duration = spec.split(":")
                code = (
                    "import sys, time\n"
                    f"for i in range(30):\n    sys.stdout.write('{process_id} line %d\\n' % i); sys.stdout.flush(); "
                    f"time.sleep({float(duration)} / 30)\n"
                    f"sys.stderr.write('bye\\n'); sys.exit({len(process_id) % 7})"
                )
                if not procman.start_process(process_id, [sys.executable, "-c", code], handler="record",
                                             backend=os.environ.get("WORKER_BACKEND")):
                    raise SystemExit(f"cap reached for {process_id}")
            print("started", flush=True)
            sys.stdin.read()  # stay until the test closes stdin (or kills us)
        elif command == "startjson":
            # startjson JSON: start each [id, cmd] of a JSON list (no handler), then stay like "start".
            for process_id, cmd in json.loads(argv[1]):
                if not procman.start_process(process_id, cmd):
                    raise SystemExit(f"cap reached for {process_id}")
            print("started", flush=True)
            sys.stdin.read()
        elif command == "serve":
            procman.stats()  # start the engine: it adopts and records what others left
            print("serving", flush=True)
            sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
