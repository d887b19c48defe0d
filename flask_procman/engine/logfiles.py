"""The per-process folder on disk: stdout/stderr log files, the exit-status file, queued env."""

from __future__ import annotations

import json
import os
import re
import shutil
import typing as t

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

    # -- paths -----------------------------------------------------------------------------------
    def path(self, stream: str) -> str:
        """Path of the log of ``stream`` ("stdout" or "stderr")."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        return os.path.join(self.folder, stream + ".log")

    @property
    def exit_status_path(self) -> str:
        """File the ``/bin/sh`` wrapper writes the child's exit status into."""
        return os.path.join(self.folder, _RC_FILE)

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
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        out_fd = os.open(self.path("stdout"), flags, 0o600)
        if merge_stderr:
            return out_fd, out_fd
        try:
            err_fd = os.open(self.path("stderr"), flags, 0o600)
        except BaseException:
            os.close(out_fd)
            raise
        return out_fd, err_fd

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
        """Up to ``limit`` bytes from ``offset``; returns (data, next_offset). Never destructive."""
        try:
            with open(self.path(stream), "rb") as f:
                if offset >= os.fstat(f.fileno()).st_size:  # nothing there; seek() past the fs limit is EINVAL
                    return b"", offset
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b"", offset
        return data, offset + len(data)

    def tail(self, stream: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of ``stream``, read from the end (never scanning the file)."""
        if max_bytes <= 0:
            return b""
        try:
            with open(self.path(stream), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = max(0, size - max_bytes)
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
        try:
            status = int(text)
        except ValueError:
            return None
        # The shell reports death by signal N as 128+N; report it as -N like subprocess does.
        return -(status - 128) if 128 < status < 128 + 65 else status

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
