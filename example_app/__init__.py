"""A small model-evaluation service built on flask-procman: the design note's real use, made to run.

Each evaluation runs ``example_app/scripts/evaluate.py`` as a managed process whose id is the
evaluation's uuid. Its row goes NOT_STARTED -> IN_PROGRESS -> COMPLETED (metrics stored) or
FAILED (error stored; a stopped, timed-out or lost process is FAILED too). The rows and the
procman records share one SQLite file in the instance folder.

Run it from the repository root::

    flask --app example_app init-db            # create the tables, add three models
    flask --app example_app run                # development server on http://127.0.0.1:5000/
    # or, as in production, two workers that share every process:
    gunicorn -c example_app/gunicorn_conf.py 'example_app:create_app()'

    flask --app example_app procman stop <uuid>   # stop an evaluation from the command line
    flask --app example_app procman run evaluate -- --model threshold --data data/two_blobs.csv --output-dir /tmp/out

Pages: ``/`` (every evaluation), ``/evaluations/new`` (the form), ``/evaluations/<uuid>``
(status, duration, live log, metrics; Stop, Retry and Delete buttons); JSON: ``/evaluations.json``,
``/evaluations/<uuid>.json``. Forms are POSTed to ``/evaluations`` and ``/evaluations/<uuid>/stop``,
``/retry`` and ``/delete``, protected by Flask-WTF's ``CSRFProtect`` (the ``example`` extra); the
procman API under ``/procman/`` is exempt: it has its own rule (a token, or an ``X-Requested-With`` header).
Times are shown in the reader's time zone, with its name (UTC without JavaScript).

The procman dashboard is at ``/procman/``. It asks for the API token, which is
``$PROCMAN_API_TOKEN`` when set, else a random one made on first start and kept in
``<instance>/procman-token`` (mode 0600) so that every worker and every restart uses the same;
each server process prints it to stderr when it starts. The evaluation pages are public: their
live log reads ``/procman/api/processes/<uuid>/events`` without the token (see ``views.py``).

Configuration (``create_app(test_config)`` wins over the environment, which wins over the defaults):

* ``EXAMPLE_INSTANCE_PATH``: the instance folder (default ``./instance`` next to the package).
* ``EXAMPLE_DATABASE_URI``: the SQLAlchemy URL (default ``sqlite:///<instance>/example.sqlite3``).
* any other ``EXAMPLE_<KEY>`` sets the config key ``<KEY>`` (JSON values are parsed), e.g.
  ``EXAMPLE_PROCMAN_POLL_INTERVAL=0.2`` or ``EXAMPLE_EVALUATION_TIMEOUT=60``;
  ``EXAMPLE_SECRET_KEY`` sets the session key (default: a random one kept in ``<instance>/secret-key``).
* ``PROCMAN_MAX_PROCESSES = 4``: evaluations beyond that are refused (the row stays NOT_STARTED).
* ``PROCMAN_STOP_ON_EXIT = False``: evaluations outlive a recycled gunicorn worker; another
  worker adopts them and records their end.
* ``EVALUATION_OUTPUT_DIR``: ``<instance>/outputs`` (one folder per evaluation);
  ``EVALUATION_TIMEOUT``: seconds before an evaluation is stopped as timed out (600).
"""

from __future__ import annotations

import os
import secrets
import sys
import typing as t

import click
import sqlalchemy as sa
from flask import Flask, Response, send_from_directory
from flask_wtf.csrf import CSRFError, CSRFProtect  # type: ignore[import-untyped]  # no py.typed

from flask_procman import StoreUnavailable

from .models import db, seed_models
from .service import procman

#: The instance-folder files holding the generated secrets.
TOKEN_FILE = "procman-token"
SECRET_KEY_FILE = "secret-key"

