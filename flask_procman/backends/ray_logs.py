"""Mirroring a Ray job's output into procman's log file, resumable after any restart.

Ray writes a job's stdout and stderr, merged, into ``job-driver-<id>.log`` on the node that runs
it (with two lines of its own first: "Runtime env is setting up." and "Running entrypoint for
job ..."). The mirror copies that file, byte for byte, into the run's ``stdout.log``, so offsets,
tails, SSE and ``logs -f`` read it as they read a local run's.

Why resuming is exact: Ray's file only grows and the mirror only appends the bytes past its own
size, in order, so the local file is always a prefix of Ray's. A mirror created later (a restarted
worker, a manager adopting the run) starts from the local file's size and appends exactly what
is missing; a crash in the middle of an append leaves a shorter prefix, never a gap or a
duplicate. Mirrors of one run in several processes of this host are safe: each appends under
an exclusive ``flock`` only what lies past the file's end at that moment.

Which Ray endpoint: ``/api/jobs/<id>/logs`` decodes the file as UTF-8 and answers 500 once a job
prints one byte that is not UTF-8, and its ``/logs/tail`` websocket always replays from the start
(10 lines a message, 1 s sleep at the end). Neither takes an offset. The state API's
``/api/v0/logs/file`` sends the raw bytes of the whole file: each poll costs the file's size
(about 1 s per 20 MB), so the poll interval should grow with the log (:attr:`LogMirror.last_cost`).
"""

from __future__ import annotations

import fcntl
import os
import time
import typing as t

from .errors import BackendError
from .ray_client import RayJobsClient

#: Bytes compared at the junction of the local copy and Ray's file on every poll.
_JUNCTION = 256


class MirrorMismatch(BackendError):
    """The local log is not a prefix of Ray's (edited, or another job's): nothing is appended."""


class LogMirror:
    """Appends the new bytes of one Ray job's log to ``path``."""

    def __init__(self, client: RayJobsClient, submission_id: str, path: str) -> None:
        self.client = client
        self.submission_id = submission_id
        self.path = path
        #: The node that runs the job's driver (its log lives there); learnt from the job's details.
        self.node_id: str | None = None
        #: Seconds the last fetch of Ray's whole file took.
        self.last_cost = 0.0

    def interval(self, base: float) -> float:
        """Seconds to wait before the next poll: ``base``, or ten times what the last fetch of the
        whole file cost, so that mirroring a big log takes at most about a tenth of a thread."""
        return max(base, 10 * self.last_cost)

    def local_size(self) -> int:
        """Bytes mirrored so far: the offset Ray's file is read from."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def poll(self, details: t.Mapping[str, t.Any] | None = None) -> int:
        """Append what Ray's log holds past the local file's end; returns the bytes appended.

        ``details`` (the job's, if the caller just read them) saves a request while the driver's
        node is not known yet. Nothing is appended before the job has a driver node.
        """
        if self.node_id is None:
            if details is None:
                details = self.client.job(self.submission_id)
            self.node_id = (details or {}).get("driver_node_id") or None
            if self.node_id is None:
                return 0
        began = time.monotonic()
        data = self.client.log_bytes(self.node_id, self.submission_id)
        self.last_cost = time.monotonic() - began
        if data is None:
            return 0
        return self._append_new(data)

    def _append_new(self, data: bytes) -> int:
        """Under an exclusive lock on the file (two mirrors of one run, in two workers of this host,
        would otherwise both append the same bytes): append ``data`` past the file's current end."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            self._check_junction(fd, data, size)
            view = memoryview(data)[size:]
            appended = len(view)
            while view:
                view = view[os.write(fd, view):]
            return appended
        finally:
            os.close(fd)  # releases the lock

    def _check_junction(self, fd: int, data: bytes, size: int) -> None:
        if len(data) < size:
            raise MirrorMismatch(
                f"Ray's log of job {self.submission_id} has {len(data)} bytes, fewer than the local copy's {size}: "
                "the local file is not a copy of this job's log."
            )
        start = max(0, size - _JUNCTION)
        if os.pread(fd, size - start, start) != data[start:size]:
            raise MirrorMismatch(f"The local copy of job {self.submission_id}'s log differs from Ray's; not appending.")
