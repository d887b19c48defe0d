"""Stopping everything a run started: its process tree, its process group, and the processes that
left both (a double-forked daemon re-parented to init) but still carry the run's tag."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import typing as t

import psutil

from .identity import CLOCK_TICKS, LEGACY_WALL_CLOCK, Identity
from .runtag import ENV_VAR as RUN_TAG_VAR

IS_WINDOWS = sys.platform == "win32"
_TAG_PREFIX = RUN_TAG_VAR.encode() + b"="


@dataclasses.dataclass
class Snapshot:
    """ONE pass over the process table, shared by many stops: ``{ppid: [pids]}`` and, for the run
    tags asked for, ``{tag: [processes]}``.

    ``psutil.Process.children(recursive=True)`` or :func:`~.runtag.processes_with_tag` per stop would
    read /proc once per stopped process (500 stops on a host with 1,100 processes: 550,000 reads).
    """

    tree: dict[int, list[int]]
    tagged: dict[str, list[psutil.Process]]


def _tag_of(pid: int) -> str | None:
    """The ``PROCMAN_RUN_TAG`` in the environment ``pid`` was exec'd with, if any (own user's only)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return None
    at = environ.find(b"\0" + _TAG_PREFIX)
    if at < 0:
        if not environ.startswith(_TAG_PREFIX):
            return None
        at = -1
    start = at + 1 + len(_TAG_PREFIX)
    end = environ.find(b"\0", start)
    return environ[start:end if end >= 0 else len(environ)].decode("ascii", errors="replace")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start in clock ticks since boot) of ``pid`` from one read of /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def scan(tags: t.Collection[str | None] = (), since: float | None = None) -> Snapshot:
    """Read the process table once: parents, and the processes carrying any of ``tags``.

    A run's processes all started after its first one: with ``since`` (the earliest start, in seconds
    since boot, of the runs asked for) the environment of older processes is not read at all.
    """
    wanted = {tag for tag in tags if tag}
    tree: dict[int, list[int]] = {}
    tagged: dict[str, list[psutil.Process]] = {}
    me = os.getpid()
    if not os.path.isdir("/proc/self"):  # pragma: no cover - not Linux
        for proc in psutil.process_iter(["ppid"]):
            if proc.info["ppid"] is not None:
                tree.setdefault(proc.info["ppid"], []).append(proc.pid)
        return Snapshot(tree, tagged)
    min_ticks = int(since * CLOCK_TICKS) - 1 if since is not None and since < LEGACY_WALL_CLOCK else -1
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        stat = _stat(pid)
        if stat is None:
            continue
        tree.setdefault(stat[0], []).append(pid)
        if wanted and pid != me and stat[1] >= min_ticks:
            tag = _tag_of(pid)
            if tag is not None and tag in wanted:
                try:
                    tagged.setdefault(tag, []).append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
    return Snapshot(tree, tagged)


def scan_for(identities: t.Iterable[Identity]) -> Snapshot:
    """:func:`scan` for the runs of ``identities``."""
    identities = list(identities)
    starts = [i.started for i in identities if i.run_tag]
    return scan([i.run_tag for i in identities], min(starts) if starts else None)