#: Every form POST of the example needs the session's CSRF token (Flask-WTF).
csrf = CSRFProtect()


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Build the example app; ``test_config`` overrides everything (``INSTANCE_PATH`` included)."""
    overrides = dict(test_config or {})
    instance_path = overrides.pop("INSTANCE_PATH", None) or os.environ.get("EXAMPLE_INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance_path) if instance_path else None)
    os.makedirs(app.instance_path, exist_ok=True)

    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI="sqlite:///" + os.path.join(app.instance_path, "example.sqlite3"),
        PROCMAN_MAX_PROCESSES=4,
        PROCMAN_STOP_ON_EXIT=False,
        EVALUATION_OUTPUT_DIR=os.path.join(app.instance_path, "outputs"),
        EVALUATION_TIMEOUT=600.0,
        # A page left open for hours (a long evaluation) must still be able to stop it: the token
        # lives as long as the session instead of Flask-WTF's default hour.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.config.from_prefixed_env("EXAMPLE")
    if "DATABASE_URI" in app.config:  # EXAMPLE_DATABASE_URI
        app.config["SQLALCHEMY_DATABASE_URI"] = app.config["DATABASE_URI"]
    token_from_env = os.environ.get("PROCMAN_API_TOKEN")
    if token_from_env:
        app.config["PROCMAN_API_TOKEN"] = token_from_env
    app.config.update(overrides)
    if "DATABASE_URI" in overrides:
        app.config["SQLALCHEMY_DATABASE_URI"] = overrides["DATABASE_URI"]

    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = read_or_create_secret(os.path.join(app.instance_path, SECRET_KEY_FILE))
    token_file = None
    if not app.config.get("PROCMAN_API_TOKEN"):
        token_file = os.path.join(app.instance_path, TOKEN_FILE)
        app.config["PROCMAN_API_TOKEN"] = read_or_create_secret(token_file)

    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Two workers, their watcher threads and the CLI write the same file: wait for the lock.
        options = app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
        options.setdefault("connect_args", {}).setdefault("timeout", 30)

    db.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        with app.app_context():
            sa.event.listen(db.engine, "connect", _sqlite_pragmas)
    procman.init_app(app)
    csrf.init_app(app)
    # The procman API is called by scripts with a bearer token and by the dashboard with an
    # X-Requested-With header (a cross-site form can send neither): it needs no form token.
    if "procman" in app.blueprints:  # absent with PROCMAN_API_ENABLED=False
        csrf.exempt(app.blueprints["procman"])

    from .views import bp

    app.register_blueprint(bp)
    _start_watching_early(app)

    @app.errorhandler(CSRFError)
    def csrf_refused(exc: CSRFError) -> tuple[str, int, dict[str, str]]:
        return (f"{exc.description} Reload the page and try again.\n", 400,
                {"Content-Type": "text/plain; charset=utf-8"})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        """Browsers ask for it whatever the page says: the same icon as the pages' ``<link rel=icon>``."""
        return send_from_directory(app.static_folder or "static", "favicon.svg", mimetype="image/svg+xml",
                                   max_age=86400)

    @app.errorhandler(sa.exc.OperationalError)
    def database_not_ready(exc: sa.exc.OperationalError) -> tuple[str, int, dict[str, str]]:
        if "no such table" not in str(exc.orig):
            raise exc
        return ("The database has no tables yet: run 'flask --app example_app init-db'.\n", 500,
                {"Content-Type": "text/plain; charset=utf-8"})

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the tables (the app's and procman's) and add the example models."""
        db.create_all()
        added = seed_models()
        click.echo(f"Initialised the database {db.engine.url.render_as_string(hide_password=True)}"
                   f" ({added} models added).")
        click.echo(f"The procman dashboard is at /procman/ with the API token {app.config['PROCMAN_API_TOKEN']}")

    if _is_server_start() and not app.testing:
        where = f"from {token_file}" if token_file else "from PROCMAN_API_TOKEN"
        print(f"[example_app pid {os.getpid()}] procman dashboard: /procman/  API token ({where}): "
              f"{app.config['PROCMAN_API_TOKEN']}", file=sys.stderr, flush=True)
    return app


def read_or_create_secret(path: str) -> str:
    """The secret kept in ``path``; made with ``secrets.token_urlsafe`` (mode 0600) if there is none.

    Safe when several workers start at once: the file appears complete or not at all (written
    aside, then hard-linked into place; the first link wins and every process reads that one).
    """
    value = _read_secret(path)
    if value:
        return value
    scratch = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass  # another worker was first: use its secret
    finally:
        os.unlink(scratch)
    value = _read_secret(path)
    if not value:
        raise RuntimeError(f"{path} is empty: delete it and start again (a new secret is then made).")
    return value


def _read_secret(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _sqlite_pragmas(dbapi_connection: t.Any, _record: t.Any) -> None:
    """WAL lets readers go on while a worker writes; the busy timeout makes writers queue."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _is_server_start() -> bool:
    """True when a server loads the app (gunicorn or any WSGI server, or ``flask run``), not another
    ``flask`` command: those should not print the token."""
    ctx = click.get_current_context(silent=True)
    return ctx is None or ctx.info_name == "run"


def _start_watching_early(app: Flask) -> None:
    """Start this process's procman watcher on its first request, not on its first procman call.

    Every worker then watches: it adopts the evaluations of a recycled worker and records their
    end even if it only served pages that never touch procman. (``gunicorn_conf.py`` starts it
    as soon as a worker boots.)
    """
    started_in: dict[str, int] = {}

    @app.before_request
    def start_procman_watcher() -> None:
        if started_in.get("pid") == os.getpid():
            return
        try:
            procman.stats()  # the first procman call in a process starts its watcher
        except StoreUnavailable:
            return  # no tables yet: the page says what to do
        started_in["pid"] = os.getpid()
