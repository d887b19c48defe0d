"""The local backend: today's engine (spawn, identity, tree kills, the watcher, log files)."""

from __future__ import annotations

import logging
import os
import time
import typing as t

from ..engine import outputopts
from ..engine.identity import Identity, record_identity
from ..engine.local import kill_trees, kill_trees_each, reap, spawn
from ..engine.logfiles import LogFiles
from ..engine.runtag import ENV_VAR as RUN_TAG_VAR
from ..progress import ENV_VAR as PROGRESS_VAR
from ..recovery import RunFinding, inspect_run, kill_leftovers

if t.TYPE_CHECKING:
    from ..config import Settings
    from ..engine.watcher import Watcher
    from .base import RunSpec

log = logging.getLogger("flask_procman")


class LocalBackend:
    """Runs commands on this host in sessions of their own, output straight into the log files.

    The handle of a run is its :class:`~flask_procman.engine.identity.Identity`; ends are observed
    by the manager's watcher (``watcher()`` returns it, or None while the engine is not started in
    this OS process).
    """

    name = "local"

    def __init__(self, settings: Settings, watcher: t.Callable[[], Watcher | None]) -> None:
        self._settings = settings
        self._watcher = watcher

    def submit(self, run: RunSpec) -> Identity:
        """Spawn the run's command with its env overrides (raises ``OSError`` or ``ValueError``)."""
        env = {**os.environ, **run.env}
        if "PYTHONUNBUFFERED" not in run.env:
            env["PYTHONUNBUFFERED"] = "1"
        if run.run_tag:
            env[RUN_TAG_VAR] = run.run_tag  # finds the run's processes without their pids
        logs = LogFiles(self._settings.log_dir, run.process_id)
        env[PROGRESS_VAR] = logs.progress_path
        options = outputopts.effective(run.output_options, self._settings.max_log_bytes,
                                       self._settings.max_log_action)
        # For the watcher of whichever manager follows the run (no database query needed).
        logs.after_create = lambda: write_output_options(logs.folder, options)
        return spawn(list(run.cmd), run.cwd, env, logs, run.merge_stderr)

    def cancel(self, handle: Identity, process_id: str) -> None:
        """Stop a process whose start was undone, reap it (no zombie) and forget its exit status
        (it never counted as a run)."""
        kill_trees([handle], 0.5)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if reap(handle.pid) is not None:
                    break
            except ChildProcessError:
                break
            time.sleep(0.005)
        try:
            os.unlink(LogFiles(self._settings.log_dir, process_id).exit_status_path)
        except FileNotFoundError:
            pass

    def handle_columns(self, handle: Identity) -> dict[str, t.Any]:
        """``pid`` and ``pid_started`` (its start since boot: identity survives pid reuse)."""
        return {"pid": handle.pid, "pid_started": handle.started}

    def handle_of(self, record: t.Mapping[str, t.Any]) -> Identity | None:
        """The identity of a record's process (None before its pid is recorded)."""
        return record_identity(record)

    def is_alive(self, handle: Identity) -> bool:
        """True while the process runs (pid reuse and zombies count as ended)."""
        return handle.is_alive()

    def follow(self, process_id: str, handle: Identity, *, own: bool, timeout_left: float | None) -> None:
        """Hand the process to this manager's watcher (``own``: our child, reaped by us)."""
        watcher = self._watcher()
        if watcher is None:
            raise RuntimeError("the engine is not started in this process")
        watcher.watch(process_id, handle, is_child=own, timeout_left=timeout_left)

    def stop(self, handles: t.Sequence[Identity], grace: float) -> list[list[int]]:
        """SIGTERM every tree at once, SIGKILL after ``grace``; the pids that survived, per tree."""
        return kill_trees_each(list(handles), grace) if handles else []

    def exit_code_after_stop(self, handle: Identity, process_id: str, *, own: bool) -> int | None:
        """Reap our child (also one no watcher follows: spawned before the engine restarted, else
        it stays a zombie), or read the wrapper's exit file; -9 when neither says."""
        # The identity check first, so that a reused pid of another child is never reaped here.
        if own or handle.process() is not None:
            try:
                waited, status = os.waitpid(handle.pid, os.WNOHANG)
                if waited:
                    return os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        code = self.read_exit_status(process_id)
        return code if code is not None else -9

    def read_exit_status(self, process_id: str) -> int | None:
        """The exit status the wrapper wrote next to the logs, if any."""
        return LogFiles(self._settings.log_dir, process_id).read_exit_status()

    def find(self, run_tag: str | None, process_id: str) -> RunFinding:
        """The processes carrying the run tag in their environment, and the run's exit file."""
        return inspect_run(run_tag, LogFiles(self._settings.log_dir, process_id))

    def clear_leftovers(self, finding: RunFinding) -> None:
        """Stop the processes an ended run left behind."""
        kill_leftovers(finding.others)


def write_output_options(folder: str, options: outputopts.OutputOptions) -> None:
    """Leave the run's output options beside its logs; a full disk must not stop the start (its
    log is then followed without a cap)."""
    try:
        outputopts.write(folder, options)
    except OSError as exc:
        log.warning("procman: could not write the output options into %s: %s", folder, exc)
