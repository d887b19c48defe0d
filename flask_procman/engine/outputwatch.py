"""The watcher's periodic look at the logs of the runs it follows: time index and log caps.

One ``stat`` per stream per look (every :attr:`OutputKeeper.INTERVAL` seconds, faster while a
capped log grows fast); nothing is read from the logs themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import typing as t

from . import outputopts
from .logcap import hole_end, punch_hole
from .logfiles import STREAMS
from .outputopts import OutputOptions
from .timeindex import StreamClock

log = logging.getLogger("flask_procman")

#: ``on_limit(process_id, message)``: stop the run, with ``message`` as its error.
LimitCallback = t.Callable[[str, str], None]


@dataclasses.dataclass
class _Stream:
    path: str
    clock: StreamClock
    size: int = -1
    punched: int = 0  # bytes [0, punched) are freed


@dataclasses.dataclass
class _Run:
    process_id: str
    folder: str
    options: OutputOptions | None = None
    streams: dict[str, _Stream] = dataclasses.field(default_factory=dict)
    limit_sent: bool = False
    cannot_punch: bool = False


class OutputKeeper:
    """Keeps the time index of every followed log and holds each log under its cap."""

    #: Seconds between two looks.
    INTERVAL = 0.1
    #: Seconds between two looks while a capped log grows by more than an eighth of its cap per look.
    FAST = 0.005

    def __init__(self, log_dir: str, on_limit: LimitCallback) -> None:
        self._log_dir = log_dir
        self._on_limit = on_limit
        self._runs: dict[str, _Run] = {}

    def look(self, process_ids: t.Iterable[str]) -> float:
        """Look at the logs of these runs (the ones followed now); the seconds until the next look."""
        mono = time.monotonic()
        wanted = set(process_ids)
        for process_id in [p for p in self._runs if p not in wanted]:
            self._forget(self._runs.pop(process_id), mono)
        fast = False
        for process_id in wanted:
            run = self._runs.get(process_id)
            if run is None:
                run = self._runs[process_id] = _Run(process_id, os.path.join(self._log_dir, process_id))
            fast = self._look(run, mono) or fast
        return self.FAST if fast else self.INTERVAL

    def _forget(self, run: _Run, mono: float) -> None:
        """The run is no longer followed (it ended): a last look (its last bytes may be over the
        cap), and its last bytes are timed at once."""
        self._look(run, mono, final=True)

    def _look(self, run: _Run, mono: float, final: bool = False) -> bool:
        if run.options is None:
            run.options = outputopts.read(run.folder)  # written right after the spawn
        options = run.options or OutputOptions()
        fast = False
        for name in STREAMS:
            stream = run.streams.get(name)
            path = os.path.join(run.folder, name + ".log")
            try:
                info = os.stat(path)
            except OSError:  # not created yet, merged into stdout, or removed
                continue
            if stream is None:
                stream = run.streams[name] = _Stream(path, StreamClock(path))
            wall = time.time()  # after the stat: every byte counted was written by then
            grew = info.st_size - stream.size if stream.size >= 0 else 0
            stream.size = info.st_size
            if final:
                stream.clock.flush(info.st_size, wall, mono)
            else:
                stream.clock.observe(info.st_size, wall, mono)
            cap = options.max_log_bytes
            if cap is None:
                continue
            fast = fast or grew > cap // 8
            if info.st_size > cap:
                self._enforce(run, name, stream, cap, info, options.max_log_action)
        return fast

    def _enforce(self, run: _Run, name: str, stream: _Stream, cap: int, info: os.stat_result, action: str) -> None:
        if action == "truncate" and not run.cannot_punch:
            end = hole_end(info.st_size, cap, info.st_blksize)
            if end <= stream.punched:
                return
            try:
                punch_hole(stream.path, stream.punched, end - stream.punched)
            except FileNotFoundError:
                return
            except OSError as exc:
                run.cannot_punch = True
                log.warning("procman: cannot free the head of %s (%s); stopping %s instead", stream.path, exc,
                            run.process_id)
                self._stop(run, f"Stopped: its {name} log reached max_log_bytes ({cap} bytes) and this "
                                f"filesystem cannot drop the oldest bytes ({exc.strerror or exc}), so it was "
                                f"stopped instead of filling the disk.")
                return
            stream.punched = end
            return
        self._stop(run, f"Stopped: its {name} log reached max_log_bytes ({cap} bytes) "
                        f"(max_log_action='stop').")

    def _stop(self, run: _Run, message: str) -> None:
        if run.limit_sent:
            return
        run.limit_sent = True
        try:
            self._on_limit(run.process_id, message)
        except Exception as exc:  # the database may be down: try again at the next look
            run.limit_sent = False
            log.warning("procman: could not stop %s at its log cap (%s); will retry", run.process_id, exc)
