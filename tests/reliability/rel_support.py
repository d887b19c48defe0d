"""Helpers shared by the reliability tests: a stoppable TCP proxy, tmpfs mounts, record checks.

Imported as ``rel_support`` (pytest puts this folder on ``sys.path`` for the test modules in it,
as it puts ``tests/`` there for ``conftest``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import threading
import typing as t

import psutil
import pytest
import sqlalchemy as sa

from flask_procman.store import FINAL, STATUSES

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)


# ---------------------------------------------------------------------------- TCP proxy ----------
class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`stop` closes the listener and every
    connection (the database "goes away"), :meth:`start` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        #: While True the proxy accepts connections and reads bytes but forwards nothing (a stall).
        self.stalled = False

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen (on the same port as before, if any) and accept in a thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def stop(self) -> None:
        """Close the listener and every forwarded connection (both ends)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [th for th in self._threads if th.is_alive()]

    def _spawn(self, target: t.Callable[..., None], *args: t.Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="test-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.connections += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not self.stalled:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def proxied_url(url: str, port: int) -> str:
    """``url`` (a PostgreSQL URL on 127.0.0.1:5432, with its schema option) through the proxy."""
    parsed = sa.engine.make_url(url)
    return parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------- tmpfs --------------
@contextlib.contextmanager
def tmpfs(path: str, options: str) -> t.Iterator[str]:
    """Mount a tmpfs with ``options`` (e.g. ``size=2m``) on ``path``; skips the test when that is
    not permitted (not root, no CAP_SYS_ADMIN). Unmounts after (lazily if something is still open)."""
    os.makedirs(path, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                                check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs to simulate a full or read-only log folder: {exc}")
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs to simulate a full or read-only log folder "
                    f"(needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def remount(path: str, options: str) -> None:
    """Change the options of a mounted tmpfs (e.g. ``ro`` / ``rw``)."""
    subprocess.run(["mount", "-o", f"remount,{options}", path], check=True, capture_output=True)


def fill_inodes(folder: str) -> int:
    """Create empty files in ``folder`` until the file system has no inode left; how many."""
    count = 0
    while True:
        try:
            fd = os.open(os.path.join(folder, f"inode-{count}"), os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError:
            return count
        os.close(fd)
        count += 1


# ---------------------------------------------------------------------------- processes ----------
def marked_alive(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            info = proc.info
            if info["status"] != psutil.STATUS_ZOMBIE and marker in (info["cmdline"] or []):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


def kill_marked(marker: str) -> None:
    """Clean-up: SIGKILL whatever still carries ``marker`` (a failed test must not leak processes)."""
    for pid in marked_alive(marker):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


# ---------------------------------------------------------------------------- records ------------
def _aware(value: object) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is not None and value.utcoffset() is not None


def record_problems(row: t.Mapping[str, t.Any]) -> list[str]:
    """What is wrong with one record as the store returns it (empty when it is well-formed)."""
    problems = []
    status = row["status"]
    if status not in STATUSES:
        problems.append(f"unknown status {status!r}")
    cmd = row["cmd"]
    if not (isinstance(cmd, list) and cmd and all(isinstance(part, str) for part in cmd)):
        problems.append(f"cmd is not a non-empty list of str: {cmd!r}")
    if row["env_keys"] is not None and not (isinstance(row["env_keys"], list)
                                            and all(isinstance(k, str) for k in row["env_keys"])):
        problems.append(f"env_keys {row['env_keys']!r}")
    if not _aware(row["created_at"]):
        problems.append(f"created_at {row['created_at']!r}")
    for key in ("started_at", "finished_at"):
        if row[key] is not None and not _aware(row[key]):
            problems.append(f"{key} {row[key]!r}")
    if status in FINAL and row["finished_at"] is None:
        problems.append("final without finished_at")
    if status == "running" and row["pid"] is None:
        problems.append("running without a pid (a half-started record)")
    if status == "queued" and row["pid"] is not None:
        problems.append("queued with a pid")
    if row["return_code"] is not None and not isinstance(row["return_code"], int):
        problems.append(f"return_code {row['return_code']!r}")
    timeout = row["timeout"]
    if timeout is not None and not (isinstance(timeout, float) and timeout > 0):
        problems.append(f"timeout {timeout!r}")
    if row["meta"] is not None:
        try:
            json.dumps(row["meta"], allow_nan=False)
        except (TypeError, ValueError) as exc:
            problems.append(f"meta not JSON: {exc}")
    return problems


def all_problems(rows: t.Iterable[t.Mapping[str, t.Any]]) -> dict[str, list[str]]:
    """``{id: problems}`` for every malformed record."""
    return {row["id"]: found for row in rows if (found := record_problems(row))}


def dump_table_text(engine: sa.Engine) -> str:
    """Every column of every row of ``procman_processes``, read raw (no type processing), as text."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM procman_processes").all()
    return "\n".join(repr(tuple(row)) + " " + " ".join(str(v) for v in row) for row in rows)
