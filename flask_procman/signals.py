"""Blinker signals sent by flask_procman; the sender is always the Flask app."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent when a process has been spawned (also when a queued one is promoted), in the worker that
#: spawned it, with the app context pushed.
#: Keyword arguments: ``process_id`` (str), ``pid`` (int).
process_started = _signals.signal("procman.process-started")

#: Sent once per process when its end is recorded, in the worker that recorded it, from the
#: callback pool with the app context pushed.
#: Keyword arguments: ``process_id`` (str), ``status`` (str), ``return_code`` (int or None).
process_finished = _signals.signal("procman.process-finished")
