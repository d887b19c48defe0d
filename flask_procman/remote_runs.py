"""Runs on a remote engine (a Ray cluster, ``PROCMAN_BACKENDS``): the submit of a claimed record,
and the watcher's pass that follows them (ends, stops, timeouts, output mirrored into the log file),
adopts those of dead managers and settles starts their starter left unfinished.

A Ray run's handle is its run tag (the job's ``submission_id``): the record's ``pid`` stays NULL.
Its end is seen by polling ``GET /api/jobs/<tag>`` once per watcher pass of the manager that owns
the record; a manager of the record's host adopts it when its owner died (Ray jobs are not
children: a dead worker leaves them running). Every end is one compare-and-set, as for local runs.
"""

from __future__ import annotations

import logging
import os
import threading
import typing as t

from . import errors
from .ends import try_store
from .engine.logfiles import LogFiles
from .recovery import NEVER_STARTED
from .store import utcnow

if t.TYPE_CHECKING:
    from .backends.ray_jobs import JobEnd, RayJobsBackend
    from .backends.ray_logs import LogMirror
    from .ends import EndRecorder
    from .runtime import Runtime

log = logging.getLogger("flask_procman")

#: The ``error`` of a run that Ray stopped although procman never asked it to.
STOPPED_IN_RAY = "stopped in Ray (not through procman)"


