"""A worker for the randomised kill test: ``python kill_worker.py PREFIX MARKER``.

Builds the app of ``tests/workerapp.py`` (configured from the ``WORKER_*`` environment), prints
``ready`` once its engine runs, then starts processes (direct and queued, long and instant, each
with ``KILLTEST=<MARKER>`` in its env) and stops some of them (which frees slots, so its watcher
promotes queued ones) until the test SIGKILLs it at a random instant.
"""

from __future__ import annotations

import sys

import workerapp


def main(prefix: str, marker: str) -> None:
    """Start and stop processes until killed."""
    app = workerapp.create_app()
    procman = workerapp.procman
    with app.app_context():
        procman.stats()  # the engine (and its watcher, which promotes) runs
        print("ready", flush=True)
        started: list[str] = []
        i = 0
        while True:  # busy until the kill, so that it lands in the middle of a start, a stop or a promotion
            process_id = f"{prefix}-{i}"
            cmd = ["true"] if i % 5 == 4 else ["sleep", "60"]
            if procman.start_process(process_id, cmd, env={"KILLTEST": marker}, queue=i % 2 == 1):
                started.append(process_id)
            if len(started) > 4:  # frees a slot (or a queue place): the watcher promotes
                procman.stop_process(started.pop(0), timeout=0.2)
            i += 1

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
