"""A bound on every database operation of the engine procman creates for PostgreSQL.

A connect timeout, TCP keepalives and a statement timeout do not end a read from a server (or a
proxy) that accepts bytes and never answers: libpq waits forever. The watchdog shuts down the
socket of a connection whose operation outlives its deadline, so the driver fails at once with a
disconnect error (``StoreUnavailable`` for the caller) and the pool drops that connection.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import typing as t


def postgres_connect_args(timeout: float, url_options: str | None) -> dict[str, t.Any]:
    """libpq parameters bounding a connect and a statement, with TCP keepalives (``timeout`` s)."""
    seconds = max(1, round(timeout))
    statement = f"-c statement_timeout={int(timeout * 1000)}"
    return {
        "connect_timeout": seconds,
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, seconds // 3),
        "keepalives_count": 3,
        # The URL's own options (e.g. a search_path) are kept: connect_args would replace them.
        "options": f"{url_options} {statement}" if url_options else statement,
    }


class SocketWatchdog:
    """Shuts down a socket when the operation armed on it outlives its deadline (one thread)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def arm(self, fd: int, seconds: float) -> int:
        """Watch ``fd`` for ``seconds``; returns the token for :meth:`disarm`."""
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (time.monotonic() + seconds, fd)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="procman-db-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        """The operation ended in time (or failed): forget it."""
        with self._cond:
            self._armed.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        _shutdown(fd)  # under the lock: a disarm either came first or finds nothing
                wait = min((deadline for deadline, _ in self._armed.values()), default=now + 60) - now
                self._cond.wait(max(0.01, wait))


def _shutdown(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()  # closes the dup only; the driver's fd now reads end-of-file
