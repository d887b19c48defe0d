"""The public operations, shared by :class:`ProcMan` and the seed-style :class:`ProcessManager`."""

from __future__ import annotations

import datetime as dt
import os
import typing as t

from flask import Flask, current_app

from .errors import NotInitializedError

if t.TYPE_CHECKING:
    from .engine.outputread import OutputChunk
    from .manager import CompletionCallback, Manager

EXTENSION_KEY = "procman"


def manager_for(app: Flask | None = None) -> Manager:
    """The manager of ``app`` (default: ``current_app``), or a :class:`NotInitializedError` naming the fix."""
    if app is None:
        try:
            app = t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        except RuntimeError:
            raise NotInitializedError(
                "No Flask app context: use the manager inside a request, a CLI command or "
                "'with app.app_context():', or pass the app to get_manager(app); did you call init_app?"
            ) from None
    manager = app.extensions.get(EXTENSION_KEY)
    if manager is None:
        raise NotInitializedError(
            f"flask_procman is not registered on the app {app.name!r}: did you call init_app?"
        )
    return t.cast("Manager", manager)


class ManagerFacade:
    """Every process operation, acting on the current app's manager (see :meth:`get_manager`)."""

    def get_manager(self, app: Flask | None = None) -> Manager:
        """The manager of ``app``, or of ``current_app`` when ``app`` is None."""
        return manager_for(app)

    def start_process(
        self,
        process_id: str,
        cmd: t.Sequence[str],
        cwd: str | os.PathLike[str] | None = None,
        env: t.Mapping[str, str] | None = None,
        on_complete: CompletionCallback | None = None,
        *,
        timeout: float | None = None,
        queue: bool = False,
        merge_stderr: bool = False,
        metadata: t.Mapping[str, t.Any] | None = None,
        handler: str | None = None,
        stop_on_teardown: bool = False,
        progress: str | None = None,
        max_log_bytes: int | None = None,
        max_log_action: str | None = None,
        backend: str | None = None,
        resources: t.Mapping[str, t.Any] | None = None,
    ) -> bool:
        """Start ``cmd`` (a list of strings; never a shell) as process ``process_id``.

        :param process_id: 1-128 characters ``[A-Za-z0-9][A-Za-z0-9._-]*``; it names the log folder.
        :param cmd: the program and its arguments.
        :param cwd: working directory (default: the current one).
        :param env: variables merged over ``os.environ``; their values are never stored.
            ``PYTHONUNBUFFERED=1`` is added unless given.
        :param on_complete: ``callable(process_id, return_code)`` run once, in this worker, with the
            app context pushed, when the process reaches a final status.
        :param timeout: seconds after which it is stopped and recorded ``timed_out``.
        :param queue: when the cap is reached, queue it (first in, first out) instead of refusing.
        :param merge_stderr: write stderr into the stdout log, keeping the true order.
        :param metadata: JSON-serialisable data kept with the record.
        :param handler: name of a durable handler registered with ``@procman.on_complete(name)``;
            it runs once in the whole deployment, in whichever worker records the end.
        :param stop_on_teardown: bind it to the current app context: when that context ends (the
            request, the CLI command, the ``with app.app_context():`` block) the whole tree is
            stopped and recorded ``stopped`` ("stopped at teardown"); queued, it leaves the queue.
            A streamed response keeps it until the response is closed (stream done or client gone).
            In a request the teardown only signals (the watcher sends SIGKILL after
            ``PROCMAN_STOP_TIMEOUT``); elsewhere it waits for the end. Needs an app context.
        :param progress: ``"tqdm"``: read the progress from tqdm's bar at the end of stderr instead
            of the ``PROCMAN_PROGRESS_FILE`` the child may write (see :mod:`flask_procman.progress`).
        :param max_log_bytes: bytes each of its logs may hold (default ``PROCMAN_MAX_LOG_BYTES``).
        :param max_log_action: ``"truncate"`` (keep the newest bytes) or ``"stop"`` at the cap
            (default ``PROCMAN_MAX_LOG_ACTION``).
        :param backend: the engine that runs it: ``"local"`` (default) or a ``PROCMAN_BACKENDS``
            name (a Ray cluster; its output is one merged stream, so ``merge_stderr`` is true).
        :param resources: what a cluster run reserves: ``{"cpus": 1, "gpus": 1, "memory": "4GiB"}``
            and any custom resource of the cluster (``{"evalbox": 1}``).
        :return: True when started (or queued); False when the cap is reached and ``queue`` is False.
        :raises InvalidProcessId, InvalidCommand, ProcessExists, StartError, UnknownHandler, StoreUnavailable:
        """
        return self.get_manager().start_process(
            process_id, cmd, cwd, env, on_complete, timeout=timeout, queue=queue,
            merge_stderr=merge_stderr, metadata=metadata, handler=handler, stop_on_teardown=stop_on_teardown,
            progress=progress,
            max_log_bytes=max_log_bytes, max_log_action=max_log_action, backend=backend, resources=resources,
        )

    def get_process_status(self, process_id: str) -> dict[str, t.Any] | None:
        """The status dict (``id, status, return_code, pid, cmd, cwd, created_at, started_at,
        finished_at, duration, stdout, stderr, stdout_size, stderr_size, error, metadata`` ...),
        with the last ``PROCMAN_OUTPUT_TAIL`` bytes of each stream; None for an unknown id."""
        return self.get_manager().get_process_status(process_id)

    def read_output(self, process_id: str, stream: str = "stdout", offset: int = 0,
                    limit: int = 1024 * 1024, *, since: dt.datetime | None = None) -> tuple[bytes, int]:
        """Read ``stream`` from byte ``offset`` (or from the first byte written at or after ``since``):
        ``(data, next_offset)``; non-destructive."""
        return self.get_manager().read_output(process_id, stream, offset, limit, since=since)

    def read_chunk(self, process_id: str, stream: str = "stdout", offset: int = 0,
                   limit: int = 1024 * 1024, *, since: dt.datetime | None = None) -> OutputChunk:
        """Like :meth:`read_output`, as an ``OutputChunk``: ``data, offset`` (where the data starts),
        ``next_offset, truncated`` (bytes before it were dropped by the log cap), ``times, time``."""
        return self.get_manager().read_chunk(process_id, stream, offset, limit, since=since)

    def stop_process(self, process_id: str, timeout: float | None = None) -> bool:
        """SIGTERM the whole process tree, SIGKILL after ``timeout`` (default ``PROCMAN_STOP_TIMEOUT``).

        :return: True if it was running or queued and has now ended; False if unknown or already ended.
        """
        return self.get_manager().stop_process(process_id, timeout)

    def wait(self, process_id: str, timeout: float | None = None) -> dict[str, t.Any]:
        """Block until the process ends; its final status dict. ``TimeoutError`` after ``timeout`` s."""
        return self.get_manager().wait(process_id, timeout)

    def list_processes(self, status: str | t.Sequence[str] | None = None) -> list[dict[str, t.Any]]:
        """Status dicts (without output tails), newest first, optionally of some statuses only."""
        return self.get_manager().list_processes(status)

    def remove_process(self, process_id: str) -> bool:
        """Delete a finished process's record and logs. ``ProcessNotFinished`` if it still runs."""
        return self.get_manager().remove_process(process_id)

    def stop_all(self, timeout: float | None = None) -> list[str]:
        """Stop every queued and running process; the ids stopped."""
        return self.get_manager().stop_all(timeout)

    def prune(self) -> int:
        """Delete finished records and logs older than ``PROCMAN_RETENTION``; how many."""
        return self.get_manager().prune()

    def stats(self) -> dict[str, t.Any]:
        """Counts: ``{"running", "queued", "max_processes", "by_status"}``."""
        return self.get_manager().stats()
