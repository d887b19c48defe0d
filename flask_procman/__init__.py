"""flask_procman: start, watch, read and stop the programs a Flask app runs."""

from __future__ import annotations

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
