"""Which process a pid is: (pid, start time since boot, boot id), never a wall-clock time.

A pid alone may have been reused. psutil's ``create_time()`` is the boot time read from
``/proc/stat`` (itself *now - uptime* on the wall clock) plus the start in clock ticks: an NTP step or a
VM resume moves it, and every worker that reads it after the step sees every live process as another
one. The start in clock ticks since boot (field 22 of ``/proc/<pid>/stat``) and the boot id
(``/proc/sys/kernel/random/boot_id``) never move while the machine runs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing as t

import psutil

#: A ``pid_started`` above this is a wall-clock time (seconds since 1970) written by flask-procman
#: 0.1; boot-relative times are uptimes (1e9 s is 31 years).
LEGACY_WALL_CLOCK = 1e9
_LEGACY_TOLERANCE = 0.01

#: Clock ticks per second of /proc/<pid>/stat start times.
try:
    CLOCK_TICKS = float(os.sysconf("SC_CLK_TCK"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    CLOCK_TICKS = 100.0


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot's id ("" where the platform has none); it cannot change under a running process."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


def process_start_time(pid: int) -> float:
    """Start of ``pid`` in seconds since boot (clock ticks of ``/proc/<pid>/stat``): unmoved by any
    wall-clock step. Raises ``psutil.NoSuchProcess`` when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except OSError:  # pragma: no cover - no /proc: psutil's own view (not Linux)
        return float(psutil.Process(pid).create_time())
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19]) / CLOCK_TICKS  # field 22 overall: starttime


@dataclasses.dataclass(frozen=True)
class Identity:
    """A process as (pid, start time since boot, boot id): a pid alone may have been reused.

    ``boot_id`` None means unknown (then only the start time is compared). ``run_tag`` is the
    ``PROCMAN_RUN_TAG`` of the run the process belongs to, so that a stop also finds the run's
    processes that left its tree (:mod:`.runtag`). A ``started`` above :data:`LEGACY_WALL_CLOCK` is
    a 0.1 record's wall-clock time and is compared the 0.1 way.
    """

    pid: int
    started: float
    boot_id: str | None = None
    run_tag: str | None = None

    def matches(self, pid_started: float) -> bool:
        """True when a process's start time since boot is this identity's."""
        return abs(pid_started - self.started) < 0.5 / CLOCK_TICKS

    def process(self) -> psutil.Process | None:
        """The live ``psutil.Process`` if the pid still belongs to this process, else None."""
        if self.boot_id and boot_id() and self.boot_id != boot_id():
            return None  # started before a reboot: whatever has this pid now is another process
        try:
            if self.started > LEGACY_WALL_CLOCK:
                proc = psutil.Process(self.pid)
                return proc if abs(proc.create_time() - self.started) <= _LEGACY_TOLERANCE else None
            if not self.matches(process_start_time(self.pid)):
                return None
            return psutil.Process(self.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def is_alive(self) -> bool:
        """True while the process runs; a zombie (exited, not reaped) counts as ended."""
        proc = self.process()
        if proc is None:
            return False
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def current_identity(pid: int, run_tag: str | None = None) -> Identity:
    """The identity of the live process ``pid`` now (raises ``psutil.NoSuchProcess``)."""
    return Identity(pid, process_start_time(pid), boot_id() or None, run_tag)


def owner_id(host: str, pid: int, nonce: str) -> str:
    """A manager's owner id: ``host|pid|start since boot|nonce|boot id`` (see :func:`owner_identity`)."""
    return f"{host}|{pid}|{process_start_time(pid):.6f}|{nonce}|{boot_id()}"


def owner_identity(owner: str) -> Identity | None:
    """The identity of the manager behind an owner id, or None if it is not one. A 0.1 owner id
    (``host|pid|wall-clock start|nonce``) has no boot id; its start is compared the 0.1 way."""
    parts = owner.split("|")
    if len(parts) not in (4, 5):
        return None
    try:
        pid, started = int(parts[1]), float(parts[2])
    except ValueError:
        return None
    return Identity(pid, started, (parts[4] or None) if len(parts) == 5 else None)


def owner_alive(owner: str) -> bool:
    """Is the manager behind an owner id still running? (Same host only; zombies are dead.) Judged
    by its start since boot and the boot id: a wall-clock step changes nothing."""
    identity = owner_identity(owner)
    return identity is not None and identity.is_alive()


def record_identity(record: t.Mapping[str, t.Any]) -> Identity | None:
    """The identity of a record's process (its ``pid``, ``pid_started`` and ``run_tag``; the boot id
    of the owner that recorded it), or None when it has no pid yet."""
    if record.get("pid") is None or record.get("pid_started") is None:
        return None
    owner = owner_identity(record.get("owner") or "")
    return Identity(int(record["pid"]), float(record["pid_started"]),
                    owner.boot_id if owner is not None else None, record.get("run_tag"))
