"""One app's process manager in one OS process: the public operations, composed from one object
per job (see ARCHITECTURE.md).

- :class:`~flask_procman.runtime.Runtime`: the store, the watcher thread, the callback pool, forks, shutdown;
- :class:`~flask_procman.starting.Starter`: claims, the queue, submitting to the backend;
- :class:`~flask_procman.ends.EndRecorder`: ends recorded once; callbacks, handlers, signals;
- :class:`~flask_procman.adoption.Settler`: adoption of dead managers' runs, stale records;
- :class:`~flask_procman.stopping.Stopper`: every way of stopping;
- :class:`~flask_procman.reads.Reader`: status dicts, output, lists, counts, waiting;
- :class:`~flask_procman.backends.local.LocalBackend`: the engine of this host, behind
  :class:`~flask_procman.backends.base.Backend`.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import typing as t

import sqlalchemy as sa

from . import retention
from .adoption import Settler, owner_checker
from .backends.base import RunSpec
from .backends.local import LocalBackend
from .ends import LOG_LIMIT, STOPPED_BEFORE_START, EndRecorder
from .engine.identity import Identity
from .engine.logfiles import LogFiles
from .engine.outputread import OutputChunk
from .engine.watcher import Watcher
from .programs import Program
from .reads import DEFAULT_READ_LIMIT, Reader, status_to_json
from .remote_runs import RemoteRuns
from .runtime import CALLBACK_THREADS, CompletionCallback, Runtime
from .starting import Starter
from .stopping import Stopper
from .store import Store
from .teardown import bind_to_context

if t.TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from .config import Settings
    from .extension import ProcMan

__all__ = ["CALLBACK_THREADS", "DEFAULT_READ_LIMIT", "LOG_LIMIT", "STOPPED_BEFORE_START", "CompletionCallback",
           "Manager"]


class Manager:
    """The process manager of one Flask app in one OS process.

    Records live in the database and output in log files, so every manager of the app (each
    gunicorn worker, the CLI) sees and controls every process. ``app.extensions["procman"]``
    holds it; most code reaches it through :class:`~flask_procman.ProcMan` or
    :class:`~flask_procman.ProcessManager` instead.
    """

    def __init__(self, app: Flask, settings: Settings, extension: ProcMan, *,
                 db: SQLAlchemy | None = None, table: sa.Table | None = None) -> None:
        self.app = app
        self.settings = settings
        self.extension = extension
        self.runtime = Runtime(app, settings, db=db, table=table, client=self, on_log_limit=self._stop_for_log_limit)
        self.runtime.on_exit = lambda stop: self.shutdown(stop_processes=stop)
        self.host = self.runtime.host
        #: The engine runs go to (today always this host's; issue 11 adds Ray Jobs beside it).
        self.backend = LocalBackend(settings, lambda: self.runtime.watcher)
        self.ends = EndRecorder(self.runtime, extension, self.backend)
        self.settler = Settler(self.runtime, self.ends, self.backend)
        #: Runs on the remote backends of ``PROCMAN_BACKENDS`` (Ray clusters).
        self.remote = RemoteRuns(self.runtime, self.ends)
        self.starter = Starter(self.runtime, self.ends, self.backend, extension,
                               launch=lambda record, env: self._launch(record, env),  # late bound: a test seam
                               bind=lambda process_id, tag: bind_to_context(self, process_id, tag),
                               remote=self.remote)
        self.stopper = Stopper(self.runtime, self.ends, self.settler, self.backend, self.remote)
        self.reader = Reader(self.runtime, self.settler)
        self._ticks = 0
        self._last_prune = 0.0

    # ================================================================ engine lifecycle ==========
    @property
    def store(self) -> Store:
        """The record store, created on first use (never in ``init_app``)."""
        return self.runtime.store

    @property
    def owner(self) -> str:
        """This manager's owner id: ``host|pid|start since boot|nonce|boot id`` (no wall-clock time)."""
        self.runtime.ensure()
        return self.runtime.owner

    @property
    def cli_mode(self) -> bool:
        """True when the engine was started inside a ``flask`` CLI command: it then never adopts
        other managers' processes, never promotes queued ones and never stops processes at exit."""
        return self.runtime.cli_mode

    @property
    def _store(self) -> Store | None:  # read by tests: no store before first use
        return self.runtime.store_if_open

    @property
    def _watcher(self) -> Watcher | None:  # read by tests: no thread before first use
        return self.runtime.watcher

    def check_watcher(self) -> bool:
        """Cheap check that the watcher runs, restarting a dead one; False when it had died."""
        return self.runtime.check_watcher()

    def watcher_health(self) -> dict[str, t.Any]:
        """``{"running", "restarts", "last_error", "stale_watchers"}``: whether this manager's watcher
        runs (checked before any restart), how often it was restarted and why, and the managers of
        this host whose watcher has not looped for a while (their heartbeats)."""
        return self.runtime.watcher_health()

    def shutdown(self, *, stop_processes: bool | None = None) -> None:
        """Stop the watcher; stop the processes this manager owns when ``stop_processes``
        (default ``PROCMAN_STOP_ON_EXIT``, never in CLI mode). Using the manager again restarts it."""
        detached = self.runtime.detach(stop_processes)
        if detached is None:
            return
        if detached.stop_processes and detached.owned:
            self.stopper.stop_owned(detached.owned)
        self.runtime.close(detached)

    # ================================================================ starting ===================
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
        program: str | None = None,
        stop_on_teardown: bool = False,
        progress: str | None = None,
        max_log_bytes: int | None = None,
        max_log_action: str | None = None,
        backend: str | None = None,
        resources: t.Mapping[str, t.Any] | None = None,
    ) -> bool:
        """Start ``cmd``; see :meth:`flask_procman.ProcMan.start_process`."""
        return self.starter.start_process(
            process_id, cmd, cwd, env, on_complete, timeout=timeout, queue=queue, merge_stderr=merge_stderr,
            metadata=metadata, handler=handler, program=program, stop_on_teardown=stop_on_teardown,
            progress=progress, max_log_bytes=max_log_bytes, max_log_action=max_log_action,
            backend=backend, resources=resources)

    def _launch(self, record: t.Mapping[str, t.Any], overrides: dict[str, str]) -> Identity:
        """Submit a claimed record's run to the backend (tests replace it to hold a start mid-way)."""
        return self.backend.submit(RunSpec.from_record(record, overrides))

    def programs(self) -> dict[str, Program]:
        """Declared programs: ``PROCMAN_PROGRAMS`` of this app, then ``register_program`` ones."""
        return self.starter.programs()

    def start_program(self, name: str, *, process_id: str | None = None, args: t.Sequence[str] = (),
                      env: t.Mapping[str, str] | None = None, queue: bool = False,
                      metadata: t.Mapping[str, t.Any] | None = None, handler: str | None = None) -> tuple[str, bool]:
        """Start a declared program; returns ``(process_id, started_or_queued)``."""
        return self.starter.start_program(name, process_id=process_id, args=args, env=env, queue=queue,
                                          metadata=metadata, handler=handler)

    # ================================================================ reading ====================
    def get_process_status(self, process_id: str) -> dict[str, t.Any] | None:
        """The status dict of a process, or None when there is no such record."""
        return self.reader.get_process_status(process_id)

    def to_status(self, row: t.Mapping[str, t.Any], *, with_output: bool = True) -> dict[str, t.Any]:
        """The public status dict of a record (see README: "Status dict")."""
        return self.reader.to_status(row, with_output=with_output)

    def read_progress(self, row: t.Mapping[str, t.Any], logs: LogFiles | None = None) -> dict[str, t.Any] | None:
        """The last progress report of the run of record ``row`` (see README: "Progress"), or None."""
        return self.reader.read_progress(row, logs)

    status_to_json = staticmethod(status_to_json)

    def read_output(self, process_id: str, stream: str = "stdout", offset: int = 0,
                    limit: int = DEFAULT_READ_LIMIT, *, since: dt.datetime | None = None) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of ``stream`` from byte ``offset``: ``(data, next_offset)``.

        Non-destructive: any number of readers, in any worker, each see everything. With ``since``
        the read starts at the first byte written at or after that time instead (to about a second,
        from the log's time index). Bytes a capped log dropped are skipped (then
        ``next_offset - offset > len(data)``; :meth:`read_chunk` says so explicitly).
        """
        chunk = self.reader.read_chunk(process_id, stream, offset, limit, since=since)
        return chunk.data, chunk.next_offset

    def read_chunk(self, process_id: str, stream: str = "stdout", offset: int = 0,
                   limit: int = DEFAULT_READ_LIMIT, *, since: dt.datetime | None = None) -> OutputChunk:
        """Like :meth:`read_output`, with where the data starts, whether bytes before it were
        dropped (``truncated``) and when its bytes were written (``times``, ``time``)."""
        return self.reader.read_chunk(process_id, stream, offset, limit, since=since)

    def output_times(self, process_id: str, stream: str, start: int, end: int) -> list[tuple[int, float]]:
        """The time index entries that time bytes ``[start, end)`` of a stream (see ``read_chunk``)."""
        return self.reader.output_times(process_id, stream, start, end)

    def list_processes(self, status: str | t.Sequence[str] | None = None, *, limit: int | None = None,
                       offset: int = 0, with_output: bool = False) -> list[dict[str, t.Any]]:
        """Status dicts, newest first (without the output tails unless ``with_output``)."""
        return self.reader.list_page(status, limit=limit, offset=offset, with_output=with_output)[0]

    def list_page(self, status: str | t.Sequence[str] | None = None, *, limit: int | None = None,
                  offset: int = 0, with_output: bool = False,
                  backend: str | None = None) -> tuple[list[dict[str, t.Any]], int]:
        """A page of status dicts, newest first, and the total number matching (of ``backend``)."""
        return self.reader.list_page(status, limit=limit, offset=offset, with_output=with_output, backend=backend)

    def stats(self) -> dict[str, t.Any]:
        """``{"running", "queued", "max_processes", "by_status"}``."""
        return self.reader.stats()

    def wait(self, process_id: str, timeout: float | None = None) -> dict[str, t.Any]:
        """Block until the process has ended and return its final status (``TimeoutError`` on timeout)."""
        return self.reader.wait(process_id, timeout)

    # ================================================================ stopping ===================
    def stop_process(self, process_id: str, timeout: float | None = None) -> bool:
        """Stop a process and its whole tree; True if it was running or queued and has now ended."""
        return self.stopper.stop_process(process_id, timeout)

    def request_stop(self, process_id: str, *, reason: str = "stop-request", run_tag: str | None = None) -> bool:
        """Stop without waiting: a queued process leaves the queue; a running one is marked with
        ``reason`` and its owner's watcher sends SIGTERM to the whole tree at once, SIGKILL after
        ``PROCMAN_STOP_TIMEOUT``, and records it ``stopped``. True if it was queued or running
        (or already being stopped). ``run_tag``: only that run, not a later start with the same id."""
        return self.stopper.request_stop(process_id, reason=reason, run_tag=run_tag)

    def stop_all(self, timeout: float | None = None) -> list[str]:
        """Stop every queued and running process of the app; returns the ids stopped."""
        return self.stopper.stop_all(timeout)

    def request_timeout_stop(self, process_id: str) -> None:
        """Mark a running process as stopped for its timeout (before it is signalled)."""
        self.stopper.request_timeout_stop(process_id)

    def _stop_for_log_limit(self, process_id: str, message: str) -> None:
        self.stopper.stop_for_log_limit(process_id, message)

    # ================================================================ removing ===================
    def remove_process(self, process_id: str) -> bool:
        """Delete a finished process's record and log files; False if unknown."""
        return retention.remove_process(self.runtime, process_id)

    def prune(self) -> int:
        """Delete finished records (and their logs) older than ``PROCMAN_RETENTION``; returns how many."""
        return retention.prune(self.runtime)

    # ================================================================ recording ends ============
    def read_exit_status(self, process_id: str) -> int | None:
        """The exit status the wrapper wrote next to the logs, if any."""
        return self.ends.read_exit_status(process_id)

    def record_survivors(self, process_id: str, survivors: list[int]) -> None:
        """Processes an ended run left behind survived SIGKILL: the record says so (never silent)."""
        self.ends.record_survivors(process_id, survivors)

    def record_end(self, process_id: str, return_code: int | None, *,
                   survivors: list[int] | None = None, inline: bool = False,
                   expect: t.Sequence[str] = ("running",)) -> bool:
        """Record the end of a process, once: a compare-and-set from ``running`` (or ``expect``) to
        a final status. Returns True in the one manager that won and so runs the durable handler."""
        return self.ends.record_end(process_id, return_code, survivors=survivors, inline=inline, expect=expect)

    # ================================================================ adoption and settling =====
    def settle_if_stale(self, row: dict[str, t.Any]) -> dict[str, t.Any]:
        """The truth about a record a reader met (returns the record, updated if it changed)."""
        return self.settler.settle_if_stale(row)

    def tick(self) -> None:
        """The watcher's periodic database work (runs on the watcher thread): deferred stops,
        abandoned starts, queue promotion, adoption, abandoned handlers, pruning."""
        self._ticks += 1
        rt = self.runtime
        every = rt.store.active_on_host(self.host, self.settings.namespace)
        self.ends.dispatch_orphaned_callbacks({r["id"] for r in every})
        rows = [r for r in every if not r["backend"]]  # remote runs are followed by self.remote
        self.stopper.begin_deferred(rows)
        owner_dead = owner_checker()
        self.settler.settle_abandoned_starts(rows, owner_dead)
        remote = [r for r in every if r["backend"]]
        if rt.cli_mode:
            self.remote.poll(remote, owner_dead, adopt=False)
            return
        if any(r["status"] == "queued" for r in every):
            self.starter.promote_queued()
        self.settler.adopt_orphans(rows, owner_dead)
        self.remote.poll(remote, owner_dead, adopt=True)  # after the local work: it waits on HTTP
        if self._ticks % 10 == 1:
            self.ends.run_abandoned_handlers()
        now = time.monotonic()
        if self.settings.retention is not None and now - self._last_prune >= self.settings.prune_interval:
            self._last_prune = now
            self.prune()
