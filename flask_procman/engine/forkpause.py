"""Parking a loop thread between two iterations while its process forks.

A thread caught inside SQLite at an ``os.fork()`` leaves its process-wide locks held forever in the
child; parked between iterations, it holds none.
"""

from __future__ import annotations

import threading
import typing as t


class ForkPause:
    """The handshake between the forking thread (:meth:`request`, :meth:`resume`) and the loop
    (:attr:`requested`, then :meth:`park`)."""

    def __init__(self) -> None:
        #: True from :meth:`request` to :meth:`resume`: the loop parks at its next iteration.
        self.requested = False
        self._paused = threading.Event()
        self._resume = threading.Event()

    def request(self, wake: t.Callable[[], None], timeout: float) -> None:
        """Ask the loop to park, ``wake`` it, and wait up to ``timeout`` seconds until it has parked."""
        self._resume.clear()
        self._paused.clear()
        self.requested = True
        wake()
        self._paused.wait(timeout)

    def resume(self) -> None:
        """Let a parked loop go on (in the parent, after the fork)."""
        self.requested = False
        self._resume.set()

    def release(self) -> None:
        """Let a parked loop go on without ending the request (the loop is being stopped)."""
        self._resume.set()

    def park(self) -> None:
        """In the loop: say it is parked, then wait for :meth:`resume` or :meth:`release`."""
        self._paused.set()
        self._resume.wait()
