"""flask_procman: start, watch, read and stop the programs a Flask app runs.

The public names are loaded on first use (PEP 562), so that a child script importing
:mod:`flask_procman.progress` does not pay for importing Flask, SQLAlchemy and psutil.
"""

from __future__ import annotations

import importlib
import typing as t

if t.TYPE_CHECKING:
    from .errors import (
        ConfigurationError,
        InvalidCommand,
        InvalidProcessId,
        NotInitializedError,
        ProcessExists,
        ProcessNotFinished,
        ProcessNotFound,
        ProcManError,
        StartError,
        StoreUnavailable,
        UnknownHandler,
        UnknownProgram,
    )
    from .extension import ProcMan
    from .handle import ProcessManager
    from .manager import Manager
    from .programs import Program
    from .signals import process_finished, process_started

#: Where each public name is defined.
_HOMES = {
    **dict.fromkeys(["ConfigurationError", "InvalidCommand", "InvalidProcessId", "NotInitializedError",
                     "ProcessExists", "ProcessNotFinished", "ProcessNotFound", "ProcManError", "StartError",
                     "StoreUnavailable", "UnknownHandler", "UnknownProgram"], ".errors"),
    "ProcMan": ".extension",
    "ProcessManager": ".handle",
    "Manager": ".manager",
    "Program": ".programs",
    "process_finished": ".signals",
    "process_started": ".signals",
}

__all__ = [
    "ConfigurationError",
    "InvalidCommand",
    "InvalidProcessId",
    "Manager",
    "NotInitializedError",
    "ProcMan",
    "ProcManError",
    "ProcessExists",
    "ProcessManager",
    "ProcessNotFinished",
    "ProcessNotFound",
    "Program",
    "StartError",
    "StoreUnavailable",
    "UnknownHandler",
    "UnknownProgram",
    "process_finished",
    "process_started",
]


def __getattr__(name: str) -> t.Any:
    """Import the module defining the public name ``name`` on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
