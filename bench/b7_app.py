"""B7's app: ProcMan (REST API opened by a bearer token) plus a trivial JSON route ``/ping``.

Run by gunicorn as ``b7_app:app``; the trial process imports it too (same instance folder, so the
same SQLite records and log files) to start the processes whose status the load client asks for.
Configured by ``PROCMAN_BENCH_INSTANCE`` and ``PROCMAN_BENCH_TOKEN`` (and, for experiments,
``PROCMAN_BENCH_OUTPUT_TAIL``).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify

from flask_procman import ProcMan

app = Flask("procman_b7", instance_path=os.environ["PROCMAN_BENCH_INSTANCE"])
app.config.update(
    PROCMAN_MAX_PROCESSES=1000,
    PROCMAN_RETENTION=None,
    PROCMAN_STOP_TIMEOUT=2.0,
    PROCMAN_API_TOKEN=os.environ["PROCMAN_BENCH_TOKEN"],
)
if os.environ.get("PROCMAN_BENCH_OUTPUT_TAIL"):  # experiments only: the table uses the default (64 KiB)
    app.config["PROCMAN_OUTPUT_TAIL"] = int(os.environ["PROCMAN_BENCH_OUTPUT_TAIL"])
procman = ProcMan(app)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify(ok=True)
