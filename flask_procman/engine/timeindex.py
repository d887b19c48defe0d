"""When each byte of a log was written: a small (byte offset, wall time) index beside the log.

An entry ``(offset, time)`` says that at ``time`` the log held ``offset`` bytes: every byte before
``offset`` was written at or before ``time``, every byte from it on after. The watcher appends one
at most once a second, at a look that finds the log grown (and one when the run ends), so a byte's
time is known as "by" the first entry above it, to about a second, and never changes once known:
later entries have larger offsets. The order of two streams' bytes within one second is not known.
Entries are 16 bytes (``<Qd``) appended to ``<log>.times``; the first is written when the log is
created. Past :data:`MAX_ENTRIES` the older half is thinned out (every other entry dropped: their
bytes are then timed by a later entry), so the file stays under 64 KiB. Times never go backwards in
the file, even when the clock is stepped back (an entry then repeats the previous time).
"""

from __future__ import annotations

import bisect
import os
import struct
import typing as t

ENTRY = struct.Struct("<Qd")
#: Most entries kept per stream (64 KiB).
MAX_ENTRIES = 4096
SUFFIX = ".times"

Entry = tuple[int, float]


def index_path(log_path: str) -> str:
    """The index file of the log at ``log_path``."""
    return log_path + SUFFIX


def load(log_path: str) -> list[Entry]:
    """Every entry of a log's index, oldest first (empty when there is none)."""
    try:
        with open(index_path(log_path), "rb") as f:
            data = f.read(MAX_ENTRIES * 2 * ENTRY.size)
    except (FileNotFoundError, NotADirectoryError):
        return []
    whole = len(data) - len(data) % ENTRY.size  # a half-written last entry is ignored
    return [(int(o), float(w)) for o, w in ENTRY.iter_unpack(data[:whole])]


def append(log_path: str, entry: Entry, entries_before: int) -> int:
    """Add ``entry``; returns the number of entries in the file after it (thinned when too many)."""
    path = index_path(log_path)
    if entries_before + 1 > MAX_ENTRIES:
        entries = thin([*load(log_path), entry])
        partial = path + ".partial"
        with open(partial, "wb") as f:
            f.write(b"".join(ENTRY.pack(o, w) for o, w in entries))
        os.replace(partial, path)
        return len(entries)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, ENTRY.pack(*entry))
    finally:
        os.close(fd)
    return entries_before + 1


def thin(entries: list[Entry]) -> list[Entry]:
    """Keep the newer half as it is and every other entry of the older half (the first one stays)."""
    half = len(entries) // 2
    return entries[:half:2] + entries[half:]


def offset_at(entries: t.Sequence[Entry], when: float) -> int:
    """The offset to read from to get every byte written at or after ``when`` (0 when unknown).

    It is the offset of the last entry taken before ``when``: every byte below it was written
    before ``when``; a few above it may have been too (within about a second of ``when``).
    """
    times = [w for _, w in entries]
    index = bisect.bisect_left(times, when) - 1
    return entries[index][0] if index >= 0 else 0


def time_of(entries: t.Sequence[Entry], offset: int) -> float | None:
    """By when the byte at ``offset`` was written (the first entry above it), or None while no
    entry is above it yet (the watcher writes one within about a second)."""
    offsets = [o for o, _ in entries]
    index = bisect.bisect_right(offsets, offset)
    return entries[index][1] if index < len(entries) else None


def covering(entries: t.Sequence[Entry], start: int, end: int) -> list[Entry]:
    """The entries that time the bytes ``[start, end)``: those above ``start`` up to the first at
    or above ``end`` (each times the bytes between the previous one and itself)."""
    result: list[Entry] = []
    for entry in entries:
        if entry[0] > start:
            result.append(entry)
            if entry[0] >= end:
                break
    return result


class StreamClock:
    """The watcher's view of one stream: an entry at most once a second while it grows."""

    MIN_GAP = 1.0

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        existing = load(log_path)
        self.count = len(existing)
        self.last_offset, self.last_time = existing[-1] if existing else (-1, float("-inf"))
        self.last_append = float("-inf")  # time.monotonic() of the last append

    def observe(self, size: int, wall: float, mono: float) -> None:
        """The log held ``size`` bytes at ``wall`` (taken *after* the stat): append an entry when
        it has grown and the last one is a second old."""
        if size > self.last_offset and mono - self.last_append >= self.MIN_GAP:
            self._append((size, wall), mono)

    def flush(self, size: int, wall: float, mono: float) -> None:
        """The stream's end: time its last bytes now, without waiting for the second to pass."""
        if size > self.last_offset:
            self._append((size, wall), mono)

    def _append(self, entry: Entry, mono: float) -> None:
        offset, wall = entry
        wall = max(wall, self.last_time)  # a clock stepped back: never let times go backwards
        try:
            self.count = append(self.log_path, (offset, wall), self.count)
        except OSError:  # the folder was removed (the record was deleted): nothing to time
            return
        self.last_offset, self.last_time, self.last_append = offset, wall, mono
