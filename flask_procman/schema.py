"""The records table: its columns, its statuses, and its timestamps as aware UTC on every database."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

TABLE_NAME = "procman_processes"

#: Statuses of a process that has not ended yet. ``starting``: a slot is claimed and its owner is
#: spawning it (the start protocol, DESIGN.md): it counts against the cap like ``running``.
ACTIVE = ("queued", "starting", "running")
#: Statuses that hold a slot of the cap.
HOLDING = ("starting", "running")
#: Statuses of a process that has ended; a record never leaves them.
FINAL = ("completed", "stopped", "timed_out", "failed", "lost")
STATUSES = ACTIVE + FINAL


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite stores them naive).

    Only the store's queries use it (see :func:`with_utc_times`): the table in an app's metadata
    has plain ``DateTime(timezone=True)`` columns, so a migration Alembic generates from it needs
    nothing from this package.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def make_table(metadata: sa.MetaData) -> sa.Table:
    """Define the ``procman_processes`` table in ``metadata`` (the app's own when it gives a ``db``)."""
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("cmd", sa.JSON, nullable=False),
        sa.Column("cwd", sa.Text),
        sa.Column("env_keys", sa.JSON),  # names only: values hold secrets and are never stored
        sa.Column("program", sa.String(128)),
        sa.Column("handler", sa.String(128)),
        sa.Column("meta", sa.JSON),
        sa.Column("merge_stderr", sa.Boolean, nullable=False, default=False),
        sa.Column("timeout", sa.Float),
        sa.Column("return_code", sa.Integer),
        sa.Column("pid", sa.Integer),
        sa.Column("pid_started", sa.Float),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("stop_requested", sa.String(16)),
        sa.Column("error", sa.Text),
        sa.Column("survivors", sa.JSON),
        sa.Column("handler_state", sa.String(16)),
        sa.Column("run_tag", sa.String(64)),  # PROCMAN_RUN_TAG of the run (engine/runtag.py)
        sa.Column("output_options", sa.JSON),  # progress mode, log cap (engine/outputopts.py)
        sa.Column("namespace", sa.String(64), index=True),  # the app the record belongs to (shared tables)
        sa.Column("via_queue", sa.Boolean),  # it waited in the queue: an unfinished promotion goes back there
        sa.Column("replaced", sa.Boolean),  # its start replaced the finished record of an earlier run
        sa.Column("backend", sa.String(64)),  # the engine that runs it (PROCMAN_BACKENDS); NULL: local
        sa.Column("resources", sa.JSON),  # what it asked of that engine ({"cpus": 1, "evalbox": 1})
    )


def with_utc_times(table: sa.Table) -> sa.Table:
    """``table`` again, for queries only (DDL uses ``table``), whose timestamps are written and read
    as aware UTC on every database."""
    copy = sa.Table(table.name, sa.MetaData(), schema=table.schema)
    for column in table.columns:
        kind = UTCDateTime() if isinstance(column.type, sa.DateTime) else column.type
        default = column.default.arg if isinstance(column.default, sa.ColumnDefault) else None
        copy.append_column(sa.Column(column.name, kind, default=default, primary_key=column.primary_key,
                                     nullable=column.nullable))
    return copy
