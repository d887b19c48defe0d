"""A worker that dies by SIGKILL at one exact step of a start: ``python crash_worker.py MODE ID``.

MODE is ``direct-before-spawn``, ``direct-after-spawn``, ``queued-before-spawn`` or
``queued-after-spawn``: the worker starts ``ID`` (directly, or queued behind a short ``blocker``
so that its own watcher promotes it) and kills itself just before or just after the spawn of
``ID``, the instants a crash used to leave a live process with no record, or a queued start lost.
The command prints ``$SECRET_VAL`` (from the start's env) and sleeps.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import typing as t

import workerapp

from flask_procman.manager import Manager

CMD = ["sh", "-c", 'echo "value=$SECRET_VAL"; exec sleep 60']


def main(mode: str, process_id: str) -> None:
    """Start ``process_id`` and die at the step ``mode`` names."""
    original = Manager._launch  # fault injection at one precise step

    def launch(self: Manager, record: t.Mapping[str, t.Any], overrides: dict[str, str]) -> t.Any:
        if record["id"] != process_id:
            return original(self, record, overrides)
        if mode.endswith("before-spawn"):
            os.kill(os.getpid(), signal.SIGKILL)
        identity = original(self, record, overrides)
        os.kill(os.getpid(), signal.SIGKILL)
        return identity

    Manager._launch = launch  # type: ignore[method-assign]
    app = workerapp.create_app()
    with app.app_context():
        if mode.startswith("queued"):
            assert workerapp.procman.start_process("blocker", ["sleep", "0.3"])
            assert workerapp.procman.start_process(process_id, CMD, env={"SECRET_VAL": "v42"}, queue=True)
        else:
            workerapp.procman.start_process(process_id, CMD, env={"SECRET_VAL": "v42"})
        time.sleep(30)  # the promotion happens on the watcher thread, which kills us
    raise SystemExit("not killed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