class RemoteRuns:
    """The runs of this app's remote backends, as seen by one manager."""

    def __init__(self, runtime: Runtime, ends: EndRecorder) -> None:
        self._rt = runtime
        self._ends = ends
        self._local = threading.local()  # one HTTP client per thread (requests sessions are not shared)
        self._mirrors: dict[str, LogMirror] = {}  # by run tag
        self._stop_sent: set[str] = set()  # run tags whose stop was sent to Ray by this manager
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ configuration
    def names(self) -> list[str]:
        """The configured remote backends."""
        return list(self._rt.settings.backends)

    def backend(self, name: str) -> RayJobsBackend:
        """This thread's client of backend ``name`` (made on first use; again after a fork)."""
        cache: dict[str, t.Any] = getattr(self._local, "backends", None) or {}
        if getattr(self._local, "pid", None) != os.getpid():
            cache = {}
            self._local.pid = os.getpid()
        self._local.backends = cache
        if name not in cache:
            from .backends.ray_jobs import RayJobsBackend

            spec = self._rt.settings.backends[name]
            cache[name] = RayJobsBackend(spec.address, spec.token, check_feasible=spec.check_feasible)
        return t.cast("RayJobsBackend", cache[name])

    def check(self, name: str | None, resources: t.Mapping[str, t.Any] | None) -> dict[str, t.Any] | None:
        """Validate a start's ``backend`` and ``resources`` (before any claim); the resources to store."""
        if name is None or name == "local":
            if resources:
                raise errors.InvalidCommand("resources are only for a cluster backend (backend=...), "
                                            "not for the local one.")
            return None
        if not isinstance(name, str) or name not in self._rt.settings.backends:
            known = ["local", *self.names()]
            raise errors.InvalidCommand(f"No backend named {name!r}; the configured ones are {known} (PROCMAN_BACKENDS).")
        if resources is not None and not isinstance(resources, t.Mapping):
            raise errors.InvalidCommand(f"resources must be a mapping such as {{'cpus': 1}}, not {resources!r}.")
        from .backends.ray_jobs import ResourceRequest

        ResourceRequest.parse(resources)  # InvalidResources (a ValueError) names what is wrong
        return dict(resources) if resources else None

    # ------------------------------------------------------------------ starting
    def start_claimed(self, record: t.Mapping[str, t.Any], overrides: dict[str, str], *, promoted: bool) -> None:
        """Submit a committed ``starting`` record of ours (submission id: its run tag), then
        compare-and-set ``running``. A direct start raises ``StartError`` when Ray refused it (the
        record is then ``failed``) or ``StoreUnavailable``; a promoted one never raises."""
        rt = self._rt
        process_id, tag = record["id"], str(record["run_tag"])
        logs = LogFiles(rt.settings.log_dir, process_id)
        backend = self.backend(record["backend"])
        try:
            backend.submit(submission_id=tag, process_id=process_id, cmd=record["cmd"], cwd=record["cwd"],
                           env=overrides, resources=record.get("resources"))
        except (errors.ProcManError, ValueError) as exc:
            message = f"Could not start {record['cmd'][0]!r} on {record['backend']!r}: {exc}"
            from .backends.errors import BackendUnavailable

            if isinstance(exc, BackendUnavailable):
                self._cancel(record)  # a request cut off after it was sent may have submitted it
            self._ends.fail_start(process_id, message, promoted=promoted)
            if promoted:
                return
            kind = type(exc) if isinstance(exc, errors.StartError) else errors.StartError  # InfeasibleResources
            raise kind(message) from exc
        try:
            won = rt.store.update(process_id, expect_status=["starting"], expect_owner=rt.owner,
                                  expect_no_stop=True, status="running", started_at=utcnow(), pid=None)
        except errors.StoreUnavailable:
            self._cancel(record)  # nobody could see or stop a job no record names as running
            if promoted:
                return  # settled later: the job is gone, so it goes back to the queue
            rt.callbacks.pop(process_id, None)
            try_store(lambda: rt.store.update(process_id, expect_status=["starting"], status="failed",
                                              finished_at=utcnow(), error=NEVER_STARTED))
            raise
        if not won:
            self._cancel(record)
            row = rt.store.get(process_id)
            if row is not None and row["status"] == "starting" and row["owner"] == rt.owner \
                    and row["stop_requested"] is not None:
                logs.remove_env()
                self._ends.finish_stopped_start(process_id, rt.owner)
            return
        logs.remove_env()
        rt.request_tick()  # the watcher's pass follows it from now on
        self._ends.send_started(process_id, None)

    def _cancel(self, record: t.Mapping[str, t.Any]) -> None:
        """Stop and delete a job whose record could not say it runs (best effort: logged)."""
        backend = self.backend(record["backend"])
        tag = str(record["run_tag"])
        try:
            backend.stop(tag, wait=10.0)
            backend.forget(tag)
        except errors.ProcManError as exc:
            log.warning("procman: could not cancel the Ray job %s of %s: %s", tag, record["id"], exc)

    # ------------------------------------------------------------------ the watcher's pass
    def poll(self, rows: t.Iterable[t.Mapping[str, t.Any]], owner_dead: t.Callable[[str | None], bool], *,
             adopt: bool) -> None:
        """Follow our remote runs (and, when ``adopt``, those of dead managers): stops, timeouts,
        output, ends. A head that does not answer is skipped for this pass; its records stay."""
        rt = self._rt
        unavailable: set[str] = set()
        for row in rows:
            name = row.get("backend")
            if not name or name in unavailable or row["id"] in rt.in_flight:
                continue
            if name not in rt.settings.backends:
                self._warn(name, f"procman: {row['id']} runs on backend {name!r}, which is not configured here")
                continue
            mine = row["owner"] == rt.owner
            if not mine and not (adopt and owner_dead(row["owner"])):
                continue
            try:
                if row["status"] == "starting":
                    self.settle_starting(row)
                elif row["status"] == "running":
                    if mine or self._adopt(row):
                        self.follow(row)
                self._warned.discard(name)
            except errors.StoreUnavailable:
                raise
            except errors.ProcManError as exc:
                from .backends.errors import BackendUnavailable

                if isinstance(exc, BackendUnavailable):
                    unavailable.add(name)
                self._warn(name, f"procman: backend {name!r}: {exc}")
            except Exception:  # one bad answer or a full disk must not stop the other rows or the tick
                log.exception("procman: could not follow the run %s on backend %r", row["id"], name)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _adopt(self, row: t.Mapping[str, t.Any]) -> bool:
        won = self._rt.store.update(row["id"], expect_status=["running"], expect_owner=row["owner"],
                                    owner=self._rt.owner)
        if won:
            log.info("procman: adopting the Ray run %s of %s, whose manager died", row["id"], row["owner"])
        return won

    def follow(self, row: t.Mapping[str, t.Any]) -> bool:
        """One look at a running record's job: its timeout, a stop asked for, new output, its end
        (recorded once). True when it has ended."""
        rt = self._rt
        tag = str(row["run_tag"])
        backend = self.backend(row["backend"])
        stop = row["stop_requested"]
        started = row["started_at"]
        if stop is None and row["timeout"] is not None and started is not None \
                and (utcnow() - started).total_seconds() >= row["timeout"]:
            if rt.store.update(row["id"], expect_status=["running"], expect_no_stop=True, stop_requested="timeout"):
                stop = "timeout"
        if stop is not None and tag not in self._stop_sent:
            backend.client.stop(tag)  # Ray: SIGTERM to the whole tree, SIGKILL after its own grace
            self._stop_sent.add(tag)
        details = backend.details(tag)
        self.mirror_output(row, details)
        from .backends.ray_jobs import job_end

        end = job_end(details)
        if end is None:
            return False
        self.record(row["id"], end)
        return True

    def mirror_output(self, row: t.Mapping[str, t.Any], details: t.Mapping[str, t.Any] | None) -> None:
        """Append what Ray's log of the run holds past the local stdout file (a mismatch is logged)."""
        tag = str(row["run_tag"])
        mirror = self._mirrors.get(tag)
        if mirror is None:
            from .backends.ray_logs import LogMirror

            path = LogFiles(self._rt.settings.log_dir, row["id"]).path("stdout")
            mirror = self._mirrors[tag] = LogMirror(self.backend(row["backend"]).client, tag, path)
        try:
            mirror.poll(details)
        except errors.ProcManError as exc:
            if "Unavailable" in type(exc).__name__:
                raise
            self._warn("mirror:" + tag, f"procman: the output of {row['id']} is not mirrored: {exc}")

    def record(self, process_id: str, end: JobEnd) -> bool:
        """Record a job's end exactly once (a compare-and-set); True in the manager that won."""
        rt = self._rt
        row = rt.store.get(process_id)
        if row is None or row["status"] != "running":
            return False
        tag = str(row["run_tag"])
        if end.status == "completed" or (end.status == "stopped" and row["stop_requested"] is not None):
            won = self._ends.record_end(process_id, end.return_code)
        else:
            error = STOPPED_IN_RAY if end.status == "stopped" else end.error
            won = rt.store.update(process_id, expect_status=["running"], status=end.status, return_code=None,
                                  finished_at=utcnow(), error=error, owner=rt.owner or row["owner"],
                                  handler_state="pending" if row["handler"] else None)
            if won or process_id in rt.callbacks or process_id in rt.events:
                self._ends.dispatch_end(process_id, won=won)
            if won:
                rt.request_tick()
        self._mirrors.pop(tag, None)
        self._stop_sent.discard(tag)
        if won:
            try:
                self.backend(row["backend"]).forget(tag)  # Ray keeps every job in its head's memory
            except errors.ProcManError as exc:
                log.info("procman: could not delete the finished Ray job %s: %s", tag, exc)
        return won

    def settle_starting(self, row: t.Mapping[str, t.Any]) -> None:
        """A ``starting`` record whose starter died (or failed mid-way): its job found by the run tag
        is adopted; none means the submit never arrived: back to the queue (a promotion) or ended."""
        rt = self._rt
        process_id, old_owner, tag = row["id"], row["owner"], str(row["run_tag"])
        details = self.backend(row["backend"]).details(tag)
        logs = LogFiles(rt.settings.log_dir, process_id)
        if details is not None:
            if rt.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="running",
                               started_at=utcnow(), owner=rt.owner, pid=None):
                logs.remove_env()
                log.info("procman: adopting the Ray job %s, whose start %s left unfinished", tag, old_owner)
            return
        if row["via_queue"] and row["stop_requested"] is None:
            if rt.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="queued"):
                rt.request_tick()
            return
        won = rt.store.update(process_id, expect_status=["starting"], expect_owner=old_owner, status="failed",
                              finished_at=utcnow(), error=NEVER_STARTED)
        logs.remove_env()
        if won:
            self._ends.dispatch_end(process_id, won=True)

    # ------------------------------------------------------------------ stopping
    def stop_now(self, row: t.Mapping[str, t.Any], grace: float) -> bool:
        """Stop a running record's job from any manager (the CLI too) and record its end; True when
        the record is final afterwards. Ray's own grace applies (``RAY_JOB_STOP_WAIT_TIME_S``)."""
        rt = self._rt
        process_id, tag = row["id"], str(row["run_tag"])
        rt.store.update(process_id, expect_status=["running"], expect_no_stop=True, stop_requested="stop")
        backend = self.backend(row["backend"])
        end = backend.stop(tag, wait=max(grace, 0.0) + 10.0)
        self._stop_sent.add(tag)
        fresh = rt.store.get(process_id)
        if fresh is None:
            return False
        if fresh["status"] == "running" and end is not None:
            self.mirror_output(fresh, backend.details(tag))
            self.record(process_id, end)
            fresh = rt.store.get(process_id) or fresh
        return fresh["status"] not in ("queued", "starting", "running")
