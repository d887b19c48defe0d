"""The ``flask procman`` command group.

The commands run in their own OS process against the app's database and log folder, so an
operator sees and controls every process of the app, whichever web worker started it. The
manager of a CLI process runs in *CLI mode* (its engine starts inside a click context): it never
adopts the web workers' processes, never promotes queued ones and never stops anything at exit.
A process started here without ``--wait`` keeps running after the command ends; the web workers
see it and record its end.

Exit codes: 0 success, 1 the command asked for failed, 2 usage error; messages go to stderr.
With ``--wait`` (and ``logs --follow``) the exit code is the process's: its return code, 128+N
when signal N ended it, 1 when it ended without one (``failed``, ``lost``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import shlex
import sys
import time
import typing as t

import click
from flask.cli import AppGroup

from . import errors
from .engine.identity import owner_alive, record_identity
from .engine.local import Identity
from .facade import manager_for
from .store import FINAL, STATUSES

if t.TYPE_CHECKING:
    from .manager import Manager

procman_cli = AppGroup("procman", help="Inspect and control the processes of this app (any worker's).")

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

#: Bytes read per step when copying a log to stdout.
_CHUNK = 1024 * 1024
#: Bytes read per step when searching a log backwards for the start of its last lines.
_TAIL_BLOCK = 64 * 1024
#: Seconds between two looks at the log files and the record while following a process.
_FOLLOW_INTERVAL = 0.1
#: Width of the command column of ``list``.
_CMD_WIDTH = 60
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


# ==================================================================== helpers =====================
def _cli_errors(fn: F) -> F:
    """Turn the library's errors into ``ClickException`` (exit 1, the message on stderr)."""

    @functools.wraps(fn)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            return fn(*args, **kwargs)
        except errors.ProcManError as exc:
            raise click.ClickException(str(exc)) from exc

    return t.cast(F, wrapper)


def _manager() -> Manager:
    """The manager of the app the command runs for."""
    return manager_for()


