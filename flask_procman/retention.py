"""Removing finished records and their log files: one by one, or by age (``PROCMAN_RETENTION``)."""

from __future__ import annotations

import datetime as dt
import typing as t

from . import errors
from .engine.logfiles import LogFiles
from .store import FINAL, utcnow
from .validation import check_process_id

if t.TYPE_CHECKING:
    from .runtime import Runtime


def remove_process(runtime: Runtime, process_id: str) -> bool:
    """Delete a finished process's record and log files; False if unknown."""
    process_id = check_process_id(process_id)
    runtime.check_fork()
    row = runtime.store.get(process_id)
    if row is None:
        return False
    if row["status"] not in FINAL:
        raise errors.ProcessNotFinished(f"Process {process_id!r} is {row['status']}; stop it before removing it.")
    if not runtime.store.delete(process_id):
        return False
    LogFiles(runtime.settings.log_dir, process_id).remove()
    return True


def prune(runtime: Runtime) -> int:
    """Delete finished records (and their logs) older than ``PROCMAN_RETENTION``; returns how many."""
    retention = runtime.settings.retention
    if retention is None:
        return 0
    runtime.check_fork()
    removed = 0
    for process_id in runtime.store.expired(utcnow() - dt.timedelta(seconds=retention)):
        if runtime.store.delete(process_id):
            LogFiles(runtime.settings.log_dir, process_id).remove()
            removed += 1
    return removed
