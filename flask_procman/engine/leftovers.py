"""What a job leaves behind when its main process ends: children in its process group it did not
wait for, and daemons that left both its tree and its group but carry its run tag. They are
stopped too (SIGTERM, then SIGKILL after the grace), so that no job leaves processes behind; what
survives SIGKILL is reported, never dropped in silence."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
import typing as t

import psutil

from .identity import Identity
from .kill import scan_for

log = logging.getLogger("flask_procman")

#: ``(process_id, pids)``: processes a run left that survived SIGKILL (the record lists them).
SurvivorsReport = t.Callable[[str, list[int]], None]


def group_exists(pgid: int) -> bool:
    """True while any process (zombies included) is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_members(pgid: int) -> list[int]:
    """Live members of group ``pgid`` (zombies, which nobody may reap here, have ended)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if fields[0] != b"Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                members.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return members


@dataclasses.dataclass
class Leftover:
    """What one ended run left behind, being stopped."""

    process_id: str
    identity: Identity  # of the run's main process (its run tag, its start)
    pgid: int | None  # its process group, only for our own children (whose group cannot be reused)
    procs: dict[int, psutil.Process]  # processes carrying its run tag
    kill_at: float
    killed: bool = False

    def any_alive(self) -> bool:
        """True while any of it runs (cheap: no listing of the group)."""
        return (self.pgid is not None and group_exists(self.pgid)) or any(map(_alive, self.procs.values()))

    def survivors(self) -> list[int]:
        """Pids still alive (the group's members are listed: one pass over /proc)."""
        alive = [pid for pid, proc in self.procs.items() if _alive(proc)]
        if self.pgid is not None and group_exists(self.pgid):
            alive += [pid for pid in _group_members(self.pgid) if pid not in alive]
        return alive

    def signal(self, sig: int) -> None:
        """Signal the group and every tagged process outside it, once each."""
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs.values():
            try:
                if self.pgid is not None and os.getpgid(proc.pid) == self.pgid:
                    continue  # reached through the group
                proc.send_signal(sig)  # psutil checks pid + start time
            except (OSError, psutil.Error):
                pass


class Leftovers:
    """The leftovers of the runs a watcher saw end (used from the watcher thread; :meth:`busy`
    from any).

    A run's process group is signalled as soon as its end is seen; the listing that finds its tagged
    processes (one pass over /proc for all the runs that ended meanwhile) is made at most every
    :attr:`SCAN_GAP` seconds, so that a burst of short jobs does not read /proc once per job.
    """

    SCAN_GAP = 0.25

    def __init__(self, grace: float, report: SurvivorsReport) -> None:
        self._grace = grace
        self._report = report
        self._lock = threading.Lock()
        self._ended: list[tuple[str, Identity, bool]] = []
        self._unscanned: list[tuple[str, Identity, Leftover | None]] = []
        self._entries: list[Leftover] = []
        self._next_scan = 0.0

    def ended(self, process_id: str, identity: Identity, is_child: bool) -> None:
        """The main process of this run has ended (swept at the next :meth:`sweep`, with others)."""
        with self._lock:
            self._ended.append((process_id, identity, is_child))

    def unkilled(self) -> bool:
        """True while some leftover has not been sent its SIGKILL yet."""
        return bool(self._ended or self._unscanned) or any(not e.killed for e in self._entries)

    def busy(self) -> bool:
        """True while there are runs to sweep or leftovers being stopped."""
        return bool(self._ended or self._unscanned or self._entries)

    def sweep(self, force: bool = False) -> None:
        """SIGTERM what the runs that ended since the last sweep left behind. The group only for our
        own children, whose end is noticed at once (an adopted root may have been gone for a while
        and its group id reused); the tag is the run's own, so it is safe for adopted runs too."""
        now = time.monotonic()
        with self._lock:
            ended, self._ended = self._ended, []
        for process_id, identity, is_child in ended:
            entry = None
            pgid = identity.pid if is_child and hasattr(os, "killpg") else None
            if pgid is not None and group_exists(pgid):
                entry = Leftover(process_id, identity, pgid, {}, now + self._grace)
                entry.signal(signal.SIGTERM)
                self._entries.append(entry)
            if identity.run_tag:
                self._unscanned.append((process_id, identity, entry))
        if self._unscanned and (force or now >= self._next_scan):
            self._next_scan = now + self.SCAN_GAP
            unscanned, self._unscanned = self._unscanned, []
            snapshot = scan_for(identity for _, identity, _ in unscanned)
            for process_id, identity, entry in unscanned:
                procs = {p.pid: p for p in snapshot.tagged.get(identity.run_tag or "", ()) if _alive(p)}
                if entry is None:
                    if not procs:
                        continue
                    entry = Leftover(process_id, identity, None, {}, now + self._grace)
                    self._entries.append(entry)
                new = Leftover(process_id, identity, entry.pgid, {pid: p for pid, p in procs.items()
                                                                 if pid not in entry.procs}, entry.kill_at)
                new.signal(signal.SIGTERM)  # only the processes not signalled yet
                entry.procs.update(new.procs)

    def finish(self) -> None:
        """At shutdown: SIGKILL, once their grace is over, what ended jobs left behind (they were
        already sent SIGTERM), without waiting for the deaths (the manager is going away)."""
        self.sweep(force=True)
        while self.unkilled():
            self.step(time.monotonic())
            time.sleep(0.02)
        self.step(time.monotonic())

    def step(self, now: float) -> None:
        """SIGKILL what outlived its grace (listing the runs' processes afresh: what they forked
        meanwhile dies too); drop what has ended; report what survived SIGKILL."""
        due = [e for e in self._entries if now >= e.kill_at and not e.killed]
        if due:
            snapshot = scan_for(e.identity for e in due if e.identity.run_tag)
            for entry in due:
                for proc in snapshot.tagged.get(entry.identity.run_tag or "", ()):
                    entry.procs.setdefault(proc.pid, proc)
                entry.signal(signal.SIGKILL)
                entry.killed = True
        for entry in list(self._entries):
            if entry.any_alive() and (not entry.killed or now < entry.kill_at + 5.0):
                continue  # in its grace, or SIGKILLed a moment ago
            left = entry.survivors() if entry.killed else []
            if left:
                log.warning("procman: processes %s left by %s survived SIGKILL", left, entry.process_id)
                try:
                    self._report(entry.process_id, left)
                except Exception as exc:
                    log.warning("procman: could not record the survivors of %s (%s)", entry.process_id, exc)
            self._entries.remove(entry)