def _parse_env(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``--env KEY=VALUE`` (repeatable) as a dict; a malformed item is a usage error."""
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE.", ctx=ctx, param=param)
        env[key] = value
    return env


def _status_or_fail(manager: Manager, process_id: str) -> dict[str, t.Any]:
    """The status dict of a process; exit 1 when there is no such process."""
    status = manager.get_process_status(process_id)
    if status is None:
        raise click.ClickException(f"No process with id {process_id!r}.")
    return status


def _exit_code(status: str, return_code: int | None) -> int:
    """The CLI's exit code for a process that ended: its return code, 128+N for signal N,
    1 when it has none (``failed``, ``lost``)."""
    if return_code is None:
        return 0 if status == "completed" else 1
    if return_code < 0:
        return 128 - return_code
    return return_code if return_code <= 255 else 1


def _local_time(value: dt.datetime | None) -> str:
    """A timestamp in local time, to the second, with the zone's name: ``2026-01-02 15:04:05 CET``
    (its UTC offset where the zone has no name; "-" for none)."""
    if value is None:
        return "-"
    local = value.astimezone()
    zone = local.strftime("%Z") or local.isoformat()[-6:]  # empty for an unknown TZ (TZ=:/no/such/file)
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}"


def _duration(seconds: float | None) -> str:
    """A short human duration: ``4.2s``, ``3m07s``, ``2h05m``, ``1d03h`` ("-" for none)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _progress(progress: t.Mapping[str, t.Any] | None) -> str:
    """A progress report in a few characters: ``60/200 30% eta 12s`` ("-" for none)."""
    if not progress:
        return "-"
    text = _number(progress["done"])
    if progress["total"] is not None:
        text += f"/{_number(progress['total'])}"
    if progress["fraction"] is not None:
        text += f" {progress['fraction'] * 100:.0f}%"
    if progress["eta_seconds"]:
        text += f" eta {_duration(progress['eta_seconds'])}"
    return text


def _command_line(cmd: t.Sequence[str]) -> str:
    """A command as one shell-quoted line, control characters (newlines...) escaped."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], shlex.join(cmd))


def _shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _value(value: t.Any) -> str:
    """A status field for the human output ("-" for None)."""
    return "-" if value is None else str(value)


def _echo_json(data: t.Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


class _TextSink:
    """Bytes written to a text stream that has no binary buffer (decoded, invalid bytes replaced)."""

    def __init__(self, stream: t.TextIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        """Write ``data`` decoded as UTF-8."""
        self._stream.write(data.decode("utf-8", errors="replace"))
        return len(data)

    def flush(self) -> None:
        """Flush the text stream."""
        self._stream.flush()


def _binary_stream(name: str) -> t.BinaryIO:
    """The binary layer of ``sys.stdout`` or ``sys.stderr`` (after flushing its text layer, so
    that the raw log bytes come after what was echoed before)."""
    stream = sys.stdout if name == "stdout" else sys.stderr
    stream.flush()
    buffer = getattr(stream, "buffer", None)
    return t.cast(t.BinaryIO, buffer if buffer is not None else _TextSink(stream))


def _write(out: t.BinaryIO, data: bytes) -> None:
    """Write raw log bytes and flush, so that a follower sees them at once."""
    if data:
        out.write(data)
        out.flush()


def _copy(manager: Manager, process_id: str, stream: str, offset: int, out: t.BinaryIO,
          end: int | None = None) -> int:
    """Copy ``stream`` from ``offset`` (up to ``end``, or to what is there now) to ``out``,
    one chunk at a time; returns the offset reached."""
    while end is None or offset < end:
        limit = _CHUNK if end is None else min(_CHUNK, end - offset)
        data, offset = manager.read_output(process_id, stream, offset, limit)
        if not data:
            break
        _write(out, data)
    return offset


def _tail_start(manager: Manager, process_id: str, stream: str, size: int, lines: int, floor: int = 0) -> int:
    """The byte offset where the last ``lines`` lines of the first ``size`` bytes begin.

    The log is read backwards from ``size`` one block at a time, only as far as needed; a newline
    that ends the file ends the last line rather than starting an empty one. ``floor`` is the
    first byte still kept (a capped log's dropped head).
    """
    if lines <= 0:
        return size
    found = 0
    pos = size
    while pos > floor:
        start = max(floor, pos - _TAIL_BLOCK)
        data, _ = manager.read_output(process_id, stream, start, pos - start)
        if len(data) < pos - start:  # the file shrank (recreated): show what is there
            return 0
        index = len(data)
        while True:
            index = data.rfind(b"\n", 0, index)
            if index < 0:
                break
            if start + index != size - 1:
                found += 1
                if found == lines:
                    return start + index + 1
        pos = start
    return floor


def _follow(manager: Manager, process_id: str, outputs: t.Sequence[tuple[str, int, t.BinaryIO]]) -> tuple[str, int | None]:
    """Stream the logs ``(stream, offset, out)`` until the process has ended; its final
    ``(status, return_code)``.

    When the process has died but nobody records its end (its manager is gone and no web worker
    adopts it), the exit status its wrapper left is used after a grace period; nothing is recorded.
    """
    offsets = {stream: offset for stream, offset, _out in outputs}
    grace = 2.0 + 3 * manager.settings.poll_interval
    dead_since: float | None = None
    while True:
        row = manager.store.get(process_id)
        if row is None:
            raise click.ClickException(f"Process {process_id!r} was removed while it was followed.")
        for stream, _offset, out in outputs:
            offsets[stream] = _copy(manager, process_id, stream, offsets[stream], out)
        if row["status"] in FINAL:  # its output was complete before its end was recorded
            return row["status"], row["return_code"]
        if (row["status"] == "running" and row["pid"] is not None and row["host"] == manager.host
                and not (record_identity(row) or Identity(row["pid"], 0.0)).is_alive()
                and not owner_alive(row["owner"] or "")):
            if dead_since is None:
                dead_since = time.monotonic()
            elif time.monotonic() - dead_since > grace:
                code = manager.read_exit_status(process_id)
                click.echo(f"procman: {process_id} has ended but no manager recorded its end (is a web "
                           f"worker running?); its exit status is {_value(code)}.", err=True)
                return ("completed" if code is not None else "lost"), code
        else:
            dead_since = None
        time.sleep(_FOLLOW_INTERVAL)


def _follow_and_exit(manager: Manager, process_id: str, outputs: t.Sequence[tuple[str, int, t.BinaryIO]]) -> t.NoReturn:
    """Follow the process to its end (see :func:`_follow`), then exit with its exit code.

    Ctrl-C stops following only: the process keeps running.
    """
    ctx = click.get_current_context()
    try:
        status, return_code = _follow(manager, process_id, outputs)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted: {process_id} keeps running (flask procman stop {process_id} stops it).", err=True)
        ctx.exit(130)
    code = _exit_code(status, return_code)
    if status != "completed" or code != 0:
        row = manager.store.get(process_id)
        error = row["error"] if row is not None and status in ("failed", "lost") else None
        detail = f": {error}" if error else ""
        click.echo(f"procman: {process_id} {status}, return code {_value(return_code)}{detail}", err=True)
    ctx.exit(code)


def _started(manager: Manager, process_id: str, ok: bool, wait: bool) -> None:
    """Report a start (or exit 1 when the cap refused it); with ``wait``, follow it to its end."""
    if not ok:
        raise click.ClickException(
            f"Not started: {manager.settings.max_processes} processes are running or queued "
            "(PROCMAN_MAX_PROCESSES). Use --queue to queue it, or try again later."
        )
    status = _status_or_fail(manager, process_id)
    if status.get("replaced"):
        click.echo(f"{process_id} was the id of a finished process: its record and logs were replaced.", err=True)
    if status["status"] == "queued":
        click.echo(f"Queued {process_id}: a web worker starts it when a slot frees up.", err=True)
    elif status["status"] == "running":
        click.echo(f"Started {process_id} (pid {status['pid']}).", err=True)
    if not wait:
        click.echo(process_id)
        return
    outputs = [("stdout", 0, _binary_stream("stdout"))]
    if not status["merge_stderr"]:
        outputs.append(("stderr", 0, _binary_stream("stderr")))
    _follow_and_exit(manager, process_id, outputs)


# ==================================================================== reading =====================
@procman_cli.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only processes with this status (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of status dicts.")
@_cli_errors
def list_command(statuses: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """List the processes, newest first."""
    manager = _manager()
    processes = manager.list_processes(list(statuses) or None, limit=limit)
    if as_json:
        _echo_json([manager.status_to_json(p) for p in processes])
        return
    if not processes:
        click.echo("No processes.", err=True)
        return
    header = ("ID", "STATUS", "PID", "STARTED", "DURATION", "RC", "PROGRESS", "COMMAND")
    rows = [
        (p["id"], p["status"], _value(p["pid"]), _local_time(p["started_at"]), _duration(p["duration"]),
         _value(p["return_code"]), _progress(p.get("progress")), _shorten(_command_line(p["cmd"]), _CMD_WIDTH))
        for p in processes
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]  # the last column is not padded
        click.echo("  ".join([*cells, row[-1]]))


@procman_cli.command("status")
@click.argument("process_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status dict as JSON (with output tails).")
@_cli_errors
def status_command(process_id: str, as_json: bool) -> None:
    """Show one process's status."""
    manager = _manager()
    status = _status_or_fail(manager, process_id)
    if as_json:
        _echo_json(manager.status_to_json(status))
        return
    fields = [
        ("id", status["id"]), ("status", status["status"]), ("return code", status["return_code"]),
        ("pid", status["pid"]), ("command", _command_line(status["cmd"])), ("cwd", status["cwd"]),
        ("program", status["program"]), ("handler", status["handler"]),
        ("created", _local_time(status["created_at"])), ("started", _local_time(status["started_at"])),
        ("finished", _local_time(status["finished_at"])), ("duration", _duration(status["duration"])),
        ("timeout", status["timeout"]), ("env keys", ", ".join(status["env_keys"]) or None),
        ("progress", _progress(status.get("progress"))),
        ("stdout", f"{status['stdout_size']} bytes"),
        ("stderr", "merged into stdout" if status["merge_stderr"] else f"{status['stderr_size']} bytes"),
        ("metadata", json.dumps(status["metadata"]) if status["metadata"] is not None else None),
        ("survivors", ", ".join(map(str, status["survivors"])) or None),
        ("error", status["error"]),
    ]
    for name, value in fields:
        click.echo(f"{name + ':':<13} {_value(value)}")


@procman_cli.command("logs")
@click.argument("process_id")
@click.option("--stderr", "use_stderr", is_flag=True, help="The stderr log instead of stdout.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing until the process ends, then exit with its return code.")
@click.option("--tail", "-n", "lines", type=click.IntRange(min=0), default=None, metavar="N",
              help="Only the last N lines (read from the end of the file).")
@_cli_errors
def logs_command(process_id: str, use_stderr: bool, follow: bool, lines: int | None) -> None:
    """Print a process's stdout (or stderr) log, as raw bytes."""
    manager = _manager()
    status = _status_or_fail(manager, process_id)
    stream = "stderr" if use_stderr else "stdout"
    if use_stderr and status["merge_stderr"]:
        raise click.ClickException(f"Process {process_id!r} merges stderr into stdout: its stderr is in its stdout log.")
    size = status[f"{stream}_size"]
    dropped = status.get(f"{stream}_dropped") or 0
    start = 0 if lines is None else _tail_start(manager, process_id, stream, size, lines, dropped)
    if dropped and start <= dropped:  # the output shown begins where the head was dropped
        click.echo(f"procman: the first {dropped} bytes of {stream} were dropped (max_log_bytes); "
                   f"printing from byte {dropped}.", err=True)
    out = _binary_stream("stdout")
    if follow:
        _follow_and_exit(manager, process_id, [(stream, start, out)])
    _copy(manager, process_id, stream, start, out, end=size)


@procman_cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@_cli_errors
def stats_command(as_json: bool) -> None:
    """Count the processes by status; say when a worker's watcher is not running."""
    manager = _manager()
    stats = manager.stats()
    stale = manager.watcher_health()["stale_watchers"]
    if as_json:
        _echo_json({**stats, "stale_watchers": stale})
        return
    click.echo(f"running:       {stats['running']} / {stats['max_processes']}")
    click.echo(f"queued:        {stats['queued']}")
    for status in FINAL:
        click.echo(f"{status + ':':<14} {stats['by_status'].get(status, 0)}")
    for beat in stale:  # a live worker whose watcher no longer loops: its ends go unrecorded
        click.echo(f"watcher NOT RUNNING in {beat['owner']} (no heartbeat for "
                   f"{beat['seconds_since_heartbeat']:.0f} s)", err=True)


@procman_cli.command("programs")
@click.option("--json", "as_json", is_flag=True, help="Print the programs as JSON.")
@_cli_errors
def programs_command(as_json: bool) -> None:
    """List the declared programs (the commands that run may start)."""
    programs = [p.describe() for p in _manager().programs().values()]
    if as_json:
        _echo_json(programs)
        return
    if not programs:
        click.echo("No programs are declared (PROCMAN_PROGRAMS or register_program).", err=True)
    for program in programs:
        notes = ["accepts args"] if program["allow_args"] else []
        if program["env_keys"]:
            notes.append("env: " + ", ".join(program["env_keys"]))
        if program["timeout"]:
            notes.append(f"timeout {program['timeout']:g}s")
        suffix = f"  [{'; '.join(notes)}]" if notes else ""
        click.echo(f"{program['name']}: {_command_line(program['cmd'])}{suffix}")


# ==================================================================== controlling =================
@procman_cli.command("stop")
@click.argument("process_id")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds between SIGTERM and SIGKILL (default PROCMAN_STOP_TIMEOUT).")
@_cli_errors
def stop_command(process_id: str, timeout: float | None) -> None:
    """Stop a running or queued process and its whole tree (exit 1 if it had already ended)."""
    manager = _manager()
    before = _status_or_fail(manager, process_id)
    if before["status"] in FINAL:
        raise click.ClickException(f"Process {process_id!r} had already ended ({before['status']}).")
    stopped = manager.stop_process(process_id, timeout)
    after = _status_or_fail(manager, process_id)
    if not stopped:
        if after["status"] in FINAL:
            raise click.ClickException(f"Process {process_id!r} had already ended ({after['status']}).")
        raise click.ClickException(f"Process {process_id!r} is still {after['status']}: it could not be stopped.")
    survivors = f"; still alive after SIGKILL: {after['survivors']}" if after["survivors"] else ""
    click.echo(f"Stopped {process_id} ({after['status']}, return code {_value(after['return_code'])}){survivors}.",
               err=True)


@procman_cli.command("remove")
@click.argument("process_id")
@_cli_errors
def remove_command(process_id: str) -> None:
    """Delete a finished process's record and log files."""
    if not _manager().remove_process(process_id):
        raise click.ClickException(f"No process with id {process_id!r}.")
    click.echo(f"Removed {process_id}.", err=True)


@procman_cli.command("prune")
@_cli_errors
def prune_command() -> None:
    """Delete the finished processes older than PROCMAN_RETENTION (records and logs)."""
    manager = _manager()
    if manager.settings.retention is None:
        click.echo("PROCMAN_RETENTION is None: finished processes are kept forever; nothing pruned.", err=True)
        return
    removed = manager.prune()
    click.echo(f"Removed {removed} finished process{'es' if removed != 1 else ''}.", err=True)


_wait_option = click.option(
    "--wait", is_flag=True,
    help="Stay until it ends, streaming its output, and exit with its return code (128+N for signal N).")
_queue_option = click.option("--queue", is_flag=True, help="When the cap is reached, queue it instead of failing.")
_env_option = click.option("--env", "env", multiple=True, callback=_parse_env, metavar="KEY=VALUE",
                           help="An environment variable for the process (repeatable).")


@procman_cli.command("start")
@click.argument("process_id")
@click.argument("cmd", nargs=-1, required=True)
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), default=None, help="Working directory.")
@_env_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds after which it is stopped (timed_out).")
@_queue_option
@click.option("--merge-stderr", is_flag=True, help="Write stderr into the stdout log, in order.")
@click.option("--progress", type=click.Choice(["file", "tqdm"]), default=None,
              help="Where its progress is read: PROCMAN_PROGRESS_FILE (default) or tqdm's bar on stderr.")
