"""Checks of the public API's arguments: each bad value raises the documented error, naming it."""

from __future__ import annotations

import json
import os
import typing as t

from . import errors
from .engine.logfiles import is_valid_process_id


def check_process_id(process_id: object) -> str:
    """A valid process id (it becomes a folder name), or :class:`InvalidProcessId`."""
    if not is_valid_process_id(process_id):
        raise errors.InvalidProcessId(
            f"Invalid process id {process_id!r}: ids are 1-128 characters from A-Z a-z 0-9 . _ - "
            "and start with a letter or digit (they become file names)."
        )
    return t.cast(str, process_id)


def check_seconds(value: object, name: str, *, allow_zero: bool = False) -> float | None:
    """None, or a finite number of seconds (> 0, or >= 0 with ``allow_zero``) as a float."""
    if value is None:
        return None
    valid = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
    if not valid or not (value >= 0 if allow_zero else value > 0):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "positive"
        raise errors.InvalidCommand(f"{name} must be a {bound} number of seconds or None, not {value!r}.")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond any float
        raise errors.InvalidCommand(f"{name} is too large to be a number of seconds.") from None
    if seconds == float("inf"):
        raise errors.InvalidCommand(f"{name} must be finite.")
    return seconds


def check_cmd(cmd: object) -> list[str]:
    """A non-empty list of strings: never a string, since no shell is ever used."""
    if isinstance(cmd, (str, bytes)):
        raise errors.InvalidCommand("cmd must be a list of strings, not a string: no shell is used. "
                                    "Write ['python', 'script.py'] instead of 'python script.py'.")
    if not isinstance(cmd, (list, tuple)) or not cmd:
        raise errors.InvalidCommand(f"cmd must be a non-empty list of strings, not {cmd!r}.")
    if not all(isinstance(part, str) and "\0" not in part for part in cmd) or not cmd[0]:
        raise errors.InvalidCommand("every item of cmd must be a string without NUL characters, "
                                    "and the program name must not be empty.")
    return list(cmd)


def check_env(env: object) -> dict[str, str]:
    """Environment overrides: valid variable names to strings (``{}`` for None)."""
    if env is None:
        return {}
    if not isinstance(env, t.Mapping):
        raise errors.InvalidCommand(f"env must be a mapping of strings to strings, not {type(env).__name__}.")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise errors.InvalidCommand(f"env has an invalid variable name {key!r}.")
        if not isinstance(value, str) or "\0" in value:
            raise errors.InvalidCommand(f"env value of {key!r} must be a string without NUL characters.")
    return dict(env)


def check_cwd(cwd: object) -> str | None:
    """An absolute working directory that the database can store as text, or None."""
    if cwd is None:
        return None
    if not isinstance(cwd, (str, os.PathLike)):
        raise errors.InvalidCommand(f"cwd must be a path or None, not {cwd!r}.")
    workdir = os.path.abspath(os.fspath(cwd))
    if not isinstance(workdir, str) or "\0" in workdir or any("\ud800" <= c <= "\udfff" for c in workdir):
        # It is stored as text: PostgreSQL refuses NUL, and no database takes a lone surrogate.
        raise errors.InvalidCommand("cwd must be a text path without NUL characters or undecodable bytes.")
    return workdir


def check_metadata(metadata: object) -> dict[str, t.Any] | None:
    """JSON-serialisable metadata, as the JSON round trip will store it, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, t.Mapping):
        raise errors.InvalidCommand("metadata must be a JSON-serialisable mapping or None.")
    try:
        return t.cast(dict[str, t.Any], json.loads(json.dumps(dict(metadata), allow_nan=False)))
    except (TypeError, ValueError, RecursionError) as exc:
        raise errors.InvalidCommand(f"metadata must be JSON-serialisable: {exc}.") from None
