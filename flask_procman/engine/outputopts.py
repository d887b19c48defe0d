"""A run's output options (progress mode, log cap and what to do at it): checked, stored, found again.

They travel in the record (column ``output_options``: a queued start keeps them until it is
promoted) and, from the moment its log folder is made (before the child exists), in
``output.json`` next to its logs, where the watcher of whichever manager follows the run reads
them without a database query.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing as t

from ..errors import InvalidCommand
from .logcap import ACTIONS, MIN_MAX_LOG_BYTES
from .progressfile import MODES

FILE_NAME = "output.json"


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """Effective output options of one run."""

    #: ``"file"`` (the default: ``PROCMAN_PROGRESS_FILE``) or ``"tqdm"`` (tqdm's bar on stderr).
    progress: str = "file"
    #: Bytes a log may hold (None: unbounded).
    max_log_bytes: int | None = None
    #: ``"truncate"`` (keep the newest bytes) or ``"stop"`` (stop the run) at the cap.
    max_log_action: str = "truncate"

    def to_json(self) -> dict[str, t.Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: t.Any) -> OutputOptions:
        """Options from a stored dict; unknown or broken values fall back to the defaults."""
        if not isinstance(data, dict):
            return cls()
        progress = data.get("progress")
        cap = data.get("max_log_bytes")
        action = data.get("max_log_action")
        return cls(
            progress=progress if progress in MODES else "file",
            max_log_bytes=cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None,
            max_log_action=action if action in ACTIONS else "truncate",
        )


def check_options(progress: str | None, max_log_bytes: int | None, max_log_action: str | None) -> dict[str, t.Any] | None:
    """The per-run choices to store (only those given), or None; ``InvalidCommand`` names a bad one."""
    chosen: dict[str, t.Any] = {}
    if progress is not None:
        if progress not in MODES:
            raise InvalidCommand(f"progress must be one of {list(MODES)} or None, not {progress!r}.")
        chosen["progress"] = progress
    if max_log_bytes is not None:
        if isinstance(max_log_bytes, bool) or not isinstance(max_log_bytes, int) or max_log_bytes < MIN_MAX_LOG_BYTES:
            raise InvalidCommand(f"max_log_bytes must be an integer >= {MIN_MAX_LOG_BYTES} or None, not {max_log_bytes!r}.")
        chosen["max_log_bytes"] = max_log_bytes
    if max_log_action is not None:
        if max_log_action not in ACTIONS:
            raise InvalidCommand(f"max_log_action must be one of {list(ACTIONS)}, not {max_log_action!r}.")
        chosen["max_log_action"] = max_log_action
    return chosen or None


def effective(chosen: t.Mapping[str, t.Any] | None, default_max_bytes: int | None, default_action: str) -> OutputOptions:
    """A run's options: its own choices over the app's ``PROCMAN_MAX_LOG_*`` defaults."""
    chosen = chosen or {}
    return OutputOptions.from_json({
        "progress": chosen.get("progress", "file"),
        "max_log_bytes": chosen.get("max_log_bytes", default_max_bytes),
        "max_log_action": chosen.get("max_log_action", default_action),
    })


def write(folder: str, options: OutputOptions) -> None:
    """Write ``output.json`` into a run's log folder (atomically: the watcher may read it any time)."""
    path = os.path.join(folder, FILE_NAME)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(options.to_json(), f)
    os.replace(partial, path)


def read(folder: str) -> OutputOptions | None:
    """The options in a run's ``output.json``, or None when it is not written (yet)."""
    try:
        with open(os.path.join(folder, FILE_NAME), encoding="utf-8") as f:
            return OutputOptions.from_json(json.load(f))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
