"""The per-process folder on disk: stdout/stderr log files, the exit-status file, queued env."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import typing as t

from . import timeindex
from .logcap import data_start
from .wrapper import parse_exit_status

#: Process ids become folder names, so they are restricted to this shape.
PROCESS_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

STREAMS = ("stdout", "stderr")

_RC_FILE = "exit_status"
_ENV_FILE = "env.json"


def is_valid_process_id(process_id: object) -> bool:
    """True when ``process_id`` can be used as an id (and therefore as a file name)."""
    return isinstance(process_id, str) and PROCESS_ID_RE.fullmatch(process_id) is not None


def decode_output(data: bytes) -> str:
    """Decode log bytes as UTF-8, replacing invalid bytes; never raises."""
    return data.decode("utf-8", errors="replace")


def _skip_partial_char(data: bytes) -> bytes:
    """Drop UTF-8 continuation bytes at the start of a tail cut from the middle of a file."""
    cut = 0
    while cut < min(3, len(data)) and 0x80 <= data[cut] < 0xC0:
        cut += 1
    return data[cut:]


class LogFiles:
    """The files of one process under ``<log_dir>/<process_id>/``.

    The child's stdout and stderr *are* these files: the manager copies nothing, and reads are
    by byte offset so that any number of readers, in any worker, each see everything.
    """

    def __init__(self, log_dir: str, process_id: str) -> None:
        if not is_valid_process_id(process_id):  # defence in depth: never build a path from a bad id
            raise ValueError(f"invalid process id {process_id!r}")
        self.process_id = process_id
        self.folder = os.path.join(log_dir, process_id)
        #: Called by :meth:`create` once the fresh folder exists, before the child does (it writes
        #: the run's ``output.json``, so no manager ever follows the run without it).
        self.after_create: t.Callable[[], None] | None = None

    # -- paths -----------------------------------------------------------------------------------
    def path(self, stream: str) -> str:
        """Path of the log of ``stream`` ("stdout" or "stderr")."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        return os.path.join(self.folder, stream + ".log")

    @property
    def exit_status_path(self) -> str:
        """File the wrapper writes the child's exit status into (``code N`` or ``signal N``)."""
        return os.path.join(self.folder, _RC_FILE)

    @property
    def progress_path(self) -> str:
        """The file a child reports its progress into (``PROCMAN_PROGRESS_FILE``)."""
        return os.path.join(self.folder, "progress")

    # -- lifecycle -------------------------------------------------------------------------------
    def create(self, merge_stderr: bool) -> tuple[int, int]:
        """Make a fresh folder and open the log files for the child; returns (stdout_fd, stderr_fd).

        With ``merge_stderr`` both fds are the same file, so the true order of the writes is kept.
        """
        # An earlier run's files were removed when the record was claimed; a promoted start's env
        # file stays until its pid is committed (the start protocol): truncate, do not remove.
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        try:
            os.unlink(self.exit_status_path)
        except FileNotFoundError:
            pass
        if self.after_create is not None:
            self.after_create()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        out_fd = os.open(self.path("stdout"), flags, 0o600)
        if merge_stderr:
            self._start_index("stdout")
            return out_fd, out_fd
        try:
            err_fd = os.open(self.path("stderr"), flags, 0o600)
        except BaseException:
            os.close(out_fd)
            raise
        self._start_index("stdout")
        self._start_index("stderr")
        return out_fd, err_fd

    def _start_index(self, stream: str) -> None:
        """The time index's first entry, before the child exists: every byte comes after it."""
        try:
            timeindex.append(self.path(stream), (0, time.time()), 0)
        except OSError:  # the index is a nicety: a start never fails for it
            pass

    def remove(self) -> None:
        """Delete the folder and everything in it (missing is fine)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------------
    def size(self, stream: str) -> int:
        """Bytes written so far to ``stream`` (0 when there is no file)."""
        try:
            return os.stat(self.path(stream)).st_size
        except FileNotFoundError:
            return 0

    def read(self, stream: str, offset: int, limit: int) -> tuple[bytes, int]:
        """Up to ``limit`` bytes from ``offset``; returns (data, next_offset). Never destructive.

        Below the first byte still kept (a capped log's dropped head) it reads from that byte.
        """
        data, _start, next_offset = self.read_at(stream, offset, limit)
        return data, next_offset

    def read_at(self, stream: str, offset: int, limit: int) -> tuple[bytes, int, int]:
        """Like :meth:`read`, with the offset the data really starts at: ``(data, start, next_offset)``;
        ``start > offset`` when the bytes from ``offset`` were dropped (``max_log_bytes``)."""
        try:
            with open(self.path(stream), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset >= size:  # nothing there; seek() past the fs limit is EINVAL
                    return b"", offset, offset
                offset = max(offset, data_start(f.fileno(), size))
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b"", offset, offset
        return data, offset, offset + len(data)

    def first_kept(self, stream: str) -> int:
        """The first byte of ``stream`` still on disk: 0, or how many bytes its cap dropped."""
        try:
            with open(self.path(stream), "rb") as f:
                return data_start(f.fileno(), os.fstat(f.fileno()).st_size)
        except FileNotFoundError:
            return 0

    def tail(self, stream: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of ``stream``, read from the end (never scanning the file)."""
        if max_bytes <= 0:
            return b""
        try:
            with open(self.path(stream), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = max(0, size - max_bytes, data_start(f.fileno(), size))
                f.seek(start)
                data = f.read(max_bytes)
        except FileNotFoundError:
            return b""
        return _skip_partial_char(data) if start else data

    def read_exit_status(self) -> int | None:
        """The exit status the wrapper recorded, as ``Popen.returncode`` would give it, or None."""
        try:
            with open(self.exit_status_path, "rb") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        return parse_exit_status(text.decode("ascii", errors="replace"))

    # -- queued environment ----------------------------------------------------------------------
    def write_env(self, env: t.Mapping[str, str]) -> None:
        """Keep a queued start's env overrides in a file only the owner can read (mode 0600)."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        path = os.path.join(self.folder, _ENV_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(env), f)

    def read_env(self) -> dict[str, str] | None:
        """The queued env overrides (None when there are none); the file stays."""
        try:
            with open(os.path.join(self.folder, _ENV_FILE), encoding="utf-8") as f:
                env = json.load(f)
        except FileNotFoundError:
            return None
        return {str(k): str(v) for k, v in env.items()}

    def remove_env(self) -> None:
        """Delete the queued env overrides (once the start that needed them is committed)."""
        try:
            os.unlink(os.path.join(self.folder, _ENV_FILE))
        except FileNotFoundError:
            pass

    def has_exit_status(self) -> bool:
        """True once the wrapper has written the exit status: the run has ended."""
        return os.path.exists(self.exit_status_path)

    def pop_env(self) -> dict[str, str] | None:
        """Read and delete the queued env overrides (None when there were none)."""
        try:
            return self.read_env()
        finally:
            self.remove_env()
