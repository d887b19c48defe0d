"""Starting: validate, claim a slot or a place in the queue, submit to the backend outside any
transaction, compare-and-set ``running``; and the promotion of queued starts (same protocol)."""

from __future__ import annotations

import logging
import os
import typing as t
import uuid

from . import errors
from .backends.base import RunSpec
from .ends import try_store
from .engine import outputopts
from .engine.logfiles import LogFiles, is_valid_process_id
from .engine.runtag import new_tag
from .programs import Program, make_program
from .recovery import NEVER_STARTED
from .store import utcnow
from .teardown import check_bindable
from .validation import check_cmd, check_cwd, check_env, check_metadata, check_process_id, check_seconds

if t.TYPE_CHECKING:
    from .backends.base import Backend
    from .ends import EndRecorder
    from .extension import ProcMan
    from .remote_runs import RemoteRuns
    from .runtime import CompletionCallback, Runtime

log = logging.getLogger("flask_procman")

#: ``launch(record, env_overrides) -> handle``: submits a claimed record's run to the backend.
Launch = t.Callable[[t.Mapping[str, t.Any], dict[str, str]], t.Any]


class Starter:
    """Claims in the database (the cap holds across every manager), then submits; never submits
    inside a transaction, and never leaves a run that no committed record names."""

    def __init__(self, runtime: Runtime, ends: EndRecorder, backend: Backend[t.Any], extension: ProcMan, *,
                 launch: Launch, bind: t.Callable[[str, str | None], None], remote: RemoteRuns) -> None:
        self._rt = runtime
        self._remote = remote
        self._ends = ends
        self._backend = backend
        self._extension = extension
        self._launch = launch
        self._bind = bind

    def launch(self, record: t.Mapping[str, t.Any], overrides: dict[str, str]) -> t.Any:
        """Submit the run of a claimed record with its env overrides to the backend."""
        return self._backend.submit(RunSpec.from_record(record, overrides))

    def start_process(
        self, process_id: str, cmd: t.Sequence[str], cwd: str | os.PathLike[str] | None = None,
        env: t.Mapping[str, str] | None = None, on_complete: CompletionCallback | None = None, *,
        timeout: float | None = None, queue: bool = False, merge_stderr: bool = False,
        metadata: t.Mapping[str, t.Any] | None = None, handler: str | None = None,
        program: str | None = None, stop_on_teardown: bool = False, progress: str | None = None,
        max_log_bytes: int | None = None, max_log_action: str | None = None,
        backend: str | None = None, resources: t.Mapping[str, t.Any] | None = None,
    ) -> bool:
        """Start ``cmd``; see :meth:`flask_procman.ProcMan.start_process`."""
        rt = self._rt
        if stop_on_teardown:
            check_bindable(rt.app)  # before anything starts: no process the teardown could miss
        process_id = check_process_id(process_id)
        argv = check_cmd(cmd)
        overrides = check_env(env)
        timeout = check_seconds(timeout, "timeout")
        workdir = check_cwd(cwd)
        if on_complete is not None and not callable(on_complete):
            raise errors.InvalidCommand("on_complete must be a callable(process_id, return_code) or None.")
        if handler is not None and handler not in self._extension.handlers:
            raise errors.UnknownHandler(
                f"No completion handler named {handler!r}; register it at app setup with "
                f"@procman.on_complete({handler!r})."
            )
        meta = check_metadata(metadata)
        output_options = outputopts.check_options(progress, max_log_bytes, max_log_action)
        wanted = self._remote.check(backend, resources)
        remote = backend if backend not in (None, "local") else None
        if remote is not None:
            merge_stderr = True  # Ray keeps one merged stream
        rt.ensure()
        record = {
            "id": process_id, "cmd": argv, "cwd": workdir, "env_keys": sorted(overrides),
            "program": program, "handler": handler, "meta": meta, "merge_stderr": bool(merge_stderr),
            "timeout": timeout, "host": rt.host, "owner": rt.owner, "created_at": utcnow(),
            "return_code": None, "pid": None, "pid_started": None, "started_at": None,
            "finished_at": None, "stop_requested": None, "error": None, "survivors": None,
            "handler_state": None, "run_tag": new_tag(), "output_options": output_options,
            "namespace": rt.settings.namespace, "backend": remote, "resources": wanted,
        }
        logs = LogFiles(rt.settings.log_dir, process_id)
        # While in flight, our own watcher leaves the ``starting`` record alone; afterwards a record
        # still ``starting`` (the database failed at the wrong moment) is settled like a dead owner's.
        ours = process_id not in rt.in_flight  # a second start of the same id must not clear the first's mark
        rt.in_flight.add(process_id)
        try:
            try:
                status, _replaced = rt.store.claim(
                    record, rt.settings.cap_of(remote), queue,
                    on_queued=(lambda: logs.write_env(overrides)) if overrides else None,
                    on_replace=logs.remove,  # the new run never shows a byte of the old one
                )
            except KeyError:
                raise errors.ProcessExists(
                    f"Process id {process_id!r} is already running or queued; stop it or choose another id."
                ) from None
            except OSError as exc:  # the queued env file could not be written: the claim was rolled back
                raise errors.StartError(f"Could not queue {process_id!r}: {exc}") from exc
            if status is None:
                return False
            if on_complete is not None:
                rt.callbacks[process_id] = on_complete
            if stop_on_teardown:
                self._bind(process_id, str(record["run_tag"]))
            if status == "queued":
                rt.request_tick()
                return True
            self._spawn_claimed(record, overrides, promoted=False)
            return True
        finally:
            if ours:
                rt.in_flight.discard(process_id)

    def promote_queued(self) -> None:
        """The watcher's pass: claim the free slots for the oldest queued starts of this host and
        start them (a database failure leaves them ``starting``, settled on a later tick)."""
        rt = self._rt
        for backend in [None, *self._remote.names()]:
            for record in rt.store.promote(rt.host, rt.settings.cap_of(backend), rt.owner, rt.settings.namespace,
                                           backend):
                self._start_promoted(record)

    def _start_promoted(self, record: dict[str, t.Any]) -> None:
        rt = self._rt
        rt.in_flight.add(record["id"])
        try:
            overrides = LogFiles(rt.settings.log_dir, record["id"]).read_env() or {}
            self._spawn_claimed(record, overrides, promoted=True)
        except errors.StoreUnavailable as exc:  # settled (back to the queue) on a later tick
            log.warning("procman: could not start the promoted %s (%s); will retry", record["id"], exc)
        finally:
            rt.in_flight.discard(record["id"])

    def _spawn_claimed(self, record: t.Mapping[str, t.Any], overrides: dict[str, str], *, promoted: bool) -> None:
        """Steps 2 and 3 of the start protocol for a committed ``starting`` record of ours: submit
        outside any transaction, then compare-and-set ``starting`` -> ``running`` with the pid.

        A direct start raises ``StartError`` (spawn failed) or ``StoreUnavailable`` (the pid could
        not be committed: the process is stopped and reaped); a promoted one never raises for a
        database failure: its run is adopted through its run tag once the database is back.
        """
        rt = self._rt
        if record.get("backend"):
            self._remote.start_claimed(record, overrides, promoted=promoted)
            return
        process_id = record["id"]
        logs = LogFiles(rt.settings.log_dir, process_id)
        try:
            handle = self._launch(record, overrides)
        except (OSError, ValueError) as exc:  # ValueError: an argument or env the OS cannot encode
            message = f"Could not start {record['cmd'][0]!r}: {exc}"
            self._ends.fail_start(process_id, message, promoted=promoted)
            if promoted:
                return
            raise errors.StartError(message) from exc
        try:
            won = rt.store.update(process_id, expect_status=["starting"], expect_owner=rt.owner,
                                  expect_no_stop=True, status="running", started_at=utcnow(),
                                  **self._backend.handle_columns(handle))
        except errors.StoreUnavailable:
            # Nobody could see or stop a process whose pid is not recorded: stop and reap it. A
            # direct start's caller is told it failed; a promotion stays ``starting`` and goes back
            # to the queue when it is settled (its env file is still there).
            self._backend.cancel(handle, process_id)
            if promoted:
                log.warning("procman: could not record the pid of %s; it goes back to the queue", process_id)
                return
            rt.callbacks.pop(process_id, None)
            try_store(lambda: rt.store.update(process_id, expect_status=["starting"], status="failed",
                                              finished_at=utcnow(), error=NEVER_STARTED))
            raise
        if not won:
            # A stop landed while it was starting (or another manager took the record, believing us
            # dead): what we spawned must not run. Stop it; record the stop only if it is still ours.
            self._backend.cancel(handle, process_id)
            row = rt.store.get(process_id)
            if row is not None and row["status"] == "starting" and row["owner"] == rt.owner \
                    and row["stop_requested"] is not None:
                logs.remove_env()
                self._ends.finish_stopped_start(process_id, rt.owner)
            return
        logs.remove_env()  # only now: until the pid is committed a promotion may go back to the queue
        self._backend.follow(process_id, handle, own=True, timeout_left=record["timeout"])
        self._ends.send_started(process_id, self._backend.handle_columns(handle).get("pid"))

    # ------------------------------------------------------------------ declared programs
    def programs(self) -> dict[str, Program]:
        """Declared programs: ``PROCMAN_PROGRAMS`` of this app, then ``register_program`` ones."""
        config = self._rt.app.config.get("PROCMAN_PROGRAMS", {})
        declared = {name: make_program(name, spec) for name, spec in config.items()}
        declared.update(self._extension.programs)
        return declared

    def start_program(self, name: str, *, process_id: str | None = None, args: t.Sequence[str] = (),
                      env: t.Mapping[str, str] | None = None, queue: bool = False,
                      metadata: t.Mapping[str, t.Any] | None = None, handler: str | None = None) -> tuple[str, bool]:
        """Start a declared program; returns ``(process_id, started_or_queued)``."""
        program = self.programs().get(name)
        if program is None:
            raise errors.UnknownProgram(f"No program named {name!r} is declared (PROCMAN_PROGRAMS or register_program).")
        argv, overrides = program.build(list(args), env)
        if process_id is None:
            process_id = f"{name}-{uuid.uuid4().hex[:12]}"
            if not is_valid_process_id(process_id):
                process_id = uuid.uuid4().hex
        ok = self.start_process(process_id, argv, program.cwd, overrides, timeout=program.timeout, queue=queue,
                                metadata=metadata, handler=handler, program=name, progress=program.progress,
                                max_log_bytes=program.max_log_bytes, max_log_action=program.max_log_action,
                                backend=program.backend, resources=program.resources)
        return process_id, ok
