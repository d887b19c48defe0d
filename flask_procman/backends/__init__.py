"""Engines that run a record's command somewhere other than this host: today Ray Jobs, over HTTP.

The local engine lives in :mod:`flask_procman.engine`. Each remote backend's client library is
imported only when that backend is used, and installed by its extra (``flask-procman[ray]``).

Where this is going (issue 11). The manager uses the Ray modules through
:mod:`flask_procman.remote_runs`; the seam both engines should one day fit, with records, caps,
queues, handlers and reads staying above it::

    class Backend(Protocol):
        name: str                      # "local", or the PROCMAN_BACKENDS key
        merges_stderr: bool            # Ray: True (one stream)
        def check(self, resources) -> None                 # InvalidResources / InfeasibleResources, before a claim
        def submit(self, run: RunSpec) -> Handle           # RunSpec: process_id, run_tag, cmd, cwd, env, resources, logs
        def find(self, run_tag: str) -> Handle | None      # a `starting` record whose manager died
        def poll(self, handle) -> RunEnd | None            # the end (status, return_code, error) once it happened
        def stop(self, handle, grace: float) -> None       # begin; the end is seen by poll
        def pump_output(self, handle, logs) -> int         # local: nothing (the child writes the files)
        def forget(self, handle) -> None                   # after the end is recorded (Ray: DELETE the job)

The start protocol on Ray: claim ``starting`` with a fresh run tag → submit with
``submission_id = run tag`` → compare-and-set ``running``. A manager that finds a ``starting``
record whose owner died looks the job up by its tag (``GET /api/jobs/<tag>``): found, it adopts
it; unknown, the submit never arrived and the record is ended or re-queued (the env values are
gone with the dead manager). A submit cut off mid-request is retried with the same id: Ray refuses
a second job with that id, and :meth:`~flask_procman.backends.ray_jobs.RayJobsBackend.submit`
then returns the existing job when its metadata names the same process. ``poll`` is
``GET /api/jobs/<tag>``; an unreachable head (``BackendUnavailable``) leaves records as they are,
a 404 (head restarted: Ray keeps no history) ends them ``lost``. Output is mirrored by
:class:`~flask_procman.backends.ray_logs.LogMirror`, resuming from the local file's size.
"""

from __future__ import annotations

from .errors import BackendAuthError, BackendError, BackendUnavailable, InfeasibleResources, InvalidResources

__all__ = ["BackendAuthError", "BackendError", "BackendUnavailable", "InfeasibleResources", "InvalidResources"]
