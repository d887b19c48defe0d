"""Process records in a database through SQLAlchemy: the truth every worker shares."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import typing as t
import zlib

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from .dbengine import create_own_engine
from .dbtimeout import SocketWatchdog
from .errors import StoreUnavailable, TableMissing
from .schema import ACTIVE, FINAL, HOLDING, STATUSES, TABLE_NAME, UTCDateTime, make_table, utcnow, with_utc_times

# Re-exported: the table, its statuses and the engine were defined here before (apps and tests import them).
__all__ = ["ACTIVE", "FINAL", "HOLDING", "STATUSES", "TABLE_NAME", "Store", "UTCDateTime", "create_own_engine",
           "make_table", "utcnow", "with_utc_times"]


def same_backend(table: sa.Table, backend: str | None) -> sa.ColumnElement[bool]:
    """Records run by ``backend`` (None: the local engine, whose records have a NULL ``backend``)."""
    return table.c.backend.is_(None) if backend is None else table.c.backend == backend


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class Store:
    """Reads and writes process records; every multi-worker decision is one transaction here."""

    def __init__(self, engine: Engine, table: sa.Table, *, owns_table: bool) -> None:
        self.engine = engine
        self.defined_table = table  # what create_all, Alembic and our own CREATE TABLE see
        self.table = with_utc_times(table)
        self.owns_table = owns_table
        self._checked = False
        self._create_lock = threading.Lock()
        #: Our own SQLite engines emit BEGIN themselves (see _sqlite_setup); an app's engine does not.
        self._begin_hook = bool(getattr(engine, "_procman_begin_hook", False))
        #: Seconds any operation may take (our own PostgreSQL engine), enforced by the watchdog.
        self._timeout: float | None = getattr(engine, "_procman_timeout", None)
        self._watchdog = SocketWatchdog() if self._timeout is not None else None
        self._get_stmt: sa.Select[t.Any] | None = None
        #: A SQLite file and its (device, inode) when first used: a file deleted or replaced under a
        #: running app would split the records (and the cap) in two, silently.
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._sqlite_path = os.path.abspath(database) if database and database != ":memory:" and \
            not database.startswith("file:") else None
        self._sqlite_file: tuple[int, int] | None = None

    # -- plumbing --------------------------------------------------------------------------------
    def ensure_table(self) -> None:
        """Create the table when the extension owns it; otherwise say clearly that it is missing."""
        if self._checked:
            return
        with self._create_lock:
            if not self._checked:
                self._check_table()

    def _check_table(self) -> None:
        try:
            if self.owns_table:
                # Take the write lock first, so that concurrent creators wait instead of failing.
                with self._connect() as raw:
                    conn = raw
                    if self.engine.dialect.name == "sqlite":
                        conn = conn.execution_options(procman_begin="IMMEDIATE")
                    with conn.begin():
                        if self.engine.dialect.name == "postgresql":
                            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(TABLE_NAME)})
                        self.defined_table.create(conn, checkfirst=True)
                        self._add_missing_columns(conn)
            elif not sa.inspect(self.engine).has_table(TABLE_NAME, schema=self.defined_table.schema):
                raise TableMissing(
                    f"The table {TABLE_NAME!r} does not exist in the app's database. Create it with "
                    "db.create_all() or a migration (it is part of db.metadata)."
                )
            else:
                with self.engine.connect() as conn:
                    missing = self._missing_columns(conn)
                if missing:
                    raise StoreUnavailable(
                        f"The table {TABLE_NAME!r} in the app's database lacks the column(s) "
                        f"{', '.join(c.name for c in missing)} of this flask-procman version: upgrade it with "
                        "'flask db migrate && flask db upgrade' (see the README's Migrations section)."
                    )
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"The process database cannot be reached: {exc.__class__.__name__}.") from exc
        if self._sqlite_path is not None and self._sqlite_file is None:
            stat = os.stat(self._sqlite_path)
            self._sqlite_file = (stat.st_dev, stat.st_ino)
        self._checked = True

    def _missing_columns(self, conn: Connection) -> list[sa.Column[t.Any]]:
        """The columns of the table's definition that the database's table lacks (an older version's)."""
        table = self.defined_table
        present = {c["name"] for c in sa.inspect(conn).get_columns(table.name, schema=table.schema)}
        return [column for column in table.columns if column.name not in present]

    def _add_missing_columns(self, conn: Connection) -> None:
        """Upgrade a table an older version created: add each column of the definition it lacks
        (in the creation's transaction, under its lock, so concurrent workers add each once).
        Columns added after 0.1.0 are nullable; a NOT NULL one could not be added to existing rows."""
        table = self.defined_table
        missing = self._missing_columns(conn)
        for column in missing:
            if not column.nullable:
                raise StoreUnavailable(
                    f"The table {TABLE_NAME!r} lacks the NOT NULL column {column.name!r}, which cannot be "
                    "added to existing rows automatically: add it by hand or drop the table."
                )
            spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            target = conn.dialect.identifier_preparer.format_table(table)
            conn.exec_driver_sql(f"ALTER TABLE {target} ADD COLUMN {spec}")
        added = {column.name for column in missing}
        for index in table.indexes:
            if added.intersection(c.name for c in index.columns):
                index.create(conn, checkfirst=True)

    def _check_sqlite_file(self) -> None:
        """Fail loudly when the SQLite file in use was deleted or replaced (see ``__init__``)."""
        if self._sqlite_file is None or self._sqlite_path is None:
            return
        try:
            stat = os.stat(self._sqlite_path)
            same = (stat.st_dev, stat.st_ino) == self._sqlite_file
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreUnavailable(
                f"The SQLite database file {self._sqlite_path} was deleted or replaced while in use; records "
                "written now would be invisible to the other workers. Restore it, or restart every worker."
            )

    @contextlib.contextmanager
    def transaction(self, *, exclusive: bool = False) -> t.Iterator[Connection]:
        """A transaction; ``exclusive`` serialises it with every other exclusive one, in any OS process."""
        self.ensure_table()
        self._check_sqlite_file()
        try:
            with self._connect() as raw:
                conn = raw
                if exclusive and self.engine.dialect.name == "sqlite":
                    conn = conn.execution_options(procman_begin="IMMEDIATE")
                with conn.begin():
                    if exclusive and self.engine.dialect.name == "sqlite" and not self._begin_hook:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    if exclusive and self.engine.dialect.name == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(TABLE_NAME)})
                    yield conn
        except (OperationalError, ProgrammingError) as exc:
            if self._is_missing_table(exc):
                self._checked = False
                if not self.owns_table:
                    raise TableMissing(
                        f"The table {TABLE_NAME!r} does not exist in the app's database. Create it with "
                        "db.create_all() or a migration (it is part of db.metadata)."
                    ) from exc
            raise StoreUnavailable(
                f"The process database cannot be reached or is locked ({exc.orig.__class__.__name__}); "
                "running processes go on and records catch up when it is back."
            ) from exc

    @contextlib.contextmanager
    def _connect(self) -> t.Iterator[Connection]:
        """A pooled connection; with a timeout, checked and watched until it is given back."""
        if self._watchdog is None or self._timeout is None:
            with self.engine.connect() as conn:
                yield conn
            return
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        for attempt in (1, 2):
            conn = self.engine.connect()  # bounded: pool_timeout, then connect_timeout
            dbapi_conn = conn.connection.dbapi_connection
            assert dbapi_conn is not None
            token = self._watchdog.arm(dbapi_conn.fileno(), self._timeout)
            try:
                try:
                    self.engine.dialect.do_ping(dbapi_conn)
                except dbapi_error as exc:
                    conn.invalidate()  # a connection the server (or the watchdog) closed
                    conn.close()
                    if attempt == 1:
                        continue  # the pool had an old connection: one fresh try
                    raise StoreUnavailable(
                        f"The process database cannot be reached or did not answer within {self._timeout:g} s "
                        f"({exc.__class__.__name__}); running processes go on and records catch up when it is back."
                    ) from exc
                with conn:
                    yield conn
                return
            finally:
                self._watchdog.disarm(token)

    @staticmethod
    def _is_missing_table(exc: SQLAlchemyError) -> bool:
        text = str(getattr(exc, "orig", exc)).lower()
        return "no such table" in text or "does not exist" in text

    # -- reads -----------------------------------------------------------------------------------
    def get(self, process_id: str) -> dict[str, t.Any] | None:
        """The record as a dict, or None."""
        if self._get_stmt is None:  # built once: SQLAlchemy re-builds and re-keys a new select() per call
            self._get_stmt = sa.select(self.table).where(self.table.c.id == sa.bindparam("process_id"))
        with self.transaction() as conn:
            row = conn.execute(self._get_stmt, {"process_id": process_id}).mappings().first()
        return dict(row) if row else None

    def page(self, status: str | t.Sequence[str] | None = None, *, limit: int | None = None,
             offset: int = 0, namespace: str | None = None,
             backend: str | None = None) -> tuple[list[dict[str, t.Any]], int]:
        """Records newest first, and the total count matching ``status`` (and ``namespace``, and
        ``backend``: ``"local"`` for this host's engine)."""
        table = self.table
        where: list[sa.ColumnElement[bool]] = []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(table.c.status.in_(statuses))
        if namespace is not None:
            where.append(table.c.namespace == namespace)
        if backend is not None:
            where.append(same_backend(table, None if backend == "local" else backend))
        query = sa.select(table).where(*where).order_by(table.c.created_at.desc(), table.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.transaction() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
            total = conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        return rows, int(total)

    def count_by_status(self, namespace: str | None = None) -> dict[str, int]:
        """How many records have each status (of ``namespace`` when given)."""
        table = self.table
        where = [table.c.namespace == namespace] if namespace is not None else []
        with self.transaction() as conn:
            rows = conn.execute(
                sa.select(table.c.status, sa.func.count()).where(*where).group_by(table.c.status)
            ).all()
        return {status: int(count) for status, count in rows}

    def active_on_host(self, host: str, namespace: str) -> list[dict[str, t.Any]]:
        """Queued, starting and running records of ``host`` in ``namespace``, oldest first (the
        watcher's periodic view)."""
        table = self.table
        query = (
            sa.select(table.c.id, table.c.status, table.c.owner, table.c.pid, table.c.pid_started,
                      table.c.stop_requested, table.c.handler, table.c.timeout, table.c.started_at,
                      table.c.run_tag, table.c.via_queue, table.c.backend)
            .where(table.c.host == host, table.c.status.in_(ACTIVE), table.c.namespace == namespace)
            .order_by(table.c.created_at, table.c.id)
        )
        with self.transaction() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def pending_handlers(self, host: str, namespace: str) -> list[dict[str, t.Any]]:
        """Final records whose durable handler has not been run to the end."""
        table = self.table
        query = sa.select(table).where(
            table.c.host == host, table.c.status.in_(FINAL), table.c.handler_state == "pending",
            table.c.namespace == namespace,
        )
        with self.transaction() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- the claim: the global cap ---------------------------------------------------------------
    def claim(self, record: dict[str, t.Any], cap: int, queue: bool,
              on_queued: t.Callable[[], None] | None = None,
              on_replace: t.Callable[[], None] | None = None) -> tuple[str | None, bool]:
        """Insert ``record`` as ``starting`` (a slot was free), ``queued``, or not at all (cap reached).

        Returns the status given (or None) and whether a finished record of the same id was
        replaced; a live one raises ``KeyError``. The cap counts the records of ``record["namespace"]``
        (one app) run by ``record["backend"]`` (each backend has its own cap and queue). Queued
        records are first in line: a direct start only gets a slot when
        starting + running + queued < cap. Nothing is spawned here (the start protocol, DESIGN.md):
        the caller spawns after the commit and then sets the pid with :meth:`update`.
        ``on_replace`` runs before the commit when an old record is replaced (its log files go
        before anybody can read them as the new run's), ``on_queued`` so that no manager can
        promote the record before it is ready (its env file written).
        """
        table = self.table
        namespace = record.get("namespace")
        with self.transaction(exclusive=True) as conn:
            existing = conn.execute(sa.select(table.c.status).where(table.c.id == record["id"])).scalar()
            if existing is not None and existing in ACTIVE:
                raise KeyError(record["id"])
            busy = conn.execute(
                sa.select(sa.func.count()).select_from(table)
                .where(table.c.status.in_(ACTIVE), table.c.namespace == namespace,
                       same_backend(table, record.get("backend")))
            ).scalar_one()
            if int(busy) < cap:
                status = "starting"
            elif queue:
                status = "queued"
            else:
                return None, False
            if existing is not None:
                conn.execute(sa.delete(table).where(table.c.id == record["id"]))
                if on_replace is not None:
                    on_replace()
            values = {**record, "status": status, "replaced": existing is not None,
                      "via_queue": status == "queued"}
            if status == "queued" and on_queued is not None:
                on_queued()
            conn.execute(table.insert(), values)  # executemany-style: no per-call statement building
            return status, existing is not None

    def promote(self, host: str, cap: int, owner: str, namespace: str,
                backend: str | None = None) -> list[dict[str, t.Any]]:
        """Move the oldest queued records of ``host`` in ``namespace`` run by ``backend`` to ``starting``
        under ``owner``, as many as that backend's free slots allow; returns the records this call won
        (each UPDATE is checked)."""
        table = self.table
        with self.transaction(exclusive=True) as conn:
            holding = conn.execute(
                sa.select(sa.func.count()).select_from(table)
                .where(table.c.status.in_(HOLDING), table.c.namespace == namespace,
                       same_backend(table, backend))
            ).scalar_one()
            free = cap - int(holding)
            if free <= 0:
                return []
            rows = [
                dict(r) for r in conn.execute(
                    sa.select(table).where(table.c.status == "queued", table.c.host == host,
                                           table.c.namespace == namespace, same_backend(table, backend))
                    .order_by(table.c.created_at, table.c.id).limit(free)
                ).mappings()
            ]
            won = []
            for row in rows:
                result = conn.execute(
                    sa.update(table).where(table.c.id == row["id"], table.c.status == "queued")
                    .values(status="starting", owner=owner)
                )
                if result.rowcount == 1:
                    won.append({**row, "status": "starting", "owner": owner})
            return won

    # -- writes ----------------------------------------------------------------------------------
    def update(self, process_id: str, *, expect_status: t.Sequence[str] | None = None,
               expect_owner: str | None = None, expect_no_stop: bool = False, **values: t.Any) -> bool:
        """Update one record; with ``expect_*`` only if it is still in that state (a compare-and-set;
        ``expect_no_stop``: nobody asked to stop it). True when the record was changed."""
        table = self.table
        where = [table.c.id == process_id]
        if expect_status is not None:
            where.append(table.c.status.in_(list(expect_status)))
        if expect_owner is not None:
            where.append(table.c.owner == expect_owner)
        if expect_no_stop:
            where.append(table.c.stop_requested.is_(None))
        with self.transaction() as conn:
            result = conn.execute(sa.update(table).where(*where).values(**values))
        return result.rowcount == 1

    def delete(self, process_id: str, *, only_final: bool = True) -> bool:
        """Delete a record (by default only a final one)."""
        table = self.table
        where = [table.c.id == process_id]
        if only_final:
            where.append(table.c.status.in_(FINAL))
        with self.transaction() as conn:
            return conn.execute(sa.delete(table).where(*where)).rowcount == 1

    def expired(self, before: dt.datetime) -> list[str]:
        """Ids of final records finished before ``before``."""
        table = self.table
        with self.transaction() as conn:
            return list(conn.execute(
                sa.select(table.c.id).where(table.c.status.in_(FINAL), table.c.finished_at < before)
            ).scalars())
