"""The ``ProcMan`` Flask extension: registration, config, decorators, shutdown."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask

from . import config as config_module
from . import teardown
from .facade import EXTENSION_KEY, ManagerFacade, manager_for
from .manager import CompletionCallback, Manager
from .programs import Program, make_program
from .store import TABLE_NAME, make_table

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: ``authorize(action, process_id) -> bool``; action is read, stop, start or delete.
AuthorizeCallback = t.Callable[[str, str | None], bool]

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class ProcMan(ManagerFacade):
    """Start, watch, read and stop the processes of a Flask app.

    ``procman = ProcMan()`` then ``procman.init_app(app)`` (or ``ProcMan(app)``). Each app gets its
    own manager in ``app.extensions["procman"]``; the methods act on ``current_app``'s.

    :param app: register on this app now.
    :param db: the app's Flask-SQLAlchemy instance: the ``procman_processes`` table is then part of
        ``db.metadata`` and lives in the app's database (create it with ``db.create_all()`` or a
        migration). Without it, ``PROCMAN_DATABASE_URI`` (default a SQLite file in the instance folder).
    """

    def __init__(self, app: Flask | None = None, *, db: SQLAlchemy | None = None) -> None:
        self._db = db
        self._table: sa.Table | None = None
        if db is not None:
            existing = db.metadata.tables.get(TABLE_NAME)
            self._table = existing if existing is not None else make_table(db.metadata)
        #: Durable completion handlers by name (see :meth:`on_complete`).
        self.handlers: dict[str, CompletionCallback] = {}
        #: Programs declared with :meth:`register_program` (``PROCMAN_PROGRAMS`` adds per-app ones).
        self.programs: dict[str, Program] = {}
        #: The callback registered with :meth:`authorize`, replacing the token rule.
        self.authorize_callback: AuthorizeCallback | None = None
        if app is not None:
            self.init_app(app)

    @property
    def table(self) -> sa.Table | None:
        """The ``procman_processes`` table in the app's ``db.metadata`` (None without ``db``)."""
        return self._table

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: config defaults and validation, the blueprint, the CLI group, and the
        teardown that stops the processes started with ``stop_on_teardown=True`` when their app
        context ends (and only those: it runs after every request).

        Pure setup: no thread, no database connection, no process is touched (it also runs in
        every ``flask`` command, the reloader's parent and a ``--preload`` master). The engine
        starts on first use, and again in a forked child.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'ProcMan' instance has already been registered on this Flask app. "
                "Import and use that instance."
            )
        config_module.apply_defaults(app)
        settings = config_module.read_settings(app)
        for name, spec in app.config[config_module.ConfigKeys.PROGRAMS].items():
            make_program(name, spec)  # fail at init_app, naming the program
        app.extensions[EXTENSION_KEY] = Manager(app, settings, self, db=self._db, table=self._table)
        teardown.register(app)
        if settings.api_enabled:
            from .api import register_blueprint

            register_blueprint(app, settings)
        from .cli import procman_cli

        app.cli.add_command(procman_cli)

    # -- registration decorators -----------------------------------------------------------------
    def on_complete(self, name: str) -> t.Callable[[F], F]:
        """Register a durable completion handler ``handler(process_id, return_code)``::

            @procman.on_complete("evaluate")
            def finish_evaluation(process_id, return_code): ...

            procman.start_process(uid, cmd, handler="evaluate")

        It runs once in the whole deployment, in whichever worker records the end, with the app
        context pushed. Register it at app setup, so that every worker knows it.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("on_complete needs a handler name: @procman.on_complete('evaluate')")

        def decorator(fn: F) -> F:
            self.handlers[name] = fn
            return fn

        return decorator

    def authorize(self, fn: F) -> F:
        """Register ``fn(action, process_id) -> bool`` deciding every API request (replaces the
        token rule). ``action`` is ``read``, ``stop``, ``start`` or ``delete``; ``process_id`` is
        None for lists, stats and programs."""
        self.authorize_callback = fn
        return fn

    def register_program(
        self,
        name: str,
        cmd: t.Sequence[str],
        *,
        cwd: str | None = None,
        env: t.Mapping[str, str] | None = None,
        timeout: float | None = None,
        allow_args: bool = False,
        env_keys: t.Sequence[str] = (),
        progress: str | None = None,
        max_log_bytes: int | None = None,
        max_log_action: str | None = None,
        backend: str | None = None,
        resources: t.Mapping[str, t.Any] | None = None,
    ) -> Program:
        """Declare a program that HTTP and ``flask procman run`` may start (before or after init_app).

        :param allow_args: callers may append arguments (separate argv items, never a shell).
        :param env_keys: the environment variables callers may set.
        :param progress, max_log_bytes, max_log_action, backend, resources: as for
            :meth:`start_process`, for every run.
        """
        program = make_program(name, {"cmd": list(cmd), "cwd": cwd, "env": dict(env or {}), "timeout": timeout,
                                      "allow_args": allow_args, "env_keys": list(env_keys), "progress": progress,
                                      "max_log_bytes": max_log_bytes, "max_log_action": max_log_action,
                                      "backend": backend, "resources": dict(resources) if resources else None})
        self.programs[name] = program
        return program

    def start_program(self, name: str, *, process_id: str | None = None, args: t.Sequence[str] = (),
                      env: t.Mapping[str, str] | None = None, queue: bool = False) -> tuple[str, bool]:
        """Start a declared program; ``(process_id, started_or_queued)``."""
        return self.get_manager().start_program(name, process_id=process_id, args=args, env=env, queue=queue)

    def shutdown(self, app: Flask | None = None) -> None:
        """Stop the manager's watcher and, when ``PROCMAN_STOP_ON_EXIT`` is true, the processes it owns.

        Runs by itself at interpreter exit (``atexit``); call it from gunicorn's ``worker_exit`` hook
        or your own shutdown code. Never from ``teardown_appcontext`` (that runs after every request);
        for a process that must end with its request or CLI command, use ``stop_on_teardown=True``.
        """
        manager_for(app).shutdown()
