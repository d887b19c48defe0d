"""A self-pipe: any thread interrupts the watcher loop's ``select`` by writing one byte to it."""

from __future__ import annotations

import os


class WakePipe:
    """A non-blocking pipe; the loop registers :attr:`read_fd` in its selector."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)

    def wake(self) -> None:
        """Interrupt the loop's wait (never blocks, never raises)."""
        if self._write_fd < 0:  # closed: the fd number may belong to another file by now
            return
        try:
            os.write(self._write_fd, b"x")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        """Read away every wake-up byte (in the loop, after its selector reported the pipe)."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close both ends; a late :meth:`wake` writes nowhere."""
        fds, self.read_fd, self._write_fd = (self.read_fd, self._write_fd), -1, -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
