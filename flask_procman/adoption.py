"""Adoption and settling: the runs and records a dead (or failed) manager left behind.

A ``running`` record whose manager died is adopted (followed here until its end); a ``starting``
record whose starter died is settled as the start protocol's step 4 says (adopt the run its tag
finds, record the end it had, put it back in the queue, or end it); a record a reader meets
whose process is gone is ended from its exit status.
"""

from __future__ import annotations

import logging
import typing as t

from .engine.identity import owner_alive
from .engine.logfiles import LogFiles
from .recovery import NEVER_STARTED
from .store import utcnow

if t.TYPE_CHECKING:
    from .backends.base import Backend
    from .ends import EndRecorder
    from .runtime import Runtime

log = logging.getLogger("flask_procman")


def owner_checker() -> t.Callable[[str | None], bool]:
    """``owner_dead(owner)``, asking the OS once per owner (for one pass over the records)."""
    alive: dict[str, bool] = {}

    def owner_dead(owner: str | None) -> bool:
        if not owner:
            return True
        if owner not in alive:
            alive[owner] = owner_alive(owner)
        return not alive[owner]

    return owner_dead


class Settler:
    """Takes over what dead managers left and settles stale records, each with a compare-and-set
    that only one manager wins."""

    def __init__(self, runtime: Runtime, ends: EndRecorder, backend: Backend[t.Any]) -> None:
        self._rt = runtime
        self._ends = ends
        self._backend = backend

    def settle_if_stale(self, row: dict[str, t.Any]) -> dict[str, t.Any]:
        """The truth about a record a reader met (returns the record, updated if it changed).

        A ``running`` record of this host whose process is gone is ended from its exit file (the
        wrapper's; handlers run once, by whoever wins the compare-and-set), so nobody reports a
        process as running, or stops it, after it ended with no watcher around. A ``starting``
        record whose starter died is settled as the start protocol says.
        """
        rt = self._rt
        if row["host"] != rt.host or row.get("namespace") != rt.settings.namespace or row.get("backend"):
            return row  # a remote run is settled by the watcher's pass (remote_runs)
        process_id = row["id"]
        if row["status"] == "running" and row["pid"] is not None:
            # Even when our watcher follows it: a stop must not land between its end and the record.
            handle = self._backend.handle_of(row)
            if handle is not None and self._backend.is_alive(handle):
                return row
            code = self._backend.read_exit_status(process_id)
            if code is None and owner_alive(row["owner"] or ""):
                return row  # its live parent reaps it and records the real code
            self._ends.record_end(process_id, code)
        elif row["status"] == "starting" and row["owner"] != rt.owner:
            # Only a dead starter's. Our own are settled by our watcher alone: it is also the thread
            # that promotes, and a promotion is committed a moment before it is marked in flight.
            if owner_alive(row["owner"] or ""):
                return row
            self.settle_starting(row)
        else:
            return row
        return rt.store.get(process_id) or row

    def settle_abandoned_starts(self, rows: t.Iterable[t.Mapping[str, t.Any]],
                                owner_dead: t.Callable[[str | None], bool]) -> None:
        """The watcher's pass over ``starting`` records: ours not in flight (the database failed
        under us mid-start) and, outside the CLI, those of dead starters."""
        rt = self._rt
        for row in rows:
            if row["status"] != "starting" or row["id"] in rt.in_flight:
                continue
            if row["owner"] == rt.owner or (not rt.cli_mode and owner_dead(row["owner"])):
                self.settle_starting(row)

    def adopt_orphans(self, rows: t.Iterable[t.Mapping[str, t.Any]], owner_dead: t.Callable[[str | None], bool]) -> None:
        """Adopt every ``running`` record of this host whose manager died and that nobody here
        follows; and settle our own ``running`` records that our watcher does not follow."""
        rt = self._rt
        watcher = rt.watcher
        for row in rows:
            owner = row["owner"]
            if row["status"] != "running" or not owner or (watcher is not None and watcher.is_watching(row["id"])):
                continue
            if owner != rt.owner:
                if owner_dead(owner):
                    self.adopt(row, owner)
            elif watcher is not None and row["id"] not in rt.in_flight:
                self._settle_unfollowed(row)

    def _settle_unfollowed(self, row: t.Mapping[str, t.Any]) -> None:
        """A ``running`` record of ours that our watcher does not follow, and no start of ours is
        in flight for: the commit of its pid reached the database although the starter was told it
        failed (the answer was lost), and the starter stopped the process. Follow it if it runs
        after all; otherwise record its end, so that it never stays ``running`` with nobody to settle it."""
        process_id = row["id"]
        handle = self._backend.handle_of(row)
        if handle is not None and self._backend.is_alive(handle):
            log.warning("procman: following %s (pid %s), whose start was thought to have failed", process_id, row["pid"])
            self._backend.follow(process_id, handle, own=False, timeout_left=None)
            return
        self._ends.record_end(process_id, self._backend.read_exit_status(process_id))

    def adopt(self, row: t.Mapping[str, t.Any], old_owner: str) -> None:
        """Take over a running process whose manager died: follow it and record its real end."""
        rt = self._rt
        process_id = row["id"]
        if not rt.store.update(process_id, expect_status=["running"], expect_owner=old_owner, owner=rt.owner):
            return  # another manager adopted it first
        LogFiles(rt.settings.log_dir, process_id).remove_env()  # a promoter that died before deleting it
        timeout_left = None
        if row["timeout"] is not None and row["started_at"] is not None:
            timeout_left = row["timeout"] - (utcnow() - row["started_at"]).total_seconds()
        log.info("procman: adopting %s (pid %s) from %s", process_id, row["pid"], old_owner)
        self._backend.follow(process_id, self._backend.handle_of(row), own=False, timeout_left=timeout_left)

    def settle_starting(self, row: t.Mapping[str, t.Any]) -> None:
        """Step 4 of the start protocol: a ``starting`` record whose starter is gone (or ours, left
        by a database failure) is adopted through its run tag, ended, or put back in the queue."""
        rt = self._rt
        process_id, old_owner = row["id"], row["owner"]
        logs = LogFiles(rt.settings.log_dir, process_id)
        found = self._backend.find(row["run_tag"], process_id)
        stop = row["stop_requested"] is not None
        if found.root is not None:
            values: dict[str, t.Any] = {
                "status": "running", "started_at": found.root_started_at or utcnow(),
                **self._backend.handle_columns(found.root),
            }
            watcher = rt.watcher_here()
            if rt.owner and watcher is not None:
                values["owner"] = rt.owner
                if stop:
                    values["stop_requested"] = "stop-request"  # the next tick stops it, without blocking
            if not rt.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, **values):
                return
            logs.remove_env()
            log.info("procman: adopting %s (pid %s), whose start %s left unfinished", process_id,
                     found.root.pid, old_owner)
            if "owner" in values and watcher is not None:
                timeout_left = None
                if row["timeout"] is not None and found.root_started_at is not None:
                    timeout_left = row["timeout"] - (utcnow() - found.root_started_at).total_seconds()
                self._backend.follow(process_id, found.root, own=False, timeout_left=timeout_left)
                self._ends.send_started(process_id, found.root.pid)
            return
        if found.ran:
            # It ran and ended before anybody recorded its pid: record that end, once; whatever it
            # left behind is stopped by the one who recorded it.
            if self._ends.record_end(process_id, found.exit_status, expect=("starting",)):
                logs.remove_env()
                self._backend.clear_leftovers(found)
            return
        if row["via_queue"] and not stop:
            if rt.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="queued"):
                log.warning("procman: %s goes back to the queue: its promoter died before starting it", process_id)
                rt.request_tick()
            return
        if stop:
            self._ends.finish_stopped_start(process_id, old_owner)
            return
        if rt.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="failed",
                           error=NEVER_STARTED, finished_at=utcnow()):
            logs.remove_env()
            self._ends.dispatch_end(process_id, won=True)
