"""One app's process manager in one OS process: the operations behind the public API."""

from __future__ import annotations

import atexit
import concurrent.futures
import datetime as dt
import logging
import os
import socket
import threading
import time
import typing as t
import uuid

import click
import sqlalchemy as sa
from werkzeug.serving import is_running_from_reloader

from . import errors
from .config import MIB, Settings
from .engine import heartbeat, outputopts, timeindex
from .engine.identity import owner_id, owner_identity, record_identity
from .engine.local import Identity, kill_trees, kill_trees_each, reap, spawn
from .engine.logfiles import STREAMS, LogFiles, decode_output, is_valid_process_id
from .engine.outputread import OutputChunk, offset_since, read_chunk
from .engine.outputwatch import OutputKeeper
from .engine.progressfile import read_progress
from .engine.runtag import ENV_VAR as RUN_TAG_VAR
from .engine.runtag import new_tag
from .engine.watcher import Watcher
from .programs import Program, make_program
from .progress import ENV_VAR as PROGRESS_VAR
from .recovery import NEVER_STARTED, inspect_run, kill_leftovers
from .signals import process_finished, process_started
from .store import ACTIVE, FINAL, Store, create_own_engine, make_table, utcnow
from .teardown import TEARDOWN_REASON, bind_to_context, check_bindable
from .validation import check_cmd, check_cwd, check_env, check_metadata, check_process_id, check_seconds

if t.TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from .extension import ProcMan

log = logging.getLogger("flask_procman")

#: ``on_complete(process_id, return_code)``: return_code is None when there is none.
CompletionCallback = t.Callable[[str, int | None], t.Any]

