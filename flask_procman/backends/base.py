"""The seam between procman's records and the engine that runs a record's command.

Records, caps, queues, handlers and reads stay above this interface, once; spawning, observing
ends, stopping and output transport sit below it. :class:`~flask_procman.backends.local.LocalBackend`
is this host's engine; a Ray Jobs backend (see :mod:`flask_procman.backends`) is meant to implement
the same protocol with a job's submission id as its handle.
"""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from ..recovery import RunFinding

#: What a backend returns for a submitted run and takes back to follow or stop it.
H = t.TypeVar("H")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a record, as a backend receives it (env values are never stored by procman)."""

    process_id: str
    run_tag: str | None
    cmd: tuple[str, ...]
    cwd: str | None
    env: t.Mapping[str, str]
    merge_stderr: bool
    output_options: t.Mapping[str, t.Any] | None = None
    resources: t.Mapping[str, t.Any] | None = None

    @classmethod
    def from_record(cls, record: t.Mapping[str, t.Any], env: t.Mapping[str, str]) -> RunSpec:
        """The run of a claimed record with its env overrides."""
        return cls(process_id=record["id"], run_tag=record.get("run_tag"), cmd=tuple(record["cmd"]),
                   cwd=record["cwd"], env=dict(env), merge_stderr=bool(record["merge_stderr"]),
                   output_options=record.get("output_options"), resources=record.get("resources"))


class Backend(t.Protocol[H]):
    """An engine that runs records' commands: submit, observe the end, stop, find after a crash.

    Every method is called outside any database transaction. The end of a followed run is reported
    to procman through ``record_end`` (the watcher's client), which records it exactly once.
    """

    #: ``"local"``, or the key of the backend in the configuration.
    name: str

    def submit(self, run: RunSpec) -> H:
        """Start ``run`` (its output goes to procman's log files); raises ``OSError`` or
        ``ValueError`` (local) or a ``BackendError`` when it could not be started."""

    def cancel(self, handle: H, process_id: str) -> None:
        """Undo a submit whose record could not be written: stop it, wait for it, forget its end."""

    def handle_columns(self, handle: H) -> dict[str, t.Any]:
        """The record's columns that name a run's handle, written by the compare-and-set to
        ``running`` (local: ``pid`` and ``pid_started``); :meth:`handle_of` reads them back."""

    def handle_of(self, record: t.Mapping[str, t.Any]) -> H | None:
        """The handle of a record's run (None while it has none: not yet submitted)."""

    def is_alive(self, handle: H) -> bool:
        """True while the run has not ended."""

    def follow(self, process_id: str, handle: H, *, own: bool, timeout_left: float | None) -> None:
        """Observe the run until it ends (``own``: submitted by this manager, not adopted), enforcing
        its timeout; its end is recorded through the watcher's client."""

    def stop(self, handles: t.Sequence[H], grace: float) -> list[list[int]]:
        """Stop runs together: terminate, then force after ``grace`` seconds. Returns, per handle,
        what survived the force (pids; empty when everything ended)."""

    def exit_code_after_stop(self, handle: H, process_id: str, *, own: bool) -> int | None:
        """The exit code of a run that was just stopped (by signal: negative)."""

    def read_exit_status(self, process_id: str) -> int | None:
        """The exit status a run left where any manager can read it, if any."""

    def find(self, run_tag: str | None, process_id: str) -> RunFinding:
        """What a run tag finds of a run whose starter died before recording it (adoption)."""

    def clear_leftovers(self, finding: RunFinding) -> None:
        """Stop what an ended run left behind (found by :meth:`find`)."""