@click.option("--max-log-bytes", type=click.IntRange(min=16 * 1024), default=None, metavar="N",
              help="Bytes each of its logs may hold (default PROCMAN_MAX_LOG_BYTES).")
@click.option("--max-log-action", type=click.Choice(["truncate", "stop"]), default=None,
              help="At the cap: drop the oldest bytes, or stop it (default PROCMAN_MAX_LOG_ACTION).")
@_wait_option
@_cli_errors
def start_command(process_id: str, cmd: tuple[str, ...], cwd: str | None, env: dict[str, str],
                  timeout: float | None, queue: bool, merge_stderr: bool, progress: str | None,
                  max_log_bytes: int | None, max_log_action: str | None, wait: bool) -> None:
    """Start a command as process PROCESS_ID: start ID -- CMD ARGS...

    Without --wait it keeps running after this command ends and the web workers record its end;
    the id is printed on stdout.
    """
    manager = _manager()
    ok = manager.start_process(process_id, list(cmd), cwd, env or None, timeout=timeout, queue=queue,
                               merge_stderr=merge_stderr, progress=progress, max_log_bytes=max_log_bytes,
                               max_log_action=max_log_action)
    _started(manager, process_id, ok, wait)


@procman_cli.command("run")
@click.argument("program")
@click.argument("args", nargs=-1)
@click.option("--id", "process_id", default=None, help="The process id (default PROGRAM-<random>).")
@_env_option
@_queue_option
@_wait_option
@_cli_errors
def run_command(program: str, args: tuple[str, ...], process_id: str | None, env: dict[str, str],
                queue: bool, wait: bool) -> None:
    """Start a declared program: run PROGRAM [-- ARGS...] (see programs).

    Without --wait the process id is printed on stdout.
    """
    manager = _manager()
    process_id, ok = manager.start_program(program, process_id=process_id, args=list(args), env=env or None,
                                           queue=queue)
    _started(manager, process_id, ok, wait)
