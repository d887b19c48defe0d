"""The wrapper between the manager and a job: it makes the job's exact exit status outlive the manager.

A ``/bin/sh`` wrapper cannot do this: its ``$?`` is 128+N both for ``exit(128+N)`` and for death by
signal N, and re-raising every status above 128 as a signal stops the wrapper itself on 147 (SIGSTOP)
and leaves the shell's core dump in place of the job's. The wrapper is therefore a small Python
program (the manager's own interpreter in isolated mode, ``-I -S``): it runs the job as its child,
gets the real wait status from ``waitpid``, writes it next to the logs (``code N`` or ``signal N``,
atomically), and ends the same way the job ended (with its own core dumps off), so that the starter's
``waitpid`` and an adopter's reading of the file give the same answer.
"""

from __future__ import annotations

import os
import shutil
import sys

#: Run as ``python -I -S -c WRAPPER <exit file> <cwd> <executable> <args...>``. It ignores the signals
#: a stop sends to the whole group (it must outlive the job to record its end); the job gets every
#: signal back at its default disposition and an empty mask, whatever the manager had (Python ignores
#: SIGPIPE and SIGXFSZ, a server may ignore others). Exit codes 126/127 as a shell: cwd or exec failed.
WRAPPER = r"""
import os, sys
try:
    import _signal as signal  # the C module: "import signal" costs more than the rest of the start (enum)
except ImportError:
    import signal
path, cwd, *argv = sys.argv[1:]
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
def put(text):
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)
    except OSError:
        pass
def fail(code, what, exc):
    sys.stderr.write("procman: cannot %s: %s\n" % (what, exc))
    sys.stderr.flush()
    put("code %d" % code)
    os._exit(code)
try:
    os.chdir(cwd)
except OSError as exc:
    fail(126, "change to " + cwd, exc)
try:
    pid = os.posix_spawn(argv[0], argv, os.environ, setsigmask=(),
                         setsigdef=signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
except OSError as exc:
    fail(127 if isinstance(exc, FileNotFoundError) else 126, "run " + argv[0], exc)
while True:
    try:
        status = os.waitpid(pid, 0)[1]
        break
    except ChildProcessError:
        put("lost")
        os._exit(255)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    put("signal %d" % sig)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    except (OSError, ValueError):
        pass
    os._exit(128 + sig)
code = os.WEXITSTATUS(status)
put("code %d" % code)
os._exit(code)
"""


def _find_python() -> str:
    """The interpreter that runs the wrapper: this one, unless it is embedded (uWSGI, mod_wsgi)."""
    exe = sys.executable
    if exe and os.path.basename(exe).lower().startswith("python") and os.access(exe, os.X_OK):
        return exe
    return shutil.which("python3") or shutil.which("python") or "/usr/bin/python3"


PYTHON = _find_python()


def wrapper_argv(exit_status_path: str, workdir: str, executable: str, args: list[str]) -> list[str]:
    """The argv that runs ``executable args`` in ``workdir`` under the wrapper."""
    return [PYTHON, "-I", "-S", "-c", WRAPPER, exit_status_path, workdir, executable, *args]


def parse_exit_status(text: str) -> int | None:
    """An exit-status file's content as ``Popen.returncode`` gives it: N for ``code N``, -N for
    ``signal N``; None when unreadable. A bare integer is a file written by the 0.1 ``/bin/sh``
    wrapper (``$?``, 128+N for signal N): read it as that wrapper meant it."""
    words = text.split()
    try:
        if len(words) == 2 and words[0] == "code":
            return int(words[1])
        if len(words) == 2 and words[0] == "signal":
            return -int(words[1])
        if len(words) == 1:
            status = int(words[0])
            return -(status - 128) if 128 < status < 128 + 65 else status
    except ValueError:
        return None
    return None
