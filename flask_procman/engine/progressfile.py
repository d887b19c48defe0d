"""Reading a run's progress: the last complete line of its progress file, or tqdm's bar on stderr.

Both are read from the end of the file, at most :data:`TAIL_BYTES`, however large it is.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import typing as t

#: Bytes read from the end of the progress file (or of stderr for tqdm).
TAIL_BYTES = 8 * 1024
#: The progress modes a start or a program may choose.
MODES = ("file", "tqdm")

_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_NUMBER = r"(\d+(?:\.\d+)?)([kMGTP]?)"
#: tqdm's default bar with a total: ``desc: 30%|###   | 60/200 [00:01<00:02, 59.1it/s]``.
_TQDM_TOTAL = re.compile(r"(?:(?P<desc>.*?): ?)?\s*\d+%\|[^|]*\|\s*" + _NUMBER + r"/" + _NUMBER + r"\s*\[")
#: ... and without one: ``desc: 60it [00:01, 59.1it/s]``.
_TQDM_COUNT = re.compile(r"(?:(?P<desc>.*?): ?)?\s*" + _NUMBER + r"[A-Za-z/]*\s*\[\d+:\d\d")


class Progress(t.TypedDict):
    """What a run reported last."""

    done: float
    total: float | None
    fraction: float | None
    message: str | None
    updated_at: dt.datetime
    eta_seconds: float | None


def _tail(path: str, max_bytes: int = TAIL_BYTES) -> tuple[bytes, float] | None:
    """The last bytes of ``path`` and its modification time, or None when there is no file."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            start = max(0, info.st_size - max_bytes)
            f.seek(start)
            return f.read(max_bytes), info.st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None


def _number(value: t.Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def parse_line(line: str) -> tuple[float, float | None, str | None] | None:
    """``(done, total, message)`` of one progress line (JSON or ``done [total [message]]``), or None."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        done = _number(record.get("done"))
        total = _number(record.get("total")) if record.get("total") is not None else None
        message = record.get("message")
        if done is None or (record.get("total") is not None and total is None):
            return None
        return done, total, str(message) if message is not None else None
    parts = line.split(None, 2)
    try:
        done_value = float(parts[0])
        total_value = float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return None
    done = _number(done_value)
    total = _number(total_value) if total_value is not None else None
    if done is None or (total_value is not None and total is None):
        return None
    return done, total, parts[2] if len(parts) > 2 else None


def last_file_report(path: str) -> tuple[float, float | None, str | None, float] | None:
    """The last complete, valid line of a progress file and the file's mtime (None if none)."""
    found = _tail(path)
    if found is None:
        return None
    data, mtime = found
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is not complete yet
    for raw in reversed(lines):
        parsed = parse_line(raw.decode("utf-8", errors="replace"))
        if parsed is not None:
            return (*parsed, mtime)
    return None


def _scaled(number: str, suffix: str) -> float:
    return float(number) * _SCALE[suffix]


def last_tqdm_report(path: str) -> tuple[float, float | None, str | None, float] | None:
    """The last tqdm bar at the end of a log (tqdm redraws with ``\\r``), and the file's mtime."""
    found = _tail(path)
    if found is None:
        return None
    data, mtime = found
    segments = re.split(rb"[\r\n]", data)
    for raw in reversed(segments):
        text = raw.decode("utf-8", errors="replace")
        match = _TQDM_TOTAL.search(text)
        if match is not None:
            done, total = _scaled(match.group(2), match.group(3)), _scaled(match.group(4), match.group(5))
            return done, total, _desc(match.group("desc")), mtime
        match = _TQDM_COUNT.search(text)
        if match is not None:
            return _scaled(match.group(2), match.group(3)), None, _desc(match.group("desc")), mtime
    return None


def _desc(text: str | None) -> str | None:
    text = (text or "").strip()
    return text or None


def read_progress(progress_path: str, stderr_path: str, mode: str | None,
                  started_at: dt.datetime | None) -> Progress | None:
    """The run's progress (see README: "Progress"), or None when it reported nothing.

    ``eta_seconds`` extrapolates the average rate since the start (``started_at``) to the total,
    as of ``updated_at``; None without a total, before the first unit, or when it is done.
    """
    found = last_tqdm_report(stderr_path) if mode == "tqdm" else last_file_report(progress_path)
    if found is None:
        return None
    done, total, message, mtime = found
    updated_at = dt.datetime.fromtimestamp(mtime, dt.timezone.utc)
    fraction = min(1.0, done / total) if total else (1.0 if total == 0 else None)
    eta: float | None = None
    if total and started_at is not None and 0 < done < total:
        elapsed = (updated_at - started_at).total_seconds()
        if elapsed > 0:
            eta = round(elapsed * (total - done) / done, 1)
    elif total and done >= total:
        eta = 0.0
    return Progress(done=_plain(done), total=_plain(total) if total is not None else None, fraction=fraction,
                    message=message, updated_at=updated_at, eta_seconds=eta)


def _plain(value: float) -> float:
    """Whole numbers as ``int`` (JSON ``60``, not ``60.0``)."""
    return int(value) if value.is_integer() else value
