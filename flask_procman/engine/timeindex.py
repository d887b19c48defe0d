"""When each byte of a log was written: a small (byte offset, wall time) index beside the log.

An entry ``(offset, time)`` says that at ``time`` the log held ``offset`` bytes: every byte from
``offset`` on was written *after* ``time``, every byte before it at or before ``time``. The
watcher appends an entry at most once a second while a stream grows (a lower bound taken just
before the growth was seen), so the time of a byte is known to about a second: the order of two
streams' bytes within one second is not. Entries are 16 bytes (``<Qd``) appended to
``<log>.times``; past :data:`MAX_ENTRIES` the older half is thinned out (every other entry
dropped), so the file stays under 64 KiB. Times never go backwards in the file, even when the
clock is stepped back (an entry then repeats the previous time).
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

    It is the offset of the last entry taken at or before ``when``: bytes before it were written
    before ``when``; a few after it may have been written up to a second before ``when`` too.
    """
    times = [w for _, w in entries]
    index = bisect.bisect_right(times, when) - 1
    return entries[index][0] if index >= 0 else 0


def time_of(entries: t.Sequence[Entry], offset: int) -> float | None:
    """When the byte at ``offset`` was written, to about a second (the latest entry at or below
    it; it was written after that time), or None before the first entry."""
    offsets = [o for o, _ in entries]
    index = bisect.bisect_right(offsets, offset) - 1
    return entries[index][1] if index >= 0 else None


def covering(entries: t.Sequence[Entry], start: int, end: int) -> list[Entry]:
    """The entries that time the bytes ``[start, end)``: the one covering ``start`` (moved to
    ``start``) and every later one that starts before ``end``."""
    result: list[Entry] = []
    first = time_of(entries, start)
    if first is not None:
        result.append((start, first))
    result.extend(e for e in entries if start < e[0] < end)
    return result


class StreamClock:
    """The watcher's view of one stream: appends entries at most once a second.

    Two kinds of entry: just before a growth was seen, ``(old size, time of the look that saw
    it)``, which times the new bytes to within a look; and once the stream pauses, ``(size, time
    of that look)``, a checkpoint after the bytes (so the next bytes are timed after them even when
    the look just before them is missed).
    """

    MIN_GAP = 1.0

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        existing = load(log_path)
        self.count = len(existing)
        self.last_offset, self.last_time = existing[-1] if existing else (-1, float("-inf"))
        self.last_append = float("-inf")  # time.monotonic() of the last append
        self.seen: Entry | None = None  # (size, wall time) at the previous look
        self.pending: Entry | None = None
        self.unmarked = False  # bytes written since the last checkpoint

    def _newer(self, entry: Entry) -> bool:
        return entry[0] > self.last_offset or (entry[0] == self.last_offset and entry[1] > self.last_time)

    def observe(self, size: int, wall: float, mono: float) -> None:
        """Note the stream's size now; append the entry a growth calls for when it is due."""
        seen, self.seen = self.seen, (size, wall)
        grew = size > (seen[0] if seen is not None else max(self.last_offset, 0))
        if grew:
            self.unmarked = True
            if seen is not None and self.pending is None and self._newer(seen):
                self.pending = seen  # every byte from seen[0] on came after seen[1]
        if mono - self.last_append < self.MIN_GAP:
            return
        if self.pending is not None:
            entry, self.pending = self.pending, None
            self._append(entry, mono)
        elif self.unmarked and not grew:
            self.unmarked = False
            self._append((size, wall), mono)

    def flush(self, mono: float) -> None:
        """The stream's end: append what is pending and a last checkpoint now, without waiting."""
        if self.pending is not None:
            entry, self.pending = self.pending, None
            self._append(entry, mono)
        if self.unmarked and self.seen is not None:
            self.unmarked = False
            self._append(self.seen, mono)

    def _append(self, entry: Entry, mono: float) -> None:
        offset, wall = entry
        wall = max(wall, self.last_time)  # a clock stepped back: never let times go backwards
        if offset < self.last_offset or (offset, wall) == (self.last_offset, self.last_time):
            return
        try:
            self.count = append(self.log_path, (offset, wall), self.count)
        except OSError:  # the folder was removed (the record was deleted): nothing to time
            return
        self.last_offset, self.last_time, self.last_append = offset, wall, mono
