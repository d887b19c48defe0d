"""Stopping, when an app context ends, the processes started in it with ``stop_on_teardown=True``.

``teardown_appcontext`` runs after every request, so it stops only what the ending context bound;
every other process is left alone. The binding lives in ``flask.g``, which belongs to one app
context: two concurrent requests each stop only their own processes.

How the stop treats the thread that ends the context:

- In a request, the thread is a server worker that goes on to serve other clients: the teardown
  only *requests* the stop. The owner's watcher sends SIGTERM to the whole tree at once and SIGKILL
  after ``PROCMAN_STOP_TIMEOUT``, then records it ``stopped``; a command that ignores SIGTERM never
  holds the worker for the grace.
- Anywhere else (a CLI command, ``with app.app_context():``, a completion callback) the end of the
  context is the end of the work, and in a CLI command the process exits next, taking the watcher
  with it: the teardown waits, up to the grace and the SIGKILL, until the end is recorded.

A streamed response outlives its view, and its app context does not: Flask pops it when the view
returns (with ``stream_with_context`` too, which pushes it again while the body is iterated and so
tears it down twice). So the ``request_finished`` signal hands the processes bound so far to the
response: they are stopped when the server closes it (the stream is done, or the client went away
and a write failed), with or without ``stream_with_context``. Not an ``after_request`` function:
those registered before ours run after it and may replace the response (whose ``close`` the server
would then never call on ours) or raise (after our hand-over). ``request_finished`` carries the final
response and is not sent when ``process_response`` raises; until it is, the binding stays in ``g``
for the teardown. A process started inside a
``stream_with_context`` body is bound to the re-pushed context and stopped when the body ends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as t

from flask import Flask, current_app, g, has_app_context, has_request_context, request_finished

from .errors import InvalidCommand

if t.TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from .manager import Manager

log = logging.getLogger("flask_procman")

#: The ``stop_requested`` value (and so the reason recorded) of a stop at teardown.
TEARDOWN_REASON = "teardown"

# The attribute of ``flask.g`` holding the context's bound processes.
_G_NAME = "_procman_stop_on_teardown"

# After the grace and the SIGKILL: time for the watcher to see the end and record it.
_RECORD_MARGIN = 5.0


@dataclasses.dataclass
class BoundProcesses:
    """The processes bound to one app context."""

    manager: Manager
    #: process id -> (its run tag: that start only, not a later one reusing the id; whether the
    #: stop waits for the end, False when bound inside a request).
    runs: dict[str, tuple[str | None, bool]] = dataclasses.field(default_factory=dict)


def check_bindable(app: Flask) -> None:
    """Raise :class:`InvalidCommand` unless an app context of ``app`` is pushed (checked before a
    start with ``stop_on_teardown=True``, so that nothing is started that no teardown would stop)."""
    if not has_app_context() or current_app._get_current_object() is not app:  # type: ignore[attr-defined]
        raise InvalidCommand(
            "stop_on_teardown=True binds the process to the current app context, and there is no "
            f"app context of {app.name!r}: start it inside a request, a CLI command or 'with app.app_context():'."
        )


def bind_to_context(manager: Manager, process_id: str, run_tag: str | None) -> None:
    """Bind a process just started (or queued) to the current app context."""
    bound: BoundProcesses | None = g.get(_G_NAME)
    if bound is None:
        bound = BoundProcesses(manager)
        setattr(g, _G_NAME, bound)
    bound.runs[process_id] = (run_tag, not has_request_context())


def stop_bound(bound: BoundProcesses | None) -> None:
    """Stop the processes of ``bound`` (see the module docstring); never raises, logs failures."""
    if bound is None or not bound.runs:
        return
    manager = bound.manager
    waiting: list[str] = []
    for process_id, (run_tag, waits) in bound.runs.items():
        try:
            if manager.request_stop(process_id, reason=TEARDOWN_REASON, run_tag=run_tag) and waits:
                waiting.append(process_id)
        except Exception:
            log.exception("procman: could not stop %s at teardown", process_id)
    if not waiting:
        return
    deadline = time.monotonic() + manager.settings.stop_timeout + 2 * manager.settings.poll_interval + _RECORD_MARGIN
    for process_id in waiting:
        try:
            manager.wait(process_id, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("procman: %s was still running when its context ended; the stop goes on", process_id)
        except Exception:
            log.exception("procman: could not wait for %s to stop at teardown", process_id)


def teardown_context(exc: BaseException | None) -> None:
    """``teardown_appcontext``: stop what the ending context bound (and nothing else)."""
    try:
        bound = g.pop(_G_NAME, None)
    except Exception:  # a teardown must never raise
        log.exception("procman: could not read the processes bound to the context")
        return
    stop_bound(bound)


def hand_over_to_response(sender: Flask, response: Response, **_extra: t.Any) -> None:
    """``request_finished``: a streamed response outlives its view, so the processes bound so far
    live until the server closes the response (its ``call_on_close``), not until the view returns.

    Not for ``direct_passthrough`` responses (``send_file``): servers may send those without ever
    calling the response's ``close``; their processes stop at the context's teardown as usual.
    """
    if response.is_streamed and not response.direct_passthrough:
        bound: BoundProcesses | None = g.pop(_G_NAME, None)
        if bound is not None:
            response.call_on_close(lambda: stop_bound(bound))


def register(app: Flask) -> None:
    """Install the teardown and the streamed-response hand-over on ``app`` (from ``init_app``)."""
    request_finished.connect(hand_over_to_response, app)
    app.teardown_appcontext(teardown_context)
