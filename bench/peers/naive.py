"""The naive manager of the seed design note (/work/shared/seed/000_db2abe539a32fdd4.txt), as described:

* a thread-safe singleton holding a dict of processes, a lock, and ``MAX_PROCESSES``;
* ``subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True)``;
* one ``queue.Queue`` per stream and TWO reader threads per process (``readline`` -> ``put``);
* ONE monitor thread per process: ``process.wait()``, mark completed, drain the remaining output
  from the queues, run ``on_complete(process_id, return_code)``;
* ``get_process_status`` drains the queues into the record and returns the output so far;
* ``stop_process``: ``terminate()``, ``wait(grace)``, ``kill()``.

Written plainly, without strawman slowness (output is joined once per drain, not concatenated line
by line). The bench-only helpers (``wait``, ``output``, ...) sit below the seed API.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import queue
import subprocess
import threading
import typing as t


class ProcessManager:
    _instance: ProcessManager | None = None
    _instance_lock = threading.Lock()

    def __new__(cls, *args: t.Any, **kwargs: t.Any) -> ProcessManager:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = super().__new__(cls)
                cls._instance._initialized = False  # type: ignore[attr-defined]
        return cls._instance

    def __init__(self, max_processes: int = 5) -> None:
        if self._initialized:  # type: ignore[has-type]
            return
        self._initialized = True
        self.max_processes = max_processes
        self.processes: dict[str, dict[str, t.Any]] = {}
        self.lock = threading.Lock()

    # -- the seed API ------------------------------------------------------------------------------
    def start_process(self, process_id: str, cmd: list[str], cwd: str | None = None,
                      env: dict[str, str] | None = None,
                      on_complete: t.Callable[[str, int], t.Any] | None = None) -> bool:
        with self.lock:
            running = sum(1 for p in self.processes.values() if p["status"] == "running")
            if running >= self.max_processes:
                return False
            full_env = os.environ.copy()
            if env:
                full_env.update(env)
            process = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, bufsize=1)
            info = {
                "process": process, "status": "running", "start_time": datetime.datetime.now(),
                "end_time": None, "cmd": cmd, "return_code": None, "on_complete": on_complete,
                "stdout_queue": queue.Queue(), "stderr_queue": queue.Queue(), "stdout": [], "stderr": [],
                "threads": [],
            }
            self.processes[process_id] = info
        readers = [
            threading.Thread(target=self._read_output, args=(process.stdout, info["stdout_queue"]), daemon=True),
            threading.Thread(target=self._read_output, args=(process.stderr, info["stderr_queue"]), daemon=True),
        ]
        info["threads"] = readers
        for thread in readers:
            thread.start()
        threading.Thread(target=self._monitor_process, args=(process_id,), daemon=True).start()
        return True

    @staticmethod
    def _read_output(pipe: t.TextIO, q: queue.Queue[str]) -> None:
        for line in iter(pipe.readline, ""):
            q.put(line)
        pipe.close()

    @staticmethod
    def _drain(info: dict[str, t.Any]) -> None:
        for stream in ("stdout", "stderr"):
            q: queue.Queue[str] = info[stream + "_queue"]
            lines = []
            while True:
                try:
                    lines.append(q.get_nowait())
                except queue.Empty:
                    break
            if lines:
                info[stream].append("".join(lines))

    def _monitor_process(self, process_id: str) -> None:
        info = self.processes[process_id]
        return_code = info["process"].wait()
        with self.lock:
            info["status"] = "completed"
            info["return_code"] = return_code
            info["end_time"] = datetime.datetime.now()
            self._drain(info)  # "获取最终输出: 从队列中读取所有剩余的输出"
        if info["on_complete"]:
            try:
                info["on_complete"](process_id, return_code)
            except Exception:
                pass

    def get_process_status(self, process_id: str) -> dict[str, t.Any] | None:
        with self.lock:
            info = self.processes.get(process_id)
            if info is None:
                return None
            self._drain(info)
            return {"status": info["status"], "return_code": info["return_code"], "pid": info["process"].pid,
                    "start_time": info["start_time"], "end_time": info["end_time"], "cmd": info["cmd"],
                    "stdout": "".join(info["stdout"]), "stderr": "".join(info["stderr"])}

    def stop_process(self, process_id: str, grace: float = 5.0) -> bool:
        info = self.processes.get(process_id)
        if info is None or info["status"] != "running":
            return False
        process = info["process"]
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return True


class NaivePeer:
    """The bench's adapter around :class:`ProcessManager` (same interface as the other peers)."""

    name = "naive"

    def __init__(self, workdir: str) -> None:
        ProcessManager._instance = None  # a fresh singleton per trial
        self.pm = ProcessManager(max_processes=100_000)
        self._ended: dict[str, threading.Event] = {}

    def start(self, process_id: str, cmd: list[str]) -> None:
        event = self._ended[process_id] = threading.Event()
        ok = self.pm.start_process(process_id, cmd, on_complete=lambda _pid, _rc: event.set())
        assert ok, "naive manager refused the start"

    def wait(self, process_id: str, timeout: float) -> int | None:
        """Until the monitor ran on_complete AND both readers reached EOF (all output collected)."""
        import time

        deadline = time.monotonic() + timeout
        if not self._ended[process_id].wait(timeout):
            raise TimeoutError(process_id)
        info = self.pm.processes[process_id]
        for thread in info["threads"]:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError(process_id)
        return t.cast(int, info["return_code"])

    def root_pid(self, process_id: str) -> int:
        return t.cast(int, self.pm.processes[process_id]["process"].pid)

    def status(self, process_id: str) -> dict[str, t.Any]:
        return t.cast(dict, self.pm.get_process_status(process_id))

    def output(self, process_id: str, stream: str = "stdout") -> bytes:
        status = self.pm.get_process_status(process_id) or {}
        return t.cast(str, status.get(stream, "")).encode("utf-8", "surrogateescape")

    def output_digest(self, process_id: str, stream: str = "stdout") -> tuple[int, str]:
        data = self.output(process_id, stream)
        return len(data), hashlib.sha256(data).hexdigest()

    def output_size(self, process_id: str, stream: str = "stdout") -> int:
        with self.pm.lock:
            info = self.pm.processes[process_id]
            return sum(len(s) for s in info[stream])  # ASCII benches only: characters == bytes

    def stop(self, process_id: str, grace: float) -> None:
        self.pm.stop_process(process_id, grace)

    def stop_all(self, grace: float) -> None:
        for process_id in list(self.pm.processes):
            self.pm.stop_process(process_id, grace)

    def kill_all(self) -> None:
        for info in list(self.pm.processes.values()):
            try:
                info["process"].kill()
            except OSError:
                pass

    def close(self) -> None:
        self.stop_all(1.0)
