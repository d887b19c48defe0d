"""Stopping: a queued start leaves the queue, a starting one is told, a running one's tree is
stopped (grace, then force) here, by its owner's watcher, or by its owner on another host."""

from __future__ import annotations

import time
import typing as t

from .ends import LOG_LIMIT, try_store
from .engine.logfiles import LogFiles
from .store import ACTIVE, FINAL, utcnow
from .teardown import TEARDOWN_REASON
from .validation import check_process_id, check_seconds

if t.TYPE_CHECKING:
    from .adoption import Settler
    from .backends.base import Backend
    from .ends import EndRecorder
    from .engine.watcher import Watched
    from .remote_runs import RemoteRuns
    from .runtime import Runtime

#: ``stop_requested`` values the owner's watcher carries out without anyone waiting (see ``begin_deferred``).
DEFERRED_STOPS = ("stop-request", TEARDOWN_REASON)


class Stopper:
    """Every way a process is stopped; each records its end through the :class:`EndRecorder`."""

    def __init__(self, runtime: Runtime, ends: EndRecorder, settler: Settler, backend: Backend[t.Any],
                 remote: RemoteRuns) -> None:
        self._rt = runtime
        self._remote = remote
        self._ends = ends
        self._settler = settler
        self._backend = backend

    def stop_process(self, process_id: str, timeout: float | None = None) -> bool:
        """Stop a process and its whole tree; True if it was running or queued and has now ended."""
        rt = self._rt
        process_id = check_process_id(process_id)
        given = check_seconds(timeout, "timeout", allow_zero=True)
        grace = rt.settings.stop_timeout if given is None else given
        rt.ensure_for_reads()
        row = rt.store.get(process_id)
        if row is not None:
            row = self._settler.settle_if_stale(row)  # a process that already ended is not stopped by us
        if row is None or row["status"] in FINAL:
            return False
        if row["status"] == "queued" and self.stop_queued(process_id):
            return True
        if rt.store.update(process_id, expect_status=["starting"], expect_no_stop=True, stop_requested="stop"):
            row = self._await_start(process_id, grace)
            if row is None or row["status"] in FINAL:
                return row is not None and row["status"] == "stopped"
        return self.stop_running([process_id], grace) == [process_id]

    def stop_all(self, timeout: float | None = None) -> list[str]:
        """Stop every queued and running process of the app; returns the ids stopped."""
        rt = self._rt
        grace = rt.settings.stop_timeout if timeout is None else float(timeout)
        rt.ensure_for_reads()
        rows, _ = rt.store.page(list(ACTIVE), namespace=rt.settings.namespace)
        stopped = [r["id"] for r in rows if r["status"] == "queued" and self.stop_queued(r["id"])]
        running = [r["id"] for r in rows if r["id"] not in stopped]
        return stopped + self.stop_running(running, grace)

    def request_stop(self, process_id: str, *, reason: str = "stop-request", run_tag: str | None = None) -> bool:
        """Stop without waiting (see ``Manager.request_stop``)."""
        rt = self._rt
        process_id = check_process_id(process_id)
        if reason not in DEFERRED_STOPS:
            raise ValueError(f"reason must be one of {DEFERRED_STOPS}, not {reason!r}")
        rt.ensure()
        row = rt.store.get(process_id)
        if row is None or row["status"] in FINAL or (run_tag is not None and row["run_tag"] != run_tag):
            return False
        if row["status"] == "queued" and self.stop_queued(process_id):
            return True
        if row["stop_requested"] is not None:
            return True  # already being stopped (a timeout, a stop): keep its reason
        started = [s for s in ACTIVE if s != "queued"]
        if not rt.store.update(process_id, expect_status=started, stop_requested=reason):
            return False  # it ended meanwhile
        rt.request_tick()  # the tick begins the stop (see begin_deferred)
        return True

    def begin_deferred(self, rows: t.Iterable[t.Mapping[str, t.Any]]) -> None:
        """The watcher's pass: begin the stops asked of our running processes from another host,
        or by :meth:`request_stop`."""
        rt = self._rt
        watcher = rt.watcher
        if watcher is None:
            return
        for row in rows:
            if row["status"] == "running" and row["owner"] == rt.owner and row["stop_requested"] in DEFERRED_STOPS \
                    and not row.get("backend"):
                watcher.begin_stop(row["id"])

    def request_timeout_stop(self, process_id: str) -> None:
        """Mark a running process as stopped for its timeout (before it is signalled)."""
        self._rt.store.update(process_id, expect_status=["running"], stop_requested="timeout")

    def stop_for_log_limit(self, process_id: str, message: str) -> None:
        """A log reached its cap with ``max_log_action="stop"`` (watcher thread): stop the run."""
        rt = self._rt
        if rt.store.update(process_id, expect_status=["running"], stop_requested=LOG_LIMIT, error=message):
            watcher = rt.watcher
            if watcher is not None:
                watcher.begin_stop(process_id)

    def stop_owned(self, owned: t.Sequence[Watched]) -> None:
        """At shutdown: stop every process the watcher followed and record each end inline."""
        rt = self._rt
        for watched in owned:
            try_store(lambda w=watched: rt.store.update(  # type: ignore[misc]
                w.process_id, expect_status=["running"], stop_requested="stop"))
        survivors = self._backend.stop([w.identity for w in owned], rt.settings.stop_timeout)
        for watched, left in zip(owned, survivors, strict=True):
            code = self._backend.exit_code_after_stop(watched.identity, watched.process_id, own=watched.is_child)
            try_store(lambda w=watched, c=code, s=left: self._ends.record_end(  # type: ignore[misc]
                w.process_id, c, survivors=s, inline=True))

    def stop_queued(self, process_id: str) -> bool:
        """Take a queued start out of the queue, recorded ``stopped``; False if it was promoted."""
        rt = self._rt
        if not rt.store.update(process_id, expect_status=["queued"], status="stopped",
                               stop_requested="stop", finished_at=utcnow()):
            return False  # promoted meanwhile: stop it as a running one
        LogFiles(rt.settings.log_dir, process_id).pop_env()
        self._ends.dispatch_end(process_id, won=True)
        return True

    def stop_running(self, process_ids: t.Sequence[str], grace: float) -> list[str]:
        """Stop running processes together; returns the ids that ended."""
        rt = self._rt
        targets: dict[str, dict[str, t.Any]] = {}
        remote: list[str] = []
        ended: list[str] = []
        for process_id in process_ids:
            row = self._wait_for_pid(process_id)
            if row is None or row["status"] in FINAL:
                continue
            if row.get("backend"):  # a Ray job: stopped through its head from here, whatever the host
                if row["status"] == "running" and self._remote.stop_now(row, grace):
                    ended.append(process_id)
                continue
            if row["host"] != rt.host:
                rt.store.update(process_id, expect_status=["running"], stop_requested="stop-request")
                remote.append(process_id)
                continue
            if row["pid"] is None:  # still starting (its starter is alive but slow): it sees the stop
                rt.store.update(process_id, expect_status=["starting"], stop_requested="stop")
                row = self._await_start(process_id, grace)
                if row is not None and row["status"] in FINAL:
                    ended.append(process_id)
                    continue
                if row is None or row["pid"] is None:
                    continue
            if row["status"] != "running":
                continue
            rt.store.update(process_id, expect_status=["running"], stop_requested="stop")
            targets[process_id] = row
        handles = {pid: self._backend.handle_of(row) for pid, row in targets.items()}
        survivors = self._backend.stop(list(handles.values()), grace)
        for (process_id, handle), left in zip(handles.items(), survivors, strict=True):
            if self._await_record(process_id, handle, left, wait=2.0 + rt.settings.poll_interval):
                ended.append(process_id)
        for process_id in remote:
            row = self._poll_final(process_id, grace + 5 * rt.settings.poll_interval + 5)
            if row is not None:
                ended.append(process_id)
        return ended

    def _await_start(self, process_id: str, grace: float) -> dict[str, t.Any] | None:
        """After a stop request on a ``starting`` record: its starter gives up (or stops what it
        spawned) and records ``stopped``; a dead starter's record is settled here."""
        rt = self._rt
        deadline = time.monotonic() + grace + 10 * rt.settings.poll_interval + 5
        while True:
            row = rt.store.get(process_id)
            if row is None or row["status"] != "starting":
                return row
            row = self._settler.settle_if_stale(row)
            if row["status"] != "starting" or time.monotonic() > deadline:
                return row
            time.sleep(0.01)

    def _wait_for_pid(self, process_id: str, wait: float = 5.0) -> dict[str, t.Any] | None:
        """The record once its pid is known (a start may be between claim and spawn)."""
        deadline = time.monotonic() + wait
        while True:
            row = self._rt.store.get(process_id)
            if row is None or row["status"] in FINAL or row["pid"] is not None or time.monotonic() > deadline \
                    or (row.get("backend") and row["status"] == "running"):  # a Ray run has no pid
                return row
            row = self._settler.settle_if_stale(row)
            time.sleep(0.01)

    def _poll_final(self, process_id: str, wait: float) -> dict[str, t.Any] | None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            row = self._rt.store.get(process_id)
            if row is None or row["status"] in FINAL:
                return row
            time.sleep(0.02)
        return None

    def _await_record(self, process_id: str, handle: t.Any, survivors: list[int], wait: float) -> bool:
        """After a kill: let the owner record the end, or record it here if nobody does."""
        store = self._rt.store
        if survivors:
            try_store(lambda: store.update(process_id, survivors=survivors))
        if self._poll_final(process_id, wait) is not None:
            if survivors:  # recorded by the watcher, which did not know: the error says so too
                try_store(lambda: self._ends.record_survivors(process_id, survivors))
            return True
        code = self._backend.exit_code_after_stop(handle, process_id, own=False)
        self._ends.record_end(process_id, code, survivors=survivors)
        row = store.get(process_id)
        return row is not None and row["status"] in FINAL
