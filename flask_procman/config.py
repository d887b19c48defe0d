"""Every ``PROCMAN_*`` configuration key, its default, its meaning and its validation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask

from .errors import ConfigurationError

KIB = 1024
MIB = 1024 * KIB


class ConfigKeys:
    """The name of every configuration key, in one place (the CLI and the docs reuse them)."""

    #: Concurrent processes allowed across every worker sharing the database (default 5).
    #: The seed's plain ``MAX_PROCESSES`` is honoured when this key is absent.
    MAX_PROCESSES = "PROCMAN_MAX_PROCESSES"
    #: Folder of the per-process log files (default ``<instance_path>/procman``).
    LOG_DIR = "PROCMAN_LOG_DIR"
    #: Seconds between SIGTERM and SIGKILL when stopping (default 10).
    STOP_TIMEOUT = "PROCMAN_STOP_TIMEOUT"
    #: Bytes of each stream that a status returns (default 64 KiB).
    OUTPUT_TAIL = "PROCMAN_OUTPUT_TAIL"
    #: Stop the processes this manager owns when the Python process exits (default True).
    STOP_ON_EXIT = "PROCMAN_STOP_ON_EXIT"
    #: SQLAlchemy URL of the records when no Flask-SQLAlchemy ``db`` is given
    #: (default a SQLite file ``<instance_path>/procman.sqlite3``).
    DATABASE_URI = "PROCMAN_DATABASE_URI"
    #: How long finished records and their logs are kept: seconds or a ``timedelta``;
    #: ``None`` keeps them forever (default 7 days).
    RETENTION = "PROCMAN_RETENTION"
    #: Seconds between the watcher's database checks (stop requests, queue, adoption; default 1.0).
    POLL_INTERVAL = "PROCMAN_POLL_INTERVAL"
    #: Seconds between background prunes by each manager (default 3600).
    PRUNE_INTERVAL = "PROCMAN_PRUNE_INTERVAL"
    #: Bytes of stderr kept in ``error`` when a process ends with a non-zero code (default 4 KiB).
    ERROR_TAIL = "PROCMAN_ERROR_TAIL"
    #: Register the REST blueprint and dashboard (default True; closed until opened, see below).
    API_ENABLED = "PROCMAN_API_ENABLED"
    #: URL prefix of the blueprint (default ``/procman``).
    API_PREFIX = "PROCMAN_API_PREFIX"
    #: Bearer token that opens the API (default None: the API answers 401).
    API_TOKEN = "PROCMAN_API_TOKEN"
    #: Programs that HTTP and ``flask procman run`` may start: ``{name: {"cmd": [...], ...}}``.
    PROGRAMS = "PROCMAN_PROGRAMS"
    #: Largest request body the API accepts, in bytes (default 64 KiB).
    API_MAX_BODY = "PROCMAN_API_MAX_BODY"
    #: Bytes each log of a run may hold (default None: unbounded; at least 16 KiB). A run's own
    #: ``max_log_bytes=`` wins.
    MAX_LOG_BYTES = "PROCMAN_MAX_LOG_BYTES"
    #: At the cap: ``"truncate"`` (default; keep the newest bytes, the head is freed) or ``"stop"``.
    MAX_LOG_ACTION = "PROCMAN_MAX_LOG_ACTION"
    #: The app's share of a records table that several apps use (default: derived from the log
    #: folder). A manager only runs, promotes, adopts and lists the records of its namespace.
    NAMESPACE = "PROCMAN_NAMESPACE"
    #: Seconds a database operation may take before it fails with ``StoreUnavailable`` (default 10;
    #: the connect timeout, TCP keepalives and statement timeout of the engine procman creates).
    DB_TIMEOUT = "PROCMAN_DB_TIMEOUT"
    #: Engines beside this host's (``local``, always there): ``{name: {"type": "ray", "address":
    #: "http://head:8265", "token": None, "max_processes": 8}}``; each has its own cap and queue.
    BACKENDS = "PROCMAN_BACKENDS"


#: The default of every key; ``None`` for LOG_DIR and DATABASE_URI means "derived from instance_path".
DEFAULTS: dict[str, t.Any] = {
    ConfigKeys.MAX_PROCESSES: 5,
    ConfigKeys.LOG_DIR: None,
    ConfigKeys.STOP_TIMEOUT: 10.0,
    ConfigKeys.OUTPUT_TAIL: 64 * KIB,
    ConfigKeys.STOP_ON_EXIT: True,
    ConfigKeys.DATABASE_URI: None,
    ConfigKeys.RETENTION: dt.timedelta(days=7),
    ConfigKeys.POLL_INTERVAL: 1.0,
    ConfigKeys.PRUNE_INTERVAL: 3600.0,
    ConfigKeys.ERROR_TAIL: 4 * KIB,
    ConfigKeys.API_ENABLED: True,
    ConfigKeys.API_PREFIX: "/procman",
    ConfigKeys.API_TOKEN: None,
    ConfigKeys.PROGRAMS: {},
    ConfigKeys.API_MAX_BODY: 64 * KIB,
    ConfigKeys.MAX_LOG_BYTES: None,
    ConfigKeys.MAX_LOG_ACTION: "truncate",
    ConfigKeys.NAMESPACE: None,
    ConfigKeys.DB_TIMEOUT: 10.0,
    ConfigKeys.BACKENDS: {},
}


#: The name of this host's engine, always configured.
LOCAL = "local"
_BACKEND_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """One entry of ``PROCMAN_BACKENDS``, validated (the token is never shown by its repr)."""

    name: str
    type: str
    address: str
    max_processes: int
    token: str | None = dataclasses.field(default=None, repr=False)
    check_feasible: bool = True


def read_backends(raw: t.Any) -> dict[str, BackendSettings]:
    """Validate ``PROCMAN_BACKENDS``; each error names the backend and the key."""
    key = ConfigKeys.BACKENDS
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{key} must be a dict of name -> backend settings, not {raw!r}.")
    backends: dict[str, BackendSettings] = {}
    for name, spec in raw.items():
        where = f"{key}[{name!r}]"
        if not isinstance(name, str) or not _BACKEND_NAME_RE.fullmatch(name) or name == LOCAL:
            raise ConfigurationError(f"{key}: {name!r} is not a backend name (1-64 characters [A-Za-z0-9_-]; "
                                     f"{LOCAL!r} is this host's, always there).")
        if not isinstance(spec, dict):
            raise ConfigurationError(f"{where} must be a dict such as {{'type': 'ray', 'address': ...}}.")
        unknown = set(spec) - {"type", "address", "token", "max_processes", "check_feasible"}
        if unknown:
            raise ConfigurationError(f"{where}: unknown settings {sorted(unknown)}.")
        if spec.get("type") != "ray":
            raise ConfigurationError(f"{where}: 'type' must be 'ray' (the only remote engine), not {spec.get('type')!r}.")
        address = spec.get("address")
        if not isinstance(address, str) or not re.fullmatch(r"https?://[^/\s]+/?", address):
            raise ConfigurationError(f"{where}: 'address' must be the Ray dashboard's URL such as "
                                     f"http://head:8265, not {address!r}.")
        token = spec.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigurationError(f"{where}: 'token' must be a non-empty string or None.")
        cap = spec.get("max_processes", 8)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ConfigurationError(f"{where}: 'max_processes' must be an integer >= 0, not {cap!r}.")
        feasible = spec.get("check_feasible", True)
        if not isinstance(feasible, bool):
            raise ConfigurationError(f"{where}: 'check_feasible' must be True or False.")
        try:
            import requests  # noqa: F401  (the Ray client's only dependency)
        except ImportError:
            raise ConfigurationError(f"{where}: the Ray backend needs the 'requests' package: "
                                     "pip install 'flask-procman[ray]'.") from None
        backends[name] = BackendSettings(name, "ray", address.rstrip("/"), cap, token, feasible)
    return backends


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated configuration of one app, read once at ``init_app``."""

    max_processes: int
    log_dir: str
    stop_timeout: float
    output_tail: int
    stop_on_exit: bool
    database_uri: str
    retention: float | None
    poll_interval: float
    prune_interval: float
    error_tail: int
    api_enabled: bool
    api_prefix: str
    api_max_body: int
    max_log_bytes: int | None = None
    max_log_action: str = "truncate"
    namespace: str = ""
    db_timeout: float = 10.0
    #: The configured remote backends by name (``local`` is not among them).
    backends: t.Mapping[str, BackendSettings] = dataclasses.field(default_factory=dict)

    def cap_of(self, backend: str | None) -> int:
        """The cap of ``backend`` (None or ``"local"``: ``max_processes``)."""
        if backend is None or backend == LOCAL:
            return self.max_processes
        return self.backends[backend].max_processes


