"""A worker process for the reliability tests: ``python rel_worker.py '<json specs>'``.

Builds the app of ``tests/workerapp.py`` (configured from the same ``WORKER_*`` environment),
starts each ``{"id": ..., "cmd": [...]}`` with the durable ``record`` handler, prints ``started``
and then stays until its stdin is closed, so that a test can SIGKILL it at a moment of its choosing.
"""

from __future__ import annotations

import json
import sys

import workerapp


def main(specs: list[dict[str, object]]) -> None:
    """Start ``specs`` and wait for stdin to close."""
    app = workerapp.create_app()
    with app.app_context():
        for spec in specs:
            if not workerapp.procman.start_process(str(spec["id"]), list(spec["cmd"]),  # type: ignore[call-overload]
                                                   handler="record"):
                raise SystemExit(f"cap reached for {spec['id']}")
        print("started", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
