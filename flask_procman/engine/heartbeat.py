"""Watcher heartbeats: each manager's watcher thread says, in a small file, that it is still looping,
so that another process of the host (the CLI) can tell a live worker whose watcher died.

The files live in ``<log_dir>/.watchers/`` (process ids never start with a dot, so no process folder
can clash). A heartbeat holds the owner id and ``time.monotonic()``: the monotonic clock is shared by
every process of the machine and no wall-clock step moves it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

from .identity import owner_identity

FOLDER = ".watchers"


@dataclasses.dataclass(frozen=True)
class Beat:
    """The last heartbeat of one manager's watcher."""

    owner: str
    age: float  # seconds since the watcher last looped

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"owner": self.owner, "seconds_since_heartbeat": round(self.age, 3)}


def _path(log_dir: str, owner: str) -> str:
    return os.path.join(log_dir, FOLDER, hashlib.sha1(owner.encode()).hexdigest()[:24])


def beat(log_dir: str, owner: str, stamp: float | None = None) -> None:
    """Write this watcher's heartbeat (``stamp``: a ``time.monotonic()``, now by default; atomic
    replace; errors are the caller's)."""
    path = _path(log_dir, owner)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{time.monotonic() if stamp is None else stamp:.3f}\n{owner}\n")
    os.replace(tmp, path)


def forget(log_dir: str, owner: str) -> None:
    """Remove this watcher's heartbeat (a watcher stopped on purpose is not a dead one)."""
    try:
        os.unlink(_path(log_dir, owner))
    except OSError:
        pass


def stale_watchers(log_dir: str, host: str, max_age: float) -> list[Beat]:
    """Managers of ``host`` that are alive but whose watcher has not looped for ``max_age`` seconds.
    Heartbeats of managers that no longer run are deleted on the way."""
    folder = os.path.join(log_dir, FOLDER)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    now = time.monotonic()
    stale: list[Beat] = []
    for name in names:
        if name.endswith(".tmp"):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                stamp, owner = f.read().split("\n")[:2]
            age = now - float(stamp)
        except (OSError, ValueError):
            continue
        if owner.split("|")[0] != host:
            continue
        identity = owner_identity(owner)
        if identity is None or not identity.is_alive():
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        if age > max_age:
            stale.append(Beat(owner, age))
    return stale
