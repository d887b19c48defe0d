"""Reads: status dicts, output by byte offset, lists, counts, and waiting for an end.

Every read settles a stale record it meets (see :meth:`~flask_procman.adoption.Settler.settle_if_stale`),
so nobody reports a process as running after it ended with no watcher around.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import typing as t

from . import errors
from .config import MIB
from .engine import timeindex
from .engine.logfiles import STREAMS, LogFiles, decode_output
from .engine.outputread import OutputChunk, offset_since, read_chunk
from .engine.progressfile import read_progress
from .store import ACTIVE, FINAL, utcnow
from .validation import check_process_id, check_seconds

if t.TYPE_CHECKING:
    from .adoption import Settler
    from .runtime import Runtime

DEFAULT_READ_LIMIT = 1 * MIB


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def status_to_json(status: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The status dict with timestamps as ISO 8601 strings."""
    return {k: (_iso(v) if isinstance(v, dt.datetime) else
                status_to_json(v) if isinstance(v, dict) and k == "progress" else v)
            for k, v in status.items()}


class Reader:
    """Answers reads from the records and the log files, in any manager of the app."""

    def __init__(self, runtime: Runtime, settler: Settler) -> None:
        self._rt = runtime
        self._settler = settler

    def get_process_status(self, process_id: str) -> dict[str, t.Any] | None:
        """The status dict of a process, or None when there is no such record."""
        process_id = check_process_id(process_id)
        self._rt.ensure_for_reads()
        row = self._rt.store.get(process_id)
        if row is not None:
            row = self._settler.settle_if_stale(row)
        return self.to_status(row) if row is not None else None

    def to_status(self, row: t.Mapping[str, t.Any], *, with_output: bool = True) -> dict[str, t.Any]:
        """The public status dict of a record (see README: "Status dict")."""
        settings = self._rt.settings
        logs = LogFiles(settings.log_dir, row["id"])
        started, finished = row["started_at"], row["finished_at"]
        duration = None
        if started is not None:
            duration = ((finished or utcnow()) - started).total_seconds()
        status: dict[str, t.Any] = {
            "id": row["id"], "status": row["status"], "return_code": row["return_code"], "pid": row["pid"],
            "cmd": list(row["cmd"]), "cwd": row["cwd"], "program": row["program"], "handler": row["handler"],
            "created_at": row["created_at"], "started_at": started, "finished_at": finished,
            "duration": duration, "stdout_size": logs.size("stdout"),
            "stderr_size": 0 if row["merge_stderr"] else logs.size("stderr"),
            "error": row["error"], "metadata": row["meta"], "merge_stderr": bool(row["merge_stderr"]),
            "env_keys": list(row["env_keys"] or []), "timeout": row["timeout"],
            "survivors": list(row["survivors"] or []),
            "stdout_dropped": logs.first_kept("stdout"),
            "stderr_dropped": 0 if row["merge_stderr"] else logs.first_kept("stderr"),
            "progress": self.read_progress(row, logs),
            "replaced": bool(row.get("replaced")), "run_tag": row.get("run_tag"),
            "backend": row.get("backend") or "local", "resources": row.get("resources"),
        }
        if with_output:
            tail = settings.output_tail
            status["stdout"] = decode_output(logs.tail("stdout", tail))
            status["stderr"] = "" if row["merge_stderr"] else decode_output(logs.tail("stderr", tail))
        return status

    def read_progress(self, row: t.Mapping[str, t.Any], logs: LogFiles | None = None) -> dict[str, t.Any] | None:
        """The last progress report of the run of record ``row`` (see README: "Progress"), or None."""
        logs = logs or LogFiles(self._rt.settings.log_dir, row["id"])
        if row["status"] == "queued":
            return None
        mode = (row.get("output_options") or {}).get("progress")
        stderr = logs.path("stdout" if row["merge_stderr"] else "stderr")
        found = read_progress(logs.progress_path, stderr, mode, row["started_at"])
        return dict(found) if found is not None else None

    def read_chunk(self, process_id: str, stream: str = "stdout", offset: int = 0,
                   limit: int = DEFAULT_READ_LIMIT, *, since: dt.datetime | None = None) -> OutputChunk:
        """Up to ``limit`` bytes of ``stream`` from ``offset`` (see ``Manager.read_chunk``)."""
        process_id = check_process_id(process_id)
        if since is not None and not isinstance(since, dt.datetime):
            raise errors.InvalidCommand(f"since must be a datetime, not {since!r}.")
        if stream not in STREAMS:
            raise errors.InvalidCommand(f"stream must be 'stdout' or 'stderr', not {stream!r}.")
        for name, value in (("offset", offset), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise errors.InvalidCommand(f"{name} must be an integer >= 0, not {value!r}.")
        logs = LogFiles(self._rt.settings.log_dir, process_id)
        if not os.path.isdir(logs.folder):
            self._rt.check_fork()
            if self._rt.store.get(process_id) is None:
                raise errors.ProcessNotFound(f"No process with id {process_id!r}.")
        if since is not None:
            offset = max(offset, offset_since(logs, stream, since))
        return read_chunk(logs, stream, offset, min(limit, 64 * MIB))

    def output_times(self, process_id: str, stream: str, start: int, end: int) -> list[tuple[int, float]]:
        """The time index entries that time bytes ``[start, end)`` of a stream (see ``read_chunk``)."""
        logs = LogFiles(self._rt.settings.log_dir, check_process_id(process_id))
        return timeindex.covering(timeindex.load(logs.path(stream)), start, end)

    def list_page(self, status: str | t.Sequence[str] | None = None, *, limit: int | None = None,
                  offset: int = 0, with_output: bool = False,
                  backend: str | None = None) -> tuple[list[dict[str, t.Any]], int]:
        """A page of status dicts, newest first, and the total number matching."""
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in wanted if s not in ACTIVE + FINAL]
            if unknown:
                raise errors.InvalidCommand(f"unknown status {unknown}; statuses are {list(ACTIVE + FINAL)}.")
        rt = self._rt
        rt.ensure_for_reads()
        rows, total = rt.store.page(status, limit=limit, offset=offset, namespace=rt.settings.namespace,
                                    backend=backend)
        rows = [self._settler.settle_if_stale(r) for r in rows]
        return [self.to_status(r, with_output=with_output) for r in rows], total

    def stats(self) -> dict[str, t.Any]:
        """``{"running", "queued", "max_processes", "by_status"}``."""
        rt = self._rt
        rt.ensure_for_reads()
        counts = rt.store.count_by_status(rt.settings.namespace)
        return {"running": counts.get("running", 0), "queued": counts.get("queued", 0),
                "max_processes": rt.settings.max_processes, "by_status": counts}

    def wait(self, process_id: str, timeout: float | None = None) -> dict[str, t.Any]:
        """Block until the process has ended and return its final status (``TimeoutError`` on timeout)."""
        rt = self._rt
        process_id = check_process_id(process_id)
        timeout = check_seconds(timeout, "timeout")
        rt.ensure_for_reads()
        deadline = time.monotonic() + timeout if timeout is not None else None
        event = rt.events.setdefault(process_id, threading.Event())
        pause = 0.01
        try:
            while True:
                row = rt.store.get(process_id)
                if row is None:
                    raise errors.ProcessNotFound(f"No process with id {process_id!r}.")
                row = self._settler.settle_if_stale(row)
                if row["status"] in FINAL:
                    return self.to_status(row)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"Process {process_id!r} is still {row['status']} after {timeout} s.")
                event.wait(pause if left is None else min(pause, left))
                event.clear()
                pause = min(pause * 2, 0.25)
        finally:
            rt.events.pop(process_id, None)