def apply_defaults(app: Flask) -> None:
    """Set every key's default with ``setdefault``; the seed's ``MAX_PROCESSES`` wins over the default."""
    if ConfigKeys.MAX_PROCESSES not in app.config and "MAX_PROCESSES" in app.config:
        app.config[ConfigKeys.MAX_PROCESSES] = app.config["MAX_PROCESSES"]
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value.copy() if isinstance(value, dict) else value)


def _number(config: t.Mapping[str, t.Any], key: str, *, integer: bool, minimum: float,
            strictly_positive: bool = False) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"{key} must be {kind}, not {value!r}.")
    if value < minimum or (strictly_positive and value <= 0):
        bound = "greater than 0" if strictly_positive else f">= {minimum}"
        raise ConfigurationError(f"{key} must be {bound}, not {value!r}.")
    return value


def read_settings(app: Flask) -> Settings:
    """Validate the app's config and return its :class:`Settings`; errors name the key."""
    config = app.config
    retention_raw = config[ConfigKeys.RETENTION]
    retention: float | None
    if retention_raw is None:
        retention = None
    elif isinstance(retention_raw, dt.timedelta):
        retention = retention_raw.total_seconds()
        if retention < 0:
            raise ConfigurationError(f"{ConfigKeys.RETENTION} must not be negative, not {retention_raw!r}.")
    else:
        retention = _number(config, ConfigKeys.RETENTION, integer=False, minimum=0)

    for flag in (ConfigKeys.STOP_ON_EXIT, ConfigKeys.API_ENABLED):
        if not isinstance(config[flag], bool):
            raise ConfigurationError(f"{flag} must be True or False, not {config[flag]!r}.")

    prefix = config[ConfigKeys.API_PREFIX]
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigurationError(f"{ConfigKeys.API_PREFIX} must be a path starting with '/', not {prefix!r}.")
    token = config[ConfigKeys.API_TOKEN]
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ConfigurationError(
            f"{ConfigKeys.API_TOKEN} must be a string of at least 16 characters (e.g. secrets.token_urlsafe()), or None."
        )
    if not isinstance(config[ConfigKeys.PROGRAMS], dict):
        raise ConfigurationError(f"{ConfigKeys.PROGRAMS} must be a dict of name -> program settings.")

    log_dir = config[ConfigKeys.LOG_DIR] or os.path.join(app.instance_path, "procman")
    if not isinstance(log_dir, (str, os.PathLike)):
        raise ConfigurationError(f"{ConfigKeys.LOG_DIR} must be a path, not {log_dir!r}.")
    database_uri = config[ConfigKeys.DATABASE_URI] or (
        "sqlite:///" + os.path.join(os.path.abspath(app.instance_path), "procman.sqlite3")
    )
    if not isinstance(database_uri, str):
        raise ConfigurationError(f"{ConfigKeys.DATABASE_URI} must be an SQLAlchemy URL string, not {database_uri!r}.")

    max_log_bytes = config[ConfigKeys.MAX_LOG_BYTES]
    if max_log_bytes is not None:
        max_log_bytes = int(_number(config, ConfigKeys.MAX_LOG_BYTES, integer=True, minimum=16 * KIB))
    max_log_action = config[ConfigKeys.MAX_LOG_ACTION]
    if max_log_action not in ("truncate", "stop"):
        raise ConfigurationError(f"{ConfigKeys.MAX_LOG_ACTION} must be 'truncate' or 'stop', not {max_log_action!r}.")
    namespace = config[ConfigKeys.NAMESPACE]
    if namespace is None:
        # Apps with different log folders never run each other's records (their env and logs live there).
        namespace = "log:" + hashlib.sha256(os.path.abspath(os.fspath(log_dir)).encode()).hexdigest()[:16]
    elif not isinstance(namespace, str) or not 1 <= len(namespace) <= 64:
        raise ConfigurationError(f"{ConfigKeys.NAMESPACE} must be a string of 1 to 64 characters, or None.")

    return Settings(
        max_processes=int(_number(config, ConfigKeys.MAX_PROCESSES, integer=True, minimum=0)),
        log_dir=os.path.abspath(os.fspath(log_dir)),
        stop_timeout=float(_number(config, ConfigKeys.STOP_TIMEOUT, integer=False, minimum=0)),
        output_tail=int(_number(config, ConfigKeys.OUTPUT_TAIL, integer=True, minimum=0)),
        stop_on_exit=config[ConfigKeys.STOP_ON_EXIT],
        database_uri=database_uri,
        retention=retention,
        poll_interval=float(_number(config, ConfigKeys.POLL_INTERVAL, integer=False, minimum=0,
                                    strictly_positive=True)),
        prune_interval=float(_number(config, ConfigKeys.PRUNE_INTERVAL, integer=False, minimum=0,
                                     strictly_positive=True)),
        error_tail=int(_number(config, ConfigKeys.ERROR_TAIL, integer=True, minimum=0)),
        api_enabled=config[ConfigKeys.API_ENABLED],
        api_prefix=prefix.rstrip("/") or "/",
        api_max_body=int(_number(config, ConfigKeys.API_MAX_BODY, integer=True, minimum=1)),
        max_log_bytes=max_log_bytes,
        max_log_action=max_log_action,
        namespace=namespace,
        db_timeout=float(_number(config, ConfigKeys.DB_TIMEOUT, integer=False, minimum=0, strictly_positive=True)),
        backends=read_backends(config[ConfigKeys.BACKENDS]),
    )
