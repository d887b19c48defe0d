"""Spawning, identifying and signalling processes on this host (the local backend)."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import typing as t

import psutil

from .logfiles import LogFiles
from .wrapper import wrapper_argv


IS_WINDOWS = sys.platform == "win32"


@dataclasses.dataclass(frozen=True)
class Identity:
    """A process as (pid, start time): a pid alone may have been reused by another process."""

    pid: int
    started: float

    def process(self) -> psutil.Process | None:
        """The live ``psutil.Process`` if the pid still belongs to this process, else None."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) > 0.01:
                return None
            return proc
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


def process_start_time(pid: int) -> float:
    """psutil's start time of ``pid`` (the second half of an :class:`Identity`)."""
    return psutil.Process(pid).create_time()


def resolve_executable(cmd0: str, cwd: str | None, env: t.Mapping[str, str]) -> str:
    """Absolute path of the program ``cmd0``, or an ``OSError`` like the one exec would give."""
    if os.sep in cmd0 or (os.altsep and os.altsep in cmd0):
        path = cmd0 if os.path.isabs(cmd0) else os.path.join(cwd or os.getcwd(), cmd0)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cmd0)
    else:
        found = shutil.which(cmd0, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cmd0)
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), cmd0)
    return os.path.abspath(path)


def spawn(cmd: list[str], cwd: str | None, env: dict[str, str], logs: LogFiles, merge_stderr: bool) -> Identity:
    """Start ``cmd`` in a new session with its output going straight into ``logs``.

    ``os.posix_spawn`` (vfork: cheap) runs the wrapper (:mod:`.wrapper`), which changes to ``cwd``,
    runs the command and records its exact exit status. Raises ``OSError`` (missing executable or cwd, permission) before anything runs.
    """
    workdir = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    if not os.path.isdir(workdir):
        raise FileNotFoundError(errno.ENOENT, "working directory does not exist", cwd)
    executable = resolve_executable(cmd[0], workdir, env)
    out_fd, err_fd = logs.create(merge_stderr)
    try:
        if IS_WINDOWS:  # pragma: no cover - Linux is the tested platform
            flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
            popen = subprocess.Popen([executable, *cmd[1:]], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=out_fd, stderr=err_fd, creationflags=flags)
            pid = popen.pid
        else:
            argv = wrapper_argv(logs.exit_status_path, workdir, executable, cmd[1:])
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_fd, 1),
                    (os.POSIX_SPAWN_DUP2, err_fd, 2),
                ],
                setsid=True,
            )
    finally:
        os.close(out_fd)
        if err_fd != out_fd:
            os.close(err_fd)
    try:
        started = process_start_time(pid)
    except psutil.NoSuchProcess:  # pragma: no cover - our unreaped child cannot vanish
        started = time.time()
    return Identity(pid, started)


def reap(pid: int) -> int | None:
    """Collect our child's exit status without blocking: its return code, or None if it runs.

    Raises ``ChildProcessError`` when it is not (or no longer) our child.
    """
    waited, status = os.waitpid(pid, os.WNOHANG)
    if waited == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def open_pidfd(identity: Identity) -> int | None:
    """A pidfd for the process if the platform has them and it is still this process, else None."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(identity.pid)
    except OSError:
        return None
    # Opened by pid: check that the pid still belongs to this process now that it is pinned.
    if identity.process() is None:
        os.close(fd)
        return None
    return fd


def children_map() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` from ONE pass over the process table.

    ``psutil.Process.children(recursive=True)`` makes that pass on every call: stopping N processes
    one by one read /proc N times over (500 stops on a host with 1,100 processes: 550,000 reads).
    """
    tree: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            tree.setdefault(ppid, []).append(proc.pid)
    return tree


class TreeKiller:
    """Stops a process and all its descendants: SIGTERM, then SIGKILL after a grace period.

    The descendants are listed *before* signalling (psutil), so grandchildren that left the process
    group with ``setsid`` die too; the group is signalled as well, for children forked meanwhile.
    Non-blocking steps so that the watcher can run many stops at once; :func:`kill_tree` blocks.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.procs: dict[int, psutil.Process] = {}

    def _collect(self, tree: dict[int, list[int]] | None = None) -> None:
        root = self.identity.process()
        if root is None:
            return
        self.procs.setdefault(root.pid, root)
        if tree is None:
            try:
                for child in root.children(recursive=True):
                    self.procs.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                pass
            return
        started = root.create_time()
        stack, seen = list(tree.get(root.pid, ())), {root.pid}
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
            stack.extend(tree.get(pid, ()))

    def _signal_all(self, sig: int, tree: dict[int, list[int]] | None = None) -> None:
        """Signal every process of the tree exactly once: a second SIGTERM can kill a child that
        is already shutting down gracefully (Python restores default handlers as it exits)."""
        self._collect(tree)
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

    def terminate(self, tree: dict[int, list[int]] | None = None) -> None:
        """Send SIGTERM to the tree (``tree``: a :func:`children_map` shared by many killers)."""
        self._signal_all(signal.SIGTERM if not IS_WINDOWS else signal.CTRL_BREAK_EVENT, tree)  # type: ignore[attr-defined,unused-ignore]

    def kill(self, tree: dict[int, list[int]] | None = None) -> None:
        """Send SIGKILL to the tree."""
        self._signal_all(signal.SIGKILL if not IS_WINDOWS else signal.SIGTERM, tree)

    def survivors(self) -> list[int]:
        """Pids of the tree still running (zombies count as ended)."""
        alive = []
        for pid, proc in list(self.procs.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive


def kill_trees(identities: t.Sequence[Identity], grace: float, poll: float = 0.02) -> list[int]:
    """Stop every tree at once (SIGTERM, ``grace`` seconds, SIGKILL); returns the pids that survived."""
    killers = [TreeKiller(identity) for identity in identities]
    tree = children_map() if len(killers) > 1 else None
    for killer in killers:
        killer.terminate(tree)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(killer.survivors() for killer in killers):
            return []
        time.sleep(poll)
    tree = children_map() if len(killers) > 1 else None
    for killer in killers:
        killer.kill(tree)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        left = [pid for killer in killers for pid in killer.survivors()]
        if not left:
            return []
        time.sleep(poll)
    return left