DEFAULT_READ_LIMIT = 1 * MIB
#: ``stop_requested`` of a run stopped because a log reached its cap (``max_log_action="stop"``).
LOG_LIMIT = "log_limit"
#: The ``error`` of a start stopped before its process ran.
STOPPED_BEFORE_START = "stopped by request before it started"
_CALLBACK_THREADS = 2
#: ``stop_requested`` values the owner's watcher carries out without anyone waiting (see tick).
_DEFERRED_STOPS = ("stop-request", TEARDOWN_REASON)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
        self.host = socket.gethostname()
        self._db = db
        self._table = table
        self._store: Store | None = None
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._watcher: Watcher | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._callbacks: dict[str, CompletionCallback] = {}
        self._events: dict[str, threading.Event] = {}
        #: Ids this manager is starting right now (claim to pid): its watcher leaves them alone.
        self._in_flight: set[str] = set()
        self._owner = ""
        self._cli_mode = False
        self._last_prune = 0.0
        self._ticks = 0
        self._atexit_pid: int | None = None
        self._fork_hooks = False
        self._watcher_restarts = 0
        self._watcher_error: str | None = None

    # ================================================================ engine lifecycle ==========
    @property
    def store(self) -> Store:
        """The record store, created on first use (never in ``init_app``)."""
        self._check_fork()
        watcher = self._watcher
        if watcher is not None and not watcher.is_alive() and not watcher.stopped and self._pid == os.getpid():
            self._ensure_engine()  # every use of the store notices a dead watcher (cheap: a flag)
        if self._store is None:
            with self._lock:
                if self._store is None:
                    if self._db is not None and self._table is not None:
                        with self.app.app_context():
                            engine = self._db.engine
                        self._store = Store(engine, self._table, owns_table=False)
                    else:
                        table = make_table(sa.MetaData())
                        os.makedirs(self.app.instance_path, exist_ok=True)
                        engine = create_own_engine(self.settings.database_uri, self.settings.db_timeout)
                        self._store = Store(engine, table, owns_table=True)
        return self._store

    @property
    def owner(self) -> str:
        """This manager's owner id: ``host|pid|start since boot|nonce|boot id`` (no wall-clock time)."""
        self._ensure_engine()
        return self._owner

    @property
    def cli_mode(self) -> bool:
        """True when the engine was started inside a ``flask`` CLI command: it then never adopts
        other managers' processes, never promotes queued ones and never stops processes at exit."""
        return self._cli_mode

    def _check_fork(self) -> None:
        if self._pid is not None and self._pid != os.getpid():
            self._after_fork()

    def _before_fork(self) -> None:
        """``os.fork()`` is about to run (a ``gunicorn --preload`` master spawning a worker):
        park the watcher so that no thread of ours is inside the database library at the fork."""
        watcher = self._watcher
        if watcher is not None and self._pid == os.getpid():
            watcher.pause()

    def _after_fork_in_parent(self) -> None:
        watcher = self._watcher
        if watcher is not None and self._pid == os.getpid():
            watcher.resume()

    def _after_fork(self) -> None:
        """A forked child (gunicorn --preload, pytest-flask's live_server): start afresh."""
        self._lock = threading.RLock()
        if self._watcher is not None:
            self._watcher.abandon_after_fork()
        self._watcher = None
        self._pool = None
        self._callbacks = {}
        self._events = {}
        self._in_flight = set()
        if self._store is not None and self._store.owns_table:
            # Drop the parent's pooled connections without closing them (they are the parent's);
            # a fresh store and engine follow, so no lock the parent held at the fork is reused.
            self._store.engine.dispose(close=False)
        self._store = None
        self._pid = None

    def _ensure_engine(self) -> None:
        """Start the watcher on first use in this OS process (and again after a fork); restart it,
        with a logged error, if its thread has died."""
        self._check_fork()
        if self._pid == os.getpid() and self._watcher is not None and self._watcher.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._watcher is not None:
                if not self._watcher.is_alive() and not self._watcher.stopped:
                    self._restart_watcher(self._watcher)
                return
            pid = os.getpid()
            self._cli_mode = _in_cli_command()
            self._owner = owner_id(self.host, pid, uuid.uuid4().hex[:8])
            os.makedirs(self.settings.log_dir, mode=0o700, exist_ok=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(_CALLBACK_THREADS, thread_name_prefix="procman-callback")
            self._watcher = self._new_watcher()
            self._pid = pid
            self._watcher.start()
            if self._atexit_pid != pid:
                atexit.register(self._atexit)
                self._atexit_pid = pid
            if not self._fork_hooks and hasattr(os, "register_at_fork"):
                os.register_at_fork(before=self._before_fork, after_in_parent=self._after_fork_in_parent)
                self._fork_hooks = True

    def _new_watcher(self) -> Watcher:
        beat = None if self._cli_mode else self._heartbeat
        watcher = Watcher(self, self.settings.poll_interval, self.settings.stop_timeout, heartbeat=beat)
        keeper = OutputKeeper(self.settings.log_dir, self._stop_for_log_limit)  # progress, time index, log caps
        watcher.periodic = lambda: keeper.look([w.process_id for w in watcher.watched()])
        return watcher

    def _heartbeat(self) -> None:
        heartbeat.beat(self.settings.log_dir, self._owner)

    def _restart_watcher(self, dead: Watcher) -> None:
        """The watcher thread died (it must not; each step is guarded): start a new one that follows
        everything the dead one followed. Called with ``self._lock`` held."""
        self._watcher_restarts += 1
        self._watcher_error = dead.death or "the thread ended"
        log.error("procman: the watcher thread of %s was not running (%s); restarting it (restart %d)",
                  self._owner, self._watcher_error, self._watcher_restarts)
        watcher = self._new_watcher()
        watcher.take_over(dead)
        self._watcher = watcher
        watcher.start()

    def check_watcher(self) -> bool:
        """Cheap check that the watcher runs, restarting a dead one; False when it had died."""
        watcher = self._watcher
        if watcher is None or self._pid != os.getpid() or watcher.is_alive() or watcher.stopped:
            return True
        self._ensure_engine()
        return False

    def watcher_health(self) -> dict[str, t.Any]:
        """``{"running", "restarts", "last_error", "stale_watchers"}``: whether this manager's watcher
        runs (checked before any restart), how often it was restarted and why, and the managers of
        this host whose watcher has not looped for a while (their heartbeats)."""
        watcher = self._watcher
        running = watcher is not None and self._pid == os.getpid() and watcher.is_alive()
        max_age = max(10.0, 10 * self.settings.poll_interval)
        stale = heartbeat.stale_watchers(self.settings.log_dir, self.host, max_age)
        return {"running": running, "restarts": self._watcher_restarts, "last_error": self._watcher_error,
                "stale_watchers": [b.to_dict() for b in stale if b.owner != self._owner]}

    def _atexit(self) -> None:
        if self._pid != os.getpid():
            return
        # Under the debug reloader every code change ends this process: its processes are left
        # running for the next child to adopt, instead of being killed on each edit.
        stop = self.settings.stop_on_exit and not self._cli_mode and not is_running_from_reloader()
        self.shutdown(stop_processes=stop)

    def shutdown(self, *, stop_processes: bool | None = None) -> None:
        """Stop the watcher; stop the processes this manager owns when ``stop_processes``
        (default ``PROCMAN_STOP_ON_EXIT``, never in CLI mode). Using the manager again restarts it."""
        self._check_fork()
        with self._lock:
            watcher, pool = self._watcher, self._pool
            if watcher is None:
                return
            if stop_processes is None:
                stop_processes = self.settings.stop_on_exit and not self._cli_mode
            watcher.stop()
            owned = watcher.watched()
            self._watcher = None
            self._pid = None
        heartbeat.forget(self.settings.log_dir, self._owner)
        if stop_processes and owned:
            for watched in owned:
                self._try(lambda w=watched: self.store.update(  # type: ignore[misc]
                    w.process_id, expect_status=["running"], stop_requested="stop"))
            survivors = kill_trees_each([w.identity for w in owned], self.settings.stop_timeout)
            for watched, left in zip(owned, survivors, strict=True):
                code = self._exit_code_after_kill(watched.identity, watched.process_id, watched.is_child)
                self._try(lambda w=watched, c=code, s=left: self.record_end(  # type: ignore[misc]
                    w.process_id, c, survivors=s, inline=True))
        if stop_processes:
            watcher.finish_leftovers()  # what finished jobs left in their groups: no survivor either
        watcher.close()
        if pool is not None:
            pool.shutdown(wait=True)
        store = self._store
        if store is not None and store.owns_table:
            store.engine.dispose()  # give the database its connections back (reopened on next use)

    def _try(self, fn: t.Callable[[], t.Any]) -> None:
        try:
            fn()
        except errors.StoreUnavailable as exc:
            log.warning("procman: %s", exc)

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
    ) -> bool:
        """Start ``cmd``; see :meth:`flask_procman.ProcMan.start_process`."""
        if stop_on_teardown:
            check_bindable(self.app)  # before anything starts: no process the teardown could miss
        process_id = check_process_id(process_id)
        argv = check_cmd(cmd)
        overrides = check_env(env)
        timeout = check_seconds(timeout, "timeout")
        workdir = check_cwd(cwd)
        if on_complete is not None and not callable(on_complete):
            raise errors.InvalidCommand("on_complete must be a callable(process_id, return_code) or None.")
        if handler is not None and handler not in self.extension.handlers:
            raise errors.UnknownHandler(
                f"No completion handler named {handler!r}; register it at app setup with "
                f"@procman.on_complete({handler!r})."
            )
        meta = check_metadata(metadata)
        output_options = outputopts.check_options(progress, max_log_bytes, max_log_action)
        self._ensure_engine()
        record = {
            "id": process_id, "cmd": argv, "cwd": workdir, "env_keys": sorted(overrides),
            "program": program, "handler": handler, "meta": meta, "merge_stderr": bool(merge_stderr),
            "timeout": timeout, "host": self.host, "owner": self._owner, "created_at": utcnow(),
            "return_code": None, "pid": None, "pid_started": None, "started_at": None,
            "finished_at": None, "stop_requested": None, "error": None, "survivors": None,
            "handler_state": None, "run_tag": new_tag(), "output_options": output_options,
            "namespace": self.settings.namespace,
        }
        logs = LogFiles(self.settings.log_dir, process_id)
        # While in flight, our own watcher leaves the ``starting`` record alone; afterwards a record
        # still ``starting`` (the database failed at the wrong moment) is settled like a dead owner's.
        ours = process_id not in self._in_flight  # a second start of the same id must not clear the first's mark
        self._in_flight.add(process_id)
        try:
            try:
                status, _replaced = self.store.claim(
                    record, self.settings.max_processes, queue,
                    on_queued=(lambda: logs.write_env(overrides)) if overrides else None,
                    on_replace=logs.remove,  # the new run never shows a byte of the old one
                )
            except KeyError:
                raise errors.ProcessExists(
                    f"Process id {process_id!r} is already running or queued; stop it or choose another id."
                ) from None
            except OSError as exc:  # the queued env file could not be written: the claim was rolled back
                raise errors.StartError(f"Could not queue {process_id!r}: {exc}") from exc
            if status is None:
                return False
            if on_complete is not None:
                self._callbacks[process_id] = on_complete
            if stop_on_teardown:
                bind_to_context(self, process_id, str(record["run_tag"]))
            if status == "queued":
                t.cast(Watcher, self._watcher).request_tick()
                return True
            self._spawn_claimed(record, overrides, promoted=False)
            return True
        finally:
            if ours:
                self._in_flight.discard(process_id)

    def _launch(self, record: t.Mapping[str, t.Any], overrides: dict[str, str]) -> Identity:
        """Spawn the command of a record with its env overrides (raises ``OSError`` or ``ValueError``)."""
        env = {**os.environ, **overrides}
        if "PYTHONUNBUFFERED" not in overrides:
            env["PYTHONUNBUFFERED"] = "1"
        if record.get("run_tag"):
            env[RUN_TAG_VAR] = record["run_tag"]  # finds the run's processes without their pids
        logs = LogFiles(self.settings.log_dir, record["id"])
        env[PROGRESS_VAR] = logs.progress_path
        options = outputopts.effective(record.get("output_options"), self.settings.max_log_bytes,
                                       self.settings.max_log_action)
        # For the watcher of whichever manager follows the run (no database query needed).
        logs.after_create = lambda: _write_output_options(logs.folder, options)
        return spawn(list(record["cmd"]), record["cwd"], env, logs, bool(record["merge_stderr"]))

    def _spawn_claimed(self, record: t.Mapping[str, t.Any], overrides: dict[str, str], *, promoted: bool) -> None:
        """Steps 2 and 3 of the start protocol for a committed ``starting`` record of ours: spawn
        outside any transaction, then compare-and-set ``starting`` -> ``running`` with the pid.

        A direct start raises ``StartError`` (spawn failed) or ``StoreUnavailable`` (the pid could
        not be committed: the process is stopped and reaped); a promoted one never raises for a
        database failure: its run is adopted through its run tag once the database is back.
        """
        process_id = record["id"]
        logs = LogFiles(self.settings.log_dir, process_id)
        try:
            identity = self._launch(record, overrides)
        except (OSError, ValueError) as exc:  # ValueError: an argument or env the OS cannot encode
            message = f"Could not start {record['cmd'][0]!r}: {exc}"
            won = self.store.update(process_id, expect_status=["starting"], expect_owner=self._owner,
                                    status="failed", error=message, finished_at=utcnow())
            logs.remove_env()
            if promoted:
                self._dispatch_end(process_id, won=won)
                return
            self._callbacks.pop(process_id, None)
            raise errors.StartError(message) from exc
        try:
            won = self.store.update(process_id, expect_status=["starting"], expect_owner=self._owner,
                                    expect_no_stop=True, status="running", pid=identity.pid,
                                    pid_started=identity.started, started_at=utcnow())
        except errors.StoreUnavailable:
            # Nobody could see or stop a process whose pid is not recorded: stop and reap it. A
            # direct start's caller is told it failed; a promotion stays ``starting`` and goes back
            # to the queue when it is settled (its env file is still there).
            self._undo_spawn(identity, logs)
            if promoted:
                log.warning("procman: could not record the pid of %s; it goes back to the queue", process_id)
                return
            self._callbacks.pop(process_id, None)
            self._try(lambda: self.store.update(process_id, expect_status=["starting"], status="failed",
                                                finished_at=utcnow(), error=NEVER_STARTED))
            raise
        if not won:
            # A stop landed while it was starting (or another manager took the record, believing us
            # dead): what we spawned must not run. Stop it; record the stop only if it is still ours.
            self._undo_spawn(identity, logs)
            row = self.store.get(process_id)
            if row is not None and row["status"] == "starting" and row["owner"] == self._owner \
                    and row["stop_requested"] is not None:
                logs.remove_env()
                self._finish_stopped_start(process_id, self._owner)
            return
        logs.remove_env()  # only now: until the pid is committed a promotion may go back to the queue
        t.cast(Watcher, self._watcher).watch(process_id, identity, is_child=True, timeout_left=record["timeout"])
        self._send_started(process_id, identity.pid)

    def _undo_spawn(self, identity: Identity, logs: LogFiles) -> None:
        """Stop a process whose start was undone, reap it (no zombie) and forget its exit status
        (it never counted as a run)."""
        kill_trees([identity], 0.5)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if reap(identity.pid) is not None:
                    break
            except ChildProcessError:
                break
            time.sleep(0.005)
        try:
            os.unlink(logs.exit_status_path)
        except FileNotFoundError:
            pass

    def _finish_stopped_start(self, process_id: str, owner: str | None) -> None:
        """Record ``stopped`` for a ``starting`` record of ``owner`` whose stop was requested (once)."""
        won = self.store.update(process_id, expect_status=["starting"], expect_owner=owner, status="stopped",
                                error=STOPPED_BEFORE_START, finished_at=utcnow())
        if won or process_id in self._callbacks or process_id in self._events:
            self._dispatch_end(process_id, won=won)

    def _send_started(self, process_id: str, pid: int) -> None:
        if not process_started.receivers:
            return
        with self.app.app_context():
            try:
                process_started.send(self.app, process_id=process_id, pid=pid)
            except Exception:  # a receiver never breaks the engine
                log.exception("procman: a process_started receiver raised for %s", process_id)

    # ================================================================ reading ====================
    def get_process_status(self, process_id: str) -> dict[str, t.Any] | None:
        """The status dict of a process, or None when there is no such record."""
        process_id = check_process_id(process_id)
        self._ensure_started_for_reads()
        row = self.store.get(process_id)
        if row is not None:
            row = self.settle_if_stale(row)
        return self.to_status(row) if row is not None else None

    def _ensure_started_for_reads(self) -> None:
        # A web worker that only reads must still adopt what a dead worker left; the CLI must not.
        if not _in_cli_command():
            self._ensure_engine()
        else:
            self._check_fork()

    def to_status(self, row: t.Mapping[str, t.Any], *, with_output: bool = True) -> dict[str, t.Any]:
        """The public status dict of a record (see README: "Status dict")."""
        logs = LogFiles(self.settings.log_dir, row["id"])
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
        }
        if with_output:
            tail = self.settings.output_tail
            status["stdout"] = decode_output(logs.tail("stdout", tail))
            status["stderr"] = "" if row["merge_stderr"] else decode_output(logs.tail("stderr", tail))
        return status

    def read_progress(self, row: t.Mapping[str, t.Any], logs: LogFiles | None = None) -> dict[str, t.Any] | None:
        """The last progress report of the run of record ``row`` (see README: "Progress"), or None."""
        logs = logs or LogFiles(self.settings.log_dir, row["id"])
        if row["status"] == "queued":
            return None
        mode = (row.get("output_options") or {}).get("progress")
        stderr = logs.path("stdout" if row["merge_stderr"] else "stderr")
        found = read_progress(logs.progress_path, stderr, mode, row["started_at"])
        return dict(found) if found is not None else None

    @staticmethod
    def status_to_json(status: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        """The status dict with timestamps as ISO 8601 strings."""
        return {k: (_iso(v) if isinstance(v, dt.datetime) else
                    Manager.status_to_json(v) if isinstance(v, dict) and k == "progress" else v)
                for k, v in status.items()}

    def read_output(self, process_id: str, stream: str = "stdout", offset: int = 0,
                    limit: int = DEFAULT_READ_LIMIT, *, since: dt.datetime | None = None) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of ``stream`` from byte ``offset``: ``(data, next_offset)``.

        Non-destructive: any number of readers, in any worker, each see everything. With ``since``
        the read starts at the first byte written at or after that time instead (to about a second,
        from the log's time index). Bytes a capped log dropped are skipped (then
        ``next_offset - offset > len(data)``; :meth:`read_chunk` says so explicitly).
        """
        chunk = self.read_chunk(process_id, stream, offset, limit, since=since)
        return chunk.data, chunk.next_offset

    def read_chunk(self, process_id: str, stream: str = "stdout", offset: int = 0,
                   limit: int = DEFAULT_READ_LIMIT, *, since: dt.datetime | None = None) -> OutputChunk:
        """Like :meth:`read_output`, with where the data starts, whether bytes before it were
        dropped (``truncated``) and when its bytes were written (``times``, ``time``)."""
        process_id = check_process_id(process_id)
        if since is not None and not isinstance(since, dt.datetime):
            raise errors.InvalidCommand(f"since must be a datetime, not {since!r}.")
        if stream not in STREAMS:
            raise errors.InvalidCommand(f"stream must be 'stdout' or 'stderr', not {stream!r}.")
        for name, value in (("offset", offset), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise errors.InvalidCommand(f"{name} must be an integer >= 0, not {value!r}.")
        logs = LogFiles(self.settings.log_dir, process_id)
        if not os.path.isdir(logs.folder):
            self._check_fork()
            if self.store.get(process_id) is None:
                raise errors.ProcessNotFound(f"No process with id {process_id!r}.")
        if since is not None:
            offset = max(offset, offset_since(logs, stream, since))
        return read_chunk(logs, stream, offset, min(limit, 64 * MIB))

    def output_times(self, process_id: str, stream: str, start: int, end: int) -> list[tuple[int, float]]:
        """The time index entries that time bytes ``[start, end)`` of a stream (see ``read_chunk``)."""
        logs = LogFiles(self.settings.log_dir, check_process_id(process_id))
        return timeindex.covering(timeindex.load(logs.path(stream)), start, end)

    def list_processes(self, status: str | t.Sequence[str] | None = None, *, limit: int | None = None,
                       offset: int = 0, with_output: bool = False) -> list[dict[str, t.Any]]:
        """Status dicts, newest first (without the output tails unless ``with_output``)."""
        return self.list_page(status, limit=limit, offset=offset, with_output=with_output)[0]

    def list_page(self, status: str | t.Sequence[str] | None = None, *, limit: int | None = None,
                  offset: int = 0, with_output: bool = False) -> tuple[list[dict[str, t.Any]], int]:
        """A page of status dicts, newest first, and the total number matching."""
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in wanted if s not in ACTIVE + FINAL]
            if unknown:
                raise errors.InvalidCommand(f"unknown status {unknown}; statuses are {list(ACTIVE + FINAL)}.")
        self._ensure_started_for_reads()
        rows, total = self.store.page(status, limit=limit, offset=offset, namespace=self.settings.namespace)
        rows = [self.settle_if_stale(r) for r in rows]
        return [self.to_status(r, with_output=with_output) for r in rows], total

    def stats(self) -> dict[str, t.Any]:
        """``{"running", "queued", "max_processes", "by_status"}``."""
        self._ensure_started_for_reads()
        counts = self.store.count_by_status(self.settings.namespace)
        return {"running": counts.get("running", 0), "queued": counts.get("queued", 0),
                "max_processes": self.settings.max_processes, "by_status": counts}

    def wait(self, process_id: str, timeout: float | None = None) -> dict[str, t.Any]:
        """Block until the process has ended and return its final status (``TimeoutError`` on timeout)."""
        process_id = check_process_id(process_id)
        timeout = check_seconds(timeout, "timeout")
        self._ensure_started_for_reads()
        deadline = time.monotonic() + timeout if timeout is not None else None
        event = self._events.setdefault(process_id, threading.Event())
        pause = 0.01
        try:
            while True:
                row = self.store.get(process_id)
                if row is None:
                    raise errors.ProcessNotFound(f"No process with id {process_id!r}.")
                row = self.settle_if_stale(row)
                if row["status"] in FINAL:
                    return self.to_status(row)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"Process {process_id!r} is still {row['status']} after {timeout} s.")
                event.wait(pause if left is None else min(pause, left))
                event.clear()
                pause = min(pause * 2, 0.25)
        finally:
            self._events.pop(process_id, None)

    # ================================================================ stopping ===================
    def stop_process(self, process_id: str, timeout: float | None = None) -> bool:
        """Stop a process and its whole tree; True if it was running or queued and has now ended."""
        process_id = check_process_id(process_id)
        given = check_seconds(timeout, "timeout", allow_zero=True)
        grace = self.settings.stop_timeout if given is None else given
        self._ensure_started_for_reads()
        row = self.store.get(process_id)
        if row is not None:
            row = self.settle_if_stale(row)  # a process that already ended is not stopped by us
        if row is None or row["status"] in FINAL:
            return False
        if row["status"] == "queued" and self._stop_queued(process_id):
            return True
        if self.store.update(process_id, expect_status=["starting"], expect_no_stop=True, stop_requested="stop"):
            row = self._await_start(process_id, grace)
            if row is None or row["status"] in FINAL:
                return row is not None and row["status"] == "stopped"
        return self._stop_running([process_id], grace) == [process_id]

    def _await_start(self, process_id: str, grace: float) -> dict[str, t.Any] | None:
        """After a stop request on a ``starting`` record: its starter gives up (or stops what it
        spawned) and records ``stopped``; a dead starter's record is settled here."""
        deadline = time.monotonic() + grace + 10 * self.settings.poll_interval + 5
        while True:
            row = self.store.get(process_id)
            if row is None or row["status"] != "starting":
                return row
            row = self.settle_if_stale(row)
            if row["status"] != "starting" or time.monotonic() > deadline:
                return row
            time.sleep(0.01)

    def _stop_queued(self, process_id: str) -> bool:
        if not self.store.update(process_id, expect_status=["queued"], status="stopped",
                                 stop_requested="stop", finished_at=utcnow()):
            return False  # promoted meanwhile: stop it as a running one
        LogFiles(self.settings.log_dir, process_id).pop_env()
        self._dispatch_end(process_id, won=True)
        return True

    def request_stop(self, process_id: str, *, reason: str = "stop-request", run_tag: str | None = None) -> bool:
        """Stop without waiting: a queued process leaves the queue; a running one is marked with
        ``reason`` and its owner's watcher sends SIGTERM to the whole tree at once, SIGKILL after
        ``PROCMAN_STOP_TIMEOUT``, and records it ``stopped``. True if it was queued or running
        (or already being stopped). ``run_tag``: only that run, not a later start with the same id."""
        process_id = check_process_id(process_id)
        if reason not in _DEFERRED_STOPS:
            raise ValueError(f"reason must be one of {_DEFERRED_STOPS}, not {reason!r}")
        self._ensure_engine()
        row = self.store.get(process_id)
        if row is None or row["status"] in FINAL or (run_tag is not None and row["run_tag"] != run_tag):
            return False
        if row["status"] == "queued" and self._stop_queued(process_id):
            return True
        if row["stop_requested"] is not None:
            return True  # already being stopped (a timeout, a stop): keep its reason
        started = [s for s in ACTIVE if s != "queued"]
        if not self.store.update(process_id, expect_status=started, stop_requested=reason):
            return False  # it ended meanwhile
        t.cast(Watcher, self._watcher).request_tick()  # the tick begins the stop (see tick)
        return True

    def _stop_running(self, process_ids: t.Sequence[str], grace: float) -> list[str]:
        """Stop running processes together; returns the ids that ended."""
        targets: dict[str, dict[str, t.Any]] = {}
        remote: list[str] = []
        ended: list[str] = []
        for process_id in process_ids:
            row = self._wait_for_pid(process_id)
            if row is None or row["status"] in FINAL:
                continue
            if row["host"] != self.host:
                self.store.update(process_id, expect_status=["running"], stop_requested="stop-request")
                remote.append(process_id)
                continue
            if row["pid"] is None:  # still starting (its starter is alive but slow): it sees the stop
                self.store.update(process_id, expect_status=["starting"], stop_requested="stop")
                row = self._await_start(process_id, grace)
                if row is not None and row["status"] in FINAL:
                    ended.append(process_id)
                    continue
                if row is None or row["pid"] is None:
                    continue
            if row["status"] != "running":
                continue
            self.store.update(process_id, expect_status=["running"], stop_requested="stop")
            targets[process_id] = row
        identities = {pid: t.cast(Identity, record_identity(row)) for pid, row in targets.items()}
        survivors = kill_trees_each(list(identities.values()), grace) if identities else []
        for (process_id, identity), left in zip(identities.items(), survivors, strict=True):
            if self._await_record(process_id, identity, left, wait=2.0 + self.settings.poll_interval):
                ended.append(process_id)
        for process_id in remote:
            row = self._poll_final(process_id, grace + 5 * self.settings.poll_interval + 5)
            if row is not None:
                ended.append(process_id)
        return ended

    def _wait_for_pid(self, process_id: str, wait: float = 5.0) -> dict[str, t.Any] | None:
        """The record once its pid is known (a start may be between claim and spawn)."""
        deadline = time.monotonic() + wait
        while True:
            row = self.store.get(process_id)
            if row is None or row["status"] in FINAL or row["pid"] is not None or time.monotonic() > deadline:
                return row
            row = self.settle_if_stale(row)
            time.sleep(0.01)

    def _poll_final(self, process_id: str, wait: float) -> dict[str, t.Any] | None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            row = self.store.get(process_id)
            if row is None or row["status"] in FINAL:
                return row
            time.sleep(0.02)
        return None

    def _await_record(self, process_id: str, identity: Identity, survivors: list[int], wait: float) -> bool:
        """After a kill: let the owner record the end, or record it here if nobody does."""
        if survivors:
            self._try(lambda: self.store.update(process_id, survivors=survivors))
        if self._poll_final(process_id, wait) is not None:
            if survivors:  # recorded by the watcher, which did not know: the error says so too
                self._try(lambda: self.record_survivors(process_id, survivors))
            return True
        code = self._exit_code_after_kill(identity, process_id, is_child=False)
        self.record_end(process_id, code, survivors=survivors)
        row = self.store.get(process_id)
        return row is not None and row["status"] in FINAL

    def _exit_code_after_kill(self, identity: Identity, process_id: str, is_child: bool) -> int | None:
        # Also a child of this OS process that no watcher follows (spawned before a shutdown and a
        # restart of the engine): reap it, or it stays a zombie. The identity check first, so that
        # a reused pid of another child is never reaped here.
        if is_child or identity.process() is not None:
            try:
                waited, status = os.waitpid(identity.pid, os.WNOHANG)
                if waited:
                    return os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        code = self.read_exit_status(process_id)
        return code if code is not None else -9

    def stop_all(self, timeout: float | None = None) -> list[str]:
        """Stop every queued and running process of the app; returns the ids stopped."""
        grace = self.settings.stop_timeout if timeout is None else float(timeout)
        self._ensure_started_for_reads()
        rows, _ = self.store.page(list(ACTIVE), namespace=self.settings.namespace)
        stopped = [r["id"] for r in rows if r["status"] == "queued" and self._stop_queued(r["id"])]
        running = [r["id"] for r in rows if r["id"] not in stopped]
        return stopped + self._stop_running(running, grace)

    # ================================================================ removing ===================
    def remove_process(self, process_id: str) -> bool:
        """Delete a finished process's record and log files; False if unknown."""
        process_id = check_process_id(process_id)
        self._check_fork()
        row = self.store.get(process_id)
        if row is None:
            return False
        if row["status"] not in FINAL:
            raise errors.ProcessNotFinished(f"Process {process_id!r} is {row['status']}; stop it before removing it.")
        if not self.store.delete(process_id):
            return False
        LogFiles(self.settings.log_dir, process_id).remove()
        return True

    def prune(self) -> int:
        """Delete finished records (and their logs) older than ``PROCMAN_RETENTION``; returns how many."""
        retention = self.settings.retention
        if retention is None:
            return 0
        self._check_fork()
        removed = 0
        for process_id in self.store.expired(utcnow() - dt.timedelta(seconds=retention)):
            if self.store.delete(process_id):
                LogFiles(self.settings.log_dir, process_id).remove()
                removed += 1
        return removed

    # ================================================================ recording ends ============
    def read_exit_status(self, process_id: str) -> int | None:
        """The exit status the wrapper wrote next to the logs, if any."""
        return LogFiles(self.settings.log_dir, process_id).read_exit_status()

    def record_survivors(self, process_id: str, survivors: list[int]) -> None:
        """Processes an ended run left behind survived SIGKILL: the record says so (never silent)."""
        row = self.store.get(process_id)
        if row is None:
            return
        known = list(row["survivors"] or [])
        error = (row["error"] or "") + f"\nprocesses of the run still alive after SIGKILL: {survivors}"
        self.store.update(process_id, survivors=known + [p for p in survivors if p not in known], error=error.lstrip())

    def request_timeout_stop(self, process_id: str) -> None:
        """Mark a running process as stopped for its timeout (before it is signalled)."""
        self.store.update(process_id, expect_status=["running"], stop_requested="timeout")

    def record_end(self, process_id: str, return_code: int | None, *,
                   survivors: list[int] | None = None, inline: bool = False,
                   expect: t.Sequence[str] = ("running",)) -> bool:
        """Record the end of a process, once: a compare-and-set from ``running`` (or ``expect``) to
        a final status.

        Returns True in the one manager that won and so runs the durable handler.
        """
        row = self.store.get(process_id)
        if row is None:
            return False
        won = False
        if row["status"] in expect:
            reason = row["stop_requested"]
            if reason == "timeout":
                status = "timed_out"
            elif reason is not None:
                status = "stopped"
            elif return_code is None:
                status = "lost"
            else:
                status = "completed"
            values: dict[str, t.Any] = {
                "status": status, "return_code": return_code, "finished_at": utcnow(),
                "error": self._end_reason(row, status, return_code),
                "owner": self._owner or row["owner"],
                "handler_state": "pending" if row["handler"] else None,
            }
            if survivors:
                values["survivors"] = survivors
                values["error"] = (values["error"] or "") + f"\nstill alive after SIGKILL: {survivors}"
            won = self.store.update(process_id, expect_status=list(expect), **values)
        if won or process_id in self._callbacks or process_id in self._events:
            self._dispatch_end(process_id, won=won, inline=inline,
                               durable_work=won and (bool(row["handler"]) or bool(process_finished.receivers)))
        if won and self._watcher is not None:
            self._watcher.request_tick()  # a slot is free: promote queued starts now
        return won

    def _stop_for_log_limit(self, process_id: str, message: str) -> None:
        """A log reached its cap with ``max_log_action="stop"`` (watcher thread): stop the run."""
        if self.store.update(process_id, expect_status=["running"], stop_requested=LOG_LIMIT, error=message):
            t.cast(Watcher, self._watcher).begin_stop(process_id)

    def _end_reason(self, row: t.Mapping[str, t.Any], status: str, return_code: int | None) -> str | None:
        """The record's ``error``: why it ended, when that is not a plain success."""
        if status == "timed_out":
            limit = row["timeout"]
            reason = f"timed out after {limit:g} s" if limit is not None else "timed out"
        elif status == "stopped":
            why = row["stop_requested"]
            if why == TEARDOWN_REASON:
                reason = "stopped at teardown"  # its context ended (stop_on_teardown)
            elif why == LOG_LIMIT and row["error"]:
                reason = row["error"]  # written by the stop: which log reached its cap
            else:
                reason = "stopped by request"
        elif status == "lost":
            return ("The process ended while no manager was its parent and it left no exit status "
                    "(killed by SIGKILL, or its log folder was not writable).")
        elif return_code in (0, None):
            return None
        else:
            stream = "stdout" if row["merge_stderr"] else "stderr"
            tail = LogFiles(self.settings.log_dir, row["id"]).tail(stream, self.settings.error_tail)
            # NUL: no PostgreSQL text column takes it, and the end would never be recorded.
            return decode_output(tail).replace("\0", "\ufffd") or f"exited with code {return_code}"
        # A stop's SIGTERM (-15) says nothing; a SIGKILL after the grace or an exit code of its own does.
        if return_code == -9:
            reason += "; it did not end within the grace period and was killed (SIGKILL)"
        elif return_code not in (None, 0, -15):
            reason += f"; it exited with code {return_code}"
        return reason

    def _dispatch_end(self, process_id: str, *, won: bool, inline: bool = False, durable_work: bool = True) -> None:
        """Run the in-memory callback (if this worker holds one) and, for the recorder, the durable
        handler and the signal, with the app context pushed, off the watcher thread."""
        callback = self._callbacks.pop(process_id, None)
        event = self._events.get(process_id)
        if event is not None:
            event.set()
        if callback is None and not (won and durable_work):
            return  # nothing to run: no callback, no handler, no process_finished receiver
        pool = self._pool
        if inline or pool is None:
            self._run_completion(process_id, callback, won)
            return
        try:
            pool.submit(self._run_completion, process_id, callback, won)
        except RuntimeError:  # pool shut down (interpreter exiting)
            self._run_completion(process_id, callback, won)

    def _run_completion(self, process_id: str, callback: CompletionCallback | None, won: bool) -> None:
        with self.app.app_context():
            try:
                row = self.store.get(process_id)
            except errors.StoreUnavailable:
                log.exception("procman: could not read %s to run its completion", process_id)
                return
            if row is None:
                return
            code = row["return_code"]
            if callback is not None:
                try:
                    callback(process_id, code)
                except Exception:
                    log.exception("procman: on_complete callback of %s raised", process_id)
            if won:
                self._run_handler(row)
                try:
                    process_finished.send(self.app, process_id=process_id, status=row["status"], return_code=code)
                except Exception:
                    log.exception("procman: a process_finished receiver raised for %s", process_id)

    def _run_handler(self, row: t.Mapping[str, t.Any]) -> None:
        name = row["handler"]
        if not name or row["handler_state"] != "pending":
            return
        handler = self.extension.handlers.get(name)
        if handler is None:
            log.error("procman: no handler named %r for %s (register it at app setup)", name, row["id"])
        else:
            try:
                handler(row["id"], row["return_code"])
            except Exception:
                log.exception("procman: handler %r of %s raised", name, row["id"])
        self._try(lambda: self.store.update(row["id"], handler_state="done"))

    # ================================================================ periodic work =============
    def tick(self) -> None:
        """The watcher's periodic database work (runs on the watcher thread)."""
        self._ticks += 1
        namespace = self.settings.namespace
        rows = self.store.active_on_host(self.host, namespace)
        watcher = t.cast(Watcher, self._watcher)
        active = {r["id"] for r in rows}
        # Callbacks held here for processes someone else finished (or promoted and finished).
        for process_id in [p for p in list(self._callbacks) if p not in active]:  # list(): other threads add
            row = self.store.get(process_id)
            if row is None or row["status"] in FINAL:
                self._dispatch_end(process_id, won=False)
        for row in rows:
            if row["status"] != "running" or row["owner"] != self._owner:
                continue
            if row["stop_requested"] in _DEFERRED_STOPS:  # asked from another host, or by request_stop
                watcher.begin_stop(row["id"])
        alive: dict[str, bool] = {}

        def owner_dead(owner: str | None) -> bool:
            if not owner:
                return True
            if owner not in alive:
                alive[owner] = _owner_alive(owner)
            return not alive[owner]

        for row in rows:
            if row["status"] != "starting" or row["id"] in self._in_flight:
                continue
            # Ours and not in flight: the database failed under us mid-start. Another's: only a dead one's.
            if row["owner"] == self._owner or (not self._cli_mode and owner_dead(row["owner"])):
                self._settle_starting(row)
        if self._cli_mode:
            return
        if any(r["status"] == "queued" for r in rows):
            for record in self.store.promote(self.host, self.settings.max_processes, self._owner, namespace):
                self._in_flight.add(record["id"])
                try:
                    overrides = LogFiles(self.settings.log_dir, record["id"]).read_env() or {}
                    self._spawn_claimed(record, overrides, promoted=True)
                except errors.StoreUnavailable as exc:  # settled (back to the queue) on a later tick
                    log.warning("procman: could not start the promoted %s (%s); will retry", record["id"], exc)
                finally:
                    self._in_flight.discard(record["id"])
        for row in rows:
            owner = row["owner"]
            if row["status"] == "running" and owner and owner != self._owner and not watcher.is_watching(row["id"]):
                if owner_dead(owner):
                    self._adopt(row, owner)
        if self._ticks % 10 == 1:
            for row in self.store.pending_handlers(self.host, namespace):
                if row["owner"] != self._owner and not _owner_alive(row["owner"] or ""):
                    if self.store.update(row["id"], expect_owner=row["owner"], owner=self._owner):
                        self._dispatch_end(row["id"], won=True)
        now = time.monotonic()
        if self.settings.retention is not None and now - self._last_prune >= self.settings.prune_interval:
            self._last_prune = now
            self.prune()

    def _adopt(self, row: t.Mapping[str, t.Any], old_owner: str) -> None:
        """Take over a running process whose manager died: watch it and record its real end."""
        process_id = row["id"]
        if not self.store.update(process_id, expect_status=["running"], expect_owner=old_owner, owner=self._owner):
            return  # another manager adopted it first
        LogFiles(self.settings.log_dir, process_id).remove_env()  # a promoter that died before deleting it
        timeout_left = None
        if row["timeout"] is not None and row["started_at"] is not None:
            timeout_left = row["timeout"] - (utcnow() - row["started_at"]).total_seconds()
        log.info("procman: adopting %s (pid %s) from %s", process_id, row["pid"], old_owner)
        t.cast(Watcher, self._watcher).watch(
            process_id, t.cast(Identity, record_identity(row)), is_child=False, timeout_left=timeout_left
        )

    # ================================================================ settling ===================
    def settle_if_stale(self, row: dict[str, t.Any]) -> dict[str, t.Any]:
        """The truth about a record a reader met (returns the record, updated if it changed).

        A ``running`` record of this host whose process is gone is ended from its exit file (the
        wrapper's; handlers run once, by whoever wins the compare-and-set), so nobody reports a
        process as running, or stops it, after it ended with no watcher around. A ``starting``
        record whose starter died is settled as the start protocol says.
        """
        if row["host"] != self.host or row.get("namespace") != self.settings.namespace:
            return row
        process_id = row["id"]
        if row["status"] == "running" and row["pid"] is not None:
            # Even when our watcher follows it: a stop must not land between its end and the record.
            if t.cast(Identity, record_identity(row)).is_alive():
                return row
            code = self.read_exit_status(process_id)
            if code is None and _owner_alive(row["owner"] or ""):
                return row  # its live parent reaps it and records the real code
            self.record_end(process_id, code)
        elif row["status"] == "starting" and row["owner"] != self._owner:
            # Only a dead starter's. Our own are settled by our watcher alone: it is also the thread
            # that promotes, and a promotion is committed a moment before it is marked in flight.
            if _owner_alive(row["owner"] or ""):
                return row
            self._settle_starting(row)
        else:
            return row
        return self.store.get(process_id) or row

    def _settle_starting(self, row: t.Mapping[str, t.Any]) -> None:
        """Step 4 of the start protocol: a ``starting`` record whose starter is gone (or ours, left
        by a database failure) is adopted through its run tag, ended, or put back in the queue."""
        process_id, old_owner = row["id"], row["owner"]
        logs = LogFiles(self.settings.log_dir, process_id)
        found = inspect_run(row["run_tag"], logs)
        stop = row["stop_requested"] is not None
        if found.root is not None:
            values: dict[str, t.Any] = {
                "status": "running", "pid": found.root.pid, "pid_started": found.root.started,
                "started_at": found.root_started_at or utcnow(),
            }
            watcher = self._watcher if self._pid == os.getpid() else None
            if self._owner and watcher is not None:
                values["owner"] = self._owner
                if stop:
                    values["stop_requested"] = "stop-request"  # the next tick stops it, without blocking
            if not self.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, **values):
                return
            logs.remove_env()
            log.info("procman: adopting %s (pid %s), whose start %s left unfinished", process_id,
                     found.root.pid, old_owner)
            if "owner" in values and watcher is not None:
                timeout_left = None
                if row["timeout"] is not None and found.root_started_at is not None:
                    timeout_left = row["timeout"] - (utcnow() - found.root_started_at).total_seconds()
                watcher.watch(process_id, found.root, is_child=False, timeout_left=timeout_left)
                self._send_started(process_id, found.root.pid)
            return
        if found.ran:
            # It ran and ended before anybody recorded its pid: record that end, once; whatever it
            # left behind is stopped by the one who recorded it.
            if self.record_end(process_id, found.exit_status, expect=("starting",)):
                logs.remove_env()
                kill_leftovers(found.others)
            return
        if row["via_queue"] and not stop:
            if self.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="queued"):
                log.warning("procman: %s goes back to the queue: its promoter died before starting it", process_id)
                if self._watcher is not None:
                    self._watcher.request_tick()
            return
        if stop:
            self._finish_stopped_start(process_id, old_owner)
            return
        if self.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="failed",
                             error=NEVER_STARTED, finished_at=utcnow()):
            logs.remove_env()
            self._dispatch_end(process_id, won=True)

    # ================================================================ programs ===================
    def programs(self) -> dict[str, Program]:
        """Declared programs: ``PROCMAN_PROGRAMS`` of this app, then ``register_program`` ones."""
        declared = {name: make_program(name, spec) for name, spec in self.app.config.get("PROCMAN_PROGRAMS", {}).items()}
        declared.update(self.extension.programs)
        return declared

    def start_program(self, name: str, *, process_id: str | None = None, args: t.Sequence[str] = (),
                      env: t.Mapping[str, str] | None = None, queue: bool = False,
                      metadata: t.Mapping[str, t.Any] | None = None, handler: str | None = None) -> tuple[str, bool]:
        """Start a declared program; returns ``(process_id, started_or_queued)``."""
        program = self.programs().get(name)
        if program is None:
            raise errors.UnknownProgram(f"No program named {name!r} is declared (PROCMAN_PROGRAMS or register_program).")
        argv, overrides = program.build(list(args), env)
        if process_id is None:
            process_id = f"{name}-{uuid.uuid4().hex[:12]}"
            if not is_valid_process_id(process_id):
                process_id = uuid.uuid4().hex
        ok = self.start_process(process_id, argv, program.cwd, overrides, timeout=program.timeout, queue=queue,
                                metadata=metadata, handler=handler, program=name, progress=program.progress,
                                max_log_bytes=program.max_log_bytes, max_log_action=program.max_log_action)
        return process_id, ok


def _in_cli_command() -> bool:
    """True inside a ``flask`` CLI command other than ``flask run`` (whose requests are a server's)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    from flask.cli import run_command

    return ctx.command is not run_command


def _owner_alive(owner: str) -> bool:
    """Is the manager behind an owner id still running? (Same host only; zombies are dead.) Judged
    by its start since boot and the boot id: a wall-clock step changes nothing."""
    identity = owner_identity(owner)
    return identity is not None and identity.is_alive()


def _write_output_options(folder: str, options: outputopts.OutputOptions) -> None:
    """Leave the run's output options beside its logs; a full disk must not stop the start (its
    log is then followed without a cap)."""
    try:
        outputopts.write(folder, options)
    except OSError as exc:
        log.warning("procman: could not write the output options into %s: %s", folder, exc)
