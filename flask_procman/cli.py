"""The ``flask procman`` command group."""

from __future__ import annotations

from flask.cli import AppGroup

procman_cli = AppGroup("procman", help="Inspect and control the processes of this app (any worker's).")
