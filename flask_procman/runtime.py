"""The engine of one manager in one OS process: the store, the watcher thread, the callback pool,
fork hooks and shutdown, and the state that lives only in this OS process."""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import socket
import threading
import typing as t
import uuid

import click
import sqlalchemy as sa
from werkzeug.serving import is_running_from_reloader

from .engine import heartbeat
from .engine.identity import owner_id
from .engine.outputwatch import OutputKeeper
from .engine.watcher import Watched, Watcher, WatcherClient
from .store import Store, create_own_engine, make_table

if t.TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from .config import Settings

log = logging.getLogger("flask_procman")

#: ``on_complete(process_id, return_code)``: return_code is None when there is none.
CompletionCallback = t.Callable[[str, int | None], t.Any]
#: Threads of the pool that runs callbacks, handlers and signals off the watcher thread.
CALLBACK_THREADS = 2


class Detached(t.NamedTuple):
    """A watcher taken out of service by :meth:`Runtime.detach`."""

    watcher: Watcher
    pool: concurrent.futures.ThreadPoolExecutor | None
    stop_processes: bool
    owned: list[Watched]


class Runtime:
    """Starts the engine on first use in an OS process (again after a fork, again after a shutdown)
    and holds what only this OS process knows: callbacks, waiters and starts in flight."""

    def __init__(self, app: Flask, settings: Settings, *, db: SQLAlchemy | None, table: sa.Table | None,
                 client: WatcherClient, on_log_limit: t.Callable[[str, str], None]) -> None:
        self.app = app
        self.settings = settings
        self.host = socket.gethostname()
        self._db = db
        self._table = table
        self._client = client
        self._on_log_limit = on_log_limit
        self._store: Store | None = None
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._watcher: Watcher | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: In-memory ``on_complete`` callbacks of the starts made here.
        self.callbacks: dict[str, CompletionCallback] = {}
        #: Events set when a process someone waits for here has ended.
        self.events: dict[str, threading.Event] = {}
        #: Ids this manager is starting right now (claim to pid): its watcher leaves them alone.
        self.in_flight: set[str] = set()
        self._owner = ""
        self._cli_mode = False
        self._atexit_pid: int | None = None
        self._fork_hooks = False
        self._watcher_restarts = 0
        self._watcher_error: str | None = None
        #: Called by the atexit hook: the manager's shutdown (which also stops processes).
        self.on_exit: t.Callable[[bool], None] = lambda stop: None

    # ------------------------------------------------------------------ what the others read
    @property
    def store(self) -> Store:
        """The record store, created on first use (never in ``init_app``)."""
        self.check_fork()
        watcher = self._watcher
        if watcher is not None and not watcher.is_alive() and not watcher.stopped and self._pid == os.getpid():
            self.ensure()  # every use of the store notices a dead watcher (cheap: a flag)
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
    def store_if_open(self) -> Store | None:
        """The store if it was created (no side effect)."""
        return self._store

    @property
    def owner(self) -> str:
        """This manager's owner id, or ``""`` before the engine started."""
        return self._owner

    @property
    def cli_mode(self) -> bool:
        """True when the engine was started inside a ``flask`` CLI command."""
        return self._cli_mode

    @property
    def watcher(self) -> Watcher | None:
        """The watcher, or None before the engine started (or after a shutdown)."""
        return self._watcher

    def watcher_here(self) -> Watcher | None:
        """The watcher if it belongs to this OS process (not a parent's before a fork)."""
        return self._watcher if self._pid == os.getpid() else None

    @property
    def pool(self) -> concurrent.futures.ThreadPoolExecutor | None:
        """The callback pool, or None before the engine started."""
        return self._pool

    def request_tick(self) -> None:
        """Ask the watcher for its periodic work now (no-op before the engine started)."""
        watcher = self._watcher
        if watcher is not None:
            watcher.request_tick()

    # ------------------------------------------------------------------ starting and forks
    def check_fork(self) -> None:
        """After a fork, forget everything the parent's engine held."""
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
        self.callbacks = {}
        self.events = {}
        self.in_flight = set()
        if self._store is not None and self._store.owns_table:
            # Drop the parent's pooled connections without closing them (they are the parent's);
            # a fresh store and engine follow, so no lock the parent held at the fork is reused.
            self._store.engine.dispose(close=False)
        self._store = None
        self._pid = None

    def ensure(self) -> None:
        """Start the watcher on first use in this OS process (and again after a fork); restart it,
        with a logged error, if its thread has died."""
        self.check_fork()
        if self._pid == os.getpid() and self._watcher is not None and self._watcher.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._watcher is not None:
                if not self._watcher.is_alive() and not self._watcher.stopped:
                    self._restart_watcher(self._watcher)
                return
            pid = os.getpid()
            self._cli_mode = in_cli_command()
            self._owner = owner_id(self.host, pid, uuid.uuid4().hex[:8])
            os.makedirs(self.settings.log_dir, mode=0o700, exist_ok=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(CALLBACK_THREADS, thread_name_prefix="procman-callback")
            self._watcher = self._new_watcher()
            self._pid = pid
            self._watcher.start()
            if self._atexit_pid != pid:
                atexit.register(self._atexit)
                self._atexit_pid = pid
            if not self._fork_hooks and hasattr(os, "register_at_fork"):
                os.register_at_fork(before=self._before_fork, after_in_parent=self._after_fork_in_parent)
                self._fork_hooks = True

    def ensure_for_reads(self) -> None:
        """A web worker that only reads must still adopt what a dead worker left; the CLI must not."""
        if not in_cli_command():
            self.ensure()
        else:
            self.check_fork()

    def _new_watcher(self) -> Watcher:
        beat = None if self._cli_mode else self._heartbeat
        watcher = Watcher(self._client, self.settings.poll_interval, self.settings.stop_timeout, heartbeat=beat)
        keeper = OutputKeeper(self.settings.log_dir, self._on_log_limit)  # progress, time index, log caps
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
        self.ensure()
        return False

    def watcher_health(self) -> dict[str, t.Any]:
        """``{"running", "restarts", "last_error", "stale_watchers"}`` (see ``Manager.watcher_health``)."""
        watcher = self._watcher
        running = watcher is not None and self._pid == os.getpid() and watcher.is_alive()
        max_age = max(10.0, 10 * self.settings.poll_interval)
        stale = heartbeat.stale_watchers(self.settings.log_dir, self.host, max_age)
        return {"running": running, "restarts": self._watcher_restarts, "last_error": self._watcher_error,
                "stale_watchers": [b.to_dict() for b in stale if b.owner != self._owner]}

    # ------------------------------------------------------------------ ending
    def _atexit(self) -> None:
        if self._pid != os.getpid():
            return
        # Under the debug reloader every code change ends this process: its processes are left
        # running for the next child to adopt, instead of being killed on each edit.
        self.on_exit(self.settings.stop_on_exit and not self._cli_mode and not is_running_from_reloader())

    def detach(self, stop_processes: bool | None) -> Detached | None:
        """First half of a shutdown: stop the watcher's loop and forget it; returns it, its pool,
        whether to stop processes, and what it followed (None when the engine is not running)."""
        self.check_fork()
        with self._lock:
            watcher, pool = self._watcher, self._pool
            if watcher is None:
                return None
            if stop_processes is None:
                stop_processes = self.settings.stop_on_exit and not self._cli_mode
            watcher.stop()
            owned = watcher.watched()
            self._watcher = None
            self._pid = None
        heartbeat.forget(self.settings.log_dir, self._owner)
        return Detached(watcher, pool, stop_processes, owned)

    def close(self, detached: Detached) -> None:
        """Second half of a shutdown: end the watcher, drain the callback pool, free connections."""
        if detached.stop_processes:
            detached.watcher.finish_leftovers()  # what finished jobs left in their groups: no survivor either
        detached.watcher.close()
        pool = detached.pool
        if pool is not None:
            pool.shutdown(wait=True)
        store = self._store
        if store is not None and store.owns_table:
            store.engine.dispose()  # give the database its connections back (reopened on next use)


def in_cli_command() -> bool:
    """True inside a ``flask`` CLI command other than ``flask run`` (whose requests are a server's)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    from flask.cli import run_command

    return ctx.command is not run_command
