"""Mirroring a Ray job's output into procman's log file, resumable after any restart.

Ray writes a job's stdout and stderr, merged, into ``job-driver-<id>.log`` on the node that runs
it (with two lines of its own first: "Runtime env is setting up." and "Running entrypoint for
job ..."). The mirror copies that file, byte for byte, into the run's ``stdout.log``, so offsets,
tails, SSE and ``logs -f`` read it as they read a local run's.

Why resuming is exact: Ray's file only grows and the mirror only appends the bytes past its own
size, in order, so the local file is always a prefix of Ray's. A mirror created later (a restarted
worker, a manager adopting the run) starts from the local file's size and appends exactly what
is missing; a crash in the middle of an append leaves a shorter prefix, never a gap or a
duplicate. One mirror per file at a time (the run's owner): two would append the same bytes.

Which Ray endpoint: ``/api/jobs/<id>/logs`` decodes the file as UTF-8 and answers 500 once a job
prints one byte that is not UTF-8, and its ``/logs/tail`` websocket always replays from the start
(10 lines a message, 1 s sleep at the end). Neither takes an offset. The state API's
``/api/v0/logs/file`` sends the raw bytes of the whole file: each poll costs the file's size
(about 1 s per 20 MB), so the poll interval should grow with the log (:attr:`LogMirror.last_cost`).
"""

from __future__ import annotations

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
        size = self.local_size()
        self._check_junction(data, size)
        new = data[size:]
        if new:
            self._append(new)
        return len(new)

    def _check_junction(self, data: bytes, size: int) -> None:
        if len(data) < size:
            raise MirrorMismatch(
                f"Ray's log of job {self.submission_id} has {len(data)} bytes, fewer than the local copy's {size}: "
                "the local file is not a copy of this job's log."
            )
        start = max(0, size - _JUNCTION)
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                mine = f.read(size - start)
        except FileNotFoundError:
            mine = b""
        if mine != data[start:size]:
            raise MirrorMismatch(f"The local copy of job {self.submission_id}'s log differs from Ray's; not appending.")

    def _append(self, data: bytes) -> None:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
