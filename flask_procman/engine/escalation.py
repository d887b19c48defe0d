"""The watcher's stops of runs it follows: SIGTERM to a batch, SIGKILL once each one's grace is over.

Both steps list the processes once for the whole batch, and neither waits: the loop calls them
again at its next step.
"""

from __future__ import annotations

import time
import typing as t

from .kill import TreeKiller, scan_for
from .watched import Watched


def begin_kills(batch: list[Watched], grace: float) -> None:
    """SIGTERM to every run of ``batch``, from one listing of the processes; SIGKILL is due after ``grace`` seconds."""
    snapshot = scan_for(w.identity for w in batch)
    for watched in batch:
        watched.killer = TreeKiller(watched.identity)
        watched.killer.terminate(snapshot)
        watched.kill_at = time.monotonic() + grace


def kill_due(items: t.Sequence[Watched], now: float) -> None:
    """SIGKILL to the runs of ``items`` sent SIGTERM whose grace is over at ``now`` (once each)."""
    due = [w for w in items if w.killer is not None and not w.killed and w.kill_at is not None and now >= w.kill_at]
    if due:
        snapshot = scan_for(w.identity for w in due)
        for watched in due:
            t.cast(TreeKiller, watched.killer).kill(snapshot)
            watched.killed = True
