"""Report a run's progress to procman from inside the child: ``report(60, 200, "evaluating")``.

Standard library only, and importing it does not import Flask (``flask_procman/__init__`` loads
its public names lazily), so a script pays a few milliseconds for it. Outside procman (no
``PROCMAN_PROGRESS_FILE`` in the environment) :func:`report` does nothing.

The file is plain text, one report per line, the last complete line counts; a script in any
language can write it itself::

    echo "60 200 evaluating" >> "$PROCMAN_PROGRESS_FILE"
    # or JSON: {"done": 60, "total": 200, "message": "evaluating"}
"""

from __future__ import annotations

import json
import math
import os

#: The environment variable procman gives every child: the path of its progress file.
ENV_VAR = "PROCMAN_PROGRESS_FILE"

#: Past this size the file is replaced by one holding only the newest line (it never grows
#: without bound however often a script reports).
MAX_FILE_BYTES = 64 * 1024

#: Longest message kept, in characters.
MAX_MESSAGE = 200


def format_line(done: float, total: float | None = None, message: str | None = None) -> str:
    """The JSON line :func:`report` writes (newline included)."""
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    record: dict[str, object] = {"done": done, "total": total}
    if message is not None:
        record["message"] = " ".join(str(message).split())[:MAX_MESSAGE]
    return json.dumps(record, ensure_ascii=False) + "\n"


def report(done: float, total: float | None = None, message: str | None = None) -> bool:
    """Tell procman that ``done`` of ``total`` units are done (``message`` says what is going on).

    Returns False (and does nothing) outside procman. ``ValueError`` for a negative or
    non-finite number; never raises for I/O errors: progress is
    a nicety, and a full disk must not kill the evaluation that reports it.
    """
    data = format_line(done, total, message).encode("utf-8")  # a wrong call fails outside procman too
    path = os.environ.get(ENV_VAR)
    if not path:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            if os.fstat(fd).st_size + len(data) > MAX_FILE_BYTES:
                _replace(path, data)
            else:
                os.write(fd, data)  # one small O_APPEND write: a reader sees the line whole or not at all
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _replace(path: str, data: bytes) -> None:
    """Swap in a file holding only ``data`` (rename: a reader sees the old file or the new one)."""
    partial = f"{path}.{os.getpid()}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(partial, path)
