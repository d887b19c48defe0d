"""The run tag: a variable in the environment of every process a run starts, so that the run's
processes can be found without knowing their pids (a daemon that left the process tree, or a
spawn whose pid was never committed because its manager died)."""

from __future__ import annotations

import typing as t
import uuid

import psutil

#: The environment variable that carries a run's tag into the run and all its descendants.
ENV_VAR = "PROCMAN_RUN_TAG"


def new_tag() -> str:
    """A fresh tag, unique to one run (one start of one record)."""
    return uuid.uuid4().hex


def processes_with_tag(tag: str, *, exclude: t.Container[int] = ()) -> list[psutil.Process]:
    """Every process on this host whose environment at exec held ``PROCMAN_RUN_TAG=<tag>``.

    Reads ``/proc/<pid>/environ`` of each process (root sees all; others see their own user's). A
    descendant that cleared its environment before exec is not found: the README says so.
    """
    wanted = f"{ENV_VAR}={tag}".encode()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(proc)
    return found