def children_map() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` from ONE pass over the process table."""
    return scan().tree


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TreeKiller:
    """Stops a process, all its descendants and every process carrying its run tag: SIGTERM, then
    SIGKILL after a grace period.

    The descendants are listed *before* signalling, so grandchildren that left the process group with
    ``setsid`` die too; the tag finds those that also left the tree (double-forked daemons, now
    children of init); the group is signalled as well, for children forked meanwhile. Non-blocking
    steps so that the watcher can run many stops at once; :func:`kill_trees` blocks.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.procs: dict[int, psutil.Process] = {}

    def _collect(self, snapshot: Snapshot | None = None) -> None:
        if snapshot is None:
            snapshot = scan_for([self.identity])
        for proc in snapshot.tagged.get(self.identity.run_tag or "", ()):
            self.procs.setdefault(proc.pid, proc)  # the tag proves it is the run's: no age check
        root = self.identity.process()
        if root is None:
            return
        self.procs.setdefault(root.pid, root)
        started = root.create_time()
        stack, seen = list(snapshot.tree.get(root.pid, ())), {root.pid}
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                child = self.procs.get(pid) or psutil.Process(pid)
                if child.create_time() < started:  # older than its ancestor: a reused pid
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.procs.setdefault(pid, child)
            stack.extend(snapshot.tree.get(pid, ()))

    def _signal_all(self, sig: int, snapshot: Snapshot | None = None) -> None:
        """Signal every process of the run exactly once: a second SIGTERM can kill a child that
        is already shutting down gracefully (Python restores default handlers as it exits)."""
        self._collect(snapshot)
        group: int | None = None
        if not IS_WINDOWS:
            try:
                # The group id is the wrapper's pid (new session); only signal it while the leader
                # is provably ours, so a reused pid's group is never hit.
                if self.identity.process() is not None:
                    os.killpg(self.identity.pid, sig)
                    group = self.identity.pid
            except (ProcessLookupError, PermissionError):
                pass
        for proc in list(self.procs.values()):
            try:
                if group is not None and os.getpgid(proc.pid) == group:
                    continue  # already reached through the group
            except ProcessLookupError:
                continue
            try:
                proc.send_signal(sig)  # psutil checks pid + start time: never a reused pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def terminate(self, snapshot: Snapshot | None = None) -> None:
        """Send SIGTERM to the run (``snapshot``: a :func:`scan` shared by many killers)."""
        self._signal_all(signal.SIGTERM if not IS_WINDOWS else signal.CTRL_BREAK_EVENT, snapshot)  # type: ignore[attr-defined,unused-ignore]

    def kill(self, snapshot: Snapshot | None = None) -> None:
        """Send SIGKILL to the run (a fresh listing: processes forked since the SIGTERM die too)."""
        self._signal_all(signal.SIGKILL if not IS_WINDOWS else signal.SIGTERM, snapshot)

    def survivors(self) -> list[int]:
        """Pids of the run still running (zombies count as ended)."""
        return [pid for pid, proc in list(self.procs.items()) if _alive(proc)]


def _wait_until_gone(killers: t.Sequence[TreeKiller], seconds: float, poll: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if not any(killer.survivors() for killer in killers):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def kill_trees_each(identities: t.Sequence[Identity], grace: float, poll: float = 0.02) -> list[list[int]]:
    """Stop every run at once (SIGTERM, ``grace`` seconds, SIGKILL); returns, for each identity in
    order, the pids of its run that survived SIGKILL (a process in uninterruptible sleep, another
    user's). One /proc pass per round, whatever the number of runs."""
    killers = [TreeKiller(identity) for identity in identities]
    tags = [identity.run_tag for identity in identities]
    snapshot = scan_for(identities)
    for killer in killers:
        killer.terminate(snapshot)
    if not _wait_until_gone(killers, grace, poll):
        snapshot = scan_for(identities)
        for killer in killers:
            killer.kill(snapshot)
        _wait_until_gone(killers, 5.0, poll)
    # A last listing: a tagged process forked between the listings and the signals is not spared.
    if any(tags):
        snapshot = scan_for(identities)
        late = [k for k in killers if any(p.pid not in k.procs for p in snapshot.tagged.get(k.identity.run_tag or "", ()))]
        for killer in late:
            killer.kill(snapshot)
        _wait_until_gone(late, 5.0, poll)
    return [killer.survivors() for killer in killers]


def kill_trees(identities: t.Sequence[Identity], grace: float, poll: float = 0.02) -> list[int]:
    """:func:`kill_trees_each` with the survivors of every run in one list."""
    return [pid for left in kill_trees_each(identities, grace, poll) for pid in left]
