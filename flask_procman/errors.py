"""The exceptions flask_procman raises; each message says what to do about it."""

from __future__ import annotations


class ProcManError(Exception):
    """Base class of every error flask_procman raises on purpose."""


class ConfigurationError(ProcManError, ValueError):
    """A ``PROCMAN_*`` key has a wrong value; the message names the key."""


class NotInitializedError(ProcManError, RuntimeError):
    """No manager for the current app: ``init_app`` was not called, or no app context is pushed."""


class InvalidProcessId(ProcManError, ValueError):
    """A process id that cannot be used (ids become file names)."""


class InvalidCommand(ProcManError, ValueError):
    """A command that is not a non-empty list of strings, or another argument of the wrong kind."""


class ProcessExists(ProcManError):
    """The id belongs to a process that is still running or queued."""


class ProcessNotFound(ProcManError, LookupError):
    """No record with that id."""


class ProcessNotFinished(ProcManError):
    """The action needs a finished process (e.g. removing its record)."""


class StartError(ProcManError):
    """The process could not be started (missing executable or cwd, OS error); a ``failed`` record is kept."""


class StoreUnavailable(ProcManError):
    """The database cannot be reached or the table is missing; running processes go on regardless."""


class TableMissing(StoreUnavailable):
    """The app's database has no ``procman_processes`` table: create it (``db.create_all()`` or a migration)."""


class UnknownProgram(ProcManError, LookupError):
    """No program of that name was declared (``PROCMAN_PROGRAMS`` or ``register_program``)."""


class UnknownHandler(ProcManError, LookupError):
    """No completion handler of that name was registered with ``@procman.on_complete(name)``."""
