"""What the watcher follows (a ``Watched`` run), what it asks of its manager, and how it learns
that a child of ours has ended (a pidfd, or a short blocking reap)."""

from __future__ import annotations

import dataclasses
import os
import time
import typing as t

from .kill import TreeKiller
from .local import Identity, reap


class WatcherClient(t.Protocol):
    """What the watcher asks of its manager."""

    def record_end(self, process_id: str, return_code: int | None, *,
                   survivors: list[int] | None = None, inline: bool = False) -> bool:
        """Record that a watched process has ended (raises on database errors; retried later)."""

    def request_timeout_stop(self, process_id: str) -> None:
        """Mark a process as being stopped for its timeout (raises on database errors)."""

    def tick(self) -> None:
        """Periodic database work: stop requests, queue promotion, adoption, pruning."""

    def read_exit_status(self, process_id: str) -> int | None:
        """The exit status the wrapper left on disk, if any."""

    def record_survivors(self, process_id: str, survivors: list[int]) -> None:
        """Add processes of an ended run that survived SIGKILL to its record."""


@dataclasses.dataclass
class Watched:
    """A process the watcher follows until it ends."""

    process_id: str
    identity: Identity
    is_child: bool
    deadline: float | None = None  # time.monotonic() at which the timeout fires
    pidfd: int | None = None
    killer: TreeKiller | None = None
    kill_at: float | None = None
    killed: bool = False
    ended: bool = False
    stop_wanted: bool = False  # a stop asked by begin_stop, started by the loop (batched)


def child_pidfd(pid: int) -> int | None:
    """A pidfd of our own child ``pid`` (None without pidfds or once it is gone).

    Our own unreaped child cannot be replaced by another process: no identity check is needed.
    """
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def reap_blocking(pid: int) -> int | None:
    """Reap our child ``pid`` whose pidfd said it ended (its status may be a moment behind); None
    when it is still not reapable after a second."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        code = reap(pid)
        if code is not None:
            return code
        time.sleep(0.001)
    return None
