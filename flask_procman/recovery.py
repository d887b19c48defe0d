"""What became of a start whose manager never committed its pid: found through the run tag.

The start protocol (DESIGN.md) commits a ``starting`` record before it spawns and the pid after.
A manager that dies in between leaves a ``starting`` record; whoever notices asks this module what
is on the host for its run tag, then adopts the run, records its end, or gives the slot back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import typing as t

import psutil

from .engine.identity import Identity, current_identity
from .engine.logfiles import LogFiles
from .engine.runtag import processes_with_tag

#: Why a start that never ran is ended (the record's ``error``).
NEVER_STARTED = ("The manager that was starting it died (or lost the database) before the process "
                 "started; nothing ran.")


@dataclasses.dataclass
class RunFinding:
    """What the host holds of one run."""

    #: The run's live wrapper (its root), when the run is still going.
    root: Identity | None
    #: When the root started (wall clock, for ``started_at`` only).
    root_started_at: dt.datetime | None
    #: Other live processes of the run (descendants, daemons): leftovers once the root is gone.
    others: list[psutil.Process]
    #: True when the wrapper wrote the exit status: the run started and ended.
    ended: bool
    #: The exit status the wrapper wrote, if any.
    exit_status: int | None

    @property
    def ran(self) -> bool:
        """True when anything of the run was ever spawned (alive or ended)."""
        return self.root is not None or bool(self.others) or self.ended


def identity_of(pid: int) -> Identity:
    """The identity of a live process found by its tag (raises ``psutil.NoSuchProcess``)."""
    return current_identity(pid)


def inspect_run(run_tag: str | None, logs: LogFiles) -> RunFinding:
    """Look for the processes of the run tagged ``run_tag`` and its exit status.

    The root is the oldest tagged session leader (the wrapper runs in a session of its own and is
    created before anything it starts) while the exit status is not written yet: once it is, the
    wrapper has ended and what is left is leftovers.
    """
    exit_status = logs.read_exit_status()
    ended = logs.has_exit_status()
    if not run_tag:
        return RunFinding(None, None, [], ended, exit_status)
    procs = [p for p in processes_with_tag(run_tag, exclude={os.getpid()}) if _alive(p)]
    root: psutil.Process | None = None
    if not ended:
        leaders = [p for p in procs if _is_session_leader(p)]
        leaders.sort(key=_create_time)
        root = leaders[0] if leaders else None
    identity = None
    started_at = None
    if root is not None:
        try:
            identity = identity_of(root.pid)
            started_at = dt.datetime.fromtimestamp(root.create_time(), dt.timezone.utc)
        except psutil.Error:
            identity = None
    others = [p for p in procs if identity is None or p.pid != identity.pid]
    return RunFinding(identity, started_at, others, ended, exit_status)


def kill_leftovers(procs: t.Iterable[psutil.Process]) -> None:
    """SIGKILL what a run left behind after its root ended (psutil checks pid reuse)."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_session_leader(proc: psutil.Process) -> bool:
    try:
        return os.getsid(proc.pid) == proc.pid
    except OSError:
        return False


def _create_time(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return float("inf")
