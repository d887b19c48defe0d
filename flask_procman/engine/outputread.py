"""Reading a log by offset or by time, with what the reader must know: dropped head, byte times."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

from . import timeindex
from .logfiles import LogFiles


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    """Bytes of one stream and where they sit."""

    #: The bytes read.
    data: bytes
    #: The offset of ``data[0]`` (above the offset asked for when that part was dropped).
    offset: int
    #: The offset to read from next.
    next_offset: int
    #: True when bytes between the offset asked for and ``offset`` were dropped (``max_log_bytes``).
    truncated: bool
    #: ``(offset, unix time)`` index entries timing ``data``: each byte was written by the time of
    #: the first entry above it (to about a second); the newest bytes may have none yet.
    times: tuple[tuple[int, float], ...]

    @property
    def time(self) -> dt.datetime | None:
        """By when the first byte was written (to about a second), or None while not known yet."""
        if not self.times or self.times[0][0] <= self.offset:
            return None
        return dt.datetime.fromtimestamp(self.times[0][1], dt.timezone.utc)


def offset_since(logs: LogFiles, stream: str, since: dt.datetime) -> int:
    """The offset of the first byte written at or after ``since`` (to about a second, never later)."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    when = since.timestamp()
    try:
        info = os.stat(logs.path(stream))
    except FileNotFoundError:
        return 0
    # Nothing written since the last write (mtimes come from a coarse clock: a margin): the end.
    if when > info.st_mtime + 0.05:
        return info.st_size
    entries = timeindex.load(logs.path(stream))
    return timeindex.offset_at(entries, when) if entries else 0


def read_chunk(logs: LogFiles, stream: str, offset: int, limit: int) -> OutputChunk:
    """Up to ``limit`` bytes of ``stream`` from ``offset`` (from the first kept byte when the head
    was dropped), with their times."""
    data, start, next_offset = logs.read_at(stream, offset, limit)
    entries = timeindex.load(logs.path(stream))
    times = timeindex.covering(entries, start, max(next_offset, start + 1))
    return OutputChunk(data, start, next_offset, start > offset, tuple(times))
