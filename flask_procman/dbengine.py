"""The engine procman creates when the app gives no ``db``: SQLite pragmas, PostgreSQL time bounds."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .dbtimeout import postgres_connect_args


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and explicit BEGIN so a claim can take the write lock up front."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: t.Any, _record: t.Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        try:
            # Persistent once set; two first-ever connections may race to set it: either wins.
            cur.execute("PRAGMA journal_mode = WAL")
        except Exception:  # pragma: no cover - timing-dependent
            pass
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("procman_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_own_engine(url: str, timeout: float | None = None) -> Engine:
    """The engine used when the app gives no Flask-SQLAlchemy ``db``; on PostgreSQL every operation
    is bounded by ``timeout`` seconds (``PROCMAN_DB_TIMEOUT``; see :class:`Store`)."""
    is_sqlite = url.startswith("sqlite")
    kwargs: dict[str, t.Any] = {"pool_pre_ping": not is_sqlite}
    if is_sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    parsed = sa.engine.make_url(url)
    bounded = timeout is not None and parsed.get_backend_name() == "postgresql"
    if bounded:
        options = parsed.query.get("options")
        kwargs["connect_args"] = postgres_connect_args(t.cast(float, timeout),
                                                       options if isinstance(options, str) else None)
        kwargs["pool_timeout"] = timeout
        kwargs["pool_pre_ping"] = False  # the Store pings under its watchdog (a stalled ping would hang)
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
        engine._procman_begin_hook = True  # type: ignore[attr-defined]
    if bounded:
        engine._procman_timeout = timeout  # type: ignore[attr-defined]
    return engine
