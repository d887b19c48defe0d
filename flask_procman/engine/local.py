"""Spawning, identifying and signalling processes on this host (the local backend)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import typing as t

from .identity import Identity, current_identity, process_start_time
from .kill import TreeKiller, children_map, kill_trees, kill_trees_each
from .logfiles import LogFiles
from .runtag import ENV_VAR as RUN_TAG_VAR
from .wrapper import wrapper_argv

IS_WINDOWS = sys.platform == "win32"

# Identity and the tree killer live in their own modules; these names stay importable from here.
__all__ = ["Identity", "TreeKiller", "children_map", "kill_trees", "kill_trees_each", "open_pidfd",
           "process_start_time", "reap", "resolve_executable", "spawn"]


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
    runs the command and records its exact exit status. Raises ``OSError`` (missing executable or
    cwd, permission) before anything runs.
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
    return current_identity(pid, env.get(RUN_TAG_VAR))  # our unreaped child: it cannot vanish


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
