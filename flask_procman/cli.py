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
import typing as t

import click
from flask.cli import AppGroup

from . import errors
from .cli_output import binary_stream, copy_output, field_text, follow_and_exit, report_start, status_or_fail, tail_start
from .facade import manager_for
from .store import FINAL, STATUSES

if t.TYPE_CHECKING:
    from .manager import Manager

procman_cli = AppGroup("procman", help="Inspect and control the processes of this app (any worker's).")

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

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



def _echo_json(data: t.Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


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
        (p["id"], p["status"], field_text(p["pid"]), _local_time(p["started_at"]), _duration(p["duration"]),
         field_text(p["return_code"]), _progress(p.get("progress")), _shorten(_command_line(p["cmd"]), _CMD_WIDTH))
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
    status = status_or_fail(manager, process_id)
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
        click.echo(f"{name + ':':<13} {field_text(value)}")


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
    status = status_or_fail(manager, process_id)
    stream = "stderr" if use_stderr else "stdout"
    if use_stderr and status["merge_stderr"]:
        raise click.ClickException(f"Process {process_id!r} merges stderr into stdout: its stderr is in its stdout log.")
    size = status[f"{stream}_size"]
    dropped = status.get(f"{stream}_dropped") or 0
    start = 0 if lines is None else tail_start(manager, process_id, stream, size, lines, dropped)
    if dropped and start <= dropped:  # the output shown begins where the head was dropped
        click.echo(f"procman: the first {dropped} bytes of {stream} were dropped (max_log_bytes); "
                   f"printing from byte {dropped}.", err=True)
    out = binary_stream("stdout")
    if follow:
        follow_and_exit(manager, process_id, [(stream, start, out)])
    copy_output(manager, process_id, stream, start, out, end=size)


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
    before = status_or_fail(manager, process_id)
    if before["status"] in FINAL:
        raise click.ClickException(f"Process {process_id!r} had already ended ({before['status']}).")
    stopped = manager.stop_process(process_id, timeout)
    after = status_or_fail(manager, process_id)
    if not stopped:
        if after["status"] in FINAL:
            raise click.ClickException(f"Process {process_id!r} had already ended ({after['status']}).")
        raise click.ClickException(f"Process {process_id!r} is still {after['status']}: it could not be stopped.")
    survivors = f"; still alive after SIGKILL: {after['survivors']}" if after["survivors"] else ""
    click.echo(f"Stopped {process_id} ({after['status']}, return code {field_text(after['return_code'])}){survivors}.",
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
@click.option("--backend", default=None, metavar="NAME",
              help="Where it runs: 'local' (default) or a PROCMAN_BACKENDS name (a Ray cluster).")
@_wait_option
@_cli_errors
def start_command(process_id: str, cmd: tuple[str, ...], cwd: str | None, env: dict[str, str],
                  timeout: float | None, queue: bool, merge_stderr: bool, progress: str | None,
                  max_log_bytes: int | None, max_log_action: str | None, backend: str | None, wait: bool) -> None:
    """Start a command as process PROCESS_ID: start ID -- CMD ARGS...

    Without --wait it keeps running after this command ends and the web workers record its end;
    the id is printed on stdout.
    """
    manager = _manager()
    ok = manager.start_process(process_id, list(cmd), cwd, env or None, timeout=timeout, queue=queue,
                               merge_stderr=merge_stderr, progress=progress, max_log_bytes=max_log_bytes,
                               max_log_action=max_log_action, backend=backend)
    report_start(manager, process_id, ok, wait)


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
    report_start(manager, process_id, ok, wait)
