"""What the ``flask procman`` commands write of a process: its logs copied, tailed and followed to
the terminal, how a start went, and the exit code of a process waited for."""

from __future__ import annotations

import sys
import time
import typing as t

import click

from .engine.identity import owner_alive, record_identity
from .engine.local import Identity
from .store import FINAL

if t.TYPE_CHECKING:
    from .manager import Manager

#: Bytes read per step when copying a log to stdout.
_CHUNK = 1024 * 1024
#: Bytes read per step when searching a log backwards for the start of its last lines.
TAIL_BLOCK = 64 * 1024
#: Seconds between two looks at the log files and the record while following a process.
_FOLLOW_INTERVAL = 0.1


def status_or_fail(manager: Manager, process_id: str) -> dict[str, t.Any]:
    """The status dict of a process; exit 1 when there is no such process."""
    status = manager.get_process_status(process_id)
    if status is None:
        raise click.ClickException(f"No process with id {process_id!r}.")
    return status


def exit_code(status: str, return_code: int | None) -> int:
    """The CLI's exit code for a process that ended: its return code, 128+N for signal N,
    1 when it has none (``failed``, ``lost``)."""
    if return_code is None:
        return 0 if status == "completed" else 1
    if return_code < 0:
        return 128 - return_code
    return return_code if return_code <= 255 else 1


def field_text(value: t.Any) -> str:
    """A status field for the human output ("-" for None)."""
    return "-" if value is None else str(value)


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


def binary_stream(name: str) -> t.BinaryIO:
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


def copy_output(manager: Manager, process_id: str, stream: str, offset: int, out: t.BinaryIO,
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


def tail_start(manager: Manager, process_id: str, stream: str, size: int, lines: int, floor: int = 0) -> int:
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
        start = max(floor, pos - TAIL_BLOCK)
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


def follow(manager: Manager, process_id: str, outputs: t.Sequence[tuple[str, int, t.BinaryIO]]) -> tuple[str, int | None]:
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
            offsets[stream] = copy_output(manager, process_id, stream, offsets[stream], out)
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
                           f"worker running?); its exit status is {field_text(code)}.", err=True)
                return ("completed" if code is not None else "lost"), code
        else:
            dead_since = None
        time.sleep(_FOLLOW_INTERVAL)


def follow_and_exit(manager: Manager, process_id: str, outputs: t.Sequence[tuple[str, int, t.BinaryIO]]) -> t.NoReturn:
    """Follow the process to its end (see :func:`follow`), then exit with its exit code.

    Ctrl-C stops following only: the process keeps running.
    """
    ctx = click.get_current_context()
    try:
        status, return_code = follow(manager, process_id, outputs)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted: {process_id} keeps running (flask procman stop {process_id} stops it).", err=True)
        ctx.exit(130)
    code = exit_code(status, return_code)
    if status != "completed" or code != 0:
        row = manager.store.get(process_id)
        error = row["error"] if row is not None and status in ("failed", "lost") else None
        detail = f": {error}" if error else ""
        click.echo(f"procman: {process_id} {status}, return code {field_text(return_code)}{detail}", err=True)
    ctx.exit(code)


def report_start(manager: Manager, process_id: str, ok: bool, wait: bool) -> None:
    """Report a start (or exit 1 when the cap refused it); with ``wait``, follow it to its end."""
    if not ok:
        raise click.ClickException(
            f"Not started: {manager.settings.max_processes} processes are running or queued "
            "(PROCMAN_MAX_PROCESSES). Use --queue to queue it, or try again later."
        )
    status = status_or_fail(manager, process_id)
    if status.get("replaced"):
        click.echo(f"{process_id} was the id of a finished process: its record and logs were replaced.", err=True)
    if status["status"] == "queued":
        click.echo(f"Queued {process_id}: a web worker starts it when a slot frees up.", err=True)
    elif status["status"] == "running":
        click.echo(f"Started {process_id} (pid {status['pid']}).", err=True)
    if not wait:
        click.echo(process_id)
        return
    outputs = [("stdout", 0, binary_stream("stdout"))]
    if not status["merge_stderr"]:
        outputs.append(("stderr", 0, binary_stream("stderr")))
    follow_and_exit(manager, process_id, outputs)
