"""Recording ends exactly once, and what follows an end: callbacks, durable handlers, signals."""

from __future__ import annotations

import logging
import typing as t

from . import errors
from .engine.identity import owner_alive
from .engine.logfiles import LogFiles, decode_output
from .signals import process_finished, process_started
from .store import FINAL, utcnow
from .teardown import TEARDOWN_REASON

if t.TYPE_CHECKING:
    from .backends.base import Backend
    from .extension import ProcMan
    from .runtime import CompletionCallback, Runtime

log = logging.getLogger("flask_procman")

#: ``stop_requested`` of a run stopped because a log reached its cap (``max_log_action="stop"``).
LOG_LIMIT = "log_limit"
#: The ``error`` of a start stopped before its process ran.
STOPPED_BEFORE_START = "stopped by request before it started"


def try_store(fn: t.Callable[[], t.Any]) -> None:
    """Run a database step that may be skipped while the database is away (logged)."""
    try:
        fn()
    except errors.StoreUnavailable as exc:
        log.warning("procman: %s", exc)


class EndRecorder:
    """Records each end with one compare-and-set, so that exactly one manager wins it, then runs the
    in-memory callback (in the starter), the durable handler and the signal (in the winner) on the
    callback pool with the app context pushed."""

    def __init__(self, runtime: Runtime, extension: ProcMan, backend: Backend[t.Any]) -> None:
        self._rt = runtime
        self._extension = extension
        self._backend = backend

    def read_exit_status(self, process_id: str) -> int | None:
        """The exit status the run left where any manager can read it, if any."""
        return self._backend.read_exit_status(process_id)

    def record_end(self, process_id: str, return_code: int | None, *,
                   survivors: list[int] | None = None, inline: bool = False,
                   expect: t.Sequence[str] = ("running",)) -> bool:
        """Record the end of a process, once: a compare-and-set from ``running`` (or ``expect``) to
        a final status. Returns True in the one manager that won and so runs the durable handler."""
        rt = self._rt
        row = rt.store.get(process_id)
        if row is None:
            return False
        won = False
        if row["status"] in expect:
            reason = row["stop_requested"]
            if reason == "timeout":
                status = "timed_out"
            elif reason is not None:
                status = "stopped"
            elif return_code is None:
                status = "lost"
            else:
                status = "completed"
            values: dict[str, t.Any] = {
                "status": status, "return_code": return_code, "finished_at": utcnow(),
                "error": self.end_reason(row, status, return_code),
                "owner": rt.owner or row["owner"],
                "handler_state": "pending" if row["handler"] else None,
            }
            if survivors:
                values["survivors"] = survivors
                values["error"] = (values["error"] or "") + f"\nstill alive after SIGKILL: {survivors}"
            won = rt.store.update(process_id, expect_status=list(expect), **values)
        if won or process_id in rt.callbacks or process_id in rt.events:
            self.dispatch_end(process_id, won=won, inline=inline,
                              durable_work=won and (bool(row["handler"]) or bool(process_finished.receivers)))
        if won:
            rt.request_tick()  # a slot is free: promote queued starts now
        return won

    def end_reason(self, row: t.Mapping[str, t.Any], status: str, return_code: int | None) -> str | None:
        """The record's ``error``: why it ended, when that is not a plain success."""
        if status == "timed_out":
            limit = row["timeout"]
            reason = f"timed out after {limit:g} s" if limit is not None else "timed out"
        elif status == "stopped":
            why = row["stop_requested"]
            if why == TEARDOWN_REASON:
                reason = "stopped at teardown"  # its context ended (stop_on_teardown)
            elif why == LOG_LIMIT and row["error"]:
                reason = row["error"]  # written by the stop: which log reached its cap
            else:
                reason = "stopped by request"
        elif status == "lost":
            return ("The process ended while no manager was its parent and it left no exit status "
                    "(killed by SIGKILL, or its log folder was not writable).")
        elif return_code in (0, None):
            return None
        else:
            settings = self._rt.settings
            stream = "stdout" if row["merge_stderr"] else "stderr"
            tail = LogFiles(settings.log_dir, row["id"]).tail(stream, settings.error_tail)
            # NUL: no PostgreSQL text column takes it, and the end would never be recorded.
            return decode_output(tail).replace("\0", "\ufffd") or f"exited with code {return_code}"
        # A stop's SIGTERM (-15) says nothing; a SIGKILL after the grace or an exit code of its own does.
        if return_code == -9:
            reason += "; it did not end within the grace period and was killed (SIGKILL)"
        elif return_code not in (None, 0, -15):
            reason += f"; it exited with code {return_code}"
        return reason

    def record_survivors(self, process_id: str, survivors: list[int]) -> None:
        """Processes an ended run left behind survived SIGKILL: the record says so (never silent)."""
        store = self._rt.store
        row = store.get(process_id)
        if row is None:
            return
        known = list(row["survivors"] or [])
        error = (row["error"] or "") + f"\nprocesses of the run still alive after SIGKILL: {survivors}"
        store.update(process_id, survivors=known + [p for p in survivors if p not in known], error=error.lstrip())

    def fail_start(self, process_id: str, message: str, *, promoted: bool) -> None:
        """A claimed start whose spawn or submit failed: ``failed`` by compare-and-set, its env file
        gone. A promotion's completion runs now; a direct start's callback is dropped (its caller
        gets the error instead)."""
        rt = self._rt
        won = rt.store.update(process_id, expect_status=["starting"], expect_owner=rt.owner,
                              status="failed", error=message, finished_at=utcnow())
        LogFiles(rt.settings.log_dir, process_id).remove_env()
        if promoted:
            self.dispatch_end(process_id, won=won)
        else:
            rt.callbacks.pop(process_id, None)

    def finish_stopped_start(self, process_id: str, owner: str | None) -> None:
        """Record ``stopped`` for a ``starting`` record of ``owner`` whose stop was requested (once)."""
        rt = self._rt
        won = rt.store.update(process_id, expect_status=["starting"], expect_owner=owner, status="stopped",
                              error=STOPPED_BEFORE_START, finished_at=utcnow())
        if won or process_id in rt.callbacks or process_id in rt.events:
            self.dispatch_end(process_id, won=won)

    def dispatch_end(self, process_id: str, *, won: bool, inline: bool = False, durable_work: bool = True) -> None:
        """Run the in-memory callback (if this worker holds one) and, for the recorder, the durable
        handler and the signal, with the app context pushed, off the watcher thread."""
        rt = self._rt
        callback = rt.callbacks.pop(process_id, None)
        event = rt.events.get(process_id)
        if event is not None:
            event.set()
        if callback is None and not (won and durable_work):
            return  # nothing to run: no callback, no handler, no process_finished receiver
        pool = rt.pool
        if inline or pool is None:
            self._run_completion(process_id, callback, won)
            return
        try:
            pool.submit(self._run_completion, process_id, callback, won)
        except RuntimeError:  # pool shut down (interpreter exiting)
            self._run_completion(process_id, callback, won)

    def dispatch_orphaned_callbacks(self, active: t.Collection[str]) -> None:
        """Callbacks held here for processes someone else finished (or promoted and finished)."""
        rt = self._rt
        for process_id in [p for p in list(rt.callbacks) if p not in active]:  # list(): other threads add
            row = rt.store.get(process_id)
            if row is None or row["status"] in FINAL:
                self.dispatch_end(process_id, won=False)

    def run_abandoned_handlers(self) -> None:
        """Durable handlers whose recorder died before running them: take them over and run them."""
        rt = self._rt
        for row in rt.store.pending_handlers(rt.host, rt.settings.namespace):
            if row["owner"] != rt.owner and not owner_alive(row["owner"] or ""):
                if rt.store.update(row["id"], expect_owner=row["owner"], owner=rt.owner):
                    self.dispatch_end(row["id"], won=True)

    def send_started(self, process_id: str, pid: int | None) -> None:
        """Send ``process_started`` (a raising receiver is logged, never breaks the engine)."""
        if not process_started.receivers:
            return
        app = self._rt.app
        with app.app_context():
            try:
                process_started.send(app, process_id=process_id, pid=pid)
            except Exception:  # a receiver never breaks the engine
                log.exception("procman: a process_started receiver raised for %s", process_id)

    def _run_completion(self, process_id: str, callback: CompletionCallback | None, won: bool) -> None:
        app = self._rt.app
        with app.app_context():
            try:
                row = self._rt.store.get(process_id)
            except errors.StoreUnavailable:
                log.exception("procman: could not read %s to run its completion", process_id)
                return
            if row is None:
                return
            code = row["return_code"]
            if callback is not None:
                try:
                    callback(process_id, code)
                except Exception:
                    log.exception("procman: on_complete callback of %s raised", process_id)
            if won:
                self._run_handler(row)
                try:
                    process_finished.send(app, process_id=process_id, status=row["status"], return_code=code)
                except Exception:
                    log.exception("procman: a process_finished receiver raised for %s", process_id)

    def _run_handler(self, row: t.Mapping[str, t.Any]) -> None:
        name = row["handler"]
        if not name or row["handler_state"] != "pending":
            return
        handler = self._extension.handlers.get(name)
        if handler is None:
            log.error("procman: no handler named %r for %s (register it at app setup)", name, row["id"])
        else:
            try:
                handler(row["id"], row["return_code"])
            except Exception:
                log.exception("procman: handler %r of %s raised", name, row["id"])
        try_store(lambda: self._rt.store.update(row["id"], handler_state="done"))
