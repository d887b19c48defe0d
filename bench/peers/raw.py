"""The floor: plain ``subprocess.Popen`` with pipes, ONE thread for every process.

That thread waits in one ``epoll`` on every stdout/stderr pipe (``os.read``, 256 KiB at a time) and
on one pidfd per process (reaped with ``waitpid`` when it becomes readable). Output is kept in a
``bytearray`` per stream (``sink="memory"``) or appended to a file per stream (``sink="file"``).
Stops signal the process group (``start_new_session=True``): SIGTERM, then SIGKILL after the grace.
No database, no status records: the least a manager that captures output can do.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import threading
import time
import typing as t

TAIL = 64 * 1024
READ_SIZE = 256 * 1024


class _Proc:
    __slots__ = ("bufs", "done", "files", "open_streams", "pidfd", "popen", "reaped", "returncode", "started_at")

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pidfd = -1
        self.bufs = {"stdout": bytearray(), "stderr": bytearray()}
        self.files: dict[str, int] = {}
        self.open_streams = 2
        self.returncode: int | None = None
        self.reaped = threading.Event()  # the process has ended (grandchildren may still hold the pipes)
        self.done = threading.Event()  # ended and both pipes at EOF: all output is in
        self.started_at = time.time()


class RawPeer:
    name = "raw"

    def __init__(self, workdir: str, sink: str = "memory") -> None:
        self.workdir = workdir
        self.sink = sink
        self.procs: dict[str, _Proc] = {}
        self._fds: dict[int, tuple[_Proc, str, t.Any]] = {}  # fd -> (proc, "stdout"|"stderr"|"pid", file)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="raw-reader", daemon=True)
        self._thread.start()

    # -- the one thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closing:
            for fd, _ in self._epoll.poll():
                entry = self._fds.get(fd)
                if entry is None:
                    continue
                proc, what, _ = entry
                if what == "pid":
                    _, status = os.waitpid(proc.popen.pid, 0)
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    proc.popen.returncode = proc.returncode
                    proc.reaped.set()
                    self._forget(fd)
                    self._maybe_done(proc)
                    continue
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                if data:
                    if self.sink == "memory":
                        proc.bufs[what] += data
                    else:
                        os.write(proc.files[what], data)
                else:
                    self._forget(fd)
                    proc.open_streams -= 1
                    self._maybe_done(proc)

    def _forget(self, fd: int) -> None:
        self._epoll.unregister(fd)
        _, _, file = self._fds.pop(fd)
        if file is None:
            os.close(fd)
        else:
            file.close()

    @staticmethod
    def _maybe_done(proc: _Proc) -> None:
        if proc.open_streams == 0 and proc.returncode is not None:
            proc.done.set()

    # -- the API ---------------------------------------------------------------------------------
    def start(self, process_id: str, cmd: list[str]) -> None:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
        proc = _Proc(popen)
        if self.sink == "file":
            folder = os.path.join(self.workdir, "raw", process_id)
            os.makedirs(folder, exist_ok=True)
            for stream in ("stdout", "stderr"):
                proc.files[stream] = os.open(os.path.join(folder, stream + ".log"),
                                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.procs[process_id] = proc
        # The reader thread owns the pipes from now on (and closes them at EOF).
        out, err = popen.stdout, popen.stderr
        popen.stdout = popen.stderr = None
        proc.pidfd = os.pidfd_open(popen.pid)
        for fd, what, file in ((out.fileno(), "stdout", out), (err.fileno(), "stderr", err), (proc.pidfd, "pid", None)):
            os.set_blocking(fd, False)
            self._fds[fd] = (proc, what, file)
            self._epoll.register(fd, select.EPOLLIN)

    def wait(self, process_id: str, timeout: float) -> int | None:
        proc = self.procs[process_id]
        if not proc.done.wait(timeout):
            raise TimeoutError(process_id)
        return proc.returncode

    def root_pid(self, process_id: str) -> int:
        return self.procs[process_id].popen.pid

    def status(self, process_id: str) -> dict[str, t.Any]:
        proc = self.procs[process_id]
        out = bytes(proc.bufs["stdout"][-TAIL:]) if self.sink == "memory" else b""
        err = bytes(proc.bufs["stderr"][-TAIL:]) if self.sink == "memory" else b""
        return {"id": process_id, "pid": proc.popen.pid, "status": "completed" if proc.done.is_set() else "running",
                "return_code": proc.returncode, "started_at": proc.started_at,
                "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}

    def output(self, process_id: str, stream: str = "stdout") -> bytes:
        proc = self.procs[process_id]
        if self.sink == "memory":
            return bytes(proc.bufs[stream])
        with open(os.path.join(self.workdir, "raw", process_id, stream + ".log"), "rb") as f:
            return f.read()

    def output_digest(self, process_id: str, stream: str = "stdout") -> tuple[int, str]:
        proc = self.procs[process_id]
        if self.sink == "memory":
            return len(proc.bufs[stream]), hashlib.sha256(proc.bufs[stream]).hexdigest()
        digest, size = hashlib.sha256(), 0
        with open(os.path.join(self.workdir, "raw", process_id, stream + ".log"), "rb") as f:
            while block := f.read(16 << 20):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def output_size(self, process_id: str, stream: str = "stdout") -> int:
        proc = self.procs[process_id]
        if self.sink == "memory":
            return len(proc.bufs[stream])
        return os.fstat(proc.files[stream]).st_size

    def _signal_group(self, proc: _Proc, sig: int) -> None:
        if not proc.reaped.is_set():
            try:
                os.killpg(proc.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, process_id: str, grace: float) -> None:
        self.stop_many([process_id], grace)

    def stop_many(self, process_ids: t.Iterable[str], grace: float) -> None:
        procs = [self.procs[p] for p in process_ids]
        for proc in procs:
            self._signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        left = [p for p in procs if not p.reaped.wait(max(0.0, deadline - time.monotonic()))]
        for proc in left:
            self._signal_group(proc, signal.SIGKILL)
        for proc in left:
            proc.reaped.wait(10)

    def stop_all(self, grace: float) -> None:
        self.stop_many([p for p, proc in self.procs.items() if not proc.reaped.is_set()], grace)

    def close(self) -> None:
        self.stop_all(1.0)
        self._closing = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for proc in self.procs.values():
            for fd in proc.files.values():
                os.close(fd)
